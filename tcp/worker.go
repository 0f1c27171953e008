package tcp

import (
	"context"
	"errors"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a9ef92a1/echo/internal/hist"
	"github.com/seed-a9ef92a1/echo/internal/poller"
	"github.com/seed-a9ef92a1/echo/internal/sockio"
	"github.com/seed-a9ef92a1/echo/ringbuf"
)

// maxEvents is the size of the epoll event array of each worker.
const maxEvents = 256

// spinRounds is how many empty rounds a worker with producer queues yields
// through before it parks: long enough to ride out a producer's next Send on
// a busy machine, short enough that an idle worker stops burning a core
// within microseconds.
const spinRounds = 64

// worker is one ingress loop: it owns a set of producer queues and a set of
// connections, moves their samples into the ring, and parks in its poller
// when there is nothing to move.
//
// Layout: the first group is the worker goroutine's own state; the second,
// 128 bytes on, what other goroutines write (placement counts, hand-overs);
// the third, what the worker writes and Stats reads. The layout test checks
// that the groups do not share a cache line pair.
type worker struct {
	// --- group 0: the worker goroutine's own (read-only to others) ---
	pool   *Pool
	poller *poller.Poller
	// hasWorkFn is w.hasWork bound once, for Park.
	hasWorkFn func() bool

	// conns is the connection table, indexed by the tag carried in each
	// socket's epoll events; tag 0 is the poller's, so conns[0] is nil.
	conns     []*conn
	freeSlots []int
	// backlog holds connections whose turn ended with whole samples left;
	// edge-triggered epoll will not report them again.
	backlog, backlogSpare []*conn
	iov                   []unix.Iovec // readv scratch, cleared after use
	maxPerRead            int          // whole samples per readv (IOV_MAX)
	scratch               []byte       // Drain's buffer

	// ringWait and stageWait are the connections parked until the ring
	// frees a slot or the staging budget a buffer (conn.waitRing,
	// conn.waitStage).
	ringWait, stageWait []*conn
	// partials is the stall watch list: connections seen holding a partial
	// sample (conn.partialAt); stallAt is the earliest time, in ns since
	// the pool's epoch, at which one of them may have stalled.
	partials []*conn
	stallAt  int64
	// spaceWaker is what the ring wakes when it frees a slot.
	spaceWaker spaceWaker

	queues []*Queue
	start  int // rotating offset of the first queue of a round
	// popped holds the buffers popped from the queues and not yet in the
	// ring, in insertion order: a full ring leaves some for the next round.
	popped []*Buffer
	_      [128]byte

	// --- group 1: written by other goroutines ---

	// nconns counts the connections placed on this worker and not yet
	// dropped: the acceptor adds, the worker subtracts. Their sum over
	// the workers is the pool's one count of connections.
	nconns atomic.Int64
	// assigned counts the queues placed on this worker and not yet
	// pruned, for placement. Guarded by pool.mu.
	assigned int
	// adoptMu guards adopt and adoptConns, the queues and connections
	// handed to this worker and not yet picked up; hasAdopt says
	// (lock-free) that there are some.
	adoptMu    sync.Mutex
	adopt      []*Queue
	adoptConns []*conn
	hasAdopt   atomic.Bool
	// spaceArmed: the worker is registered with the ring for its next
	// release. Set by the worker, cleared by the waker (the learner's
	// goroutine). stageFreed: a staging buffer came back while
	// connections waited for one; set by any worker, cleared by this one.
	spaceArmed, stageFreed atomic.Bool
	_                      [128]byte

	// --- group 2: written by the worker, read by Stats ---

	// connDepthSum is the sum of the worker's connections' depths;
	// connDepthMax the largest depth it set since Stats last took it.
	connDepthSum, connDepthMax atomic.Int64
	// waitingPopped is len(popped): producers' samples taken off their
	// queues and waiting for ring space.
	waitingPopped             atomic.Int64
	drainRound, memcpy, dwell hist.Histogram
}

func newWorker(p *Pool) (*worker, error) {
	pl, err := poller.New(maxEvents)
	if err != nil {
		return nil, err
	}
	w := &worker{pool: p, poller: pl, conns: make([]*conn, 1), scratch: make([]byte, 4096), stallAt: math.MaxInt64}
	w.spaceWaker = spaceWaker{w}
	if nl := nonEmpty(p.leafBytes); nl > 0 {
		w.maxPerRead = max(1, iovMax/nl)
		w.iov = make([]unix.Iovec, 0, w.maxPerRead*nl)
	}
	w.hasWorkFn = w.hasWork
	return w, nil
}

// serving reports whether the worker holds connections: then a full ring
// must not block it, for it goes on serving them.
func (w *worker) serving() bool {
	return len(w.conns)-1 > len(w.freeSlots) || w.hasAdopt.Load()
}

// spaceWaker wakes a worker parked on a full ring.
type spaceWaker struct{ w *worker }

// Wake is called by the ring, under its lock, when it frees slots.
func (s spaceWaker) Wake() {
	s.w.spaceArmed.Store(false)
	s.w.poller.Wake()
}

// armSpace registers the worker to be woken at the ring's next release,
// once; if a slot is free already, the next round finds it.
func (w *worker) armSpace() {
	// Armed before registering: the ring may wake (and disarm) the worker
	// the moment it is registered.
	if !w.spaceArmed.Swap(true) && !w.pool.ring.NotifySpace(w.spaceWaker) {
		w.spaceArmed.Store(false)
	}
}

// resume puts the connections parked on a full ring or an empty staging
// budget back on the backlog once that has changed.
func (w *worker) resume() {
	if len(w.ringWait) > 0 && w.pool.ring.HasSpace() {
		for i, c := range w.ringWait {
			c.waitRing = false
			w.requeue(c)
			w.ringWait[i] = nil
		}
		w.ringWait = w.ringWait[:0]
	}
	if len(w.stageWait) > 0 && w.stageFreed.Swap(false) {
		w.pool.stages.waiting.Add(-int32(len(w.stageWait)))
		for i, c := range w.stageWait {
			c.waitStage = false
			w.requeue(c)
			w.stageWait[i] = nil
		}
		w.stageWait = w.stageWait[:0]
	}
}

// requeue gives c another turn soon: it goes on the backlog.
func (w *worker) requeue(c *conn) {
	if c.fd >= 0 && !c.inBacklog {
		c.inBacklog = true
		w.backlog = append(w.backlog, c)
	}
}

// checkStalls drops the connections whose partial sample has not grown for
// the stall timeout. A gated connection's partial sample waits in the
// kernel, which (with SO_RCVLOWAT) reports no growth: it is measured again
// here. It returns nothing and does its work only when a deadline passed.
func (w *worker) checkStalls() {
	now := w.pool.now()
	if now < w.stallAt {
		return
	}
	timeout := int64(w.pool.stallTimeout)
	w.stallAt = math.MaxInt64
	kept := w.partials[:0]
	for _, c := range w.partials {
		if c.fd < 0 || c.partialAt == 0 || c.waitRing || c.waitStage {
			c.inPartials = false
			continue
		}
		if c.gated && c.staged == 0 {
			if inq, err := sockio.Queued(c.fd); err == nil && inq != c.queuedPartial {
				// It grew (or became whole) without an event: serve it.
				c.queuedPartial = inq
				c.partialAt, c.partialBytes = now, inq
				w.requeue(c)
			}
		}
		if now-c.partialAt >= timeout {
			c.inPartials = false
			w.pool.stalled.Add(1)
			w.drop(c, errStalled)
			continue
		}
		w.stallAt = min(w.stallAt, c.partialAt+timeout)
		kept = append(kept, c)
	}
	clear(w.partials[len(kept):])
	w.partials = kept
}

// parkDeadline is the time the worker's park must end by: the next stall
// deadline, or none.
func (w *worker) parkDeadline() time.Time {
	if w.stallAt == math.MaxInt64 {
		return time.Time{}
	}
	return w.pool.epoch.Add(time.Duration(w.stallAt))
}

// run is the worker's loop; it returns when the pool closes. After an
// empty round it yields and looks again, up to spinRounds times, before it
// parks: a producer that sends again within that window costs no system
// call on either side. With connections, each round also collects the
// socket events already pending.
func (w *worker) run() {
	spin := w.pool.spin
	if spin < 0 {
		// Busy polling: the worker owns an OS thread and never parks.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
	}
	idle := 0
	var idleSince time.Time
	for !w.pool.closed.Load() {
		moved, err := w.round()
		if err == nil && (spin != 0 || w.serving() || len(w.backlog) > 0) {
			var n int
			n, err = w.poll()
			moved += n
		}
		if err != nil {
			if errors.Is(err, ringbuf.ErrClosed) {
				// The ring closes just before the pool: nothing can
				// move any more, so wait for Close instead of spinning.
				<-w.pool.done
				return
			}
			// A broken epoll set is reported at Close. Until then keep
			// going, so that no queue of this worker's is stranded.
			w.pool.fail(err)
			time.Sleep(time.Millisecond)
			continue
		}
		if moved > 0 {
			idle = 0
			continue
		}
		switch {
		case spin < 0:
			// Yield the P between polls (the OS thread stays), so that
			// goroutines of this process still run where cores are few.
			runtime.Gosched()
			continue
		case spin > 0:
			// Spin, then park: poll for up to spin since the last work.
			if idle == 0 {
				idleSince = time.Now()
			}
			idle++
			if idle%spinCheck != 0 || time.Since(idleSince) < spin {
				runtime.Gosched()
				continue
			}
		case idle < spinRounds && len(w.queues) > 0 && len(w.popped) == 0:
			idle++
			runtime.Gosched()
			continue
		}
		idle = 0
		events, err := w.poller.Park(w.hasWorkFn, w.parkDeadline())
		if err == nil {
			_, err = w.dispatch(events)
		}
		if err != nil && !errors.Is(err, ringbuf.ErrClosed) {
			w.pool.fail(err)
			time.Sleep(time.Millisecond)
		}
	}
}

// spinCheck is how many empty polls a spinning worker makes between looks
// at the clock.
const spinCheck = 16

// round resumes parked connections whose wait is over, checks for stalled
// ones, and moves every sample its queues held on arrival into the ring; it
// returns how many samples it moved. It fails only with ringbuf.ErrClosed.
func (w *worker) round() (int, error) {
	if w.hasAdopt.Load() {
		w.takeAdopted()
	}
	w.resume()
	if len(w.partials) > 0 {
		w.checkStalls()
	}
	var t0 int64
	detailed := w.pool.detailed
	if detailed {
		t0 = w.pool.now()
	}
	n := len(w.queues)
	if len(w.popped) == 0 {
		// Pop only when the last round's buffers are all in: a producer's
		// samples reach the ring in the order it sent them.
		for i := range n {
			q := w.queues[(w.start+i)%n]
			// Pop at most the depth seen now, so a producer that keeps
			// pushing cannot starve the others.
			depth := q.filled.Len()
			if depth == 0 {
				continue
			}
			w.popped = growTo(w.popped, len(w.popped)+depth)
			got := q.filled.PopN(w.popped[len(w.popped)-depth:])
			w.popped = w.popped[:len(w.popped)-depth+got]
		}
		if n > 0 {
			w.start = (w.start + 1) % n
		}
		if detailed && len(w.popped) > 0 {
			now := w.pool.now()
			for _, b := range w.popped {
				w.dwell.Record(now - b.enqueued)
			}
		}
	}
	if len(w.popped) == 0 {
		w.prune()
		return 0, nil
	}
	// A worker with no connection to serve waits for the learner in the
	// ring's writer loop, whose condition variable hands it the CPU at the
	// release: parked in its poller, it would wait for the runtime to poll
	// the network, up to 10 ms when every core is busy (1,024 producers
	// ran at 0.57 of this rate that way).
	moved, err := w.insert(w.popped, !w.serving())
	for i, b := range w.popped[:moved] {
		b.owner.recycle(b)
		w.popped[i] = nil
	}
	left := copy(w.popped, w.popped[moved:])
	clear(w.popped[left:])
	w.popped = w.popped[:left]
	if int64(left) != w.waitingPopped.Load() {
		w.waitingPopped.Store(int64(left))
	}
	if err == errRingFull {
		if w.pool.ring.Closed() {
			return moved, ringbuf.ErrClosed
		}
		w.armSpace()
		err = nil
	}
	if detailed && moved > 0 {
		w.drainRound.Record(w.pool.now() - t0)
	}
	w.prune()
	return moved, err
}

// growTo returns s with length n, reallocating only when capacity is short.
func growTo(s []*Buffer, n int) []*Buffer {
	if n <= cap(s) {
		return s[:n]
	}
	grown := make([]*Buffer, n, 2*n)
	copy(grown, s)
	return grown
}

// insert copies bufs into the ring with as few reservations as the batch
// boundaries allow, and returns how many went in: all of them, or, unless
// it may block for space, those before the ring filled up (errRingFull).
func (w *worker) insert(bufs []*Buffer, block bool) (int, error) {
	done := 0
	for done < len(bufs) {
		var res ringbuf.Reservation
		if block {
			// A worker with no connection to serve waits for space until
			// the ring closes: it has no caller whose context could end.
			var err error
			if res, err = w.pool.ring.Claim(context.Background(), len(bufs)-done); err != nil {
				return done, err
			}
		} else if r, ok := w.pool.ring.TryClaim(len(bufs) - done); ok {
			res = r
		} else {
			return done, errRingFull
		}
		var t0 int64
		if w.pool.detailed {
			t0 = w.pool.now()
		}
		for k := range res.N {
			w.pool.copySample(res.Start+uint64(k), bufs[done+k].Data)
		}
		if w.pool.detailed {
			w.memcpy.Record(w.pool.now() - t0)
		}
		w.pool.ring.Commit(res)
		done += res.N
	}
	return done, nil
}

// prune drops closed queues that have nothing left to deliver.
func (w *worker) prune() {
	for i := 0; i < len(w.queues); {
		q := w.queues[i]
		// closed is set after the producer's last push, so an empty
		// queue seen after it stays empty.
		if q.closed.Load() && q.filled.Len() == 0 {
			w.queues[i] = w.queues[len(w.queues)-1]
			w.queues[len(w.queues)-1] = nil
			w.queues = w.queues[:len(w.queues)-1]
			w.pool.forget(q)
			continue
		}
		i++
	}
}

func (w *worker) takeAdopted() {
	w.adoptMu.Lock()
	w.queues = append(w.queues, w.adopt...)
	clear(w.adopt)
	w.adopt = w.adopt[:0]
	conns := w.adoptConns
	w.adoptConns = nil
	w.hasAdopt.Store(false)
	w.adoptMu.Unlock()
	for _, c := range conns {
		w.adoptConn(c)
	}
}

// hasWork reports whether a round now would find something to do: the
// poller's last look before it parks.
func (w *worker) hasWork() bool {
	if w.hasAdopt.Load() || w.pool.closed.Load() || len(w.backlog) > 0 {
		return true
	}
	if len(w.stageWait) > 0 && w.stageFreed.Load() {
		return true
	}
	if len(w.ringWait) > 0 || len(w.popped) > 0 {
		// Connections or producers' samples wait for the ring. Before
		// parking, make sure its next release wakes this worker: an
		// earlier registration may have been spent while the worker ran
		// and another writer took the space.
		w.armSpace()
		if w.pool.ring.HasSpace() {
			return true
		}
		if len(w.popped) > 0 {
			return false // only space helps queued samples: no popping
		}
	}
	for _, q := range w.queues {
		if q.filled.Len() > 0 || q.closed.Load() {
			return true
		}
	}
	return false
}

// poll serves the backlog, then every event pending now, without waiting.
func (w *worker) poll() (int, error) {
	moved := 0
	if len(w.backlog) > 0 {
		n, err := w.serveBacklog()
		moved += n
		if err != nil {
			return moved, err
		}
	}
	events, err := w.poller.Poll()
	if err != nil {
		return moved, err
	}
	m, err := w.dispatch(events)
	return moved + m, err
}

// dispatch serves a batch of socket events.
func (w *worker) dispatch(events []unix.EpollEvent) (int, error) {
	moved := 0
	for i := range events {
		ev := &events[i]
		c := w.conns[ev.Pad]
		if c == nil {
			continue // dropped earlier in this batch
		}
		n, err := w.serveEvent(c, ev.Events)
		moved += n
		if err != nil {
			return moved, err
		}
	}
	return moved, nil
}

// nonEmpty counts the leaves of more than zero bytes: the iovecs per sample.
func nonEmpty(leafBytes []int) int {
	n := 0
	for _, b := range leafBytes {
		if b > 0 {
			n++
		}
	}
	return n
}

// closeConns closes every connection the worker holds or was handed. Only
// after the worker's goroutine has exited.
func (w *worker) closeConns() {
	w.adoptMu.Lock()
	handed := w.adoptConns
	w.adoptConns = nil
	w.adoptMu.Unlock()
	for _, c := range handed {
		w.drop(c, errServerClosed)
	}
	for _, c := range w.conns {
		if c != nil {
			w.drop(c, errServerClosed)
		}
	}
}
