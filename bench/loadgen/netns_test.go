package loadgen

import (
	"context"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/bench/integrity"
)

// requireNetnsEnv, set (as .ci/run sets it), turns the namespace test's
// skips into failures.
const requireNetnsEnv = "ECHO_REQUIRE_NETNS"

// skipNetns skips the test for why, or fails it where namespaces are
// required.
func skipNetns(t *testing.T, why string, args ...any) {
	t.Helper()
	if os.Getenv(requireNetnsEnv) != "" {
		t.Fatalf("network namespaces required ("+requireNetnsEnv+"): "+why, args...)
	}
	t.Skipf("network namespaces unavailable: "+why, args...)
}

// peers records the peers of the connections a server opened.
type peers struct {
	mu   sync.Mutex
	seen map[string]int // by host
}

func (p *peers) Enabled(context.Context, slog.Level) bool { return true }
func (p *peers) WithAttrs([]slog.Attr) slog.Handler       { return p }
func (p *peers) WithGroup(string) slog.Handler            { return p }
func (p *peers) Handle(_ context.Context, rec slog.Record) error {
	if rec.Message != "echo: connection opened" {
		return nil
	}
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key == "peer" {
			if host, _, err := net.SplitHostPort(a.Value.String()); err == nil {
				p.mu.Lock()
				p.seen[host]++
				p.mu.Unlock()
			}
		}
		return true
	})
	return nil
}

// makeHosts is MakeHosts, skipping (or failing, where required) when
// namespaces cannot be made.
func makeHosts(t *testing.T, n int) []Host {
	t.Helper()
	if os.Geteuid() != 0 {
		skipNetns(t, "needs root")
	}
	hosts, cleanup, err := MakeHosts(n)
	t.Cleanup(cleanup)
	if err != nil {
		skipNetns(t, "%v", err)
	}
	return hosts
}

// TestActorsInNamespaces runs the fault run with actors in four network
// namespaces of their own, each reaching the server over a veth pair: real
// IP routing between hosts, not loopback.
func TestActorsInNamespaces(t *testing.T) {
	hosts := makeHosts(t, 4)
	log := &peers{seen: map[string]int{}}
	srv, err := echo.NewServer(integrity.Example(body), 64, echo.WithTCP("0.0.0.0:0"), echo.WithLogger(slog.New(log)))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(srv.Addr().String())
	cfg := Config{Actors: 32, Samples: 1000, Body: body, Kill: 0.2, Seed: 31, Dial: DialHosts(hosts, port)}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, srv, cfg, nil)
	checkRun(t, res, err)
	log.mu.Lock()
	defer log.mu.Unlock()
	t.Logf("connections by actor host: %v", log.seen)
	for _, h := range hosts {
		if log.seen[h.Addr] == 0 {
			t.Errorf("no connection from %s (namespace %s)", h.Addr, h.Name)
		}
	}
	for host := range log.seen {
		if !strings.HasPrefix(host, "10.231.") {
			t.Errorf("a connection from %s, outside the namespaces", host)
		}
	}
}
