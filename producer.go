//go:build linux

package echo

import (
	"context"
	"errors"
	"fmt"

	"github.com/seed-a9ef92a1/echo/pytree"
	"github.com/seed-a9ef92a1/echo/tcp"
)

// ErrProducerClosed is returned by Send after the producer's Close.
var ErrProducerClosed = errors.New("echo: producer closed")

// Producer is one goroutine's own path into a server, for actors in the
// learner's process. It takes one of two routes, chosen once by sample size
// (WithDirectProducerBytes):
//
//   - Queued (samples under the threshold, 8 KiB by default): Send copies
//     the sample into one of the producer's WithProducerQueueSize buffers
//     and returns; the server's workers move it into the ring. Producers
//     do not wait on each other, and Send costs a copy of the sample.
//   - Direct (larger samples): Send copies the sample straight into the
//     ring, as Submit does, and returns once it is there.
//
// Either way, Send waits while the producer cannot hand on its sample (all
// its buffers queued, or the ring full) and counts it in
// SampleInfo.PushBlockedCount.
//
// A Producer is for one goroutine: Send and Close must not be called
// concurrently. Samples from one producer reach batches in the order sent.
// Give each actor goroutine its own.
type Producer struct {
	srv    *Server
	q      *tcp.Queue     // nil on the direct route
	leaves []pytree.Array // Send's scratch
	closed bool
}

// NewProducer returns a new producer. It fails with ErrClosed once the
// server is closed.
func (s *Server) NewProducer() (*Producer, error) {
	leaves := make([]pytree.Array, 0, s.spec.NumLeaves())
	if s.directProducers() {
		if s.closed.Load() {
			return nil, ErrClosed
		}
		return &Producer{srv: s, leaves: leaves}, nil
	}
	q, err := s.pool.NewQueue(s.cfg.producerQueueSize)
	if err != nil {
		if errors.Is(err, tcp.ErrClosed) {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("echo: new producer: %w", err)
	}
	return &Producer{srv: s, q: q, leaves: leaves}, nil
}

// directProducers reports whether producers take the direct route.
func (s *Server) directProducers() bool {
	return s.cfg.directProducerBytes >= 0 && s.spec.PayloadBytes() >= s.cfg.directProducerBytes
}

// Send validates tree against the server's example and hands it on: on
// the queued route it copies it into one of the producer's buffers and
// returns before the sample reaches the ring; on the direct route it
// copies it into a ring slot. A tree that does not match returns an error
// wrapping ErrSpecMismatch and sends nothing. When all the producer's
// buffers are queued (or the ring is full, on the direct route), Send waits
// without burning a core and counts a PushBlockedCount; Close of the server
// wakes it with ErrClosed.
//
// If ctx is done before Send hands the sample over (on entry, or while it
// waits for a free buffer or for ring space), Send returns an error
// wrapping ctx's error and sends nothing; the producer stays usable, and
// samples sent before still arrive, in order.
//
// Send allocates nothing, with context.Background() as with a cancellable
// context.
func (p *Producer) Send(ctx context.Context, tree any) error {
	if p.closed {
		return ErrProducerClosed
	}
	leaves, err := p.srv.spec.FlattenInto(tree, p.leaves)
	if err != nil {
		clear(p.leaves[:cap(p.leaves)]) // drop what the failed walk collected
		return mismatchError(err)
	}
	defer clear(leaves) // keep none of the caller's arrays alive
	if p.q == nil {
		err := p.srv.write(ctx, leaves)
		if err != nil && !errors.Is(err, ErrClosed) {
			return fmt.Errorf("echo: send: %w", err)
		}
		return err // nil or ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("echo: send: %w", err)
	}
	buf, err := p.q.Acquire(ctx)
	if err != nil {
		if errors.Is(err, tcp.ErrClosed) {
			return ErrClosed
		}
		return fmt.Errorf("echo: send: %w", err)
	}
	off := 0
	for _, l := range leaves {
		off += copy(buf.Data[off:], l.Bytes())
	}
	p.q.Publish(buf)
	return nil
}

// Close ends the producer. Samples already sent are still delivered; Send
// returns ErrProducerClosed from now on. Close is idempotent.
func (p *Producer) Close() error {
	if !p.closed {
		p.closed = true
		if p.q != nil {
			p.q.Close()
		}
	}
	return nil
}
