package tcp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a9ef92a1/echo/internal/poller"
	"github.com/seed-a9ef92a1/echo/pytree"
	"github.com/seed-a9ef92a1/echo/ringbuf"
	"github.com/seed-a9ef92a1/echo/wire"
)

// testSpec is the sample of every test here: a 16-byte leaf and a 1-byte
// leaf, 17 bytes, so that sample boundaries never fall on a word.
func testSpec(t testing.TB) *pytree.Spec {
	t.Helper()
	spec, err := pytree.SpecOf(map[string]any{
		"a": pytree.MustOf(make([]float32, 4)),
		"b": pytree.Scalar(uint8(0)),
	})
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// payload is testSpec's sample size.
const payload = 17

// sample is sample seq of source src as it crosses the wire: the source,
// the sequence number and a checksum of both in leaf a, a tag in leaf b.
func sample(src, seq int) []byte {
	b := make([]byte, payload)
	binary.LittleEndian.PutUint32(b[0:], uint32(src))
	binary.LittleEndian.PutUint64(b[4:], uint64(seq))
	binary.LittleEndian.PutUint32(b[12:], uint32((uint64(src)<<40^uint64(seq))*0x9E3779B97F4A7C15>>32))
	b[16] = byte(seq) ^ byte(src)<<4
	return b
}

// samples is sample(src, from) … sample(src, to-1) back to back.
func samples(src, from, to int) []byte {
	var b []byte
	for seq := from; seq < to; seq++ {
		b = append(b, sample(src, seq)...)
	}
	return b
}

// decode returns the source and sequence number of a sample, failing t if
// its checksum or tag is wrong.
func decode(t testing.TB, b []byte) (src, seq int) {
	t.Helper()
	src = int(binary.LittleEndian.Uint32(b[0:]))
	seq = int(binary.LittleEndian.Uint64(b[4:]))
	if !bytes.Equal(b, sample(src, seq)) {
		t.Fatalf("corrupted sample %x (source %d, seq %d)", b, src, seq)
	}
	return src, seq
}

// newRing maps a ring for testSpec's samples, freed at the end of the test
// (after the pool's cleanup, which is registered later and runs first).
func newRing(t testing.TB, batch, slabs int) *ringbuf.Ring {
	t.Helper()
	r, err := ringbuf.New(ringbuf.Layout{BatchSize: batch, NumSlabs: slabs, LeafBytes: []int{16, 1}, Detailed: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Free(); err != nil {
			t.Errorf("Free: %v", err)
		}
	})
	return r
}

// newPool starts a pool over r; the test's end closes the ring, then the
// pool, and fails the test if Close reports an error.
func newPool(t testing.TB, r *ringbuf.Ring, workers int, log *slog.Logger) *Pool {
	t.Helper()
	p, err := NewPool(Config{Ring: r, Spec: testSpec(t), Workers: workers, Detailed: true, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.Close()
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

// socketPair returns the pool's end of a connected Unix stream socket
// (non-blocking, as the acceptor hands them over) and the peer's end as a
// net.Conn with a deadline, closed at the end of the test.
func socketPair(t testing.TB) (int, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[1]), "peer")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		unix.Close(fds[0])
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return fds[0], c.(*net.UnixConn)
}

// slotSample is the sample at absolute position pos, copied out of the ring.
func slotSample(r *ringbuf.Ring, pos uint64) []byte {
	return append(append([]byte(nil), r.Slot(pos, 0)...), r.Slot(pos, 1)...)
}

// nextBatch waits for the next batch and returns copies of its samples.
func nextBatch(t testing.TB, r *ringbuf.Ring) [][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := r.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	a, b := r.LeafBlock(s, 0), r.LeafBlock(s, 1)
	out := make([][]byte, r.BatchSize())
	for i := range out {
		out[i] = append(append([]byte(nil), a[i*16:(i+1)*16]...), b[i])
	}
	return out
}

// readAcks reads n bytes from c and checks that they are all acks.
func readAcks(t testing.TB, c net.Conn, n int) {
	t.Helper()
	buf := make([]byte, n)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("reading %d acks: %v", n, err)
	}
	if !bytes.Equal(buf, bytes.Repeat([]byte{wire.Ack}, n)) {
		t.Fatalf("acks are %x", buf)
	}
}

// expectEOF reads c to its orderly end and returns what came before it.
func expectEOF(t testing.TB, c net.Conn) []byte {
	t.Helper()
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading to the end: %v (after %d bytes)", err, len(b))
	}
	return b
}

// eventually polls cond until it holds, failing t after 10 s.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still not %s after 10s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// lockedBuffer is a log sink that the test can read while loggers write.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func testLogger(buf *lockedBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestNewPoolRejects(t *testing.T) {
	r := newRing(t, 4, 2)
	if _, err := NewPool(Config{Ring: r, Spec: testSpec(t), Workers: 0}); err == nil {
		t.Error("NewPool with 0 workers succeeded")
	}
	p := newPool(t, r, 1, nil)
	if p.Payload() != payload {
		t.Errorf("Payload() = %d, want %d", p.Payload(), payload)
	}
	if _, err := p.NewQueue(0); err == nil {
		t.Error("NewQueue(0) succeeded")
	}
}

// TestStats checks the pool's snapshot while a worker is stuck on a full
// ring: a connection's whole samples waiting in the kernel and a queue's
// published buffers are counted, and the connections' maximum restarts
// with each snapshot. It also checks that a connection parked on a full
// ring first gets the acks it is owed.
func TestStats(t *testing.T) {
	r := newRing(t, 1, 2)
	p := newPool(t, r, 1, nil)

	fd, peer := socketPair(t)
	if err := p.addConn(fd, true, false, "peer", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := peer.Write(samples(1, 0, 5)); err != nil {
		t.Fatal(err)
	}
	// Two samples fit; the worker owes their acks when it finds the ring
	// full, and writes them before it waits.
	readAcks(t, peer, 2)
	eventually(t, "blocked on the full ring", func() bool { return r.Stats().Blocked > 0 })

	// The worker saw 5 whole samples, then 4, then 3 when the ring filled.
	st := p.Stats()
	if st.Connections != 1 || st.QueueDepthSum != 3 || st.QueueDepthMax != 5 {
		t.Errorf("stats %+v: want 1 connection, depth sum 3 and max 5", st)
	}
	// The window restarted: the 5 is gone. (A worker parked on a full ring
	// still serves the connection's events, so it may have seen the 3
	// again.)
	if st = p.Stats(); st.QueueDepthSum != 3 || st.QueueDepthMax > 3 {
		t.Errorf("second stats %+v: want depth sum 3 and max at most 3 (window restarted)", st)
	}

	q, err := p.NewQueue(4)
	if err != nil {
		t.Fatal(err)
	}
	for seq := range 3 {
		b, err := q.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		copy(b.Data, sample(2, seq))
		q.Publish(b)
	}
	// The worker may have taken one off the queue to wait for the ring:
	// it still counts in the sum.
	eventually(t, "the queue's samples counted", func() bool {
		st := p.Stats()
		return st.Queues == 1 && st.QueueDepthSum == 6 && st.QueueDepthMax >= 2 && st.QueueDepthMax <= 3
	})
	q.Close()

	// Consume: every sample arrives once, each source in order.
	next := map[int]int{}
	for range 8 {
		src, seq := decode(t, nextBatch(t, r)[0])
		if seq != next[src] {
			t.Fatalf("source %d: seq %d, want %d", src, seq, next[src])
		}
		next[src]++
	}
	if next[1] != 5 || next[2] != 3 {
		t.Fatalf("delivered %v, want 5 of source 1 and 3 of source 2", next)
	}
	readAcks(t, peer, 3)
	eventually(t, "the queue pruned", func() bool {
		st := p.Stats()
		return st.Queues == 0 && st.QueueDepthSum == 0
	})
	peer.Close()
	eventually(t, "the connection dropped", func() bool { return p.Stats().Connections == 0 })

	st = p.Stats()
	if st.QueueDwell.Count != 3 || st.Memcpy.Count == 0 || st.DrainRound.Count == 0 {
		t.Errorf("histograms %+v %+v %+v: want 3 dwells, some copies and rounds", st.QueueDwell, st.Memcpy, st.DrainRound)
	}
	p.ResetHistograms()
	if st := p.Stats(); st.QueueDwell.Count != 0 || st.Memcpy.Count != 0 || st.DrainRound.Count != 0 {
		t.Errorf("histograms after reset: %+v", st)
	}
}

// openFDs lists the process's open descriptors.
func openFDs(t testing.TB) map[string]bool {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot list descriptors: %v", err)
	}
	fds := map[string]bool{}
	for _, e := range ents {
		fds[e.Name()] = true
	}
	return fds
}

// TestCloseReleasesEverything runs a pool with every kind of resource (an
// acceptor with a listener and a connection in its prologue, served
// connections, a connection handed over but never adopted, a queue with a
// producer waiting) and checks that Close leaves no goroutine and no
// descriptor behind, and that every peer sees its connection end.
func TestCloseReleasesEverything(t *testing.T) {
	// The runtime's own poller opens descriptors once, at first use.
	if pl, err := poller.New(1); err == nil {
		pl.Close()
	}
	goroutines := runtime.NumGoroutine()
	fds := openFDs(t)

	r, err := ringbuf.New(ringbuf.Layout{BatchSize: 1, NumSlabs: 2, LeafBytes: []int{16, 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Free()
	p, err := NewPool(Config{Ring: r, Spec: testSpec(t), Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	l, err := TCP("127.0.0.1:0", 0).Listen(payload)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Serve([]*Listener{l}, ServeConfig{Secret: bytes.Repeat([]byte("k"), wire.MinSecretLen)}); err != nil {
		t.Fatal(err)
	}
	// In its prologue: challenged, never answering.
	prologue, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer prologue.Close()
	prologue.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(prologue, make([]byte, wire.ChallengeLen)); err != nil {
		t.Fatal(err)
	}

	// Served, on each worker.
	var peers []net.Conn
	for range 2 {
		fd, peer := socketPair(t)
		if err := p.addConn(fd, true, false, "peer", nil); err != nil {
			t.Fatal(err)
		}
		peers = append(peers, peer)
	}
	eventually(t, "2 connections", func() bool { return p.ActiveConnections() == 2 })

	// A producer whose buffer is stuck in its worker, which waits for
	// ring space, and who waits in Acquire for it.
	for range 2 {
		res, err := r.Claim(context.Background(), 1)
		if err != nil {
			t.Fatal(err)
		}
		r.Commit(res)
	}
	q, err := p.NewQueue(1)
	if err != nil {
		t.Fatal(err)
	}
	b, err := q.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	q.Publish(b)
	eventually(t, "a worker blocked on the full ring", func() bool { return r.Stats().Blocked > 0 })
	acquired := make(chan error, 1)
	go func() {
		_, err := q.Acquire(context.Background())
		acquired <- err
	}()

	// Handed to the blocked worker, which cannot adopt it: the queue went
	// to the first worker, and so does a connection when the counts tie.
	if q.worker != p.workers[0] {
		t.Fatal("the queue is not on the first worker")
	}
	fd, late := socketPair(t)
	if err := p.addConn(fd, true, false, "late", nil); err != nil {
		t.Fatal(err)
	}
	peers = append(peers, late)

	r.Close()
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := <-acquired; !errors.Is(err, ErrClosed) {
		t.Errorf("Acquire waiting through Close = %v, want ErrClosed", err)
	}
	if _, err := q.Acquire(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Acquire after Close = %v, want ErrClosed", err)
	}
	for i, c := range append(peers, prologue) {
		if b := expectEOF(t, c); len(b) != 0 {
			t.Errorf("peer %d read %x before its end", i, b)
		}
	}
	if n := p.ActiveConnections(); n != 0 {
		t.Errorf("%d connections after Close", n)
	}
	for _, c := range peers {
		c.Close()
	}
	prologue.Close()

	eventually(t, "back to the goroutines of before", func() bool { return runtime.NumGoroutine() <= goroutines })
	for fd := range openFDs(t) {
		if !fds[fd] {
			target, _ := os.Readlink("/proc/self/fd/" + fd)
			t.Errorf("descriptor %s (%s) left open", fd, target)
		}
	}
}

// TestClosedPoolRefuses checks what a closed pool does with new work: it
// refuses queues and connections, and closes the descriptors it is given.
func TestClosedPoolRefuses(t *testing.T) {
	r := newRing(t, 4, 2)
	p := newPool(t, r, 1, nil)
	r.Close()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.NewQueue(1); !errors.Is(err, ErrClosed) {
		t.Errorf("NewQueue after Close = %v, want ErrClosed", err)
	}
	fd, peer := socketPair(t)
	if err := p.addConn(fd, true, false, "peer", nil); !errors.Is(err, ErrClosed) {
		t.Errorf("addConn after Close = %v, want ErrClosed", err)
	}
	if b := expectEOF(t, peer); len(b) != 0 {
		t.Errorf("peer read %x", b)
	}
}
