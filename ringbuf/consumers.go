package ringbuf

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
)

// Consumers hands a ring's batches to several consumers at once (learner
// processes served over sockets, data-parallel ranks): each batch goes to
// exactly one Take, in order, and stays its taker's until Give (or until
// Untake, which hands it out again). Slabs go
// back to the writers in order, so a batch held long holds up the slabs
// behind it, as a slow single consumer does.
//
// A ring served by Consumers must not be read with Next and Release.
type Consumers struct {
	r *Ring
	// takeMu lets one Take at a time wait for the next batch; the ring's
	// wait has room for one waiter.
	takeMu sync.Mutex
	// mu guards the rest: given marks slabs given back ahead of an older
	// one still held; taken and returned count batches handed out and
	// handed back to the writers.
	mu       sync.Mutex
	given    []bool
	held     []bool
	taken    uint64
	returned uint64
	// again holds slabs put back by Untake, handed out before any newer
	// batch; kick gets a token with each, for a Take waiting on the ring.
	again []int
	kick  chan struct{}
	// room gets a token when a slab goes back to the writers, for a Take
	// that found every slab out.
	room chan struct{}
}

// ErrNotHeld is returned by Give for a slab no Take handed out.
var ErrNotHeld = errors.New("ringbuf: slab not held")

// NewConsumers serves r's batches to several consumers.
func NewConsumers(r *Ring) *Consumers {
	return &Consumers{r: r, given: make([]bool, r.numSlabs), held: make([]bool, r.numSlabs),
		kick: make(chan struct{}, 1), room: make(chan struct{}, 1)}
}

// Take waits until the next batch is complete and hands it to the caller:
// its slab is the caller's until Give. A batch put back with Untake comes
// first. It returns ErrClosed once the ring is closed, and ctx's error if
// ctx is done first. Any goroutine may call it; takers wait their turn.
func (c *Consumers) Take(ctx context.Context) (slab int, err error) {
	c.takeMu.Lock()
	defer c.takeMu.Unlock()
	for {
		slab, err = c.take(ctx)
		if err != errKicked {
			return slab, err
		}
	}
}

// take is one try of Take: it ends with errKicked when Untake put a batch
// back while it waited.
func (c *Consumers) take(ctx context.Context) (slab int, err error) {
	if c.r.closed.Load() {
		return 0, ErrClosed
	}
	c.mu.Lock()
	if n := len(c.again); n > 0 {
		slab = c.again[0]
		c.again = c.again[:copy(c.again, c.again[1:])]
		c.mu.Unlock()
		return slab, nil
	}
	// The next batch's slab may still be out from its last round: every
	// slab taken and not yet back with the writers keeps its full commit
	// count, which await would take for a new batch.
	free := c.taken-c.returned < c.r.numSlabs
	c.mu.Unlock()
	if !free {
		select {
		case <-c.room:
			return 0, errKicked // look again
		case <-c.kick:
			return 0, errKicked
		case <-c.r.done:
			return 0, ErrClosed
		case <-ctx.Done():
			if c.r.closed.Load() {
				return 0, ErrClosed
			}
			return 0, ctx.Err()
		}
	}
	slab, err = c.r.await(ctx, c.kick)
	if err == errKicked {
		return 0, err
	}
	if err != nil {
		if c.r.closed.Load() {
			return 0, ErrClosed // when both were ready, the close wins
		}
		return 0, err
	}
	c.mu.Lock()
	c.taken++
	c.held[slab] = true
	c.mu.Unlock()
	return slab, nil
}

// Give hands back a slab that Take handed out. The writers get it once
// every slab taken before it is given back too.
func (c *Consumers) Give(slab int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if slab < 0 || slab >= len(c.held) || !c.held[slab] || slices.Contains(c.again, slab) {
		return fmt.Errorf("%w: %d", ErrNotHeld, slab)
	}
	c.held[slab], c.given[slab] = false, true
	for c.returned < c.taken {
		s := c.returned % c.r.numSlabs
		if !c.given[s] {
			break
		}
		c.given[s] = false
		c.r.releaseSlab(s)
		c.returned++
		select {
		case c.room <- struct{}{}:
		default:
		}
	}
	return nil
}

// Untake puts back a slab that Take handed out and whose batch its taker
// never used (a batch set aside for a learner that left before it took
// it): the next Take hands it out again, before any newer batch.
func (c *Consumers) Untake(slab int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if slab < 0 || slab >= len(c.held) || !c.held[slab] || slices.Contains(c.again, slab) {
		return fmt.Errorf("%w: %d", ErrNotHeld, slab)
	}
	c.again = append(c.again, slab)
	select {
	case c.kick <- struct{}{}:
	default:
	}
	return nil
}

// Stats is the ring's Stats for a ring served by Consumers: Batches counts
// the batches taken, and Stored the samples in slabs not taken (a slab
// taken and not yet back with the writers is full, and no longer stored).
// Any goroutine may call it, while a Take waits too.
func (c *Consumers) Stats() Stats {
	r := c.r
	c.mu.Lock()
	taken, out := c.taken, c.taken-c.returned
	c.mu.Unlock()
	st := Stats{
		Notifies: r.notifies.Load(), Batches: taken, Blocked: r.blocked.Load(),
		CASSuccess: r.casSuccess.Load(), CASFailure: r.casFailure.Load(), Retries: r.retries.Load(),
	}
	for s := range r.slabs {
		st.Stored += r.slabs[s].commit.Load()
	}
	// A slab is counted as stored until its release resets its commit
	// count; those taken are full, whatever a racing commit shows.
	st.Stored -= min(st.Stored, out*r.batch)
	st.Inserted = taken*r.batch + st.Stored
	return st
}
