package echo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/seed-a9ef92a1/echo/pytree"
	"github.com/seed-a9ef92a1/echo/wire"
)

// DefaultProbeTimeout is how long Dial waits for a server to answer version
// 2's probe before it takes the server for one that speaks only version 1
// (echo's own) and dials again. A server of this package answers from its
// acceptor as soon as the probe arrives.
const DefaultProbeTimeout = 500 * time.Millisecond

var (
	// ErrNoVersion2 is returned by Dial or NewClient when version 2 is
	// required (WithWireVersion(2), WithReconnect) and the server does not
	// answer its probe: it speaks version 1 only, as echo's server does.
	ErrNoVersion2 = errors.New("echo: the server does not speak wire version 2")
	// ErrSessionLost ends a reconnecting Client whose server no longer
	// knows its session: the session expired (see WithSessionTTL), or the
	// server restarted. Samples that were in flight at the loss may or may
	// not have arrived.
	ErrSessionLost = errors.New("echo: session lost")
)

// replyTimeout bounds the wait for the server's reply to a hello.
const replyTimeout = 10 * time.Second

// negotiation is what the version 2 exchange settled.
type negotiation struct {
	version   uint8
	session   wire.SessionID
	committed uint64 // samples of the session the server holds
}

// errNoOffer: the server did not answer the probe in time.
var errNoOffer = errors.New("no answer to the version 2 probe")

// negotiate runs version 2's exchange on conn, whose version 1 handshake
// has been read and matched, asking to resume session (zero: a new one).
// It returns version 1 without sending anything when the client is set
// to it or a sample is too short to carry the probe. errNoOffer says that
// the server did not answer the probe: conn then holds part of a sample
// and must be closed.
func negotiate(ctx context.Context, conn net.Conn, spec *pytree.Spec, cfg *clientConfig, session wire.SessionID) (negotiation, error) {
	if cfg.version == 1 {
		return negotiation{version: wire.Version1}, nil
	}
	if spec.PayloadBytes() <= wire.ProbeLen {
		if cfg.version == 2 || cfg.reconnect != nil {
			return negotiation{}, fmt.Errorf("%w: samples of %d bytes are too short for its probe (%d bytes)",
				ErrNoVersion2, spec.PayloadBytes(), wire.ProbeLen)
		}
		return negotiation{version: wire.Version1}, nil
	}
	// ctx's end sets a deadline in the past, which fails the read or
	// write under way. A deadline left set would fail the Client's later
	// ones: whoever finds stop false reports ctx's end.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	neg, err := exchange(ctx, conn, spec, cfg, session)
	if !stop() && err == nil {
		err = fmt.Errorf("negotiating version 2: %w", context.Cause(ctx))
	}
	return neg, err
}

// exchange is negotiate's exchange, with ctx's end watched by the caller.
func exchange(ctx context.Context, conn net.Conn, spec *pytree.Spec, cfg *clientConfig, session wire.SessionID) (negotiation, error) {
	if _, err := conn.Write([]byte(wire.Probe)); err != nil {
		return negotiation{}, fmt.Errorf("sending the version 2 probe: %w", err)
	}
	if err := conn.SetReadDeadline(time.Now().Add(cfg.probeTimeout)); err != nil {
		return negotiation{}, err
	}
	var offer [wire.ProbeLen]byte
	if _, err := io.ReadFull(conn, offer[:]); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil {
			return negotiation{}, errNoOffer
		}
		return negotiation{}, fmt.Errorf("reading the answer to the version 2 probe: %w", ctxOr(ctx, err))
	}
	if string(offer[:]) != wire.Offer {
		return negotiation{}, fmt.Errorf("%w: the server answered the version 2 probe with % x", ErrBadMagic, offer)
	}
	// The reply may wait for the session's old connection to end on the
	// server, never for long: a server that sends nothing is not waited
	// for past replyTimeout, whatever ctx allows.
	if err := conn.SetReadDeadline(time.Now().Add(replyTimeout)); err != nil {
		return negotiation{}, err
	}
	hello, err := wire.AppendHello(nil, wire.Hello{Session: session, Leaves: wire.LeavesOf(spec)})
	if err != nil {
		return negotiation{}, fmt.Errorf("%w: %w", ErrBadExample, err)
	}
	if _, err := conn.Write(hello); err != nil {
		return negotiation{}, fmt.Errorf("sending the version 2 hello: %w", ctxOr(ctx, err))
	}
	buf := make([]byte, 0, 64)
	for {
		r, _, err := wire.DecodeReply(buf)
		if err == nil {
			// Cleared before ctx's end set it, which the check finds.
			if err := conn.SetReadDeadline(time.Time{}); err != nil {
				return negotiation{}, err
			}
			if err := ctx.Err(); err != nil {
				return negotiation{}, fmt.Errorf("negotiating version 2: %w", context.Cause(ctx))
			}
			return settle(r, session)
		}
		if err != wire.ErrShort {
			return negotiation{}, fmt.Errorf("the server's version 2 reply: %w", err)
		}
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := conn.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil && n == 0 {
			return negotiation{}, fmt.Errorf("reading the server's version 2 reply: %w", ctxOr(ctx, err))
		}
	}
}

// settle turns the server's reply into the negotiation, or its refusal
// into an error.
func settle(r wire.Reply, asked wire.SessionID) (negotiation, error) {
	switch r.Status {
	case wire.StatusNew:
		if !asked.IsZero() {
			return negotiation{}, fmt.Errorf("%w: the server started a new one", ErrSessionLost)
		}
		return negotiation{version: wire.Version2, session: r.Session}, nil
	case wire.StatusResumed:
		if r.Session != asked {
			return negotiation{}, fmt.Errorf("%w: the server resumed another session", ErrSessionLost)
		}
		return negotiation{version: wire.Version2, session: r.Session, committed: r.Committed}, nil
	case wire.StatusUnknownSession:
		return negotiation{}, fmt.Errorf("%w: %s", ErrSessionLost, r.Message)
	}
	return negotiation{}, fmt.Errorf("%w: %s", ErrSpecMismatch, r.Message)
}

// ctxOr returns ctx's cause when ctx is done (its end set the deadline
// that err reports), else err.
func ctxOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return err
}
