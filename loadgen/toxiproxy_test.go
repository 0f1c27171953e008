package loadgen

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// TestThroughToxiproxy runs the fault run through a toxiproxy between the
// actors and the server, one fault at a time: latency with jitter,
// a bandwidth cap, writes sliced into pieces of a few bytes, connections
// cut after some bytes (a half-close), reset, or stalled and then closed.
// Whatever the network does, nothing acknowledged may be lost, duplicated,
// reordered or corrupted, and nothing partial committed.
func TestThroughToxiproxy(t *testing.T) {
	srv := startServer(t, body, 64)
	api := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	proxy := toxiproxy.NewProxy(api, "echo", "127.0.0.1:0", srv.Addr().String())
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	defer proxy.Stop()
	payload := srv.Spec().PayloadBytes()

	for _, tc := range []struct {
		name, toxics string // toxics: JSON objects, comma-separated
		client       bool   // actors use echo.Client
		cut          bool   // the toxic ends connections
	}{
		{name: "latency with jitter", client: true, toxics: `
			{"type": "latency", "stream": "upstream", "attributes": {"latency": 10, "jitter": 8}},
			{"type": "latency", "stream": "downstream", "attributes": {"latency": 10, "jitter": 8}}`},
		{name: "bandwidth 2 MB/s", toxics: `
			{"type": "bandwidth", "stream": "upstream", "attributes": {"rate": 2048}}`},
		{name: "sliced into 1-13 byte writes", client: true, toxics: `
			{"type": "slicer", "stream": "upstream", "attributes": {"average_size": 7, "size_variation": 6, "delay": 20}}`},
		{name: "half-closed after some samples", cut: true, toxics: fmt.Sprintf(`
			{"type": "limit_data", "stream": "upstream", "toxicity": 0.5, "attributes": {"bytes": %d}}`, 37*payload+payload/3)},
		{name: "reset", cut: true, toxics: `
			{"type": "reset_peer", "stream": "upstream", "toxicity": 0.3, "attributes": {"timeout": 20}}`},
		{name: "stalled, then closed", cut: true, toxics: `
			{"type": "timeout", "stream": "upstream", "toxicity": 0.2, "attributes": {"timeout": 300}}`},
		{name: "acks stalled, then closed", cut: true, toxics: `
			{"type": "timeout", "stream": "downstream", "toxicity": 0.2, "attributes": {"timeout": 300}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var names []string
			for i, js := range strings.Split(tc.toxics, "},\n") {
				js = strings.TrimSpace(js)
				if !strings.HasSuffix(js, "}}") {
					js += "}"
				}
				name := fmt.Sprintf("t%d", i)
				js = `{"name": "` + name + `", ` + js[1:]
				if _, err := proxy.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
					t.Fatalf("toxic %s: %v", js, err)
				}
				names = append(names, name)
			}
			defer func() {
				for _, n := range names {
					proxy.Toxics.RemoveToxic(context.Background(), n)
				}
			}()
			cfg := Config{
				Actors: 16, Samples: 300, Body: body, Client: tc.client, Seed: 37,
				Stall: 2 * time.Second, Dial: dialer(proxy.Listen),
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			res, err := Run(ctx, srv, cfg, nil)
			checkRun(t, res, err)
			if tc.cut && res.Failed == 0 {
				t.Errorf("no connection ended by the toxic")
			}
		})
	}
}
