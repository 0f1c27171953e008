//go:build linux

package echo_test

import (
	"context"
	"errors"
	"math"
	"net"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/bench/loadgen"
	"github.com/seed-a9ef92a1/echo/pytree"
	"github.com/seed-a9ef92a1/echo/wire"
)

func TestMaxPayloadBytes(t *testing.T) {
	example := map[string]any{"x": pytree.MustOf(make([]float32, 250))} // 1000 bytes
	if _, err := echo.NewServer(example, 4, echo.WithMaxPayloadBytes(999)); !errors.Is(err, echo.ErrBadExample) {
		t.Fatalf("1000-byte samples, 999 allowed: %v, want ErrBadExample", err)
	}
	if _, err := echo.NewServer(example, 4, echo.WithMaxPayloadBytes(0)); !errors.Is(err, echo.ErrBadConfig) {
		t.Fatalf("max payload 0: %v, want ErrBadConfig", err)
	}
	s, err := echo.NewServer(example, 4, echo.WithMaxPayloadBytes(1000))
	if err != nil {
		t.Fatalf("1000-byte samples, 1000 allowed: %v", err)
	}
	s.Close()
}

// hostileServer answers every connection with handshake and keeps it open
// until the test ends.
func hostileServer(t *testing.T, handshake []byte) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			c.Write(handshake)
		}
	}()
	return ln.Addr().String()
}

// TestDialRefusesHostileShapes: a server that declares a shape whose size
// overflows, or exceeds the client's limit, is refused at once, before the
// client sizes anything by it.
func TestDialRefusesHostileShapes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name string
		hs   []byte
		opts []echo.ClientOption
	}{
		{"overflows int64", loadgen.Declare(8, math.MaxUint32, math.MaxUint32, math.MaxUint32), nil},
		{"2 GiB sample", loadgen.Declare(8, 1<<28), nil},
		{"over the client's limit", loadgen.Declare(4, 1000), []echo.ClientOption{echo.WithHandshakeLimits(wire.Limits{MaxPayload: 3999})}},
		{"65 dims", loadgen.Declare(1, make([]uint32, 65)...), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := hostileServer(t, tc.hs)
			c, err := echo.Dial(ctx, addr, numbered(0, 0), tc.opts...)
			if err == nil {
				c.Close()
			}
			if !errors.Is(err, wire.ErrLimit) {
				t.Fatalf("Dial: %v, want wire.ErrLimit", err)
			}
		})
	}
}
