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

// liveOne is one input of FuzzLiveConnection.
func liveOne(t *testing.T, stream []byte, cut uint8) {
	{
		if len(stream) > 64*livePayload {
			stream = stream[:64*livePayload]
		}
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
