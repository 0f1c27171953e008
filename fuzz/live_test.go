package fuzz

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/pytree"
	"github.com/seed-a9ef92a1/echo/wire"
)

// liveExample is the sample of the live-connection target: 16 bytes in two
// leaves, so short inputs still hold several samples.
func liveExample() map[string]any {
	return map[string]any{
		"a": pytree.MustOf([]int64{0}),
		"b": pytree.MustOf(make([]uint8, 8)),
	}
}

const livePayload = 16

// sharedServer returns a function that starts, on its first call, one
// loopback server for liveExample samples, batch 1, and returns it on every
// call: one server shared by every input of a target, so that an input also
// meets the state the inputs before it left behind.
func sharedServer(opts ...echo.Option) func() (*echo.Server, error) {
	return sync.OnceValues(func() (*echo.Server, error) {
		srv, err := echo.NewServer(liveExample(), 1, append([]echo.Option{echo.WithTCP("127.0.0.1:0")}, opts...)...)
		if err == nil {
			err = srv.Start()
		}
		return srv, err
	})
}

// liveServer is FuzzLiveConnection's server.
var liveServer = sharedServer(echo.WithNumBuffers(512))

// FuzzLiveConnection feeds a byte stream, cut into pieces where the input
// says, to a live server connection and half-closes it. Whatever the bytes,
// the server must ack exactly the whole samples they hold, deliver exactly
// those samples, byte for byte and in order, and drop the partial rest.
func FuzzLiveConnection(f *testing.F) {
	f.Add([]byte{}, uint8(0))
	f.Add(bytes.Repeat([]byte{0xAB}, 3*livePayload+5), uint8(7))
	f.Add([]byte("ECHO\x01\x00\x00\x00\x00garbage that is not a sample at all!"), uint8(1))
	f.Fuzz(liveOne)
}

// notProbe returns stream, changed in its first byte if it opens with
// version 2's probe: these targets check version 1 streams, whose first
// sample the server takes for a probe with odds of 2⁻⁶⁴ (docs/protocol.md);
// FuzzLiveHello covers what follows a probe.
func notProbe(stream []byte) []byte {
	if bytes.HasPrefix(stream, []byte(wire.Probe)) {
		stream = bytes.Clone(stream)
		stream[0] ^= 0xff
	}
	return stream
}

// liveOne is one input of FuzzLiveConnection.
func liveOne(t *testing.T, stream []byte, cut uint8) {
	{
		if len(stream) > 64*livePayload {
			stream = stream[:64*livePayload]
		}
		stream = notProbe(stream)
		s, err := liveServer()
		if err != nil {
			t.Fatal(err)
		}
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := wire.ReadHandshake(c, wire.Limits{}); err != nil {
			t.Fatal(err)
		}
		at := 0
		if len(stream) > 0 {
			at = int(cut) % (len(stream) + 1)
		}
		for _, piece := range [][]byte{stream[:at], stream[at:]} {
			if len(piece) == 0 {
				continue
			}
			if _, err := c.Write(piece); err != nil {
				t.Fatal(err)
			}
		}
		c.(*net.TCPConn).CloseWrite()
		wantWholeSamples(t, s, c, stream)
	}
}

// wantWholeSamples reads the acks on c until the server closes its side,
// and checks that the server acked exactly the whole samples of stream and
// delivers exactly those, byte for byte and in order.
func wantWholeSamples(t *testing.T, s *echo.Server, c net.Conn, stream []byte) {
	t.Helper()
	acks, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading acks: %v", err)
	}
	whole := len(stream) / livePayload
	if !bytes.Equal(acks, bytes.Repeat([]byte{wire.Ack}, whole)) {
		t.Fatalf("%d bytes sent over %s: acks %x, want %d", len(stream), c.LocalAddr().Network(), acks, whole)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for k := range whole {
		smp, err := s.Sample(ctx)
		if err != nil {
			t.Fatalf("sample %d of %d: %v", k, whole, err)
		}
		got := append(append([]byte(nil), smp.Leaves[0].Bytes()...), smp.Leaves[1].Bytes()...)
		if want := stream[k*livePayload : (k+1)*livePayload]; !bytes.Equal(got, want) {
			t.Fatalf("sample %d: % x, want % x", k, got, want)
		}
	}
}

// helloServer is FuzzLiveHello's server.
var helloServer = sharedServer()

// FuzzLiveHello sends the probe to a live server, reads the offer, and
// sends the input as the hello (cut after the first valid hello it
// holds), then half-closes. Whatever the bytes, the
// server answers with at most one well-formed reply and then the end of
// the stream (a refusal, or an acceptance followed by nothing more, since
// no sample came), and no byte reaches the ring: the shared server must
// stay empty.
func FuzzLiveHello(f *testing.F) {
	s, err := pytree.SpecOf(liveExample())
	if err != nil {
		f.Fatal(err)
	}
	good, err := wire.AppendHello(nil, wire.Hello{Leaves: wire.LeavesOf(s)})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)-1])
	f.Add([]byte{})
	f.Add([]byte("ECH2\xff\xff\xff\x7f"))
	bad, _ := wire.AppendHello(nil, wire.Hello{Session: wire.SessionID{1}, Leaves: wire.LeavesOf(s)})
	f.Add(bad)
	f.Fuzz(func(t *testing.T, hello []byte) {
		srv, err := helloServer()
		if err != nil {
			t.Fatal(err)
		}
		if _, n, err := wire.DecodeHello(hello, wire.Limits{}); err == nil {
			// Bytes after a valid hello would be samples: not this
			// target's business.
			hello = hello[:n]
		}
		c, err := net.Dial("tcp", srv.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := wire.ReadHandshake(c, wire.Limits{}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(append([]byte(wire.Probe), hello...)); err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil && len(got) < wire.ProbeLen {
			t.Fatalf("reading the answers: %v after % x", err, got)
		}
		if string(got[:wire.ProbeLen]) != wire.Offer {
			t.Fatalf("answer to the probe % x, want the offer", got)
		}
		rest := got[wire.ProbeLen:]
		if len(rest) > 0 {
			if _, n, err := wire.DecodeReply(rest); err != nil || n != len(rest) {
				t.Fatalf("after the offer % x: %v (%d of %d bytes)", rest, err, n, len(rest))
			}
		}
		// Batches are of one sample: any byte in the ring would make one.
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		defer cancel()
		if smp, err := srv.Sample(ctx); err == nil {
			t.Fatalf("a hello reached the ring: %v", smp.Batch)
		}
	})
}
