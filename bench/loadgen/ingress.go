package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a9ef92a1/echo/bench/integrity"
)

// Attacks on the ingress's reading of the stream: odd write patterns and
// stalls that once stalled, wedged or exhausted a server. Each attacker
// sends integrity samples, so what the server makes of them is checked
// like any actor's stream.

// Outcomes of the stream attacks, as the attacker sees them.
const (
	OutAckedIntact = "every sample acked, and (checked by the learner) delivered once, intact"
	OutStallClosed = "its whole samples acked, closed at the stall timeout"
)

// OutOfBand has each of n connections send integrity samples, one every
// every, until ctx ends, with one byte of each (at a random offset) sent
// as out-of-band data (MSG_OOB). The server must take that byte as a byte
// of the stream: every sample acked and delivered intact.
func OutOfBand(ctx context.Context, t Target, check *integrity.Checker, body, n int, every time.Duration, first uint32) *Attack {
	return streamAttack(ctx, "out-of-band byte in every sample", t, check, body, n, every, first,
		func(conn net.Conn, raw syscall.RawConn, p []byte, rng *mrand.Rand) error {
			at := rng.IntN(len(p))
			if _, err := conn.Write(p[:at]); err != nil {
				return err
			}
			if err := SendOOB(raw, p[at]); err != nil {
				return err
			}
			_, err := conn.Write(p[at+1:])
			return err
		})
}

// TinyWrites has each of n connections send integrity samples, one every
// every, until ctx ends, each in writes of 1 to 64 bytes. On a Unix socket
// each write's overhead is charged to the sender's buffer, which once
// filled before a whole gated sample was queued: reader and writer then
// waited on each other for ever.
func TinyWrites(ctx context.Context, t Target, check *integrity.Checker, body, n int, every time.Duration, first uint32) *Attack {
	return streamAttack(ctx, "writes of 1 to 64 bytes", t, check, body, n, every, first,
		func(conn net.Conn, _ syscall.RawConn, p []byte, rng *mrand.Rand) error {
			for len(p) > 0 {
				k := min(1+rng.IntN(64), len(p))
				if _, err := conn.Write(p[:k]); err != nil {
					return err
				}
				p = p[k:]
			}
			return nil
		})
}

// The stream attacks take first, an offset of their stream numbers from
// those of the other attacks in the same run.

// streamAttack runs n connections that each send integrity samples with
// write, one every every, until ctx ends, then read every ack, and report
// to check.
func streamAttack(ctx context.Context, kind string, t Target, check *integrity.Checker, body, n int, every time.Duration, first uint32,
	write func(conn net.Conn, raw syscall.RawConn, p []byte, rng *mrand.Rand) error) *Attack {
	return attempts(ctx, kind, n, n, func(ctx context.Context, i int) (string, uint64) {
		conn, err := t.Dial(context.WithoutCancel(ctx))
		if err != nil {
			return OutError, 0
		}
		defer conn.Close()
		if err := t.opening(conn); err != nil {
			return OutError, 0
		}
		raw, err := conn.(syscall.Conn).SyscallConn()
		if err != nil {
			return OutError, 0
		}
		id := check.StreamID(attackStreams + first + uint32(i))
		rng := mrand.New(mrand.NewPCG(uint64(first), uint64(i)))
		s := integrity.NewSample(body)
		var werr error
		sent := 0
		tick := time.NewTicker(every)
		defer tick.Stop()
		conn.SetWriteDeadline(time.Now().Add(time.Minute))
	send:
		for {
			select {
			case <-ctx.Done():
				break send
			case <-tick.C:
			}
			s.Fill(id, uint64(sent))
			if werr = write(conn, raw, s.Payload, rng); werr != nil {
				break
			}
			sent++
		}
		conn.SetReadDeadline(time.Now().Add(time.Minute))
		got := countAcks(conn, sent)
		check.Sent(id, uint64(sent), uint64(min(got, sent)))
		if werr != nil || got != sent {
			return fmt.Sprintf("sent %d samples (%v), %d acked", sent, werr, got), 0
		}
		return OutAckedIntact, 0
	})
}

// countAcks reads up to want ack bytes and returns how many came.
func countAcks(conn net.Conn, want int) int {
	buf := make([]byte, 512)
	got := 0
	for got < want {
		n, err := conn.Read(buf[:min(len(buf), want-got)])
		got += n
		if err != nil {
			break
		}
	}
	return got
}

// SendOOB sends b as out-of-band data (MSG_OOB) on raw's socket.
func SendOOB(raw syscall.RawConn, b byte) error {
	var serr error
	err := raw.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), []byte{b}, unix.MSG_OOB, nil)
		return serr != unix.EAGAIN
	})
	return errors.Join(err, serr)
}

// Slowloris opens n connections that each send whole integrity samples,
// then part of one, and go silent. The server must ack the whole ones and
// close the connection once the partial sample has not grown for its stall
// timeout (stall), neither much before nor long after.
func Slowloris(ctx context.Context, t Target, check *integrity.Checker, body, n, whole int, stall time.Duration, first uint32) *Attack {
	return attempts(ctx, "slowloris: whole samples, then part of one and silence", n, n, func(ctx context.Context, i int) (string, uint64) {
		conn, err := t.Dial(ctx)
		if err != nil {
			return OutError, 0
		}
		defer conn.Close()
		if err := t.opening(conn); err != nil {
			return OutError, 0
		}
		id := check.StreamID(attackStreams + first + uint32(i))
		s := integrity.NewSample(body)
		for seq := range whole {
			s.Fill(id, uint64(seq))
			if _, err := conn.Write(s.Payload); err != nil {
				return OutError, 0
			}
		}
		s.Fill(id, uint64(whole))
		if _, err := conn.Write(s.Payload[:len(s.Payload)/2]); err != nil {
			return OutError, 0
		}
		silent := time.Now()
		conn.SetReadDeadline(silent.Add(stall + 30*time.Second))
		back, err := io.ReadAll(conn)
		after := time.Since(silent)
		acked := 0
		for _, b := range back {
			if b == 0x01 {
				acked++
			}
		}
		check.Sent(id, uint64(whole), uint64(min(acked, whole)))
		switch {
		case err != nil:
			return fmt.Sprintf("not closed within %v of its silence", stall+30*time.Second), 0
		case acked != whole:
			return fmt.Sprintf("%d of %d whole samples acked", acked, whole), 0
		case after < stall*9/10:
			return fmt.Sprintf("closed after %v of silence, before the stall timeout", after.Round(time.Millisecond)), 0
		}
		return OutStallClosed, 0
	})
}
