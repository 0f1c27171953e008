package tcp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a9ef92a1/echo/internal/sockio"
	"github.com/seed-a9ef92a1/echo/ringbuf"
	"github.com/seed-a9ef92a1/echo/wire"
)

// newBareWorker makes a worker of a pool over r whose loop does not run:
// the test drives it (poll, readWhole, claim) on its own goroutine.
func newBareWorker(t testing.TB, r *ringbuf.Ring) *worker {
	t.Helper()
	spec := testSpec(t)
	p := &Pool{
		ring: r, payload: spec.PayloadBytes(), epoch: time.Now(), done: make(chan struct{}),
		acks: bytes.Repeat([]byte{wire.Ack}, ackBufLen),
	}
	for _, l := range spec.Leaves() {
		p.leafBytes = append(p.leafBytes, l.NumBytes())
	}
	w, err := newWorker(p)
	if err != nil {
		t.Fatal(err)
	}
	p.workers = []*worker{w}
	t.Cleanup(func() {
		w.closeConns()
		w.poller.Close()
	})
	return w
}

// adopt gives the bare worker a gated connection on fd, as addConn and the
// worker's next round would.
func adopt(w *worker, fd int, peer string) *conn {
	c := &conn{fd: fd, gated: true, peer: peer}
	w.nconns.Add(1)
	w.adoptConn(c)
	return c
}

// TestGatedBatchInOneTurn writes a batch's worth of whole samples at once
// and checks that they form one batch, in order and intact, and are acked.
func TestGatedBatchInOneTurn(t *testing.T) {
	r := newRing(t, 4, 2)
	p := newPool(t, r, 1, nil)
	fd, peer := socketPair(t)
	// Written before the hand-over: epoll_ctl's first look reports them.
	if _, err := peer.Write(samples(7, 0, 4)); err != nil {
		t.Fatal(err)
	}
	if err := p.addConn(fd, true, false, "peer", nil); err != nil {
		t.Fatal(err)
	}
	for i, s := range nextBatch(t, r) {
		if !bytes.Equal(s, sample(7, i)) {
			t.Fatalf("slot %d holds %x, want sample %d", i, s, i)
		}
	}
	readAcks(t, peer, 4)
	if st := r.Stats(); st.Inserted != 4 || st.CASSuccess != 1 {
		t.Errorf("ring stats %+v: want 4 samples in one reservation", st)
	}
}

// TestStagedSampleCommittedWhole dribbles samples over a staged connection
// a few bytes at a time, each piece read before the next is sent, and
// checks that nothing is acked before a sample is whole and that the
// samples arrive intact.
func TestStagedSampleCommittedWhole(t *testing.T) {
	r := newRing(t, 2, 2)
	p := newPool(t, r, 1, nil)
	fd, peer := socketPair(t)
	if err := p.addConn(fd, false, false, "peer", nil); err != nil {
		t.Fatal(err)
	}
	stream := samples(3, 0, 2)
	for off := 0; off < len(stream); off += 5 {
		piece := stream[off:min(off+5, len(stream))]
		if _, err := peer.Write(piece); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the piece read", func() bool {
			n, err := sockio.Queued(fd)
			return err == nil && n == 0
		})
		if off+5 == 15 {
			// 15 of 17 bytes: no ack may come.
			peer.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			if n, err := peer.Read(make([]byte, 1)); n != 0 || !isTimeout(err) {
				t.Fatalf("read %d bytes (%v) with the first sample incomplete", n, err)
			}
			peer.SetReadDeadline(time.Now().Add(20 * time.Second))
		}
	}
	batch := nextBatch(t, r)
	for i := range 2 {
		if !bytes.Equal(batch[i], sample(3, i)) {
			t.Fatalf("slot %d holds %x, want sample %d", i, batch[i], i)
		}
	}
	readAcks(t, peer, 2)
	// Every sample went through the one-slot claim and the copy.
	if st := r.Stats(); st.CASSuccess != 2 {
		t.Errorf("ring stats %+v: want 2 one-slot reservations", st)
	}
}

func isTimeout(err error) bool {
	var ne interface{ Timeout() bool }
	return errors.As(err, &ne) && ne.Timeout()
}

// TestPartialSampleDropped has a peer send one and a half samples and
// leave: the whole one is committed and acked, the half one is discarded,
// and the connection is closed and uncounted. The peer either half-closes
// (and reads its ack) or closes outright.
func TestPartialSampleDropped(t *testing.T) {
	for _, tc := range []struct {
		gated, halfClose bool
	}{{true, true}, {false, true}, {true, false}, {false, false}} {
		t.Run(fmt.Sprintf("gated=%v/halfclose=%v", tc.gated, tc.halfClose), func(t *testing.T) {
			var logs lockedBuffer
			r := newRing(t, 2, 2)
			p := newPool(t, r, 1, testLogger(&logs))
			fd, peer := socketPair(t)
			if err := p.addConn(fd, tc.gated, false, "peer", nil); err != nil {
				t.Fatal(err)
			}
			if _, err := peer.Write(samples(5, 0, 2)[:payload+payload/2]); err != nil {
				t.Fatal(err)
			}
			if tc.halfClose {
				if err := peer.CloseWrite(); err != nil {
					t.Fatal(err)
				}
				if b := expectEOF(t, peer); !bytes.Equal(b, []byte{wire.Ack}) {
					t.Fatalf("peer read %x before the end, want one ack", b)
				}
			} else {
				// Closing before the acks come is the peer's right; the
				// sample it sent whole still counts.
				eventually(t, "the sample committed", func() bool { return r.Stats().Stored == 1 })
				peer.Close()
			}
			eventually(t, "the connection dropped", func() bool { return p.ActiveConnections() == 0 })
			if st := r.Stats(); st.Stored != 1 || st.Inserted != 1 {
				t.Fatalf("ring stats %+v: want exactly one sample", st)
			}
			if s := slotSample(r, 0); !bytes.Equal(s, sample(5, 0)) {
				t.Fatalf("slot 0 holds %x", s)
			}
			// With the ring able to take the partial sample, nothing of it
			// may have reached slot 1.
			if s := slotSample(r, 1); !bytes.Equal(s, make([]byte, payload)) {
				t.Fatalf("slot 1 holds %x, want nothing", s)
			}
			if tc.halfClose {
				if got := logs.String(); !strings.Contains(got, "partial_bytes_discarded=8") ||
					!strings.Contains(got, `reason="peer closed"`) {
					t.Errorf("log does not report the peer's close with 8 bytes discarded:\n%s", got)
				}
			}
		})
	}
}

// TestShortReadReturnsItsSlots provokes the one short read a kernel can
// make of a gated socket, an AF_UNIX out-of-band byte that FIONREAD counts
// and readv skips (which is why the acceptor sets SO_OOBINLINE; this socket
// never met the acceptor), and checks the ring invariant: the slots claimed
// and left unread go back to the ring, the connection is dropped with its
// whole samples committed, and the next samples fill the slots in order,
// so that no batch is left with a hole. In the second case the claim came
// from slots an earlier writer gave back.
func TestShortReadReturnsItsSlots(t *testing.T) {
	for _, earlier := range []int{0, 5} {
		t.Run(fmt.Sprintf("returned=%d", earlier), func(t *testing.T) {
			r := newRing(t, 8, 2)
			w := newBareWorker(t, r)
			if earlier > 0 {
				// Slots 0-2 go to the test, 3-7 back to the ring.
				res, err := r.Claim(context.Background(), 8)
				if err != nil {
					t.Fatal(err)
				}
				for k := range 3 {
					copy(r.Slot(res.Start+uint64(k), 0), sample(0, k)[:16])
					copy(r.Slot(res.Start+uint64(k), 1), sample(0, k)[16:])
				}
				r.Commit(ringbuf.Reservation{Start: 0, N: 3})
				r.Return(ringbuf.Reservation{Start: 3, N: earlier})
			}
			// Two whole samples and 16 bytes, then one out-of-band byte.
			fdA, peerA := socketPair(t)
			if _, err := peerA.Write(samples(1, 0, 3)[:3*payload-1]); err != nil {
				t.Fatal(err)
			}
			rawA, err := peerA.SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var oobErr error
			rawA.Control(func(fd uintptr) { oobErr = unix.Sendto(int(fd), []byte{0xEE}, unix.MSG_OOB, nil) })
			if oobErr != nil {
				t.Skipf("no AF_UNIX out-of-band data here: %v", oobErr)
			}
			if n, _ := sockio.Queued(fdA); n != 3*payload {
				t.Skipf("FIONREAD reports %d bytes, not the out-of-band byte too", n)
			}
			a := adopt(w, fdA, "A")
			moved, err := w.poll()
			if err != nil || moved != 2 {
				t.Fatalf("poll moved %d (%v), want 2", moved, err)
			}
			if a.fd != -1 {
				t.Fatal("the connection that read short is still open")
			}
			readAcks(t, peerA, 2) // flushed before the drop
			if !r.HasSpace() {
				t.Fatal("the ring has no slot for the next sample")
			}

			// The next connection's samples fill the slots given back first.
			fdB, peerB := socketPair(t)
			if _, err := peerB.Write(samples(2, 0, 8)); err != nil {
				t.Fatal(err)
			}
			adopt(w, fdB, "B")
			if moved, err := w.poll(); err != nil || moved != 8 {
				t.Fatalf("poll moved %d (%v), want 8", moved, err)
			}
			readAcks(t, peerB, 8)
			var got []string
			for _, s := range nextBatch(t, r) {
				src, seq := decode(t, s)
				got = append(got, fmt.Sprintf("%d.%d", src, seq))
			}
			wantOrder := map[int]string{
				0: "[1.0 1.1 2.0 2.1 2.2 2.3 2.4 2.5]",
				5: "[0.0 0.1 0.2 1.0 1.1 2.0 2.1 2.2]",
			}[earlier]
			if fmt.Sprint(got) != wantOrder {
				t.Fatalf("first batch %v, want %s", got, wantOrder)
			}
		})
	}
}

// TestBacklogIsFair queues more than a turn's worth of samples on one
// connection and checks that it goes on the backlog after turnSamples,
// while another connection on the same worker is served between its turns.
func TestBacklogIsFair(t *testing.T) {
	const total = 2*turnSamples + 452
	r := newRing(t, turnSamples, 4)
	w := newBareWorker(t, r)

	fdA, peerA := socketPair(t)
	fdB, peerB := socketPair(t)
	go peerA.Write(samples(1, 0, total))
	eventually(t, "A's samples queued", func() bool {
		n, _ := sockio.Queued(fdA)
		return n == total*payload
	})
	if _, err := peerB.Write(sample(2, 0)); err != nil {
		t.Fatal(err)
	}
	a := adopt(w, fdA, "A")
	adopt(w, fdB, "B")

	// One turn each: A's ends at turnSamples and goes on the backlog.
	moved, err := w.poll()
	if err != nil || moved != turnSamples+1 {
		t.Fatalf("first poll moved %d (%v), want %d", moved, err, turnSamples+1)
	}
	if !a.inBacklog || len(w.backlog) != 1 || w.backlog[0] != a {
		t.Fatalf("A not (alone) on the backlog: %v", w.backlog)
	}
	if !w.hasWork() {
		t.Fatal("a worker with a backlog reports no work")
	}
	readAcks(t, peerB, 1)

	// B sends again while A is on the backlog: it is served in the same
	// round as A's second turn.
	if _, err := peerB.Write(sample(2, 1)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "B's sample queued", func() bool {
		n, _ := sockio.Queued(fdB)
		return n == payload
	})
	if moved, err := w.poll(); err != nil || moved != turnSamples+1 {
		t.Fatalf("second poll moved %d (%v), want %d", moved, err, turnSamples+1)
	}
	readAcks(t, peerB, 1)
	for i := 0; i < 10 && a.inBacklog; i++ {
		if _, err := w.poll(); err != nil {
			t.Fatal(err)
		}
	}
	if a.inBacklog || len(w.backlog) != 0 {
		t.Fatal("the backlog did not drain")
	}
	readAcks(t, peerA, total)

	// A's samples in order; B's first at the end of A's first turn at the
	// latest, its second right after A's second turn.
	nextA := 0
	for pos := range uint64(total + 2) {
		src, seq := decode(t, slotSample(r, pos))
		switch {
		case src == 1 && seq == nextA:
			nextA++
		case src == 2 && seq == 0 && pos <= turnSamples:
		case src == 2 && seq == 1 && pos == 2*turnSamples+1:
		default:
			t.Fatalf("slot %d holds sample %d of source %d", pos, seq, src)
		}
	}
}

// TestBacklogDrainsOnItsOwn has the running worker serve a connection that
// sent several turns' worth at once: edge-triggered epoll reports it once,
// and the backlog must bring it back until everything is delivered.
func TestBacklogDrainsOnItsOwn(t *testing.T) {
	const total = 3 * turnSamples
	r := newRing(t, turnSamples, 4)
	p := newPool(t, r, 1, nil)
	fd, peer := socketPair(t)
	go peer.Write(samples(4, 0, total))
	if err := p.addConn(fd, true, false, "peer", nil); err != nil {
		t.Fatal(err)
	}
	for b := range 3 {
		for i, s := range nextBatch(t, r) {
			if !bytes.Equal(s, sample(4, b*turnSamples+i)) {
				t.Fatalf("batch %d slot %d: %x", b, i, s)
			}
		}
	}
	readAcks(t, peer, total)
}
