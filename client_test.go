package echo_test

// The client's tests against fakeServer, on every OS: on macOS and Windows
// there is no Server, and these are the Client's tests there.

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/pytree"
	"github.com/seed-a9ef92a1/echo/wire"
)

// fakeOptions says how a fakeServer treats its connections.
type fakeOptions struct {
	// silent: send the handshake, then never read, so that a client's
	// writes block once the kernel's buffers are full.
	silent bool
	// gated: acknowledge each sample only for a token on fakeServer.acks,
	// so that a client's in-flight tokens run out.
	gated bool
	// discard: count samples without keeping copies (allocation tests).
	discard bool
	// pause: sleep this long before reading each sample.
	pause time.Duration
}

// fakeServer is a portable stand-in for echo's server, written with
// net.Listener only: it sends the version-1 handshake of its example, reads
// whole samples and acknowledges each with one byte (wire.Ack).
type fakeServer struct {
	addr     string
	payload  int
	got      chan []byte   // copies of the samples received, in order
	acks     chan struct{} // tokens for acks, when gated
	received atomic.Int64
	quit     chan struct{} // closed at cleanup
}

// ackByte is a package variable so that writing it allocates nothing.
var ackByte = [1]byte{wire.Ack}

func newFakeServer(t testing.TB, example any, o fakeOptions) *fakeServer {
	t.Helper()
	spec, err := pytree.SpecOf(example)
	if err != nil {
		t.Fatal(err)
	}
	hs := handshakeOf(t, example)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{
		addr:    ln.Addr().String(),
		payload: spec.PayloadBytes(),
		got:     make(chan []byte, 4096),
		acks:    make(chan struct{}, 4096),
		quit:    make(chan struct{}),
	}
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		conns  []net.Conn
		closed bool
	)
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if closed {
				c.Close()
			} else {
				conns = append(conns, c)
				wg.Go(func() { f.serve(c, hs, o) })
			}
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		close(f.quit)
		mu.Lock()
		closed = true
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return f
}

func (f *fakeServer) serve(c net.Conn, hs []byte, o fakeOptions) {
	defer c.Close()
	if _, err := c.Write(hs); err != nil {
		return
	}
	if o.silent {
		<-f.quit
		return
	}
	buf := make([]byte, f.payload)
	for {
		if o.pause > 0 {
			time.Sleep(o.pause)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return // a partial sample is dropped, as echo's server does
		}
		if !o.discard {
			f.got <- bytes.Clone(buf)
		}
		f.received.Add(1)
		if o.gated {
			select {
			case <-f.acks:
			case <-f.quit:
				return
			}
		}
		if _, err := c.Write(ackByte[:]); err != nil {
			return
		}
	}
}

// release lets a gated server acknowledge n more samples.
func (f *fakeServer) release(n int) {
	for range n {
		f.acks <- struct{}{}
	}
}

// expect checks that the next samples received are want, in order, and
// that nothing else follows soon after.
func (f *fakeServer) expect(t testing.TB, want ...[]byte) {
	t.Helper()
	for i, w := range want {
		select {
		case got := <-f.got:
			if !bytes.Equal(got, w) {
				t.Fatalf("sample %d received is not the one sent", i)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("sample %d of %d never arrived", i, len(want))
		}
	}
	select {
	case <-f.got:
		t.Fatalf("a sample arrived after the %d expected", len(want))
	case <-time.After(20 * time.Millisecond):
	}
}

// dialFake connects a client for numbered samples to f, closed at cleanup.
func dialFake(t testing.TB, f *fakeServer, example any, opts ...echo.ClientOption) *echo.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The fake speaks version 1 only: skip the probe and its timeout.
	c, err := echo.Dial(ctx, f.addr, example, append([]echo.ClientOption{echo.WithWireVersion(1)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestClientFallsBackToVersion1: a server that does not answer version
// 2's probe (echo's, or this fake) is dialed again and spoken to in
// version 1, its samples intact; a client that requires version 2 is
// refused.
func TestClientFallsBackToVersion1(t *testing.T) {
	f := newFakeServer(t, numbered(0, 0), fakeOptions{})
	start := time.Now()
	c, err := echo.Dial(t.Context(), f.addr, numbered(0, 0), echo.WithProbeTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Version() != 1 || time.Since(start) < 100*time.Millisecond {
		t.Fatalf("version %d after %v, want 1 after the probe timeout", c.Version(), time.Since(start))
	}
	if err := c.Send(t.Context(), numbered(5, 0)); err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	// The probe's connection carried 8 bytes, not a sample: the fake saw
	// none from it, and the one sample from the second.
	f.expect(t, wireBytes(5, 0))

	for _, opt := range []echo.ClientOption{echo.WithWireVersion(2), echo.WithReconnect(echo.Backoff{})} {
		_, err := echo.Dial(t.Context(), f.addr, numbered(0, 0), echo.WithProbeTimeout(50*time.Millisecond), opt)
		if !errors.Is(err, echo.ErrNoVersion2) {
			t.Errorf("Dial requiring version 2 of a version 1 server: %v, want ErrNoVersion2", err)
		}
	}
	if _, err := echo.Dial(t.Context(), f.addr, numbered(0, 0), echo.WithWireVersion(3)); !errors.Is(err, echo.ErrBadConfig) {
		t.Errorf("WithWireVersion(3): %v, want ErrBadConfig", err)
	}
	if _, err := echo.Dial(t.Context(), f.addr, numbered(0, 0), echo.WithWireVersion(1), echo.WithReconnect(echo.Backoff{})); !errors.Is(err, echo.ErrBadConfig) {
		t.Errorf("version 1 with reconnection: %v, want ErrBadConfig", err)
	}
}

// stillBlocked fails the test if errc yields within a short while.
func stillBlocked(t *testing.T, errc <-chan error, what string) {
	t.Helper()
	select {
	case err := <-errc:
		t.Fatalf("%s returned %v without waiting", what, err)
	case <-time.After(30 * time.Millisecond):
	}
}

// within waits for errc's value, or fails the test after 10 s.
func within(t *testing.T, errc <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-errc:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s still blocked 10 s after its context ended", what)
		return nil
	}
}

// TestClientSendsExactlyOnce: Send and SendBatch deliver every sample once,
// intact and in order; Wait returns once all are acknowledged.
func TestClientSendsExactlyOnce(t *testing.T) {
	f := newFakeServer(t, numbered(0, 0), fakeOptions{})
	c := dialFake(t, f, numbered(0, 0), echo.WithMaxInflight(3))
	var want [][]byte
	for seq := range 5 {
		if err := c.Send(t.Context(), numbered(1, seq)); err != nil {
			t.Fatal(err)
		}
		want = append(want, wireBytes(1, seq))
	}
	trees := make([]any, 7) // more than max inflight: three writes
	for i := range trees {
		trees[i] = numbered(1, 5+i)
		want = append(want, wireBytes(1, 5+i))
	}
	if err := c.SendBatch(t.Context(), trees); err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := c.Inflight(); n != 0 {
		t.Fatalf("inflight %d after Wait", n)
	}
	f.expect(t, want...)
}

// TestClientRefusesMismatchedSamples: samples of another size or structure
// are refused before a byte is written, and the stream stays aligned.
func TestClientRefusesMismatchedSamples(t *testing.T) {
	f := newFakeServer(t, numbered(0, 0), fakeOptions{})
	c := dialFake(t, f, numbered(0, 0))
	short := numbered(1, 0)
	short["payload"] = pytree.MustOf(make([]uint8, 12))
	if err := c.Send(t.Context(), short); !errors.Is(err, echo.ErrSpecMismatch) ||
		err.Error() != "echo: spec mismatch: payload: shape [12], expected [13]" {
		t.Fatalf("Send of a short sample: %v, want ErrSpecMismatch naming payload", err)
	}
	retyped := numbered(1, 0)
	retyped["nested"].(map[string]any)["a"] = pytree.Scalar(float32(0))
	if err := c.Send(t.Context(), retyped); !errors.Is(err, echo.ErrSpecMismatch) {
		t.Fatalf("Send of a float32 for an int32 leaf: %v, want ErrSpecMismatch", err)
	}
	if err := c.SendBatch(t.Context(), []any{numbered(1, 1), short}); !errors.Is(err, echo.ErrSpecMismatch) || !strings.Contains(err.Error(), "tree 1") {
		t.Fatalf("SendBatch with a short tree: %v, want ErrSpecMismatch naming tree 1", err)
	}
	if err := c.Send(t.Context(), numbered(1, 1)); err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	f.expect(t, wireBytes(1, 1))
}

// TestClientDialSpecMismatch: a server that expects other samples is
// refused at Dial, naming the first differing leaf.
func TestClientDialSpecMismatch(t *testing.T) {
	wider := numbered(0, 0)
	wider["payload"] = pytree.MustOf(make([]uint8, 14))
	f := newFakeServer(t, wider, fakeOptions{})
	_, err := echo.Dial(t.Context(), f.addr, numbered(0, 0))
	if !errors.Is(err, echo.ErrSpecMismatch) || !strings.Contains(err.Error(), "payload: shape [13], expected [14]") {
		t.Fatalf("Dial of a server for wider samples: %v, want ErrSpecMismatch naming payload", err)
	}
}

// TestClientCloseAndServerGone: Close is idempotent and ends Send and
// Wait with ErrConnectionClosed; so does a server that goes away.
func TestClientCloseAndServerGone(t *testing.T) {
	f := newFakeServer(t, numbered(0, 0), fakeOptions{gated: true})
	c := dialFake(t, f, numbered(0, 0))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Send(t.Context(), numbered(0, 0)); !errors.Is(err, echo.ErrConnectionClosed) {
		t.Fatalf("Send after Close: %v, want ErrConnectionClosed", err)
	}
	if err := c.SendBatch(t.Context(), []any{numbered(0, 0)}); !errors.Is(err, echo.ErrConnectionClosed) {
		t.Fatalf("SendBatch after Close: %v, want ErrConnectionClosed", err)
	}

	// A server that closes with a sample unacknowledged.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	hs := handshakeOf(t, numbered(0, 0))
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		conn.Write(hs)
		io.ReadFull(conn, make([]byte, len(wireBytes(0, 0))))
		conn.Close()
	}()
	gone, err := echo.Dial(t.Context(), ln.Addr().String(), numbered(0, 0), echo.WithWireVersion(1))
	if err != nil {
		t.Fatal(err)
	}
	defer gone.Close()
	if err := gone.Send(t.Context(), numbered(0, 0)); err != nil {
		t.Fatal(err)
	}
	if err := gone.Wait(t.Context()); !errors.Is(err, echo.ErrConnectionClosed) {
		t.Fatalf("Wait with the server gone: %v, want ErrConnectionClosed", err)
	}
	if err := gone.Send(t.Context(), numbered(0, 1)); !errors.Is(err, echo.ErrConnectionClosed) {
		t.Fatalf("Send with the server gone: %v, want ErrConnectionClosed", err)
	}
}

func handshakeOf(t testing.TB, example any) []byte {
	t.Helper()
	spec, err := pytree.SpecOf(example)
	if err != nil {
		t.Fatal(err)
	}
	h, err := wire.HandshakeOf(spec)
	if err != nil {
		t.Fatal(err)
	}
	b, err := wire.AppendHandshake(nil, h)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSendCancelledBeforeAnyByte: a context done on entry, or while Send
// waits for an in-flight token (the server reads and does not ack), ends
// Send with ctx's error, nothing sent and the connection intact: once the
// acks come, the next samples go out, each exactly once.
func TestSendCancelledBeforeAnyByte(t *testing.T) {
	f := newFakeServer(t, numbered(0, 0), fakeOptions{gated: true})
	c := dialFake(t, f, numbered(0, 0), echo.WithMaxInflight(2))

	done, cancel := context.WithCancel(t.Context())
	cancel()
	if err := c.Send(done, numbered(1, 0)); !errors.Is(err, context.Canceled) || errors.Is(err, echo.ErrConnectionClosed) {
		t.Fatalf("Send with a cancelled context: %v, want context.Canceled alone", err)
	}
	if err := c.SendBatch(done, []any{numbered(1, 0)}); !errors.Is(err, context.Canceled) {
		t.Fatalf("SendBatch with a cancelled context: %v, want context.Canceled", err)
	}
	for seq := range 2 {
		if err := c.Send(t.Context(), numbered(1, seq)); err != nil {
			t.Fatal(err)
		}
	}
	// Max inflight reached, no acks: Send waits for a token.
	short, stop := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer stop()
	if err := c.Send(short, numbered(1, 2)); !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, echo.ErrConnectionClosed) {
		t.Fatalf("Send past max inflight with a deadline: %v, want context.DeadlineExceeded alone", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- c.Send(ctx, numbered(1, 2)) }()
	stillBlocked(t, errc, "Send past max inflight")
	cancel()
	if err := within(t, errc, "Send"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Send waiting for a token, cancelled: %v, want context.Canceled", err)
	}
	if n := c.Inflight(); n != 2 {
		t.Fatalf("inflight %d after the cancelled sends, want 2", n)
	}

	f.release(3)
	if err := c.Send(t.Context(), numbered(1, 2)); err != nil {
		t.Fatalf("Send after the cancellations: %v", err)
	}
	if err := c.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	f.expect(t, wireBytes(1, 0), wireBytes(1, 1), wireBytes(1, 2))
}

// TestSendBatchCancelledWaitingForTokens: SendBatch's writes before the
// cancellation went out whole, the rest not at all, and it says so.
func TestSendBatchCancelledWaitingForTokens(t *testing.T) {
	f := newFakeServer(t, numbered(0, 0), fakeOptions{gated: true})
	c := dialFake(t, f, numbered(0, 0), echo.WithMaxInflight(2))
	trees := make([]any, 5)
	var want [][]byte
	for i := range trees {
		trees[i] = numbered(2, i)
		want = append(want, wireBytes(2, i))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	err := c.SendBatch(ctx, trees)
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, echo.ErrConnectionClosed) || !strings.Contains(err.Error(), "2 of 5 samples sent") {
		t.Fatalf("SendBatch past max inflight with a deadline: %v, want DeadlineExceeded after 2 of 5", err)
	}
	f.release(5)
	if err := c.SendBatch(t.Context(), trees[2:]); err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	f.expect(t, want...)
}

// TestWaitHonoursContext: Wait returns ctx's error while acks are owed,
// and the client goes on.
func TestWaitHonoursContext(t *testing.T) {
	f := newFakeServer(t, numbered(0, 0), fakeOptions{gated: true})
	c := dialFake(t, f, numbered(0, 0))
	if err := c.Send(t.Context(), numbered(0, 0)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	if err := c.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait with acks owed: %v, want DeadlineExceeded", err)
	}
	f.release(1)
	if err := c.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// TestSendCancelledMidWrite: a sample larger than the kernel's buffers, to
// a server that never reads, blocks part-way; when its context ends the
// write is abandoned and the Client ends, since the stream holds a partial
// sample. Later calls say why.
func TestSendCancelledMidWrite(t *testing.T) {
	example := map[string]any{
		"id":   pytree.MustOf([]int64{0}),
		"blob": pytree.MustOf(make([]uint8, 64<<20)),
	}
	for _, tc := range []struct {
		name string
		ctx  func(context.Context) (context.Context, context.CancelFunc)
		want error
	}{
		{"cancel", context.WithCancel, context.Canceled},
		{"deadline", func(ctx context.Context) (context.Context, context.CancelFunc) {
			return context.WithTimeout(ctx, 100*time.Millisecond)
		}, context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeServer(t, example, fakeOptions{silent: true})
			c := dialFake(t, f, example)
			ctx, cancel := tc.ctx(t.Context())
			defer cancel()
			errc := make(chan error, 1)
			go func() { errc <- c.Send(ctx, example) }()
			stillBlocked(t, errc, "Send of 64 MiB to a server that does not read")
			if tc.want == context.Canceled {
				cancel()
			} // else the deadline ends it
			err := within(t, errc, "Send")
			if !errors.Is(err, echo.ErrConnectionClosed) || !errors.Is(err, tc.want) {
				t.Fatalf("Send cancelled mid-write: %v, want ErrConnectionClosed and %v", err, tc.want)
			}
			err = c.Send(t.Context(), example)
			if !errors.Is(err, echo.ErrConnectionClosed) || !strings.Contains(err.Error(), tc.want.Error()) {
				t.Fatalf("Send after a cancelled write: %v, want ErrConnectionClosed naming %q", err, tc.want)
			}
			if err := c.Wait(t.Context()); !errors.Is(err, echo.ErrConnectionClosed) {
				t.Fatalf("Wait after a cancelled write: %v, want ErrConnectionClosed", err)
			}
		})
	}
}

// TestSendSlowServerExactlyOnce: writes that block for longer than the
// client's probe period (a server that pauses before each sample), with a
// cancellable context that does not end, still deliver every sample once.
func TestSendSlowServerExactlyOnce(t *testing.T) {
	example := map[string]any{
		"seq":  pytree.MustOf([]int64{0}),
		"blob": pytree.MustOf(make([]uint8, 8<<20)),
	}
	f := newFakeServer(t, example, fakeOptions{pause: 15 * time.Millisecond})
	c := dialFake(t, f, example, echo.WithMaxInflight(2))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	const n = 6
	var want [][]byte
	blob := make([]uint8, 8<<20)
	for seq := range n {
		for i := range blob {
			blob[i] = byte(seq*7 + i)
		}
		tree := map[string]any{"seq": pytree.MustOf([]int64{int64(seq)}), "blob": pytree.MustOf(blob)}
		if err := c.Send(ctx, tree); err != nil {
			t.Fatal(err)
		}
		leaves, _, _ := pytree.Flatten(tree)
		want = append(want, append(bytes.Clone(leaves[0].Bytes()), leaves[1].Bytes()...))
	}
	if err := c.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	f.expect(t, want...)
}

func TestDialNotAnEchoServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if i == 0 {
				c.Write([]byte("HTTP/1.1 400 Bad Request\r\n\r\n"))
			} else {
				c.Write([]byte("ECHO\x02\x00\x00\x00\x00"))
			}
			c.Close()
		}
	}()
	_, err = echo.Dial(context.Background(), ln.Addr().String(), numbered(0, 0))
	if !errors.Is(err, echo.ErrBadMagic) {
		t.Fatalf("Dial of an HTTP server: %v, want ErrBadMagic", err)
	}
	_, err = echo.Dial(context.Background(), ln.Addr().String(), numbered(0, 0))
	if !errors.Is(err, echo.ErrVersion) {
		t.Fatalf("Dial of a version-2 server: %v, want ErrVersion", err)
	}
}

func TestDialHonoursContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			io.Copy(io.Discard, c) // never sends a handshake
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = echo.Dial(ctx, ln.Addr().String(), numbered(0, 0))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial against a silent server: %v, want DeadlineExceeded", err)
	}
}

// TestNewClientOverAnyConn: NewClient takes a net.Conn that is not a
// socket (net.Pipe), writing leaf by leaf.
func TestNewClientOverAnyConn(t *testing.T) {
	cli, srv := net.Pipe()
	defer srv.Close()
	hs := handshakeOf(t, numbered(0, 0))
	got := make(chan []byte, 1)
	go func() {
		srv.Write(hs)
		buf := make([]byte, len(wireBytes(0, 0)))
		if _, err := io.ReadFull(srv, buf); err != nil {
			close(got)
			return
		}
		got <- buf
		srv.Write(ackByte[:])
	}()
	c, err := echo.NewClient(t.Context(), cli, numbered(0, 0), echo.WithWireVersion(1))
	if err != nil {
		cli.Close()
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Send(t.Context(), numbered(4, 2)); err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, wireBytes(4, 2)) {
		t.Fatalf("received %x, want %x", b, wireBytes(4, 2))
	}
}
