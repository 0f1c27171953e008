package loadgen

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/seed-a9ef92a1/echo/bench/integrity"
	"github.com/seed-a9ef92a1/echo/wire"
)

// Attack is one kind of hostile connection tried against a live server,
// and what each attempt saw the server do.
type Attack struct {
	Kind  string
	Tried int
	// Outcomes counts attempts by what the attacker observed.
	Outcomes map[string]int
	// Foreign is the number of whole samples' worth of junk the server
	// acknowledged: the protocol cannot tell them from samples, so they
	// reach the learner as this connection's own (integrity.Report.Foreign).
	Foreign uint64
}

func (a *Attack) String() string {
	var parts []string
	for o, n := range a.Outcomes {
		parts = append(parts, fmt.Sprintf("%d %s", n, o))
	}
	sort.Strings(parts)
	return fmt.Sprintf("%s: %d tried: %s", a.Kind, a.Tried, strings.Join(parts, "; "))
}

// attempts runs n attempts of one attack, at most par at a time, and
// tallies their outcomes.
func attempts(ctx context.Context, kind string, n, par int, one func(ctx context.Context, i int) (outcome string, foreign uint64)) *Attack {
	a := &Attack{Kind: kind, Tried: n, Outcomes: map[string]int{}}
	var (
		mu      sync.Mutex
		wg      sync.WaitGroup
		foreign atomic.Uint64
	)
	sem := make(chan struct{}, par)
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			o, f := one(ctx, i)
			foreign.Add(f)
			mu.Lock()
			a.Outcomes[o]++
			mu.Unlock()
		})
	}
	wg.Wait()
	a.Foreign = foreign.Load()
	return a
}

// Target is the server under attack.
type Target struct {
	Dial func(ctx context.Context) (net.Conn, error)
	// Example is the samples' example tree; Payload their size.
	Example any
	Payload int
	// Secret is the server's shared secret, nil if it has none.
	Secret []byte
	// AuthTimeout is the server's, when it has a secret.
	AuthTimeout time.Duration
}

// Refusals is a slog.Handler that counts a server's refusal records
// (WithLogger) by reason, to check that each refusal is logged once.
type Refusals struct {
	mu      sync.Mutex
	reasons map[string]int
}

// NewRefusals returns an empty count.
func NewRefusals() *Refusals { return &Refusals{reasons: map[string]int{}} }

func (r *Refusals) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (r *Refusals) WithAttrs([]slog.Attr) slog.Handler           { return r }
func (r *Refusals) WithGroup(string) slog.Handler                { return r }

// Handle counts rec if it is a refusal.
func (r *Refusals) Handle(_ context.Context, rec slog.Record) error {
	if rec.Message != "echo: connection refused" {
		return nil
	}
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key == "reason" {
			r.mu.Lock()
			r.reasons[a.Value.String()]++
			r.mu.Unlock()
		}
		return true
	})
	return nil
}

// Count returns the refusals logged with reason.
func (r *Refusals) Count(reason string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reasons[reason]
}

func (r *Refusals) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var parts []string
	for k, n := range r.reasons {
		parts = append(parts, fmt.Sprintf("%d %q", n, k))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// Outcomes, as the attacker sees them.
const (
	OutAckedWhole   = "acked exactly its whole samples, partial tail dropped"
	OutHeld         = "held open, harmless, until it left"
	OutClosedEarly  = "closed by the server (unexpected)"
	OutServedUnread = "served in full, its unread acks owed as a count"
	OutRefused      = "refused at accept, before the handshake"
	OutServed       = "served"
	OutAuthClosed   = "closed after its answer, nothing acked"
	OutAuthTimeout  = "closed at the authentication timeout"
	OutError        = "dial or read error"
)

// handshake reads the server's opening bytes: the challenge when it has a
// secret, the handshake otherwise.
func (t Target) opening(conn net.Conn) error {
	if t.Secret != nil {
		_, err := io.ReadFull(conn, make([]byte, wire.ChallengeLen))
		return err
	}
	_, err := wire.ReadHandshake(conn, wire.Limits{})
	return err
}

// RandomBytes sends each of n connections random bytes — after the
// handshake, or as the answer to the challenge — then half-closes and
// reads what comes back. Without a secret the server must acknowledge
// exactly the whole samples the bytes make and drop the tail; with one it
// must close the connection having acknowledged nothing.
func RandomBytes(ctx context.Context, t Target, n int) *Attack {
	return attempts(ctx, "random bytes", n, 64, func(ctx context.Context, i int) (string, uint64) {
		conn, err := t.Dial(ctx)
		if err != nil {
			return OutError, 0
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		if err := t.opening(conn); err != nil {
			return OutError, 0
		}
		junk := make([]byte, 1+mrand.IntN(8*t.Payload))
		rand.Read(junk)
		if _, err := conn.Write(junk); err != nil && t.Secret == nil {
			return OutError, 0
		}
		conn.(interface{ CloseWrite() error }).CloseWrite()
		back, err := io.ReadAll(conn)
		if err != nil && !errors.Is(err, syscall.ECONNRESET) {
			return OutError, 0
		}
		if t.Secret != nil {
			if len(back) == 0 {
				return OutAuthClosed, 0
			}
			return fmt.Sprintf("got %d bytes back (unexpected)", len(back)), 0
		}
		whole := len(junk) / t.Payload
		if len(back) == whole && strings.Count(string(back), string([]byte{wire.Ack})) == whole {
			return OutAckedWhole, uint64(whole)
		}
		return fmt.Sprintf("acked %d of %d whole samples (unexpected)", len(back), whole), 0
	})
}

// hold keeps conn open, reading and discarding what the server sends,
// until ctx ends or d passes, then reports whether the server closed it
// meanwhile.
func hold(ctx context.Context, conn net.Conn, d time.Duration) (closedBy bool) {
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, conn)
		done <- err
	}()
	select {
	case <-done:
		return true
	case <-ctx.Done():
	case <-time.After(d):
	}
	conn.SetReadDeadline(time.Unix(1, 0))
	<-done
	return false
}

// HalfOpening reads half of the server's opening bytes (the handshake, or
// the challenge) and, with a secret, sends half an answer; then it goes
// silent for d. Without a secret the server holds it like any idle actor;
// with one it must close it at the authentication timeout.
func HalfOpening(ctx context.Context, t Target, n int, d time.Duration) *Attack {
	return attempts(ctx, "half handshake, then silence", n, n, func(ctx context.Context, i int) (string, uint64) {
		conn, err := t.Dial(ctx)
		if err != nil {
			return OutError, 0
		}
		defer conn.Close()
		half := handshakeLen(t.Example) / 2
		if t.Secret != nil {
			half = wire.ChallengeLen
		}
		if _, err := io.ReadFull(conn, make([]byte, half)); err != nil {
			return OutError, 0
		}
		if t.Secret != nil {
			conn.Write(make([]byte, wire.ResponseLen/2))
		}
		start := time.Now()
		closed := hold(ctx, conn, d)
		switch {
		case !closed && t.Secret == nil:
			return OutHeld, 0
		case closed && t.Secret != nil && time.Since(start) >= t.AuthTimeout/2:
			return OutAuthTimeout, 0
		}
		return OutClosedEarly, 0
	})
}

// WrongSecret answers the challenge with a proof made with another
// secret, then sends samples' worth of bytes. Only for a server with one.
func WrongSecret(ctx context.Context, t Target, n int) *Attack {
	return attempts(ctx, "wrong secret", n, 64, func(ctx context.Context, i int) (string, uint64) {
		conn, err := t.Dial(ctx)
		if err != nil {
			return OutError, 0
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(30 * time.Second))
		ch := make([]byte, wire.ChallengeLen)
		if _, err := io.ReadFull(conn, ch); err != nil {
			return OutError, 0
		}
		server, err := wire.DecodeChallenge(ch)
		if err != nil {
			return OutError, 0
		}
		var mine wire.Nonce
		rand.Read(mine[:])
		wrong := append([]byte("not the secret: "), t.Secret...)
		conn.Write(append(wire.AppendResponse(nil, wrong, &server, &mine), make([]byte, 4*t.Payload)...))
		back, err := io.ReadAll(conn)
		if len(back) == 0 && (err == nil || errors.Is(err, syscall.ECONNRESET)) {
			return OutAuthClosed, 0
		}
		return fmt.Sprintf("got %d bytes back (unexpected)", len(back)), 0
	})
}

// NeverReadsAcks sends samples integrity samples and never reads an
// acknowledgement. The server must serve it like any actor — it owes the
// unread acks as a count, so they pin no memory however many pile up —
// without slowing anyone else. A write that waits longer than stall counts
// as stopped. What it sent is checked like any stream, none of it
// acknowledged.
func NeverReadsAcks(ctx context.Context, t Target, check *integrity.Checker, body, n, samples int, stall time.Duration) *Attack {
	return attempts(ctx, "never reads its acks", n, n, func(ctx context.Context, i int) (string, uint64) {
		conn, err := t.Dial(ctx)
		if err != nil {
			return OutError, 0
		}
		defer conn.Close()
		if err := t.opening(conn); err != nil {
			return OutError, 0
		}
		id := check.StreamID(attackStreams + uint32(i))
		s := integrity.NewSample(body)
		sent := 0
		for sent < samples && ctx.Err() == nil {
			s.Fill(id, uint64(sent))
			conn.SetWriteDeadline(time.Now().Add(stall))
			if _, err := conn.Write(s.Payload); err != nil {
				break
			}
			sent++
		}
		// A write cut by the deadline may have left part of a sample;
		// the reset (the unread acks make the close one anyway) drops it.
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		conn.Close()
		check.Sent(id, uint64(sent), 0)
		if sent < samples {
			return fmt.Sprintf("stalled after %d of %d samples", sent, samples), 0
		}
		return OutServedUnread, 0
	})
}

// attackStreams is the first stream number of attackers that send
// integrity samples, far above any actor's.
const attackStreams = 1 << 31

// Flood opens n connections at once against a server capped at fewer and
// holds them until every one knows its fate: refused at accept (the
// connection ends before the handshake) or served.
func Flood(ctx context.Context, t Target, n int) *Attack {
	var ready sync.WaitGroup
	ready.Add(n)
	release := make(chan struct{})
	go func() { ready.Wait(); close(release) }()
	a := attempts(ctx, "connection flood past MaxConnections", n, n, func(ctx context.Context, i int) (string, uint64) {
		var once sync.Once
		done := func() { once.Do(ready.Done) }
		defer done()
		conn, err := t.Dial(ctx)
		if err != nil {
			return OutError, 0
		}
		defer conn.Close()
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.ReadFull(conn, make([]byte, 1))
		outcome := OutServed
		switch {
		case errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET):
			outcome = OutRefused
		case err != nil:
			outcome = OutError
		}
		done()
		select {
		case <-release: // every attempt knows its fate: let go
		case <-ctx.Done():
		}
		return outcome, 0
	})
	return a
}

// IdleConns opens n connections that read the handshake and then say
// nothing, and returns a function that closes them. Connections that fail
// are counted in the error.
func IdleConns(ctx context.Context, t Target, n int) (closeAll func(), err error) {
	return PartialConns(ctx, t, n, 0)
}

// PartialConns is IdleConns with connections that send the first k bytes
// of a sample before they fall silent.
func PartialConns(ctx context.Context, t Target, n, k int) (closeAll func(), err error) {
	part := make([]byte, k)
	conns := make([]net.Conn, 0, n)
	var mu sync.Mutex
	var failed atomic.Int64
	var first atomic.Value
	var wg sync.WaitGroup
	sem := make(chan struct{}, 128)
	for range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			conn, err := t.Dial(ctx)
			if err == nil {
				conn.SetReadDeadline(time.Now().Add(30 * time.Second))
				if err = t.opening(conn); err == nil && k > 0 {
					_, err = conn.Write(part)
				}
				if err != nil {
					conn.Close()
				}
			}
			if err != nil {
				failed.Add(1)
				first.CompareAndSwap(nil, err)
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
		})
	}
	wg.Wait()
	closeAll = func() {
		for _, c := range conns {
			c.Close()
		}
	}
	if f := failed.Load(); f > 0 {
		return closeAll, fmt.Errorf("loadgen: %d of %d idle connections failed, the first: %v", f, n, first.Load())
	}
	return closeAll, nil
}

// HoldIdle is the body of a process that holds n idle connections to
// addr, for a server that must be shown not to mind them: one process has
// too few descriptors for both ends of 10,000 connections. It opens them,
// reads each handshake, writes "ready" and a newline to ready, then holds
// them until until ends (its parent closes the pipe, or dies).
func HoldIdle(addr string, n int, ready io.Writer, until io.Reader) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t := Target{Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}}
	closeAll, err := IdleConns(ctx, t, n)
	defer closeAll()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(ready, "ready\n"); err != nil {
		return err
	}
	io.Copy(io.Discard, until)
	return nil
}

// SpawnIdle starts cmd, a process running HoldIdle, and waits for it to
// report its connections open. stop closes its stdin and waits for it.
func SpawnIdle(cmd *exec.Cmd) (stop func() error, err error) {
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop = func() error {
		in.Close()
		if err := cmd.Wait(); err != nil {
			return fmt.Errorf("idle holder: %w: %s", err, stderr.String())
		}
		return nil
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if line != "ready\n" {
		return nil, errors.Join(fmt.Errorf("idle holder did not get ready (%q, %v)", line, err), stop())
	}
	return stop, nil
}

// Declare is the version-1 handshake of a server declaring one leaf of
// element size dtype and the given dims, valid or not: what a hostile
// server sends to see what a client sizes by it.
func Declare(dtype uint32, dims ...uint32) []byte {
	b := append([]byte(wire.Magic), wire.Version1)
	b = binary.LittleEndian.AppendUint32(b, 1)
	b = binary.LittleEndian.AppendUint32(b, dtype)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(dims)))
	for _, d := range dims {
		b = binary.LittleEndian.AppendUint32(b, d)
	}
	return b
}
