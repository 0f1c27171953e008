//go:build linux && !race

package echo_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/bench"
)

// TestSubmitSampleAllocatesNothing proves the in-process hot path's zero
// allocation claim: a batch of Submit calls and the Sample that takes it,
// with either kind of context (sendContexts), on an anonymous ring and on
// a shared one.
func TestSubmitSampleAllocatesNothing(t *testing.T) {
	memories := []struct {
		name string
		opts []echo.Option
	}{{"anonymous", nil}, {"shared", []echo.Option{echo.WithSharedMemory()}}}
	for _, w := range bench.Workloads() {
		for _, sc := range sendContexts(t) {
			for _, m := range memories {
				t.Run(w.Short+"/"+sc.name+"/"+m.name, func(t *testing.T) {
					submitSampleRound(t, sc.ctx, w, m.opts...)
				})
			}
		}
	}
}

func submitSampleRound(t *testing.T, ctx context.Context, w bench.Workload, opts ...echo.Option) {
	sample := w.MustSample(1)
	s := newServerFor(t, sample, w.BatchSize, opts...)
	round := func() {
		for range w.BatchSize {
			if err := s.Submit(ctx, sample); err != nil {
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
}

// TestProducerSendAllocatesNothing covers both producer routes, the ingress
// workers included (AllocsPerRun counts every goroutine's allocations).
func TestProducerSendAllocatesNothing(t *testing.T) {
	w := bench.Workloads()[0]
	for _, route := range routes {
		for _, ws := range strategies {
			for _, sc := range sendContexts(t) {
				t.Run(route.name+"/"+ws.String()+"/"+sc.name, func(t *testing.T) {
					producerRound(t, sc.ctx, w, route.opt, echo.WithWaitStrategy(ws))
				})
			}
		}
	}
}

func producerRound(t *testing.T, ctx context.Context, w bench.Workload, opts ...echo.Option) {
	sample := w.MustSample(1)
	s := newServerFor(t, sample, w.BatchSize, opts...)
	prod, err := s.NewProducer()
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	round := func() {
		for range w.BatchSize {
			if err := prod.Send(ctx, sample); err != nil {
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
}

// TestTCPSendSampleAllocatesNothing covers the network path end to end:
// Client.Send, the epoll worker's FIONREAD/readv/ack write, the client's
// ack reader, and Sample. AllocsPerRun counts the allocations of every
// goroutine.
func TestTCPSendSampleAllocatesNothing(t *testing.T) {
	for _, w := range bench.Workloads() {
		for _, ws := range strategies {
			for _, sc := range sendContexts(t) {
				for _, v := range []int{1, 2} {
					name := fmt.Sprintf("%s/%s/%s/v%d", w.Short, ws, sc.name, v)
					t.Run(name, func(t *testing.T) { tcpRound(t, sc.ctx, w, ws, v) })
				}
			}
		}
	}
}

// tcpRound checks that rounds of a batch of Sends, a Sample and a Wait
// allocate nothing, for a client dialed in version with opts.
func tcpRound(t *testing.T, ctx context.Context, w bench.Workload, ws echo.WaitStrategy, version int, opts ...echo.ClientOption) {
	sample := w.MustSample(1)
	s := newServerFor(t, sample, w.BatchSize, echo.WithTCP("127.0.0.1:0"), echo.WithWaitStrategy(ws))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	c, err := echo.Dial(ctx, s.Addr().String(), sample, append([]echo.ClientOption{echo.WithWireVersion(version)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Version() != version {
		t.Fatalf("version %d, want %d", c.Version(), version)
	}
	round := func() {
		for range w.BatchSize {
			if err := c.Send(ctx, sample); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.Sample(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	round()
	if n := testing.AllocsPerRun(10, round); n != 0 {
		t.Fatalf("Client.Send×%d + Sample allocates %.1f times, want 0", w.BatchSize, n)
	}
}

// TestViewAllocatesNothing: reading a leaf of a batch by its path.
func TestViewAllocatesNothing(t *testing.T) {
	w := bench.Workloads()[2] // W3: the most leaves to search
	sample := w.MustSample(1)
	s := newServerFor(t, sample, 1)
	if err := s.Submit(t.Context(), sample); err != nil {
		t.Fatal(err)
	}
	smp, err := s.Sample(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	leaves := s.Spec().Leaves()
	last := leaves[len(leaves)-1].Path // the longest search
	var n int
	if allocs := testing.AllocsPerRun(100, func() {
		a, err := smp.Leaf(last)
		if err != nil {
			t.Fatal(err)
		}
		ts, err := echo.View[float64](smp, "_send_ts")
		if err != nil {
			t.Fatal(err)
		}
		n += a.NumBytes() + len(ts)
	}); allocs != 0 {
		t.Fatalf("Leaf + View allocate %.1f times, want 0", allocs)
	}
}

// TestReconnectingSendAllocatesNothing: the replay copy costs no
// allocation either.
func TestReconnectingSendAllocatesNothing(t *testing.T) {
	for _, w := range bench.Workloads() {
		t.Run(w.Short, func(t *testing.T) {
			tcpRound(t, t.Context(), w, echo.Park(), 2, echo.WithReconnect(echo.Backoff{}))
		})
	}
}
