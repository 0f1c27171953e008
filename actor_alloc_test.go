//go:build !race

package echo_test

// The client's allocation tests, against the fake server of
// client_test.go; the server's are in alloc_test.go.

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
