package tcp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a9ef92a1/echo/pytree"
	"github.com/seed-a9ef92a1/echo/ringbuf"
	"github.com/seed-a9ef92a1/echo/wire"
)

// Regression tests for inputs a hostile or merely odd peer can send, each of
// which once stalled, wedged or exhausted the learner. Every test goes
// through a real listener, so the acceptor prepares the sockets as it does
// for actors.

// rig is a pool serving one transport, over a ring whose samples are one
// uint8 leaf of payload bytes.
type rig struct {
	t       *testing.T
	pool    *Pool
	ring    *ringbuf.Ring
	payload int
	batch   int
	addr    string // "unix:path" or "host:port"
}

func newRig(t *testing.T, payload, batch int, unixSocket bool, cfg Config, serve ServeConfig) *rig {
	t.Helper()
	spec, err := pytree.SpecOf(pytree.MustOf(make([]uint8, payload)))
	if err != nil {
		t.Fatal(err)
	}
	ring, err := ringbuf.New(ringbuf.Layout{BatchSize: batch, NumSlabs: 2, LeafBytes: []int{payload}})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Ring, cfg.Spec = ring, spec
	if cfg.Workers == 0 {
		cfg.Workers = 2
	}
	pool, err := NewPool(cfg)
	if err != nil {
		ring.Free()
		t.Fatal(err)
	}
	tr := TCP("127.0.0.1:0", 0)
	if unixSocket {
		tr = Unix(filepath.Join(t.TempDir(), "s"))
	}
	l, err := tr.Listen(payload)
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if unixSocket {
		addr = "unix:" + addr
	}
	if err := pool.Serve([]*Listener{l}, serve); err != nil {
		t.Fatal(err)
	}
	r := &rig{t: t, pool: pool, ring: ring, payload: payload, batch: batch, addr: addr}
	t.Cleanup(func() {
		ring.Close()
		if err := pool.Close(); err != nil {
			t.Errorf("pool close: %v", err)
		}
		ring.Free()
	})
	return r
}

// dial connects like an actor and reads the handshake.
func (r *rig) dial() net.Conn {
	r.t.Helper()
	network, address := "tcp", r.addr
	if after, ok := cutPrefix(r.addr, "unix:"); ok {
		network, address = "unix", after
	}
	c, err := net.DialTimeout(network, address, 5*time.Second)
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := wire.ReadHandshake(c, wire.Limits{}); err != nil {
		r.t.Fatalf("handshake: %v", err)
	}
	c.SetReadDeadline(time.Time{})
	return c
}

func cutPrefix(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && s[:len(prefix)] == prefix {
		return s[len(prefix):], true
	}
	return s, false
}

// next waits up to d for the next batch and returns a copy of its bytes.
func (r *rig) next(d time.Duration) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	slab, err := r.ring.Next(ctx)
	if err != nil {
		return nil, err
	}
	return bytes.Clone(r.ring.LeafBlock(slab, 0)), nil
}

// streamSample returns sample i of a stream: every byte tells the sample and its
// offset, so a shifted or spliced sample cannot pass for a whole one.
func streamSample(i, payload int) []byte {
	b := make([]byte, payload)
	for k := range b {
		b[k] = byte(i*7 + k*13 + k>>8)
	}
	return b
}

// wantSamples checks that batch holds samples first, first+1, ... whole.
func (r *rig) wantSamples(batch []byte, first int) {
	r.t.Helper()
	for k := range r.batch {
		got := batch[k*r.payload : (k+1)*r.payload]
		if !bytes.Equal(got, streamSample(first+k, r.payload)) {
			r.t.Fatalf("slot %d does not hold sample %d intact", k, first+k)
		}
	}
}

// sendOOB writes b as urgent (MSG_OOB) data.
func sendOOB(t *testing.T, c net.Conn, b []byte) {
	t.Helper()
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := raw.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, unix.MSG_OOB, nil)
		return serr != unix.EAGAIN
	}); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatalf("send MSG_OOB: %v", serr)
	}
}

// readAcksWithin reads n ack bytes within d.
func readAcksWithin(t *testing.T, c net.Conn, n int, d time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, n)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("reading %d acks: %v", n, err)
	}
	for i, b := range buf {
		if b != wire.Ack {
			t.Fatalf("ack %d is %#x", i, b)
		}
	}
}

// An out-of-band byte in the middle of a sample is a byte of the stream:
// every sample, the one it sits in too, arrives whole and in place, and
// the batch holding them completes. Without SO_OOBINLINE, a Unix socket's
// MSG_OOB byte was counted by FIONREAD and skipped by readv, the short read
// dropped the connection with slots claimed and unfilled, and the batch
// never completed; on TCP the urgent mark stopped FIONREAD and the
// connection was never read again.
func TestOutOfBandByteIsAStreamByte(t *testing.T) {
	for _, tc := range []struct {
		name    string
		unix    bool
		payload int
	}{
		{"unix/gated", true, 64},
		{"tcp/gated", false, 64},
		{"tcp/staged", false, 3 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			batch := 4
			if tc.payload > 1<<20 {
				batch = 2
			}
			r := newRig(t, tc.payload, batch, tc.unix, Config{}, ServeConfig{})
			c := r.dial()
			var stream []byte
			for i := range batch {
				stream = append(stream, streamSample(i, tc.payload)...)
			}
			// Sample 1's byte 30 goes out of band.
			mark := tc.payload + 30
			if _, err := c.Write(stream[:mark]); err != nil {
				t.Fatal(err)
			}
			sendOOB(t, c, stream[mark:mark+1])
			if _, err := c.Write(stream[mark+1:]); err != nil {
				t.Fatal(err)
			}
			got, err := r.next(10 * time.Second)
			if err != nil {
				t.Fatalf("no batch: %v", err)
			}
			r.wantSamples(got, 0)
			readAcksWithin(t, c, batch, 5*time.Second)
		})
	}
}

// A writer that sends gated samples in pieces of 1 to 64 bytes over a Unix
// socket fills the socket's buffer with per-write overhead before one whole
// sample is queued. The reader must not wait for a whole sample then: it
// once did, and the writer waited for space, forever.
func TestUnixTinyWritesDoNotWedgeTheGate(t *testing.T) {
	const payload = 40 << 10
	r := newRig(t, payload, 2, true, Config{}, ServeConfig{})
	c := r.dial()
	if !gatedOnUnix(payload) {
		t.Fatalf("a %d-byte sample is not gated on this host's Unix sockets: the test needs it gated", payload)
	}
	const samples = 4
	errc := make(chan error, 1)
	go func() {
		var stream []byte
		for i := range samples {
			stream = append(stream, streamSample(i, payload)...)
		}
		c.SetWriteDeadline(time.Now().Add(20 * time.Second))
		for off, k := 0, 0; off < len(stream); k++ {
			n := min(1+k%64, len(stream)-off)
			if _, err := c.Write(stream[off : off+n]); err != nil {
				errc <- fmt.Errorf("write at byte %d: %w", off, err)
				return
			}
			off += n
		}
		errc <- nil
	}()
	for b := 0; b < samples/2; b++ {
		got, err := r.next(20 * time.Second)
		if err != nil {
			t.Fatalf("batch %d: %v (the writer is stuck)", b, err)
		}
		r.wantSamples(got, 2*b)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	readAcksWithin(t, c, samples, 5*time.Second)
}

// gatedOnUnix reports whether samples of payload bytes take the gated path
// on a Unix socket of this host's default buffer size.
func gatedOnUnix(payload int) bool {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	gated, err := prepareUnix(fds[0], payload)
	return err == nil && gated
}

// Connections that send nothing cost no staging memory: it is taken when a
// sample's first byte arrives. Buffers allocated at accept once let twenty
// idle connections to a server of 4 MiB samples take 80 MiB of heap.
func TestIdleConnectionsTakeNoStagingMemory(t *testing.T) {
	const payload = 4 << 20
	r := newRig(t, payload, 1, true, Config{}, ServeConfig{})
	before := heapInUse()
	for range 20 {
		r.dial()
	}
	eventually(t, "20 connections served", func() bool { return r.pool.ActiveConnections() == 20 })
	if grew := heapInUse() - before; grew > 2*payload {
		t.Fatalf("20 idle connections took %d MiB of heap, want at most %d", grew>>20, 2*payload>>20)
	}
}

func heapInUse() int {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int(m.HeapInuse)
}

// A peer that stalls mid-sample holds a staging buffer; with a stalled
// peer on every worker and the budget spent on them, an honest actor's
// sample waits for a buffer. The stall timeout bounds that wait: the
// learner gets the honest sample within the timeout (plus scheduling), the
// stalled peers are dropped and counted, and their acks were flushed.
func TestStalledPeersHoldTheLearnerNoLongerThanTheTimeout(t *testing.T) {
	const payload = 3 << 20 // staged on TCP: two do not fit the window
	const timeout = 400 * time.Millisecond
	r := newRig(t, payload, 1, false,
		Config{Workers: 2, StagingBudget: 2 * payload, StallTimeout: timeout}, ServeConfig{})
	// A stalled peer on each worker, each holding a staging buffer.
	for i := range 2 {
		c := r.dial()
		if _, err := c.Write(streamSample(100+i, payload)[:payload/3]); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "both stalled peers holding a buffer", func() bool { return r.pool.Stats().StagingInUse == 2*payload })
	honest := r.dial()
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		_, err := honest.Write(streamSample(0, payload))
		errc <- err
	}()
	got, err := r.next(timeout + 5*time.Second)
	if err != nil {
		t.Fatalf("no batch: %v", err)
	}
	waited := time.Since(start)
	r.wantSamples(got, 0)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	readAcksWithin(t, honest, 1, 5*time.Second)
	if waited > timeout+2*time.Second {
		t.Errorf("the learner waited %v for the honest sample, stall timeout %v", waited, timeout)
	}
	// The second stalled peer, on the other worker, goes at its own
	// deadline, moments later.
	eventually(t, "both stalled peers dropped", func() bool { return r.pool.Stats().Stalled == 2 })
	t.Logf("honest sample after %v (stall timeout %v)", waited, timeout)
}

// However many connections send partial samples at once, the staging
// buffers they hold stay within the budget, and every sample still
// arrives, exactly once and intact, as buffers free up.
func TestStagingBudgetBoundsMemory(t *testing.T) {
	const payload = 1 << 20 // staged on Unix sockets
	const budget = 3 * payload
	const conns = 10
	r := newRig(t, payload, 1, true, Config{Workers: 2, StagingBudget: budget}, ServeConfig{})
	cs := make([]net.Conn, conns)
	for i := range cs {
		cs[i] = r.dial()
	}
	var wg sync.WaitGroup
	errc := make(chan error, conns)
	for i, c := range cs {
		wg.Go(func() {
			b := streamSample(i, payload)
			if _, err := c.Write(b[:payload/2]); err != nil {
				errc <- err
				return
			}
			time.Sleep(20 * time.Millisecond)
			if _, err := c.Write(b[payload/2:]); err != nil {
				errc <- err
			}
		})
	}
	seen := make(map[byte]bool)
	maxHeld := 0
	for range conns {
		got, err := r.next(20 * time.Second)
		if err != nil {
			t.Fatalf("after %d samples: %v", len(seen), err)
		}
		maxHeld = max(maxHeld, r.pool.Stats().StagingHeld)
		// Which sample is it? Byte 0 of sample i is i*7.
		i := int(got[0]) / 7
		if i >= conns || !bytes.Equal(got, streamSample(i, payload)) || seen[got[0]] {
			t.Fatalf("batch is not a whole, new sample (first byte %d)", got[0])
		}
		seen[got[0]] = true
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if maxHeld > budget {
		t.Fatalf("staging held %d bytes, budget %d", maxHeld, budget)
	}
	// The last buffer goes back when its worker next finds the socket
	// empty, which may be just after the learner has the sample.
	eventually(t, "every staging buffer given back", func() bool { return r.pool.Stats().StagingInUse == 0 })
	if st := r.pool.Stats(); st.StagingHeld > budget {
		t.Fatalf("after the run: staging held %d, budget %d", st.StagingHeld, budget)
	}
}

var _ = errors.Is

// A full ring parks the connections whose samples wait for it, not the
// worker: on the same worker, another connection's close is still served
// (its acks flushed, its socket closed) while the learner takes nothing,
// and once the learner takes batches again everything waiting arrives in
// order. A worker that blocked on the full ring served nobody until the
// learner's next release.
func TestFullRingStillServesOtherConnections(t *testing.T) {
	const payload, batch = 64, 4
	r := newRig(t, payload, batch, false, Config{Workers: 1}, ServeConfig{})
	b := r.dial()
	if _, err := b.Write(append(streamSample(0, payload), streamSample(1, payload)...)); err != nil {
		t.Fatal(err)
	}
	readAcksWithin(t, b, 2, 5*time.Second)
	a := r.dial()
	var stream []byte
	for i := 2; i < 22; i++ {
		stream = append(stream, streamSample(i, payload)...)
	}
	if _, err := a.Write(stream); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the ring full", func() bool { return !r.ring.HasSpace() })

	start := time.Now()
	if err := b.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	if rest, err := io.ReadAll(b); err != nil || len(rest) != 0 {
		t.Fatalf("after its close, the peer read %d bytes and %v; want the server's close", len(rest), err)
	}
	t.Logf("a peer's close served in %v while the ring was full", time.Since(start))
	eventually(t, "one connection left", func() bool { return r.pool.ActiveConnections() == 1 })

	// The learner comes back: the 22 samples arrive in order (the last
	// two in a batch still open).
	for k := 0; k+batch <= 22; k += batch {
		got, err := r.next(5 * time.Second)
		if err != nil {
			t.Fatalf("batch at sample %d: %v", k, err)
		}
		r.wantSamples(got, k)
	}
	readAcksWithin(t, a, 20, 5*time.Second)
}
