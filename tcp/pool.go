// Package tcp is everything between a socket and a ring slot: the
// transports (TCP, Unix-domain sockets), the acceptor that runs each
// connection's prologue (authentication, handshake), and the pool of
// ingress workers that move samples into the ring.
//
// Each worker is one goroutine running an event loop (internal/poller).
// It owns a set of connections and a set of in-process producer queues
// (SPSC queues of recycled sample buffers). For a connection it asks the
// kernel how many whole samples are queued, claims slots for them and
// reads them with one readv straight into the slots (conn.go). Producer
// queues it drains in rounds: from each it pops at most the depth it saw
// when the round reached it, starting each round one queue further along,
// and inserts everything with as few ring reservations as the batch
// boundaries allow (worker.go, queue.go).
//
// The dependency order is one way: the root package composes a Pool over
// a ringbuf.Ring and a pytree.Spec; nothing here calls back up.
package tcp

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/seed-a9ef92a1/echo/internal/hist"
	"github.com/seed-a9ef92a1/echo/pytree"
	"github.com/seed-a9ef92a1/echo/ringbuf"
	"github.com/seed-a9ef92a1/echo/spsc"
	"github.com/seed-a9ef92a1/echo/wire"
)

// ErrClosed is returned by Acquire, NewQueue and Serve once the pool is
// closed.
var ErrClosed = errors.New("tcp: closed")

// Config describes a pool.
type Config struct {
	// Ring is where samples go; its layout's leaves are Spec's.
	Ring *ringbuf.Ring
	// Spec describes one sample: its leaves' sizes, in flatten order
	// (a Buffer's Data is these leaves back to back), and the handshake
	// every connection receives.
	Spec *pytree.Spec
	// Workers is the number of worker goroutines, at least 1.
	Workers int
	// Detailed turns on the histograms.
	Detailed bool
	// Logger receives connection events: opened and closed at Debug,
	// dropped for an error or refused at Warn. Nil logs nothing.
	Logger *slog.Logger
	// StagingBudget bounds the bytes all connections hold in staging
	// buffers at once (samples read as they arrive: those too large to
	// wait whole in the kernel, and partial samples on Unix sockets).
	// 0 means DefaultStagingBudget; it is raised to one sample if smaller.
	// Past it, connections that need a buffer wait for one.
	StagingBudget int64
	// Spin is how a worker with nothing to do waits: 0 parks at once in
	// its poller (the cheapest at idle); d > 0 polls for up to d before it
	// parks; d < 0 polls for ever on an OS thread of its own (busy
	// polling, for hosts with a core to spare per worker).
	Spin time.Duration
	// StallTimeout drops a connection that holds a partial sample and
	// sends none of the rest for that long. 0 means DefaultStallTimeout;
	// negative, never.
	StallTimeout time.Duration
}

// DefaultStallTimeout is how long a connection may hold a partial sample
// without sending more of it before it is dropped: far longer than any
// honest sender pauses mid-sample, short enough that a peer holding a
// staging buffer (or a sample's worth of kernel memory) cannot keep it.
const DefaultStallTimeout = 30 * time.Second

// Pool is a set of workers over one ring, and the acceptor that feeds them
// connections once Serve has started it.
type Pool struct {
	// Read-only after NewPool.
	ring      *ringbuf.Ring
	leafBytes []int
	payload   int
	handshake []byte      // the wire handshake every connection receives
	leaves    []wire.Leaf // the tree as version 2 describes it
	detailed  bool
	epoch     time.Time
	workers   []*worker
	wg        sync.WaitGroup
	log       *slog.Logger
	acks      []byte // ackBufLen ack bytes
	stages    stagePool
	// stallTimeout is StallTimeout resolved: a very long time when off.
	stallTimeout time.Duration
	// stalled counts connections dropped for a stalled partial sample.
	stalled atomic.Uint64
	spin    time.Duration // Config.Spin

	// acceptor is set once by Serve; Stats and Close load it.
	acceptor atomic.Pointer[acceptor]

	// closed is set once by Close; done is closed with it.
	closed atomic.Bool
	done   chan struct{}

	// Per-worker histograms, gathered once for Stats.
	rounds, copies, dwells []*hist.Histogram

	// mu guards queues (every live queue, for metrics), each worker's
	// assigned count, retiredBlocked (the blocked counts of pruned
	// queues), err (the first failure of any worker), and the hand-over
	// of a connection against Close.
	mu             sync.Mutex
	queues         []*Queue
	retiredBlocked uint64
	err            error
}

// NewPool starts cfg.Workers workers.
func NewPool(cfg Config) (*Pool, error) {
	if cfg.Workers < 1 {
		return nil, fmt.Errorf("tcp: %d workers, need at least 1", cfg.Workers)
	}
	hs, err := wire.HandshakeOf(cfg.Spec)
	if err != nil {
		return nil, err
	}
	handshake, err := wire.AppendHandshake(nil, hs)
	if err != nil {
		return nil, err
	}

	p := &Pool{
		ring:      cfg.Ring,
		payload:   cfg.Spec.PayloadBytes(),
		handshake: handshake,
		leaves:    wire.LeavesOf(cfg.Spec),
		detailed:  cfg.Detailed,
		epoch:     time.Now(),
		done:      make(chan struct{}),
		log:       cfg.Logger,
		acks:      bytes.Repeat([]byte{wire.Ack}, ackBufLen),
		spin:      cfg.Spin,
	}
	for _, l := range cfg.Spec.Leaves() {
		p.leafBytes = append(p.leafBytes, l.NumBytes())
	}
	budget := cfg.StagingBudget
	if budget <= 0 {
		budget = DefaultStagingBudget
	}
	p.stages = stagePool{payload: p.payload, budget: int(min(max(budget, int64(p.payload)), math.MaxInt/2)), wake: p.wakeStageWaiters}
	switch {
	case cfg.StallTimeout == 0:
		p.stallTimeout = DefaultStallTimeout
	case cfg.StallTimeout < 0:
		p.stallTimeout = math.MaxInt64 / 4 // never, without overflowing deadlines
	default:
		p.stallTimeout = cfg.StallTimeout
	}
	for range cfg.Workers {
		w, err := newWorker(p)
		if err != nil {
			for _, w := range p.workers {
				w.poller.Close()
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

// commit commits res, read from a socket. When that completes the batch a
// parked learner waits for, it yields the processor: the wake-up readied
// the learner on this P, and the yield lets it run here at once, on a warm
// core, instead of waiting for an idle core to be woken for it (about 10 µs
// of the 50 µs from an actor's write to the learner, measured across
// processes here); the worker resumes right after, with the acks.
// Producers' samples do not yield: among many runnable producer
// goroutines, a yielding worker waits its turn behind all of them (1,024
// W1 producers ran at 0.66 of the rate).
func (p *Pool) commit(res ringbuf.Reservation) {
	if p.ring.CommitWake(res) {
		runtime.Gosched()
	}
}

// wakeStageWaiters tells every worker that a staging buffer came back.
func (p *Pool) wakeStageWaiters() {
	for _, w := range p.workers {
		w.stageFreed.Store(true)
		w.poller.Wake()
	}
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
		return nil, fmt.Errorf("tcp: queue depth %d, need at least 1", depth)
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
		return nil, fmt.Errorf("tcp: %d buffers of %d bytes overflow", depth, p.payload)
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
	w.poller.Wake()
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

// Close stops accepting, stops the workers and wakes every producer
// waiting in Acquire. The ring must be closed first, so that a worker
// waiting for ring space returns. Close waits for the acceptor and the
// workers to exit, closes every connection and descriptor, and returns the
// first error any of them hit. It is idempotent.
func (p *Pool) Close() error {
	var errs []error
	// The acceptor first: it hands connections to the workers.
	if a := p.acceptor.Load(); a != nil {
		errs = append(errs, a.close())
	}
	// Under mu, so that an addConn either sees closed or has finished
	// handing its connection over before the workers' connections close.
	p.mu.Lock()
	already := p.closed.Swap(true)
	p.mu.Unlock()
	if already {
		return nil
	}
	close(p.done)
	for _, w := range p.workers {
		w.poller.Wake()
	}
	p.wg.Wait()
	for _, w := range p.workers {
		w.closeConns()
		errs = append(errs, w.poller.Close())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return errors.Join(append(errs, p.err)...)
}

// Stats is a snapshot of the pool's metrics.
type Stats struct {
	Queues int
	// Connections is the number of connections served now.
	Connections int
	// Refused counts connections closed before they were served: over
	// MaxConns, failing their prologue, or failing to be prepared.
	// AuthFailures counts those refused in authentication. Stalled counts
	// those dropped for holding a partial sample past the stall timeout.
	Refused, AuthFailures, Stalled uint64
	// StagingInUse and StagingHeld are the bytes of staging buffers
	// handed out to connections, and allocated in all (at most the
	// budget).
	StagingInUse, StagingHeld int
	// QueueDepthSum and QueueDepthMax count the samples waiting in
	// producer queues and, for connections, whole samples waiting in the
	// kernel's receive queue when the worker last looked; for
	// connections, QueueDepthMax is the most any had at a look since the
	// previous Stats.
	QueueDepthSum int
	QueueDepthMax int
	// PushBlocked counts producers that found their queue full. (Writers
	// that found the ring full are the ring's to count.)
	PushBlocked                    uint64
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
	p.mu.Unlock()
	st.Connections = p.ActiveConnections()
	for _, w := range p.workers {
		st.QueueDepthSum += int(w.connDepthSum.Load() + w.waitingPopped.Load())
		st.QueueDepthMax = max(st.QueueDepthMax, int(w.connDepthMax.Swap(0)))
	}
	if a := p.acceptor.Load(); a != nil {
		st.Refused, st.AuthFailures = a.refused.Load(), a.authFailed.Load()
	}
	st.Stalled = p.stalled.Load()
	st.StagingInUse, st.StagingHeld = p.stages.stats()
	if p.detailed {
		st.DrainRound = hist.Sum(p.rounds...)
		st.Memcpy = hist.Sum(p.copies...)
		st.QueueDwell = hist.Sum(p.dwells...)
	}
	return st
}

// ActiveConnections returns the number of connections served now: the
// workers' counts, and the connections that have their handshake but
// have sent nothing yet, which the acceptor holds until their first
// bytes say which version they speak.
func (p *Pool) ActiveConnections() int {
	n := p.servedConns()
	if a := p.acceptor.Load(); a != nil {
		n += int(a.sniffing.Load())
	}
	return n
}

// servedConns is the sum of the workers' counts of connections.
func (p *Pool) servedConns() int {
	n := int64(0)
	for _, w := range p.workers {
		n += w.nconns.Load()
	}
	return int(n)
}

// Payload returns the bytes of one sample.
func (p *Pool) Payload() int { return p.payload }

// ResetHistograms clears the histogram window of every worker.
func (p *Pool) ResetHistograms() {
	for _, w := range p.workers {
		w.drainRound.Reset()
		w.memcpy.Reset()
		w.dwell.Reset()
	}
}
