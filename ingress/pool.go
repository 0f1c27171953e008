// Package ingress is the pool of workers that move samples into the ring.
//
// Each worker is one goroutine running an epoll loop. It owns a set of
// in-process producer queues (SPSC queues of recycled sample buffers) and
// drains them in rounds: from each queue it pops at most the depth it saw
// when the round reached it, starting each round one queue further along, and
// inserts everything it popped with as few ring reservations as the batch
// boundaries allow. With nothing to do it parks until its epoll set, which
// holds an eventfd that producers write only when they see it parked, has
// an event; the set is registered with Go's own poller, so a parked worker
// is a waiting goroutine, not a blocked thread.
//
// Transports hand accepted sockets to AddConn; a worker adds each to its
// epoll set, so one loop serves producers and connections alike (conn.go
// has the socket path).
package ingress

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/seed-a9ef92a1/echo/internal/hist"
	"github.com/seed-a9ef92a1/echo/ringbuf"
	"github.com/seed-a9ef92a1/echo/spsc"
	"github.com/seed-a9ef92a1/echo/wire"
)

// ErrClosed is returned by Acquire and NewQueue once the pool is closed.
var ErrClosed = errors.New("ingress: closed")

// Config describes a pool.
type Config struct {
	// Ring is where samples go.
	Ring *ringbuf.Ring
	// LeafBytes is the size of each leaf of a sample, in flatten order; a
	// Buffer's Data is these leaves back to back.
	LeafBytes []int
	// Workers is the number of worker goroutines, at least 1.
	Workers int
	// Detailed turns on the CAS counters and histograms.
	Detailed bool
	// Handshake is sent to every connection added with AddConn before
	// anything else.
	Handshake []byte
	// Logger receives connection events: opened and closed at Debug,
	// dropped for an error at Warn. Nil logs nothing.
	Logger *slog.Logger
}

// Pool is a set of workers over one ring.
type Pool struct {
	ring      *ringbuf.Ring
	leafBytes []int
	payload   int
	detailed  bool
	epoch     time.Time
	workers   []*Worker
	wg        sync.WaitGroup
	handshake []byte // read-only
	log       *slog.Logger
	acks      []byte // ackBufLen ack bytes, read-only

	// active counts open connections.
	active atomic.Int64

	// closed is set once by Close; done is closed with it.
	closed atomic.Bool
	done   chan struct{}

	// Per-worker histograms, gathered once for Stats.
	rounds, copies, dwells []*hist.Histogram

	// mu guards queues (every live queue, for metrics), each worker's
	// assigned count, retiredBlocked (the blocked counts of pruned queues)
	// and err (the first failure of any worker).
	mu             sync.Mutex
	queues         []*Queue
	conns          map[*conn]*Worker
	retiredBlocked uint64
	err            error
}

// NewPool starts cfg.Workers workers.
func NewPool(cfg Config) (*Pool, error) {
	if cfg.Workers < 1 {
		return nil, fmt.Errorf("ingress: %d workers, need at least 1", cfg.Workers)
	}
	p := &Pool{
		ring:      cfg.Ring,
		leafBytes: cfg.LeafBytes,
		detailed:  cfg.Detailed,
		epoch:     time.Now(),
		done:      make(chan struct{}),
		handshake: cfg.Handshake,
		log:       cfg.Logger,
		acks:      bytes.Repeat([]byte{wire.Ack}, ackBufLen),
		conns:     make(map[*conn]*Worker),
	}
	for _, n := range cfg.LeafBytes {
		p.payload += n
	}
	for range cfg.Workers {
		w, err := newWorker(p)
		if err != nil {
			for _, w := range p.workers {
				w.closeFDs()
			}
			return nil, err
		}
		p.workers = append(p.workers, w)
		p.rounds = append(p.rounds, &w.drainRound)
		p.copies = append(p.copies, &w.memcpy)
		p.dwells = append(p.dwells, &w.dwell)
	}
	for _, w := range p.workers {
		p.wg.Go(w.run)
	}
	return p, nil
}

// now returns nanoseconds since the pool started, on the monotonic clock.
func (p *Pool) now() int64 { return int64(time.Since(p.epoch)) }

// copySample copies one buffer's leaves into the slot at pos.
func (p *Pool) copySample(pos uint64, data []byte) {
	off := 0
	for j, n := range p.leafBytes {
		copy(p.ring.Slot(pos, j), data[off:off+n])
		off += n
	}
}

// NewQueue registers a producer with depth buffers of its own and places it
// on the worker with the fewest queues.
func (p *Pool) NewQueue(depth int) (*Queue, error) {
	if depth < 1 {
		return nil, fmt.Errorf("ingress: queue depth %d, need at least 1", depth)
	}
	filled, err := spsc.New[*Buffer](depth)
	if err != nil {
		return nil, err
	}
	free, err := spsc.New[*Buffer](depth)
	if err != nil {
		return nil, err
	}
	q := &Queue{filled: filled, free: free, pool: p, wake: make(chan struct{}, 1)}
	// One slab of depth·payload bytes for all the queue's buffers.
	if p.payload > 0 && depth > math.MaxInt/p.payload {
		return nil, fmt.Errorf("ingress: %d buffers of %d bytes overflow", depth, p.payload)
	}
	mem := make([]byte, depth*p.payload)
	for i := range depth {
		free.Push(&Buffer{Data: mem[i*p.payload : (i+1)*p.payload : (i+1)*p.payload], owner: q})
	}

	p.mu.Lock()
	if p.closed.Load() {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	w := p.workers[0]
	for _, c := range p.workers {
		if c.assigned < w.assigned {
			w = c
		}
	}
	w.assigned++
	q.worker = w
	p.queues = append(p.queues, q)
	w.adoptMu.Lock()
	w.adopt = append(w.adopt, q)
	w.hasAdopt.Store(true)
	w.adoptMu.Unlock()
	p.mu.Unlock()
	w.wake() // outside p.mu: a failing wake calls fail, which takes it
	return q, nil
}

// forget removes a pruned queue from the registry. Worker only.
func (p *Pool) forget(q *Queue) {
	p.mu.Lock()
	defer p.mu.Unlock()
	q.worker.assigned--
	p.retiredBlocked += q.blocked.Load()
	for i, c := range p.queues {
		if c == q {
			p.queues = append(p.queues[:i], p.queues[i+1:]...)
			return
		}
	}
}

// fail records a worker's fatal error; Close returns the first.
func (p *Pool) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil {
		p.err = err
	}
}

// Close stops the workers and wakes every producer waiting in Acquire.
// The ring must be closed first, so that a worker waiting for ring space
// returns. Close waits for the workers to exit, closes
// their file descriptors and returns the first error any of them hit.
func (p *Pool) Close() error {
	// Under mu, so that an AddConn either sees closed or has finished
	// handing its connection over before the workers' connections close.
	p.mu.Lock()
	already := p.closed.Swap(true)
	p.mu.Unlock()
	if already {
		return nil
	}
	close(p.done)
	for _, w := range p.workers {
		w.wake()
	}
	p.wg.Wait()
	var errs []error
	for _, w := range p.workers {
		w.closeConns()
		errs = append(errs, w.closeFDs())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return errors.Join(append(errs, p.err)...)
}

// Stats is a snapshot of the pool's metrics.
type Stats struct {
	Queues int
	// Connections is the number of open connections.
	Connections int
	// QueueDepthSum and QueueDepthMax count the samples waiting in
	// producer queues and, for connections, whole samples waiting in the
	// kernel's receive queue when the worker last looked; for
	// connections, QueueDepthMax is the most any had at a look since the
	// previous Stats.
	QueueDepthSum int
	QueueDepthMax int
	// PushBlocked counts producers that found their queue full and
	// workers that found the ring full.
	PushBlocked                    uint64
	CASSuccess, CASFailure         uint64
	ReservationRetries             uint64
	DrainRound, Memcpy, QueueDwell hist.Summary
}

// Stats takes a snapshot; it allocates nothing and costs the same however
// many connections are open. Any goroutine may call it, but each call
// restarts the window of the connections' QueueDepthMax: the server's
// consumer is its one caller.
func (p *Pool) Stats() Stats {
	var st Stats
	p.mu.Lock()
	st.Queues = len(p.queues)
	st.PushBlocked = p.retiredBlocked
	for _, q := range p.queues {
		d := q.Len()
		st.QueueDepthSum += d
		st.QueueDepthMax = max(st.QueueDepthMax, d)
		st.PushBlocked += q.blocked.Load()
	}
	st.Connections = len(p.conns)
	p.mu.Unlock()
	for _, w := range p.workers {
		st.QueueDepthSum += int(w.connDepthSum.Load())
		st.QueueDepthMax = max(st.QueueDepthMax, int(w.connDepthMax.Swap(0)))
		st.PushBlocked += w.pushBlocked.Load()
		st.CASSuccess += w.casSuccess.Load()
		st.CASFailure += w.casFailure.Load()
		st.ReservationRetries += w.retries.Load()
	}
	if p.detailed {
		st.DrainRound = hist.Sum(p.rounds...)
		st.Memcpy = hist.Sum(p.copies...)
		st.QueueDwell = hist.Sum(p.dwells...)
	}
	return st
}

// ResetHistograms clears the histogram window of every worker.
func (p *Pool) ResetHistograms() {
	for _, w := range p.workers {
		w.drainRound.Reset()
		w.memcpy.Reset()
		w.dwell.Reset()
	}
}
