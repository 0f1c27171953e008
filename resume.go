package echo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/seed-a9ef92a1/echo/pytree"
)

// Backoff is how a reconnecting Client (WithReconnect) waits between its
// attempts: Min after the first failure, doubling up to Max, until GiveUp
// has passed since the connection was lost; the Client then ends. A zero
// field takes DefaultBackoff's.
type Backoff struct {
	Min, Max, GiveUp time.Duration
}

// DefaultBackoff: retry at once and then every 10 ms, 20 ms, … up to 1 s,
// for a minute, the time a server keeps a session (tcp.DefaultSessionTTL).
var DefaultBackoff = Backoff{Min: 10 * time.Millisecond, Max: time.Second, GiveUp: time.Minute}

// WithReconnect makes a lost connection cost the actor nothing: the Client
// dials again with backoff b and resumes its wire version 2 session where
// the server's commits stopped, resending the samples the server does not
// have, so that every sample handed to Send arrives exactly once while the
// server lives. (A server restart loses the session: the Client then ends
// with ErrSessionLost, and samples in flight may or may not have arrived.)
//
// Send then copies each sample into a buffer of max_inflight samples
// before it writes it, from which a reconnection resends. It still
// allocates nothing. A Send whose write fails, or whose context ends with
// part of the sample written, hands the sample over all the same and
// returns nil: the connection is dropped and the reconnection resends it.
//
// It needs version 2 (Dial fails with ErrNoVersion2 against a server that
// does not speak it, and for samples of 8 bytes or fewer, which travel in
// version 1) and Dial (NewClient cannot dial again). Each attempt, and the
// whole reconnection, ends at b.GiveUp after the loss.
func WithReconnect(b Backoff) ClientOption {
	return func(c *clientConfig) { c.reconnect = &b }
}

// WithDialer makes Dial, and a reconnecting Client's later dials, connect
// with dial: through a proxy, from another network namespace. network and
// address are those Dial derived from its address.
func WithDialer(dial func(ctx context.Context, network, address string) (net.Conn, error)) ClientOption {
	return func(c *clientConfig) { c.dialer = dial }
}

// WithWireVersion chooses the wire version: 0 (the default) speaks version
// 2 with a server that answers its probe and version 1 with one that does
// not; 1 speaks echo's version 1 from the start, with no probe; 2 requires
// version 2 and fails with ErrNoVersion2 without it. Samples of 8 bytes or
// fewer always travel in version 1 (the probe must be shorter than a
// sample), so 2 fails for them.
func WithWireVersion(v int) ClientOption { return func(c *clientConfig) { c.version = v } }

// WithProbeTimeout sets how long Dial waits for an answer to version 2's
// probe before it takes the server for a version 1 one (default
// DefaultProbeTimeout).
func WithProbeTimeout(d time.Duration) ClientOption {
	return func(c *clientConfig) { c.probeTimeout = d }
}

// Version returns the wire version the Client speaks: 1 or 2.
func (c *Client) Version() int { return int(c.version) }

// Reconnects returns the number of times a reconnecting Client has
// resumed its session on a new connection.
func (c *Client) Reconnects() int {
	if c.rs == nil {
		return 0
	}
	return int(c.rs.reconnects.Load())
}

// resumer is a reconnecting Client's state.
type resumer struct {
	backoff Backoff
	// redial connects again and resumes the session.
	redial func(ctx context.Context) (net.Conn, negotiation, error)
	// replay holds the last max_inflight samples handed over, sample s at
	// slot s mod max_inflight: every one not yet acknowledged is there.
	replay []byte
	// sent counts the samples handed over (the session's position at the
	// client), under wireMu; acked those acknowledged, by the ack reader
	// alone.
	sent, acked uint64
	reconnects  atomic.Uint64
}

// slot returns the replay bytes of sample s.
func (rs *resumer) slot(s uint64, payload int) []byte {
	i := int(s % uint64(len(rs.replay)/payload))
	return rs.replay[i*payload : (i+1)*payload]
}

// span returns the replay bytes of the k samples from first on: one or two
// runs of the buffer.
func (rs *resumer) span(dst [][]byte, first uint64, k, payload int) [][]byte {
	slots := uint64(len(rs.replay) / payload)
	i := int(first % slots)
	n := min(k, int(slots)-i)
	dst = append(dst, rs.replay[i*payload:(i+n)*payload])
	if n < k {
		dst = append(dst, rs.replay[:(k-n)*payload])
	}
	return dst
}

// sendReplay is send for a reconnecting Client: it copies the k samples
// of leaves into the replay buffer and writes them from there. A write cut
// by ctx at a sample boundary gives back the samples not written, as send
// does; any other failure hands all k over, drops the connection (the ack
// reader reconnects and resends) and returns k, nil.
func (c *Client) sendReplay(ctx context.Context, leaves []pytree.Array, k int) (int, error) {
	rs := c.rs
	c.wireMu.Lock()
	defer c.wireMu.Unlock()
	nl, p := c.spec.NumLeaves(), c.payload
	for i := range k {
		slot := rs.slot(rs.sent+uint64(i), p)
		off := 0
		for _, a := range leaves[i*nl : (i+1)*nl] {
			off += copy(slot[off:], a.Bytes())
		}
	}
	c.vec = rs.span(c.vec[:0], rs.sent, k, p)
	n, cancelled, err := c.writeVec(ctx)
	if err == nil {
		rs.sent += uint64(k)
		return k, nil
	}
	if whole := int(n / int64(p)); cancelled && n%int64(p) == 0 {
		rs.sent += uint64(whole)
		for range k - whole {
			<-c.tokens // ours: taken for samples that were never written
		}
		if c.inflight.Add(int64(whole-k)) == 0 {
			select {
			case c.idle <- struct{}{}:
			default:
			}
		}
		return whole, fmt.Errorf("echo: send: nothing sent: %w", err)
	}
	rs.sent += uint64(k)
	c.connMu.Lock()
	c.conn.Close()
	c.connMu.Unlock()
	return k, nil
}

// reconnect dials again with backoff until a connection resumes the
// session, the backoff gives up, or the Client ends. lost is why the last
// connection ended.
func (c *Client) reconnect(lost error) error {
	rs := c.rs
	delay := rs.backoff.Min
	giveUp := time.Now().Add(rs.backoff.GiveUp)
	for {
		// Each attempt ends at the give-up time, even against a peer that
		// accepts and never answers.
		ctx, cancel := context.WithDeadline(c.life, giveUp)
		conn, neg, err := rs.redial(ctx)
		cancel()
		if err == nil {
			if err = c.resume(conn, neg); err == nil {
				rs.reconnects.Add(1)
				return nil
			}
			conn.Close()
		}
		select {
		case <-c.done:
			return c.closedErr()
		default:
		}
		if errors.Is(err, ErrSessionLost) || errors.Is(err, ErrSpecMismatch) || errors.Is(err, ErrAuth) ||
			errors.Is(err, ErrAuthRequired) || errors.Is(err, ErrBadMagic) || errors.Is(err, ErrVersion) {
			return fmt.Errorf("%w: reconnecting after %v: %w", ErrConnectionClosed, lost, err)
		}
		if time.Now().After(giveUp) {
			return fmt.Errorf("%w: no connection for %v after %v; the last attempt: %w",
				ErrConnectionClosed, rs.backoff.GiveUp, lost, noOffer(err))
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-c.done:
			t.Stop()
			return c.closedErr()
		}
		delay = min(2*delay, rs.backoff.Max)
	}
}

// resume makes conn, whose server holds neg.committed of the session's
// samples, the Client's connection: the samples before that one are
// acknowledged now (their acks were lost with the old connection), and
// those after it are written again from the replay buffer.
func (c *Client) resume(conn net.Conn, neg negotiation) error {
	rs := c.rs
	c.wireMu.Lock()
	defer c.wireMu.Unlock()
	if neg.committed < rs.acked || neg.committed > rs.sent {
		return fmt.Errorf("%w: the server holds %d samples of the session, the client has sent %d and seen %d acknowledged",
			ErrSessionLost, neg.committed, rs.sent, rs.acked)
	}
	if d := neg.committed - rs.acked; d > 0 {
		for range d {
			<-c.tokens
		}
		rs.acked = neg.committed
		if c.inflight.Add(-int64(d)) == 0 {
			select {
			case c.idle <- struct{}{}:
			default:
			}
		}
	}
	c.connMu.Lock()
	select {
	case <-c.done:
		c.connMu.Unlock()
		return c.closedErr()
	default:
	}
	c.conn = conn
	c.connMu.Unlock()
	if k := int(rs.sent - neg.committed); k > 0 {
		bufs := net.Buffers(rs.span(nil, neg.committed, k, c.payload))
		if _, err := bufs.WriteTo(conn); err != nil {
			return fmt.Errorf("resending %d samples: %w", k, err)
		}
	}
	return nil
}
