//go:build !race

package echo_test

import (
	"context"
	"testing"

	"github.com/seed-a9ef92a1/echo/bench"
)

// TestSubmitSampleAllocatesNothing proves the in-process hot path's zero
// allocation claim: a batch of Submit calls and the Sample that takes it.
func TestSubmitSampleAllocatesNothing(t *testing.T) {
	for _, w := range bench.Workloads() {
		t.Run(w.Short, func(t *testing.T) {
			sample := w.MustSample(1)
			s := newServerFor(t, sample, w.BatchSize)
			ctx := context.Background()
			round := func() {
				for range w.BatchSize {
					if err := s.Submit(sample); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := s.Sample(ctx); err != nil {
					t.Fatal(err)
				}
			}
			round() // warm the scratch pool
			if n := testing.AllocsPerRun(20, round); n != 0 {
				t.Fatalf("Submit×%d + Sample allocates %.1f times, want 0", w.BatchSize, n)
			}
		})
	}
}

// TestProducerSendAllocatesNothing covers both producer routes, the ingress
// workers included (AllocsPerRun counts every goroutine's allocations).
func TestProducerSendAllocatesNothing(t *testing.T) {
	w := bench.Workloads()[0]
	for _, route := range routes {
		t.Run(route.name, func(t *testing.T) {
			sample := w.MustSample(1)
			s := newServerFor(t, sample, w.BatchSize, route.opt)
			prod, err := s.NewProducer()
			if err != nil {
				t.Fatal(err)
			}
			defer prod.Close()
			ctx := context.Background()
			round := func() {
				for range w.BatchSize {
					if err := prod.Send(sample); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := s.Sample(ctx); err != nil {
					t.Fatal(err)
				}
			}
			round()
			if n := testing.AllocsPerRun(20, round); n != 0 {
				t.Fatalf("Send×%d + Sample allocates %.1f times, want 0", w.BatchSize, n)
			}
		})
	}
}
