//go:build linux

package echo_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/wire"
)

var (
	secret      = []byte("0123456789abcdef0123456789abcdef")
	otherSecret = []byte("fedcba9876543210fedcba9876543210")
)

func TestAuthenticatedClientDelivers(t *testing.T) {
	s := startTCP(t, 4, echo.WithSharedSecret(secret))
	errc := sendAll(t, s.Addr().String(), 0, 2, 4, echo.WithClientSecret(secret))
	l := newLedger()
	sampleN(t, s, l, 8, 4)
	drainErrs(t, errc)
	l.expectAll(t, []int{0, 1}, 4)
}

func TestAuthClientErrors(t *testing.T) {
	authed := startTCP(t, 4, echo.WithSharedSecret(secret))
	open := startTCP(t, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name string
		s    *echo.Server
		opts []echo.ClientOption
		want error
	}{
		{"no secret", authed, nil, echo.ErrAuthRequired},
		{"wrong secret", authed, []echo.ClientOption{echo.WithClientSecret(otherSecret)}, echo.ErrAuth},
		{"server does not ask", open, []echo.ClientOption{echo.WithClientSecret(secret)}, echo.ErrAuth},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := echo.Dial(ctx, tc.s.Addr().String(), numbered(0, 0), tc.opts...)
			if err == nil {
				c.Close()
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Dial: %v, want %v", err, tc.want)
			}
		})
	}
}

func TestSharedSecretTooShort(t *testing.T) {
	_, err := echo.NewServer(numbered(0, 0), 4, echo.WithSharedSecret([]byte("short")))
	if !errors.Is(err, echo.ErrBadConfig) {
		t.Fatalf("NewServer: %v, want ErrBadConfig", err)
	}
}

// challenged dials s and reads its challenge.
func challenged(t *testing.T, s *echo.Server) (net.Conn, wire.Nonce) {
	t.Helper()
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, wire.ChallengeLen)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	nonce, err := wire.DecodeChallenge(buf)
	if err != nil {
		t.Fatal(err)
	}
	return c, nonce
}

// expectRefused checks that the server closes c without sending anything.
func expectRefused(t *testing.T, c net.Conn) {
	t.Helper()
	n, err := io.Copy(io.Discard, c)
	if n != 0 || (err != nil && !isReset(err)) {
		t.Fatalf("read %d bytes, %v; want the connection closed", n, err)
	}
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && strings.Contains(op.Err.Error(), "reset")
}

// TestAuthRefusesBeforeAnySlot attacks an authenticating server in every
// way a peer without the secret can, each attack followed by samples'
// worth of bytes, then checks that the first batch holds only the honest
// client's samples: no byte of theirs reached the ring. Each refusal is
// counted and logged once, with its reason.
func TestAuthRefusesBeforeAnySlot(t *testing.T) {
	var logs lockedBuffer
	logger := slog.New(slog.NewJSONHandler(&logs, nil))
	const timeout = 300 * time.Millisecond
	s := startTCP(t, 4, echo.WithSharedSecret(secret), echo.WithAuthTimeout(timeout), echo.WithLogger(logger))
	junk := bytes.Repeat(wireBytes(9, 0), 8)

	// A wrong proof.
	c, nonce := challenged(t, s)
	var mine wire.Nonce
	rand.Read(mine[:])
	c.Write(append(wire.AppendResponse(nil, otherSecret, &nonce, &mine), junk...))
	expectRefused(t, c)

	// Random bytes.
	c, _ = challenged(t, s)
	noise := make([]byte, 4096)
	rand.Read(noise)
	c.Write(noise)
	expectRefused(t, c)

	// A right response replayed on another connection.
	c1, n1 := challenged(t, s)
	resp := wire.AppendResponse(nil, secret, &n1, &mine)
	c2, _ := challenged(t, s)
	c2.Write(append(resp, junk...))
	expectRefused(t, c2)
	c1.Close()

	// Half a response, then silence: refused at the timeout.
	c, _ = challenged(t, s)
	start := time.Now()
	c.Write(resp[:wire.ResponseLen/2])
	expectRefused(t, c)
	if waited := time.Since(start); waited < timeout/2 {
		t.Fatalf("a silent peer was dropped after %v, before the %v timeout", waited, timeout)
	}

	// An echo version-1 peer that ignores the challenge and sends samples.
	c, _ = challenged(t, s)
	c.Write(junk)
	expectRefused(t, c)

	// Then an honest client: the first batch is its samples, nothing else.
	errc := sendAll(t, s.Addr().String(), 0, 1, 4, echo.WithClientSecret(secret))
	l := newLedger()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	smp, err := s.Sample(ctx)
	if err != nil {
		t.Fatal(err)
	}
	l.take(t, smp, 4)
	drainErrs(t, errc)
	l.expectAll(t, []int{0}, 4)
	// c1 left during authentication: six refusals in all.
	if smp.Info.AuthFailures != 6 || smp.Info.RefusedConnections != 6 {
		t.Errorf("AuthFailures %d, RefusedConnections %d; want 6 and 6", smp.Info.AuthFailures, smp.Info.RefusedConnections)
	}
	got := logs.String()
	for reason, n := range map[string]int{
		`"reason":"authentication failed"`:      4,
		`"reason":"authentication timed out"`:   1,
		`"reason":"left during authentication"`: 1,
	} {
		if c := strings.Count(got, reason); c != n {
			t.Errorf("%s logged %d times, want %d:\n%s", reason, c, n, got)
		}
	}
}
