package loadgen

import (
	"context"
	"testing"
	"time"
)

// TestThroughToxiproxy runs the fault run through a toxiproxy between the
// actors and the server, one fault at a time: latency with jitter,
// a bandwidth cap, writes sliced into pieces of a few bytes, connections
// cut inside a sample (a half-close), reset, or stalled and then closed.
// Whatever the network does, nothing acknowledged may be lost, duplicated,
// reordered or corrupted, and nothing partial committed.
func TestThroughToxiproxy(t *testing.T) {
	srv := startServer(t, body, 64)
	proxy, err := StartProxy(srv.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	for _, f := range Faults(srv.Spec().PayloadBytes()) {
		t.Run(f.Name, func(t *testing.T) {
			remove, err := proxy.Apply(f)
			if err != nil {
				t.Fatal(err)
			}
			defer remove()
			cfg := Config{
				Actors: 16, Samples: 300, Body: body, Client: f.Client, Seed: 37,
				Stall: 2 * time.Second, Dial: dialer(proxy.Addr()),
			}
			// toxiproxy picks the connections a toxic acts on at random
			// (its toxicity), so a run may by chance miss them all: 0.8^16,
			// about 3 %, for the 20 % faults. A fault that cuts is run
			// again, every run checked in full, until it has cut at least
			// one connection.
			const tries = 8
			for try := 1; ; try++ {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
				res, err := Run(ctx, srv, cfg, nil)
				cancel()
				checkRun(t, res, err)
				if !f.Cuts || res.Failed > 0 {
					break
				}
				if try == tries {
					t.Fatalf("no connection ended by the toxic in %d runs", tries)
				}
				t.Logf("run %d: no connection ended by the toxic; again", try)
				cfg.Seed++
			}
		})
	}
}
