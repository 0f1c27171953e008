//go:build linux

package echo_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/pytree"
)

// syncBuffer is a log sink the test reads while the server writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestTypedRefusals: what version 1 cannot see, version 2 refuses at
// connect, naming the leaf to the client and in the server's log at Warn.
func TestTypedRefusals(t *testing.T) {
	f32 := func(n int) pytree.Array { return pytree.MustOf(make([]float32, n)) }
	i32 := func(n int) pytree.Array { return pytree.MustOf(make([]int32, n)) }
	for _, tc := range []struct {
		name           string
		server, client any
		want           string
	}{
		{"float32 actor, int32 learner",
			map[string]any{"obs": i32(4), "reward": pytree.Scalar(float32(0))},
			map[string]any{"obs": f32(4), "reward": pytree.Scalar(float32(0))},
			"obs: dtype float32, expected int32"},
		{"renamed key",
			map[string]any{"obs": f32(4), "reward": pytree.Scalar(float32(0))},
			map[string]any{"obs": f32(4), "rewards": pytree.Scalar(float32(0))},
			"leaf 1 is rewards, expected reward"},
		{"two same-size leaves swapped",
			map[string]any{"a": f32(4), "b": i32(4)},
			map[string]any{"a": i32(4), "b": f32(4)},
			"a: dtype int32, expected float32"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs syncBuffer
			s := newServerFor(t, tc.server, 2, echo.WithTCP("127.0.0.1:0"),
				echo.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
			if err := s.Start(); err != nil {
				t.Fatal(err)
			}
			addr := s.Addr().String()
			_, err := echo.Dial(t.Context(), addr, tc.client)
			want := "echo: spec mismatch: " + tc.want + " (dialing " + addr + ")"
			if err == nil || err.Error() != want || !errors.Is(err, echo.ErrSpecMismatch) {
				t.Fatalf("Dial = %v, want %q", err, want)
			}
			deadline := time.Now().Add(10 * time.Second)
			for !strings.Contains(logs.String(), `level=WARN msg="echo: connection refused"`) ||
				!strings.Contains(logs.String(), `reason="spec mismatch: `+tc.want+`"`) {
				if time.Now().After(deadline) {
					t.Fatalf("the server logged %q", logs.String())
				}
				time.Sleep(time.Millisecond)
			}
			// Version 1 cannot tell: the same client is let in.
			c, err := echo.Dial(t.Context(), addr, tc.client, echo.WithWireVersion(1))
			if tc.name != "renamed key" && err != nil {
				t.Fatalf("version 1 Dial: %v", err)
			}
			if err == nil {
				c.Close()
			}
		})
	}
}

// cutter hands a reconnecting Client its connections and cuts the current
// one on demand, as a network failure or a crashing proxy would.
type cutter struct {
	mu    sync.Mutex
	conn  net.Conn
	rng   *rand.Rand
	cuts  int
	fails bool // dials fail while set
}

func (c *cutter) dial(ctx context.Context, network, address string) (net.Conn, error) {
	c.mu.Lock()
	fails := c.fails
	c.mu.Unlock()
	if fails {
		return nil, errors.New("cutter: dials fail for now")
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.conn = conn
	c.mu.Unlock()
	return conn, nil
}

// cut ends the current connection, with a reset half the time.
func (c *cutter) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rng.IntN(2) == 0 {
		c.conn.(*net.TCPConn).SetLinger(0)
	}
	c.conn.Close()
	c.cuts++
}

// seqOf is the sequence number of a numbered sample's row in a batch.
func seqOf(b []byte) int { return int(binary.LittleEndian.Uint64(b[8:])) }

// TestReconnectDeliversExactlyOnce: a reconnecting Client whose
// connection is cut again and again, between Sends and under them,
// delivers every sample handed to Send exactly once, in order.
func TestReconnectDeliversExactlyOnce(t *testing.T) {
	const batch, total = 16, 4000
	s := newServerFor(t, numbered(0, 0), batch, echo.WithTCP("127.0.0.1:0"))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	cut := &cutter{rng: rand.New(rand.NewPCG(1, 2))}
	c, err := echo.Dial(t.Context(), s.Addr().String(), numbered(0, 0), echo.WithDialer(cut.dial),
		echo.WithReconnect(echo.Backoff{Min: time.Millisecond, Max: 10 * time.Millisecond}), echo.WithMaxInflight(8))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Version() != 2 {
		t.Fatalf("version %d, want 2", c.Version())
	}
	got := make(chan []int, 1)
	go func() {
		var seqs []int
		for len(seqs) < total {
			smp, err := s.Sample(context.Background())
			if err != nil {
				break
			}
			ids := smp.Batch.(map[string]any)["z_id"].(pytree.Array).Bytes()
			for r := range batch {
				seqs = append(seqs, seqOf(ids[r*16:(r+1)*16]))
			}
		}
		got <- seqs
	}()
	var cutters sync.WaitGroup
	for seq := range total {
		if seq%97 == 50 {
			cut.cut()
		}
		if seq%89 == 10 {
			cut.mu.Lock()
			delay := time.Duration(cut.rng.IntN(300)) * time.Microsecond
			cut.mu.Unlock()
			cutters.Go(func() {
				time.Sleep(delay)
				cut.cut()
			})
		}
		if err := c.Send(t.Context(), numbered(0, seq)); err != nil {
			t.Fatalf("Send %d: %v", seq, err)
		}
	}
	cutters.Wait()
	if err := c.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	seqs := <-got
	for i, seq := range seqs {
		if seq != i {
			t.Fatalf("row %d holds sample %d: lost, duplicated or reordered", i, seq)
		}
	}
	if len(seqs) != total || c.Reconnects() == 0 {
		t.Fatalf("%d samples delivered after %d reconnects, want %d after some", len(seqs), c.Reconnects(), total)
	}
	t.Logf("%d cuts, %d reconnects", cut.cuts, c.Reconnects())
}

// TestReconnectLosesAnExpiredSession: a client that cannot reconnect
// before its session expires ends with ErrSessionLost.
func TestReconnectLosesAnExpiredSession(t *testing.T) {
	s := newServerFor(t, numbered(0, 0), 4, echo.WithTCP("127.0.0.1:0"), echo.WithSessionTTL(20*time.Millisecond))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	cut := &cutter{rng: rand.New(rand.NewPCG(3, 4))}
	c, err := echo.Dial(t.Context(), s.Addr().String(), numbered(0, 0), echo.WithDialer(cut.dial),
		echo.WithReconnect(echo.Backoff{Min: 50 * time.Millisecond}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Send(t.Context(), numbered(0, 0)); err != nil {
		t.Fatal(err)
	}
	cut.mu.Lock()
	cut.fails = true
	cut.mu.Unlock()
	cut.cut()
	time.Sleep(100 * time.Millisecond) // the session expires meanwhile
	cut.mu.Lock()
	cut.fails = false
	cut.mu.Unlock()
	// The ack of sample 0 may have come before the cut (Wait then has
	// nothing outstanding), or not: then Wait finds the session gone.
	err = c.Wait(t.Context())
	if err != nil && (!errors.Is(err, echo.ErrConnectionClosed) || !errors.Is(err, echo.ErrSessionLost)) {
		t.Fatalf("Wait = %v, want nil or ErrConnectionClosed for ErrSessionLost", err)
	}
	// Either way, the next sample cannot arrive: Send reports the loss, or,
	// when the reconnection has not failed yet, takes the sample for it to
	// resend (WithReconnect) and Wait reports the loss instead.
	err = c.Send(t.Context(), numbered(0, 1))
	if err == nil {
		err = c.Wait(t.Context())
	}
	if !errors.Is(err, echo.ErrSessionLost) {
		t.Fatalf("Send and Wait after the loss = %v, want ErrSessionLost", err)
	}
}

// TestReconnectNeedsVersion2: samples too short for the probe travel in
// version 1, which has no sessions: a reconnecting Client is refused at
// Dial rather than left to resend what the server holds.
func TestReconnectNeedsVersion2(t *testing.T) {
	small := map[string]any{"x": pytree.Scalar(int32(0))}
	s := newServerFor(t, small, 2, echo.WithTCP("127.0.0.1:0"))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	_, err := echo.Dial(t.Context(), s.Addr().String(), small, echo.WithReconnect(echo.Backoff{}))
	if !errors.Is(err, echo.ErrNoVersion2) {
		t.Fatalf("Dial with reconnection for 4-byte samples: %v, want ErrNoVersion2", err)
	}
	c, err := echo.Dial(t.Context(), s.Addr().String(), small)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Version() != 1 {
		t.Fatalf("version %d for 4-byte samples, want 1", c.Version())
	}
}
