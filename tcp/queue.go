package tcp

import (
	"context"
	"runtime"
	"sync/atomic"

	"github.com/seed-a9ef92a1/echo/spsc"
)

// producerSpins is how many times Acquire yields before parking. Fewer
// than a worker: many producers yielding would starve the workers they
// wait for.
const producerSpins = 4

// Buffer carries one sample's bytes from a producer to the ring.
type Buffer struct {
	// Data is the sample: its leaves' bytes concatenated in flatten order.
	Data []byte
	// enqueued is the time of Publish in ns since the pool's epoch, set only
	// with detailed metrics. Written by the producer before the push that
	// publishes the buffer; read by the worker after popping it.
	enqueued int64
	owner    *Queue
}

// Queue is one in-process producer's pipe into its worker: filled buffers
// travel to the worker on one SPSC queue, emptied ones come back on another.
// Acquire, Publish and Close are for the one producer goroutine; everything
// else is the worker's.
type Queue struct {
	filled *spsc.Queue[*Buffer] // producer pushes, worker pops
	free   *spsc.Queue[*Buffer] // worker pushes, producer pops
	worker *worker
	pool   *Pool

	// closed is set by the producer's Close after its last Publish; the
	// worker prunes the queue once it is set and filled is empty.
	closed atomic.Bool
	// waiting is set by a producer about to park in Acquire, before its
	// last look at free; the worker clears it (CAS) after pushing to free
	// and then sends on wake, so a wake-up is never lost.
	waiting atomic.Bool
	wake    chan struct{} // capacity 1
	// blocked counts Acquire calls that found no free buffer. Producer
	// writes, snapshots read.
	blocked atomic.Uint64
}

// Acquire returns an empty buffer for the next sample, waiting while all of
// them are queued or being copied (spinning briefly, then parking). It
// returns ErrClosed once the pool is closed, and ctx's error if ctx is done
// while it parks; either way the producer holds no buffer it did not hold
// before.
func (q *Queue) Acquire(ctx context.Context) (*Buffer, error) {
	// A closed pool drains nothing: refuse even while buffers are free.
	if q.pool.closed.Load() {
		return nil, ErrClosed
	}
	if b, ok := q.free.Pop(); ok {
		return b, nil
	}
	q.blocked.Add(1)
	for range producerSpins {
		if q.pool.closed.Load() {
			return nil, ErrClosed
		}
		runtime.Gosched()
		if b, ok := q.free.Pop(); ok {
			return b, nil
		}
	}
	for {
		q.waiting.Store(true)
		// Last look after announcing: either it sees the worker's push, or
		// the worker sees waiting and sends a wake-up.
		if b, ok := q.free.Pop(); ok {
			q.waiting.Store(false)
			return b, nil
		}
		select {
		case <-q.wake:
		case <-q.pool.done:
			return nil, ErrClosed
		case <-ctx.Done():
			// A worker that saw waiting still sends its wake-up: the
			// next Acquire takes it, looks at free once more, and parks
			// again if need be.
			q.waiting.Store(false)
			return nil, ctx.Err()
		}
		if b, ok := q.free.Pop(); ok {
			return b, nil
		}
	}
}

// Publish hands a filled buffer to the worker. It cannot fail: a queue
// has room for every buffer its producer owns.
func (q *Queue) Publish(b *Buffer) {
	if q.pool.detailed {
		b.enqueued = q.pool.now()
	}
	if !q.filled.Push(b) {
		panic("tcp: queue full with a buffer in hand")
	}
	q.worker.poller.Wake()
}

// Close tells the worker that no more samples come; those already published
// are still delivered. Producer only, once.
func (q *Queue) Close() {
	q.closed.Store(true)
	q.worker.poller.Wake()
}

// Len returns the number of samples waiting in the queue.
func (q *Queue) Len() int { return q.filled.Len() }

// recycle gives an emptied buffer back to its producer. Worker only.
func (q *Queue) recycle(b *Buffer) {
	b.enqueued = 0
	if !q.free.Push(b) {
		panic("tcp: free list overflow")
	}
	if q.waiting.Load() && q.waiting.CompareAndSwap(true, false) {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
}
