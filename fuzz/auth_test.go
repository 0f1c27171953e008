package fuzz

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/pytree"
	"github.com/seed-a9ef92a1/echo/wire"
)

var fuzzSecret = []byte("fuzzing-secret-0123456789")

// FuzzDecodeChallenge: any bytes decode to a nonce copied from them or to
// a wire sentinel, and a decoded challenge re-encodes to its input.
func FuzzDecodeChallenge(f *testing.F) {
	f.Add(wire.AppendChallenge(nil, &wire.Nonce{1, 2, 3}))
	f.Add([]byte("EAUT\x02"))
	f.Add([]byte("ECHO\x01\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := wire.DecodeChallenge(b)
		if kind(t, err) != nil {
			return
		}
		if got := wire.AppendChallenge(nil, &n); !bytes.Equal(got, b[:wire.ChallengeLen]) {
			t.Fatalf("re-encoded % x, input % x", got, b[:wire.ChallengeLen])
		}
	})
}

// FuzzVerifyResponse: no response but the one made with the secret for
// this challenge verifies.
func FuzzVerifyResponse(f *testing.F) {
	challenge := wire.Nonce{7, 7, 7}
	f.Add(wire.AppendResponse(nil, fuzzSecret, &challenge, &wire.Nonce{1}))
	f.Add(make([]byte, wire.ResponseLen))
	f.Fuzz(func(t *testing.T, b []byte) {
		client, err := wire.VerifyResponse(b, fuzzSecret, &challenge)
		if err != nil {
			if err != wire.ErrShort && !errors.Is(err, wire.ErrAuth) {
				t.Fatalf("error %v", err)
			}
			return
		}
		if want := wire.AppendResponse(nil, fuzzSecret, &challenge, &client); !bytes.Equal(b[:wire.ResponseLen], want) {
			t.Fatalf("% x verified, but the response for its nonce is % x", b[:wire.ResponseLen], want)
		}
	})
}

// authServer is FuzzLiveAuth's server.
var authServer = sharedServer(echo.WithSharedSecret(fuzzSecret))

// FuzzLiveAuth sends a fuzzed answer to a live server's challenge. The
// server must close the connection without a byte more, and nothing of the
// answer may reach the ring: the next sample handed out is an honest
// client's.
func FuzzLiveAuth(f *testing.F) {
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0xAB}, wire.ResponseLen+3*livePayload))
	f.Add([]byte("ECHO\x01 an echo client that sends samples at once"))
	f.Fuzz(func(t *testing.T, answer []byte) {
		s, err := authServer()
		if err != nil {
			t.Fatal(err)
		}
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		ch := make([]byte, wire.ChallengeLen)
		if _, err := io.ReadFull(c, ch); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(answer); err != nil {
			t.Fatal(err)
		}
		c.(*net.TCPConn).CloseWrite()
		if rest, err := io.ReadAll(c); len(rest) != 0 {
			t.Fatalf("after a fuzzed answer the server sent % x (%v)", rest, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		honest, err := echo.Dial(ctx, s.Addr().String(), liveExample(), echo.WithClientSecret(fuzzSecret))
		if err != nil {
			t.Fatal(err)
		}
		defer honest.Close()
		mark := map[string]any{"a": pytree.MustOf([]int64{-42}), "b": pytree.MustOf([]uint8{1, 2, 3, 4, 5, 6, 7, 8})}
		if err := honest.Send(t.Context(), mark); err != nil {
			t.Fatal(err)
		}
		smp, err := s.Sample(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := smp.Leaves[0].Int64(); got[0] != -42 {
			t.Fatalf("the ring's next sample is not the honest client's: % x", smp.Leaves[0].Bytes())
		}
	})
}
