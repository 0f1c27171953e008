//go:build !race

package echo_test

// The actor side's allocation tests, on every OS; the server's are in
// alloc_test.go.

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/pytree"
)

// sendContexts are the contexts every zero-allocation claim of the send
// paths is checked with: one that can never end (Done is nil) and one that
// can (Done is a channel) but does not.
func sendContexts(t *testing.T) []struct {
	name string
	ctx  context.Context
} {
	live, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return []struct {
		name string
		ctx  context.Context
	}{{"background", context.Background()}, {"cancellable", live}}
}

// TestClientSendAllocatesNothing: Send, SendBatch and Wait against a
// server that keeps up, on every OS (AllocsPerRun counts every
// goroutine's allocations: the ack reader's and the fake server's too).
func TestClientSendAllocatesNothing(t *testing.T) {
	for _, size := range []int{13, 1 << 20} {
		example := numbered(0, 0)
		example["payload"] = pytree.MustOf(make([]uint8, size))
		for _, sc := range sendContexts(t) {
			t.Run(fmt.Sprintf("%dB/%s", size, sc.name), func(t *testing.T) {
				f := newFakeServer(t, example, fakeOptions{discard: true})
				c := dialFake(t, f, example)
				trees := []any{example, example, example, example}
				round := func() {
					for range 16 {
						if err := c.Send(sc.ctx, example); err != nil {
							t.Fatal(err)
						}
					}
					if err := c.SendBatch(sc.ctx, trees); err != nil {
						t.Fatal(err)
					}
					if err := c.Wait(sc.ctx); err != nil {
						t.Fatal(err)
					}
				}
				round() // grow SendBatch's scratch
				if n := testing.AllocsPerRun(20, round); n != 0 {
					t.Fatalf("%d-byte samples: Send×16 + SendBatch(4) + Wait allocate %.1f times, want 0", f.payload, n)
				}
			})
		}
	}
}

// TestClientBlockedSendAllocatesNothing: writes that block long enough for
// the probe to hand them to the write watcher (8 MiB samples to a server
// that pauses before each) allocate nothing either, once the watcher runs.
func TestClientBlockedSendAllocatesNothing(t *testing.T) {
	example := map[string]any{"blob": pytree.MustOf(make([]uint8, 8<<20))}
	f := newFakeServer(t, example, fakeOptions{discard: true, pause: 20 * time.Millisecond})
	c := dialFake(t, f, example, echo.WithMaxInflight(1))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	send := func() {
		if err := c.Send(ctx, example); err != nil {
			t.Fatal(err)
		}
	}
	for echo.WatchedWrites(c) == 0 { // until the watcher has started
		send()
	}
	before := echo.WatchedWrites(c)
	if n := testing.AllocsPerRun(5, send); n != 0 {
		t.Fatalf("blocked Send allocates %.1f times, want 0", n)
	}
	if echo.WatchedWrites(c) == before {
		t.Fatal("no measured Send lasted long enough to be watched: the test measured the fast path only")
	}
}

// TestTrajectoryAddAllocatesNothing: steps are copied into reused buffers.
func TestTrajectoryAddAllocatesNothing(t *testing.T) {
	acc, err := echo.NewTrajectoryAccumulator(trajectoryExample(t))
	if err != nil {
		t.Fatal(err)
	}
	step := map[string]any{"obs": pytree.MustOf(make([]float32, 4)), "reward": pytree.Scalar(float32(1))}
	ep := map[string]any{"return": pytree.Scalar(float64(1)), "seed": pytree.MustOf([]int64{1, 2})}
	round := func() {
		for range 3 {
			if err := acc.Add("steps", step); err != nil {
				t.Fatal(err)
			}
		}
		if err := acc.Add("episode", ep); err != nil {
			t.Fatal(err)
		}
		acc.Build()
	}
	if n := testing.AllocsPerRun(20, round); n != 0 {
		t.Fatalf("Add×4 + Build allocates %.1f times, want 0", n)
	}
}
