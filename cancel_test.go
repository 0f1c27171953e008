//go:build linux

package echo_test

// Cancellation of the send paths against the real server: a context that
// ends while a send waits leaves nothing behind, and exactly-once delivery
// holds for everything sent before and after.

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/pytree"
)

// TestSubmitCancelledOnFullRing: with the ring full and no learner, Submit
// returns ctx's error (a deadline, a cancel, a context done on entry) and
// writes nothing; a Submit blocked after them is still woken by the next
// release, and every sample submitted is delivered once.
func TestSubmitCancelledOnFullRing(t *testing.T) {
	s := newServer(t, 1, echo.WithNumBuffers(2))
	for seq := range 2 {
		if err := s.Submit(t.Context(), numbered(0, seq)); err != nil {
			t.Fatal(err)
		}
	}
	short, stop := context.WithTimeout(t.Context(), 30*time.Millisecond)
	defer stop()
	if err := s.Submit(short, numbered(0, 99)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Submit on a full ring with a deadline: %v, want DeadlineExceeded", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- s.Submit(ctx, numbered(0, 99)) }()
	stillBlocked(t, errc, "Submit on a full ring")
	cancel()
	if err := within(t, errc, "Submit"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Submit on a full ring, cancelled: %v, want context.Canceled", err)
	}
	if err := s.Submit(ctx, numbered(0, 99)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Submit with a cancelled context: %v, want context.Canceled", err)
	}

	live, stopLive := context.WithCancel(t.Context())
	defer stopLive()
	go func() { errc <- s.Submit(live, numbered(0, 2)) }()
	stillBlocked(t, errc, "Submit on a full ring")
	l := newLedger()
	sampleN(t, s, l, 2, 1) // the second Sample gives the first slab back
	if err := within(t, errc, "Submit"); err != nil {
		t.Fatal(err)
	}
	sampleN(t, s, l, 1, 1)
	l.expectAll(t, []int{0}, 3)
}

// TestProducerSendCancelledOnFullRing, on both routes: with the ring full
// and no learner, Send blocks (for a queue buffer, or for ring space) and
// returns ctx's error when ctx ends; the producer goes on, and delivers
// every sample it sent, once and in order.
func TestProducerSendCancelledOnFullRing(t *testing.T) {
	for _, route := range routes {
		t.Run(route.name, func(t *testing.T) {
			s := newServer(t, 1, echo.WithNumBuffers(2), echo.WithProducerQueueSize(1), route.opt)
			prod, err := s.NewProducer()
			if err != nil {
				t.Fatal(err)
			}
			defer prod.Close()
			// Send with a short deadline until one times out: the ring,
			// the worker and the queue are full.
			sent := 0
			for ; ; sent++ {
				ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
				err := prod.Send(ctx, numbered(1, sent))
				cancel()
				if errors.Is(err, context.DeadlineExceeded) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if sent > 16 {
					t.Fatal("17 samples went into a ring of 2 with no learner")
				}
			}
			ctx, cancel := context.WithCancel(t.Context())
			errc := make(chan error, 1)
			go func() { errc <- prod.Send(ctx, numbered(1, sent)) }()
			stillBlocked(t, errc, "Producer.Send on a full ring")
			cancel()
			if err := within(t, errc, "Producer.Send"); !errors.Is(err, context.Canceled) {
				t.Fatalf("Send on a full ring, cancelled: %v, want context.Canceled", err)
			}

			// The learner comes back; the producer sends on.
			const more = 4
			go func() {
				for seq := sent; seq < sent+more; seq++ {
					if err := prod.Send(t.Context(), numbered(1, seq)); err != nil {
						errc <- err
						return
					}
				}
				errc <- nil
			}()
			l := newLedger()
			sampleN(t, s, l, sent+more, 1)
			if err := within(t, errc, "Producer.Send"); err != nil {
				t.Fatal(err)
			}
			l.expectAll(t, []int{1}, sent+more)
		})
	}
}

// TestClientCancelledWaitingForAcks: max inflight reached against a server
// whose ring is full; Send returns ctx's error, nothing sent, and once the
// learner drains, the next Send delivers: every sample once.
func TestClientCancelledWaitingForAcks(t *testing.T) {
	s := startTCP(t, 1, echo.WithNumBuffers(2))
	c, err := echo.Dial(t.Context(), s.Addr().String(), numbered(0, 0), echo.WithMaxInflight(3))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for seq := range 5 { // 2 in the ring, 3 unacknowledged
		if err := c.Send(t.Context(), numbered(2, seq)); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- c.Send(ctx, numbered(2, 5)) }()
	stillBlocked(t, errc, "Send past max inflight")
	cancel()
	if err := within(t, errc, "Send"); !errors.Is(err, context.Canceled) || errors.Is(err, echo.ErrConnectionClosed) {
		t.Fatalf("Send past max inflight, cancelled: %v, want context.Canceled alone", err)
	}
	if n := c.Inflight(); n != 3 {
		t.Fatalf("inflight %d, want 3", n)
	}
	l := newLedger()
	sampleN(t, s, l, 5, 1)
	if err := c.Send(t.Context(), numbered(2, 5)); err != nil {
		t.Fatal(err)
	}
	sampleN(t, s, l, 1, 1)
	if err := c.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	l.expectAll(t, []int{2}, 6)
}

// TestClientCancelledMidWriteDropsPartial: a client whose write is blocked
// part-way (ring full, no learner, 1 MiB samples filling the staging
// buffer and both kernels' buffers) is cancelled. It ends; the server drops
// the partial sample; every sample acknowledged before is delivered, and
// nothing delivered is torn, doubled, or the cancelled one.
func TestClientCancelledMidWriteDropsPartial(t *testing.T) {
	const size = 1<<20 + 3 // odd: a cancelled write is unlikely to stop at a sample's end
	example := map[string]any{
		"seq":  pytree.MustOf([]int64{0}),
		"blob": pytree.MustOf(make([]uint8, size)),
	}
	s := newServerFor(t, example, 1, echo.WithTCP("127.0.0.1:0"), echo.WithNumBuffers(2))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	c, err := echo.Dial(t.Context(), s.Addr().String(), example, echo.WithMaxInflight(64))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fill := func(blob []uint8, seq int) {
		for i := range blob {
			blob[i] = byte(seq*13 + i*7)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	sentc := make(chan int, 64)
	errc := make(chan error, 1)
	go func() {
		blob := make([]uint8, size)
		for seq := 0; ; seq++ {
			fill(blob, seq)
			err := c.Send(ctx, map[string]any{"seq": pytree.MustOf([]int64{int64(seq)}), "blob": pytree.MustOf(blob)})
			if err != nil {
				errc <- err
				return
			}
			sentc <- seq
		}
	}()
	sent := 0
	for blocked := false; !blocked; {
		select {
		case <-sentc:
			sent++
		case <-time.After(200 * time.Millisecond):
			blocked = true
		case err := <-errc:
			t.Fatalf("Send before the cancel: %v", err)
		}
	}
	cancel()
	err = within(t, errc, "Send")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Send blocked mid-write, cancelled: %v, want context.Canceled", err)
	}
	if !errors.Is(err, echo.ErrConnectionClosed) {
		t.Logf("the write stopped at a sample's end (%v): the client goes on", err)
		c.Close()
	}
	acked := sent - c.Inflight()
	t.Logf("%d samples sent whole, %d acknowledged before the cancel", sent, acked)

	// The learner drains: acknowledged samples all come, then possibly
	// other whole ones sent before the cancel, each intact and once.
	want := make([]uint8, size)
	seen := map[int]bool{}
	for {
		ctx, stop := context.WithTimeout(t.Context(), 500*time.Millisecond)
		smp, err := s.Sample(ctx)
		stop()
		if errors.Is(err, context.DeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		seqs, _ := echo.View[int64](smp, "seq")
		blob, _ := echo.View[uint8](smp, "blob")
		seq := int(seqs[0])
		if seq >= sent || seen[seq] {
			t.Fatalf("delivered seq %d: sent whole were 0..%d, seen before: %v", seq, sent-1, seen[seq])
		}
		fill(want, seq)
		if !bytes.Equal(blob, want) {
			t.Fatalf("seq %d delivered torn", seq)
		}
		seen[seq] = true
	}
	for seq := range acked {
		if !seen[seq] {
			t.Fatalf("acknowledged seq %d never delivered", seq)
		}
	}
	t.Logf("%d delivered", len(seen))
}
