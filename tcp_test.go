//go:build linux

package echo_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/bench"
	"github.com/seed-a9ef92a1/echo/pytree"
	"github.com/seed-a9ef92a1/echo/wire"
)

// startTCP starts a server for numbered samples listening on loopback.
func startTCP(t testing.TB, batch int, opts ...echo.Option) *echo.Server {
	t.Helper()
	s := newServer(t, batch, append([]echo.Option{echo.WithTCP("127.0.0.1:0")}, opts...)...)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	return s
}

// rawDial connects without the client and checks the handshake, for tests
// that cut the byte stream themselves.
func rawDial(t testing.TB, s *echo.Server) net.Conn {
	t.Helper()
	return rawDialWith(t, s, &net.Dialer{})
}

func rawDialWith(t testing.TB, s *echo.Server, d *net.Dialer) net.Conn {
	t.Helper()
	c, err := d.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(30 * time.Second))
	h, err := wire.ReadHandshake(c, wire.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := h.PayloadSize(wire.Limits{}); int(n) != len(wireBytes(0, 0)) {
		t.Fatalf("handshake payload %d, want %d", n, len(wireBytes(0, 0)))
	}
	return c
}

// readAcks reads n ack bytes from c.
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

// ledger checks delivered samples: each (producer, seq) at most once, and
// per producer in the order sent.
type ledger struct {
	seen map[[2]int]bool
	last map[int]int
}

func newLedger() *ledger { return &ledger{seen: map[[2]int]bool{}, last: map[int]int{}} }

func (l *ledger) take(t testing.TB, smp echo.Sample, batch int) {
	t.Helper()
	for _, r := range checkBatch(t, smp, batch) {
		if l.seen[r] {
			t.Fatalf("sample %v delivered twice", r)
		}
		l.seen[r] = true
		if last, ok := l.last[r[0]]; ok && r[1] <= last {
			t.Fatalf("producer %d: seq %d after %d", r[0], r[1], last)
		}
		l.last[r[0]] = r[1]
	}
}

// expectAll checks that every producer delivered seqs 0..n-1.
func (l *ledger) expectAll(t testing.TB, producers []int, n int) {
	t.Helper()
	for _, p := range producers {
		for seq := range n {
			if !l.seen[[2]int{p, seq}] {
				t.Fatalf("producer %d seq %d never delivered", p, seq)
			}
		}
	}
	if len(l.seen) != len(producers)*n {
		t.Fatalf("%d samples delivered, want %d", len(l.seen), len(producers)*n)
	}
}

// sampleN takes batches until total samples arrived.
func sampleN(t testing.TB, s *echo.Server, l *ledger, total, batch int) {
	t.Helper()
	if total%batch != 0 {
		t.Fatalf("total %d is not a multiple of batch %d", total, batch)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for range total / batch {
		smp, err := s.Sample(ctx)
		if err != nil {
			t.Fatalf("sample after %d of %d: %v", len(l.seen), total, err)
		}
		l.take(t, smp, batch)
	}
}

func TestTCPByteByByte(t *testing.T) {
	s := startTCP(t, 4)
	c := rawDial(t, s)
	for seq := range 4 {
		for _, b := range wireBytes(7, seq) {
			if _, err := c.Write([]byte{b}); err != nil {
				t.Fatal(err)
			}
		}
	}
	readAcks(t, c, 4)
	l := newLedger()
	sampleN(t, s, l, 4, 4)
	l.expectAll(t, []int{7}, 4)
}

// TestTCPSplitAtEveryOffset cuts a stream of two samples at every offset,
// pausing between the pieces so that the server sees each piece alone.
func TestTCPSplitAtEveryOffset(t *testing.T) {
	s := startTCP(t, 2)
	payload := len(wireBytes(0, 0))
	l := newLedger()
	for cut := 1; cut < 2*payload; cut++ {
		c := rawDial(t, s)
		stream := append(wireBytes(cut, 0), wireBytes(cut, 1)...)
		if _, err := c.Write(stream[:cut]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
		if _, err := c.Write(stream[cut:]); err != nil {
			t.Fatal(err)
		}
		readAcks(t, c, 2)
		sampleN(t, s, l, 2, 2)
		c.Close()
	}
	var producers []int
	for cut := 1; cut < 2*payload; cut++ {
		producers = append(producers, cut)
	}
	l.expectAll(t, producers, 2)
}

// sendAll runs n clients, each sending perClient numbered samples and
// waiting for their acks, while the test samples.
func sendAll(t *testing.T, addr string, first, n, perClient int, opts ...echo.ClientOption) <-chan error {
	errc := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			c, err := echo.Dial(ctx, addr, numbered(0, 0), opts...)
			if err != nil {
				errc <- err
				return
			}
			defer c.Close()
			for seq := range perClient {
				if err := c.Send(t.Context(), numbered(first+i, seq)); err != nil {
					errc <- fmt.Errorf("client %d seq %d: %w", first+i, seq, err)
					return
				}
			}
			if err := c.Wait(ctx); err != nil {
				errc <- fmt.Errorf("client %d: wait: %w", first+i, err)
			}
		})
	}
	go func() { wg.Wait(); close(errc) }()
	return errc
}

func drainErrs(t *testing.T, errc <-chan error) {
	t.Helper()
	for err := range errc {
		t.Error(err)
	}
}

// exchange has n clients send per samples each to addr while the test
// samples batches of s, and checks that each arrived exactly once, intact
// and in order per client.
func exchange(t *testing.T, s *echo.Server, addr string, n, per, batch int) {
	t.Helper()
	errc := sendAll(t, addr, 0, n, per)
	l := newLedger()
	sampleN(t, s, l, n*per, batch)
	drainErrs(t, errc)
	producers := make([]int, n)
	for i := range producers {
		producers[i] = i
	}
	l.expectAll(t, producers, per)
}

func TestTCPClientsInterleaved(t *testing.T) {
	for _, n := range []int{2, 64} {
		t.Run(fmt.Sprintf("clients=%d", n), func(t *testing.T) {
			per := 200
			if testing.Short() {
				per = 48 // whole batches of 16 for 2 and 64 clients
			}
			const batch = 16
			s := startTCP(t, batch)
			exchange(t, s, s.Addr().String(), n, per, batch)
		})
	}
}

func TestUnixTransport(t *testing.T) {
	path := filepath.Join(t.TempDir(), "echo.sock")
	s := newServer(t, 8, echo.WithUnix(path))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if got := s.Addr().String(); got != path {
		t.Fatalf("Addr %q, want %q", got, path)
	}
	exchange(t, s, "unix:"+path, 4, 100, 8)
}

func TestTCPThousandConnections(t *testing.T) {
	n, per := 1000, 4
	if testing.Short() {
		n = 200
	}
	const batch = 40
	s := startTCP(t, batch)
	exchange(t, s, s.Addr().String(), n, per, batch)
}

func TestDialSpecMismatch(t *testing.T) {
	s := startTCP(t, 2)
	addr := s.Addr().String()
	wider := numbered(0, 0)
	wider["payload"] = pytree.MustOf(make([]uint8, 14))
	deeper := numbered(0, 0)
	deeper["extra"] = pytree.Scalar(float32(0))
	fewer := numbered(0, 0)
	delete(fewer, "payload")
	wideType := numbered(0, 0)
	wideType["nested"].(map[string]any)["a"] = pytree.Scalar(int64(0))
	for name, tc := range map[string]struct {
		example any
		detail  string
	}{
		"shape":      {wider, "spec mismatch: payload: shape [14], expected [13]"},
		"more":       {deeper, "spec mismatch: <root>: leaf count 6, expected 5"},
		"fewer":      {fewer, "spec mismatch: <root>: leaf count 4, expected 5"},
		"dtype size": {wideType, "spec mismatch: nested/a: dtype int64 (8 bytes), expected a 4-byte dtype"},
	} {
		_, err := echo.Dial(context.Background(), addr, tc.example)
		if !errors.Is(err, echo.ErrSpecMismatch) {
			t.Fatalf("%s: Dial error %v, want ErrSpecMismatch", name, err)
		}
		if !bytes.Contains([]byte(err.Error()), []byte(tc.detail)) {
			t.Fatalf("%s: error %q does not say %q", name, err, tc.detail)
		}
	}
	// The server lost nothing to the refused clients and serves the next.
	errc := sendAll(t, addr, 0, 1, 2)
	l := newLedger()
	sampleN(t, s, l, 2, 2)
	drainErrs(t, errc)
	l.expectAll(t, []int{0}, 2)
}

func TestSendWrongPayloadSendsNothing(t *testing.T) {
	s := startTCP(t, 1)
	c, err := echo.Dial(context.Background(), s.Addr().String(), numbered(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	short := numbered(1, 0)
	short["payload"] = pytree.MustOf(make([]uint8, 12))
	if err := c.Send(t.Context(), short); !errors.Is(err, echo.ErrSpecMismatch) || errors.Is(err, echo.ErrPayloadSize) {
		t.Fatalf("Send of a short sample: %v, want ErrSpecMismatch", err)
	}
	// Same size, another dtype: the wire cannot tell, the client can.
	retyped := numbered(1, 0)
	retyped["nested"].(map[string]any)["a"] = pytree.Scalar(float32(0))
	if err := c.Send(t.Context(), retyped); !errors.Is(err, echo.ErrSpecMismatch) {
		t.Fatalf("Send of a float32 for an int32 leaf: %v, want ErrSpecMismatch", err)
	}
	if err := c.Send(t.Context(), numbered(1, 1)); err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The one batch holds the good sample: had a byte of the refused ones
	// gone out, the stream would be misaligned and the row corrupt.
	l := newLedger()
	sampleN(t, s, l, 1, 1)
	if !l.seen[[2]int{1, 1}] || len(l.seen) != 1 {
		t.Fatalf("delivered %v, want only producer 1 seq 1", l.seen)
	}
}

// TestClientDisconnectAtEveryOffset closes a connection after each prefix
// of a two-sample stream: the whole samples of the prefix are delivered,
// the partial one never.
func TestClientDisconnectAtEveryOffset(t *testing.T) {
	// Room for every whole sample of every prefix (payload + 2 of them).
	s := startTCP(t, 1, echo.WithNumBuffers(128))
	payload := len(wireBytes(0, 0))
	l := newLedger()
	stream := func(p int) []byte { return append(wireBytes(p, 0), wireBytes(p, 1)...) }
	want := 0
	for cut := 0; cut <= 2*payload; cut++ {
		c := rawDial(t, s)
		if _, err := c.Write(stream(cut)[:cut]); err != nil {
			t.Fatal(err)
		}
		whole := cut / payload
		readAcks(t, c, whole)
		c.Close()
		want += whole
	}
	// A sentinel sample on a fresh connection marks the end: everything
	// delivered before it must be whole samples of the prefixes.
	c := rawDial(t, s)
	c.Write(wireBytes(9999, 0))
	readAcks(t, c, 1)
	sampleN(t, s, l, want+1, 1)
	for cut := 0; cut <= 2*payload; cut++ {
		for seq := range 2 {
			if l.seen[[2]int{cut, seq}] != (seq < cut/payload) {
				t.Fatalf("prefix of %d bytes: seq %d delivered = %v", cut, seq, l.seen[[2]int{cut, seq}])
			}
		}
	}
}

// TestServerCloseUnderSendingClients closes the server while clients send:
// each client ends with ErrConnectionClosed, nothing hangs.
func TestServerCloseUnderSendingClients(t *testing.T) {
	s := startTCP(t, 4, echo.WithNumBuffers(2))
	addr := s.Addr().String()
	var clients []*echo.Client
	for range 8 {
		c, err := echo.Dial(context.Background(), addr, numbered(0, 0))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	errc := make(chan error, len(clients))
	for i, c := range clients {
		go func() {
			for seq := 0; ; seq++ {
				if err := c.Send(t.Context(), numbered(i, seq)); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	time.Sleep(20 * time.Millisecond) // the ring fills; senders block
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range clients {
		select {
		case err := <-errc:
			if !errors.Is(err, echo.ErrConnectionClosed) {
				t.Fatalf("Send after server close: %v, want ErrConnectionClosed", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a client is still sending 10 s after the server closed")
		}
	}
	for _, c := range clients {
		if err := c.Wait(context.Background()); err != nil && !errors.Is(err, echo.ErrConnectionClosed) {
			t.Fatalf("Wait after server close: %v", err)
		}
	}
}

func TestClientCloseIsIdempotent(t *testing.T) {
	s := startTCP(t, 1)
	c, err := echo.Dial(context.Background(), s.Addr().String(), numbered(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(t.Context(), numbered(0, 0)); !errors.Is(err, echo.ErrConnectionClosed) {
		t.Fatalf("Send after Close: %v, want ErrConnectionClosed", err)
	}
}

// TestMaxInflightBoundsSend: with the consumer stopped and a one-slab
// ring, a client can have at most max_inflight samples unacknowledged.
func TestMaxInflightBoundsSend(t *testing.T) {
	s := startTCP(t, 1, echo.WithNumBuffers(2))
	c, err := echo.Dial(context.Background(), s.Addr().String(), numbered(0, 0), echo.WithMaxInflight(3))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The ring takes 2 samples; the socket holds the rest, unacked.
	for seq := range 5 {
		if err := c.Send(t.Context(), numbered(0, seq)); err != nil {
			t.Fatal(err)
		}
	}
	sent := make(chan error, 1)
	go func() { sent <- c.Send(t.Context(), numbered(0, 5)) }()
	// Acks for the 2 ring samples free 2 tokens: sends 3 and 4 went, the
	// sixth must wait until the consumer frees a slot.
	deadline := time.Now().Add(10 * time.Second)
	for c.Inflight() != 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := c.Inflight(); got != 3 {
		t.Fatalf("inflight %d, want 3", got)
	}
	select {
	case err := <-sent:
		t.Fatalf("Send past max inflight returned %v without waiting", err)
	case <-time.After(50 * time.Millisecond):
	}
	l := newLedger()
	sampleN(t, s, l, 6, 1)
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	l.expectAll(t, []int{0}, 6)
}

// TestRingFullBackpressureAndResume stops the consumer until every slot
// and socket buffer is full, then drains: every sample exactly once.
func TestRingFullBackpressureAndResume(t *testing.T) {
	const batch, clients, per = 8, 16, 300
	s := startTCP(t, batch, echo.WithNumBuffers(2))
	errc := sendAll(t, s.Addr().String(), 0, clients, per)
	time.Sleep(200 * time.Millisecond)
	l := newLedger()
	smp, err := s.Sample(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if smp.Info.PushBlockedCount == 0 {
		t.Fatal("the ring was full for 200 ms and no worker counted a push block")
	}
	if smp.Info.ActiveConnections != clients {
		t.Fatalf("ActiveConnections %d, want %d", smp.Info.ActiveConnections, clients)
	}
	l.take(t, smp, batch)
	sampleN(t, s, l, clients*per-batch, batch)
	drainErrs(t, errc)
	producers := make([]int, clients)
	for i := range producers {
		producers[i] = i
	}
	l.expectAll(t, producers, per)
}

// TestLargeSampleStaged sends samples bigger than any socket buffer: they
// take the staging path.
func TestLargeSampleStaged(t *testing.T) {
	const size = 12 << 20
	example := map[string]any{
		"id":   pytree.MustOf([]int64{0, 0}),
		"blob": pytree.MustOf(make([]uint8, size)),
	}
	s := newServerFor(t, example, 2, echo.WithTCP("127.0.0.1:0"), echo.WithNumBuffers(2))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	const clients, per = 2, 3
	var wg sync.WaitGroup
	errc := make(chan error, clients)
	for i := range clients {
		wg.Go(func() {
			c, err := echo.Dial(context.Background(), s.Addr().String(), example)
			if err != nil {
				errc <- err
				return
			}
			defer c.Close()
			blob := make([]uint8, size)
			for seq := range per {
				for k := range blob {
					blob[k] = byte(i*101 + seq*13 + k*7)
				}
				err := c.Send(t.Context(), map[string]any{"id": pytree.MustOf([]int64{int64(i), int64(seq)}), "blob": pytree.MustOf(blob)})
				if err != nil {
					errc <- err
					return
				}
			}
			if err := c.Wait(context.Background()); err != nil {
				errc <- err
			}
		})
	}
	seen := map[[2]int]bool{}
	for range clients * per / 2 {
		smp, err := s.Sample(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		tree := smp.Batch.(map[string]any)
		ids, _ := tree["id"].(pytree.Array).Int64()
		blob, _ := tree["blob"].(pytree.Array).Uint8()
		for r := range 2 {
			i, seq := int(ids[2*r]), int(ids[2*r+1])
			for k := 0; k < size; k++ {
				if blob[r*size+k] != byte(i*101+seq*13+k*7) {
					t.Fatalf("client %d seq %d: byte %d corrupted", i, seq, k)
				}
			}
			if seen[[2]int{i, seq}] {
				t.Fatalf("client %d seq %d twice", i, seq)
			}
			seen[[2]int{i, seq}] = true
		}
	}
	wg.Wait()
	close(errc)
	drainErrs(t, errc)
	if len(seen) != clients*per {
		t.Fatalf("%d samples, want %d", len(seen), clients*per)
	}
}

// TestAcksNotReadDoNotBlock: a client that never reads its acks (and fills
// its receive window with them) must not stop the worker serving others.
func TestAcksNotReadDoNotBlock(t *testing.T) {
	// A peer with a 4 KiB receive buffer and its acks piling up is the one
	// most hurt by a dropped segment (its retransmissions back off for
	// tens of seconds): start once the socket memory earlier tests used
	// is back, so that the kernel drops nothing.
	bench.SettleTCP()
	s := startTCP(t, 16, echo.WithNumDrainers(1))
	// A small receive buffer, set before connecting (set after, it would
	// shrink a window already advertised, and the kernel would drop).
	lazy := rawDialWith(t, s, &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var err error
		rc.Control(func(fd uintptr) { err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return err
	}})
	// Far more acks than the 4 KiB receive buffer and the server's send
	// buffer (tcp.AckSendBuffer) hold, while a consumer keeps the ring
	// moving.
	const lazySamples = 16 * 12000
	go func() {
		var stream []byte
		for seq := range lazySamples {
			stream = append(stream, wireBytes(1, seq)...)
		}
		lazy.Write(stream)
	}()
	done := make(chan struct{})
	l := newLedger()
	go func() {
		defer close(done)
		sampleN(t, s, l, lazySamples, 16)
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("a client that does not read its acks stalled the worker")
	}
	// And a well-behaved client on the same worker still gets through.
	errc := sendAll(t, s.Addr().String(), 2, 1, 16)
	sampleN(t, s, l, 16, 16)
	drainErrs(t, errc)
	for seq := range lazySamples {
		if !l.seen[[2]int{1, seq}] || (seq < 16 && !l.seen[[2]int{2, seq}]) {
			t.Fatalf("seq %d missing", seq)
		}
	}
	if len(l.seen) != lazySamples+16 {
		t.Fatalf("%d samples delivered, want %d", len(l.seen), lazySamples+16)
	}
}

func TestSendBatch(t *testing.T) {
	const batch = 8
	s := startTCP(t, batch, echo.WithNumBuffers(5)) // room for all 40
	c, err := echo.Dial(context.Background(), s.Addr().String(), numbered(0, 0), echo.WithMaxInflight(5))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// 37 samples in calls of 1, 12 (more than max inflight: split into
	// writes of 5) and 24.
	seq := 0
	for _, n := range []int{1, 12, 24} {
		trees := make([]any, n)
		for i := range trees {
			trees[i] = numbered(3, seq)
			seq++
		}
		if err := c.SendBatch(t.Context(), trees); err != nil {
			t.Fatal(err)
		}
	}
	// A bad tree anywhere refuses the whole call.
	bad := numbered(3, seq)
	bad["payload"] = pytree.MustOf(make([]uint8, 2))
	if err := c.SendBatch(t.Context(), []any{numbered(3, seq), bad}); !errors.Is(err, echo.ErrSpecMismatch) || !strings.Contains(err.Error(), "tree 1") {
		t.Fatalf("SendBatch with a short tree: %v, want ErrSpecMismatch naming tree 1", err)
	}
	if err := c.SendBatch(t.Context(), []any{numbered(3, seq), numbered(3, seq+1), numbered(3, seq+2)}); err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	l := newLedger()
	sampleN(t, s, l, 40, batch)
	l.expectAll(t, []int{3}, 40)
}

// TestDialWhileRingFull: a worker waiting for ring space must not keep a
// new actor waiting for its handshake.
func TestDialWhileRingFull(t *testing.T) {
	s := startTCP(t, 1, echo.WithNumBuffers(2), echo.WithNumDrainers(1))
	first, err := echo.Dial(context.Background(), s.Addr().String(), numbered(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	for seq := range 5 { // 2 fill the ring, 3 wait in the socket
		if err := first.Send(t.Context(), numbered(0, seq)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(20 * time.Millisecond) // the worker reaches the full ring
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	second, err := echo.Dial(ctx, s.Addr().String(), numbered(0, 0))
	if err != nil {
		t.Fatalf("Dial while the only worker waits on a full ring: %v", err)
	}
	defer second.Close()
	if err := second.Send(t.Context(), numbered(1, 0)); err != nil {
		t.Fatal(err)
	}
	l := newLedger()
	sampleN(t, s, l, 6, 1)
	for seq := range 5 {
		if !l.seen[[2]int{0, seq}] {
			t.Fatalf("first client's seq %d missing", seq)
		}
	}
	if !l.seen[[2]int{1, 0}] {
		t.Fatal("second client's sample missing")
	}
}

// TestClientsLeavingDuringHandshake: peers that connect and leave before,
// during or right after the handshake cost the server nothing.
func TestClientsLeavingDuringHandshake(t *testing.T) {
	s := startTCP(t, 4)
	for i := range 200 {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		switch i % 3 {
		case 1: // half a handshake read
			c.Read(make([]byte, 3))
		case 2: // a reset instead of a close
			c.(*net.TCPConn).SetLinger(0)
		}
		c.Close()
	}
	errc := sendAll(t, s.Addr().String(), 0, 2, 10)
	l := newLedger()
	sampleN(t, s, l, 16, 4)
	smp, err := s.Sample(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	l.take(t, smp, 4)
	drainErrs(t, errc)
	l.expectAll(t, []int{0, 1}, 10)
	// None of the 200 may go on counting. Their closes reach the workers
	// in their own time, so batches of in-process samples are taken until
	// the count is down to the 2 senders at most.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for seq := 0; smp.Info.ActiveConnections > 2; seq++ {
		for range 4 {
			if err := s.Submit(t.Context(), numbered(9, seq)); err != nil {
				t.Fatal(err)
			}
		}
		next, err := s.Sample(ctx)
		if err != nil {
			t.Fatalf("ActiveConnections %d after 200 peers left, want at most the 2 senders: %v", smp.Info.ActiveConnections, err)
		}
		smp = next
	}
}

// lockedBuffer is an io.Writer safe for the workers and the test at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestConnectionEventsLogged(t *testing.T) {
	var logs lockedBuffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := startTCP(t, 3, echo.WithLogger(logger))
	// A client that delivers 3 samples and leaves cleanly...
	errc := sendAll(t, s.Addr().String(), 0, 1, 3)
	l := newLedger()
	sampleN(t, s, l, 3, 3)
	drainErrs(t, errc)
	// ...and one that leaves in the middle of its first sample.
	c := rawDial(t, s)
	half := wireBytes(1, 0)[:20]
	if _, err := c.Write(half); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	c.Close()
	want := []string{
		`"msg":"echo: connection opened"`,
		`"msg":"echo: connection closed"`, `"reason":"peer closed","samples":3,"partial_bytes_discarded":0`,
		`"samples":0,"partial_bytes_discarded":20`,
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := logs.String()
		missing := ""
		for _, w := range want {
			if !strings.Contains(got, w) {
				missing = w
			}
		}
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("log lacks %s:\n%s", missing, got)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := strings.Count(logs.String(), "connection opened"); n != 2 {
		t.Fatalf("%d connections logged as opened, want 2", n)
	}
}

// TestZeroByteLeafAndFullReadv: an empty leaf takes no iovec, and one
// readv of the most samples it can take must not overrun the iovec array.
func TestZeroByteLeafAndFullReadv(t *testing.T) {
	empty, err := pytree.Zeros(pytree.Float32, 0)
	if err != nil {
		t.Fatal(err)
	}
	example := map[string]any{"a": pytree.MustOf(make([]uint8, 64)), "empty": empty}
	const batch = 1024
	s := newServerFor(t, example, batch, echo.WithTCP("127.0.0.1:0"), echo.WithNumBuffers(2))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	c, err := echo.Dial(context.Background(), s.Addr().String(), example, echo.WithMaxInflight(batch))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	trees := make([]any, batch)
	for i := range trees {
		b := make([]uint8, 64)
		b[0], b[1] = byte(i), byte(i>>8)
		trees[i] = map[string]any{"a": pytree.MustOf(b), "empty": empty}
	}
	if err := c.SendBatch(t.Context(), trees); err != nil { // one writev of all of them
		t.Fatal(err)
	}
	smp, err := s.Sample(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	a := smp.Leaves[0].Bytes()
	for i := range batch {
		if got := int(a[64*i]) | int(a[64*i+1])<<8; got != i {
			t.Fatalf("row %d holds sample %d", i, got)
		}
	}
	if err := c.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestStagedHalfCloseGetsAcks: a client of samples too large for the gate
// that half-closes after sending still gets every ack.
func TestStagedHalfCloseGetsAcks(t *testing.T) {
	const size = 3 << 20 // two do not fit a 4 MiB window: staged
	example := map[string]any{"blob": pytree.MustOf(make([]uint8, size))}
	s := newServerFor(t, example, 1, echo.WithTCP("127.0.0.1:0"), echo.WithNumBuffers(4))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := wire.ReadHandshake(c, wire.Limits{}); err != nil {
		t.Fatal(err)
	}
	stream := make([]byte, 3*size)
	for i := range stream {
		stream[i] = byte(i / size)
	}
	if _, err := c.Write(stream); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	acks, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(acks, []byte{wire.Ack, wire.Ack, wire.Ack}) {
		t.Fatalf("acks %x after a half-close, want 3", acks)
	}
	for k := range 3 {
		smp, err := s.Sample(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if b := smp.Leaves[0].Bytes(); b[0] != byte(k) || b[size-1] != byte(k) {
			t.Fatalf("sample %d holds %d…%d", k, b[0], b[size-1])
		}
	}
}

// TestConcurrentWaits: every goroutine waiting on one client wakes.
func TestConcurrentWaits(t *testing.T) {
	s := startTCP(t, 4)
	var consumer sync.WaitGroup
	consumer.Go(func() {
		for {
			if _, err := s.Sample(context.Background()); err != nil {
				return
			}
		}
	})
	defer func() { s.Close(); consumer.Wait() }()
	c, err := echo.Dial(context.Background(), s.Addr().String(), numbered(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for round := range 50 {
		for seq := range 8 {
			if err := c.Send(t.Context(), numbered(0, round*8+seq)); err != nil {
				t.Fatal(err)
			}
		}
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := c.Wait(ctx); err != nil {
					t.Errorf("round %d: Wait: %v", round, err)
				}
			})
		}
		wg.Wait()
	}
}

func TestMaxConnections(t *testing.T) {
	s := startTCP(t, 1, echo.WithMaxConnections(2), echo.WithNumBuffers(64))
	addr := s.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var kept []*echo.Client
	for range 2 {
		c, err := echo.Dial(ctx, addr, numbered(0, 0))
		if err != nil {
			t.Fatal(err)
		}
		kept = append(kept, c)
	}
	if _, err := echo.Dial(ctx, addr, numbered(0, 0)); err == nil {
		t.Fatal("a third connection got past WithMaxConnections(2)")
	}
	// The two admitted clients are unharmed.
	for i, c := range kept {
		if err := c.Send(t.Context(), numbered(i, 0)); err != nil {
			t.Fatal(err)
		}
		if err := c.Wait(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var info echo.SampleInfo
	for range 2 {
		smp, err := s.Sample(ctx)
		if err != nil {
			t.Fatal(err)
		}
		info = smp.Info
	}
	if info.RefusedConnections != 1 || info.ActiveConnections != 2 {
		t.Fatalf("refused %d, active %d; want 1 and 2", info.RefusedConnections, info.ActiveConnections)
	}
	// Once one leaves, a new one gets in.
	kept[0].Close()
	kept[1].Close()
	for {
		c, err := echo.Dial(ctx, addr, numbered(0, 0))
		if err == nil {
			c.Close()
			break
		}
		if ctx.Err() != nil {
			t.Fatal("no connection admitted after the others left")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRefusalLoggedBeforeClose refuses connection after connection past
// WithMaxConnections and checks, as soon as each peer sees its close, that
// the refusal is already logged: a peer (or a test, or an operator
// counting) never sees a close the server has not yet accounted for.
func TestRefusalLoggedBeforeClose(t *testing.T) {
	var logs lockedBuffer
	s := startTCP(t, 1, echo.WithMaxConnections(1), echo.WithLogger(slog.New(slog.NewJSONHandler(&logs, nil))))
	addr := s.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kept, err := echo.Dial(ctx, addr, numbered(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()
	const refusals = 300
	for i := 1; i <= refusals; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if n, err := io.Copy(io.Discard, c); n != 0 || (err != nil && !isReset(err)) {
			t.Fatalf("refusal %d: read %d bytes, %v; want the connection closed", i, n, err)
		}
		c.Close()
		if got := strings.Count(logs.String(), `"reason":"max connections"`); got != i {
			t.Fatalf("refusal %d seen closed by its peer with %d refusals logged", i, got)
		}
	}
}
