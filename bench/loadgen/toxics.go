package loadgen

import (
	"context"
	"fmt"
	"strings"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Fault is a network fault made by toxiproxy toxics between actors and
// server.
type Fault struct {
	Name string
	// Toxics are toxiproxy toxic definitions, as its API takes them.
	Toxics []string
	// Client runs the actors through echo.Client (true) or raw
	// connections.
	Client bool
	// Cuts is true when the fault ends connections.
	Cuts bool
}

// Faults returns the network faults every fault-injection run goes
// through, for samples of payload bytes.
func Faults(payload int) []Fault {
	return []Fault{
		{Name: "latency 10 ms ± 8 ms each way", Client: true, Toxics: []string{
			`{"type": "latency", "stream": "upstream", "attributes": {"latency": 10, "jitter": 8}}`,
			`{"type": "latency", "stream": "downstream", "attributes": {"latency": 10, "jitter": 8}}`}},
		{Name: "bandwidth 2 MB/s per connection", Toxics: []string{
			`{"type": "bandwidth", "stream": "upstream", "attributes": {"rate": 2048}}`}},
		{Name: "writes sliced into 1-13 bytes", Client: true, Toxics: []string{
			`{"type": "slicer", "stream": "upstream", "attributes": {"average_size": 7, "size_variation": 6, "delay": 20}}`}},
		{Name: "half the connections closed inside sample 38", Cuts: true, Toxics: []string{fmt.Sprintf(
			`{"type": "limit_data", "stream": "upstream", "toxicity": 0.5, "attributes": {"bytes": %d}}`, 37*payload+payload/3)}},
		{Name: "30% of connections reset after 20 ms", Cuts: true, Toxics: []string{
			`{"type": "reset_peer", "stream": "upstream", "toxicity": 0.3, "attributes": {"timeout": 20}}`}},
		{Name: "20% of connections stalled, closed after 300 ms", Cuts: true, Toxics: []string{
			`{"type": "timeout", "stream": "upstream", "toxicity": 0.2, "attributes": {"timeout": 300}}`}},
		{Name: "20% of connections' acks stalled, closed after 300 ms", Cuts: true, Toxics: []string{
			`{"type": "timeout", "stream": "downstream", "toxicity": 0.2, "attributes": {"timeout": 300}}`}},
	}
}

// Proxy is a toxiproxy proxy in this process.
type Proxy struct{ p *toxiproxy.Proxy }

// StartProxy starts a proxy on a loopback port to upstream.
func StartProxy(upstream string) (*Proxy, error) {
	api := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	p := toxiproxy.NewProxy(api, "echo", "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		return nil, fmt.Errorf("toxiproxy: %w", err)
	}
	return &Proxy{p: p}, nil
}

// Addr is where actors dial.
func (p *Proxy) Addr() string { return p.p.Listen }

// Apply adds f's toxics; remove takes them away again.
func (p *Proxy) Apply(f Fault) (remove func(), err error) {
	var names []string
	remove = func() {
		for _, n := range names {
			p.p.Toxics.RemoveToxic(context.Background(), n)
		}
	}
	for i, js := range f.Toxics {
		name := fmt.Sprintf("t%d", i)
		js = `{"name": "` + name + `", ` + strings.TrimPrefix(strings.TrimSpace(js), "{")
		if _, err := p.p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
			remove()
			return nil, fmt.Errorf("toxic %s: %w", js, err)
		}
		names = append(names, name)
	}
	return remove, nil
}

// Close stops the proxy and its connections.
func (p *Proxy) Close() { p.p.Stop() }
