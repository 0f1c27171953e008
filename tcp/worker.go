package tcp

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a9ef92a1/echo/internal/hist"
	"github.com/seed-a9ef92a1/echo/internal/poller"
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
	// spare holds slots claimed and not yet written (after a short read);
	// claim hands them out before reserving more. Only this worker fills
	// them, so a spare left on a worker that never reads again would keep
	// its batch open.
	spare ringbuf.Reservation
	// onFull is w.flushWaiting bound once, for ringbuf.Claim; waiting is
	// the connection it flushes (nil for producers).
	onFull  func()
	waiting *conn

	queues []*Queue
	start  int       // rotating offset of the first queue of a round
	popped []*Buffer // this round's buffers, in insertion order
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
	_          [128]byte

	// --- group 2: written by the worker, read by Stats ---

	// connDepthSum is the sum of the worker's connections' depths;
	// connDepthMax the largest depth it set since Stats last took it.
	connDepthSum, connDepthMax atomic.Int64
	drainRound, memcpy, dwell  hist.Histogram
}

func newWorker(p *Pool) (*worker, error) {
	pl, err := poller.New(maxEvents)
	if err != nil {
		return nil, err
	}
	w := &worker{pool: p, poller: pl, conns: make([]*conn, 1), scratch: make([]byte, 4096)}
	if nl := nonEmpty(p.leafBytes); nl > 0 {
		w.maxPerRead = max(1, iovMax/nl)
		w.iov = make([]unix.Iovec, 0, w.maxPerRead*nl)
	}
	w.hasWorkFn = w.hasWork
	w.onFull = w.flushWaiting
	return w, nil
}

// run is the worker's loop; it returns when the pool closes. After an
// empty round it yields and looks again, up to spinRounds times, before it
// parks: a producer that sends again within that window costs no system
// call on either side. With connections, each round also collects the
// socket events already pending.
func (w *worker) run() {
	idle := 0
	for !w.pool.closed.Load() {
		moved, err := w.round()
		if err == nil && (len(w.conns) > len(w.freeSlots)+1 || len(w.backlog) > 0) {
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
		if idle < spinRounds && len(w.queues) > 0 {
			idle++
			runtime.Gosched()
			continue
		}
		idle = 0
		events, err := w.poller.Park(w.hasWorkFn, time.Time{})
		if err == nil {
			_, err = w.dispatch(events)
		}
		if err != nil && !errors.Is(err, ringbuf.ErrClosed) {
			w.pool.fail(err)
			time.Sleep(time.Millisecond)
		}
	}
}

// round moves every sample its queues held on arrival into the ring and
// returns how many it moved. It fails only with ringbuf.ErrClosed.
func (w *worker) round() (int, error) {
	if w.hasAdopt.Load() {
		w.takeAdopted()
	}
	var t0 int64
	detailed := w.pool.detailed
	if detailed {
		t0 = w.pool.now()
	}
	w.popped = w.popped[:0]
	n := len(w.queues)
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
	moved := len(w.popped)
	if moved > 0 {
		if detailed {
			now := w.pool.now()
			for _, b := range w.popped {
				w.dwell.Record(now - b.enqueued)
			}
		}
		if err := w.insert(w.popped); err != nil {
			return moved, err
		}
		for i, b := range w.popped {
			b.owner.recycle(b)
			w.popped[i] = nil
		}
		if detailed {
			w.drainRound.Record(w.pool.now() - t0)
		}
	}
	w.prune()
	return moved, nil
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
// boundaries allow, waiting for space while the ring is full.
func (w *worker) insert(bufs []*Buffer) error {
	for len(bufs) > 0 {
		res, err := w.claim(len(bufs), nil)
		if err != nil {
			return err
		}
		var t0 int64
		if w.pool.detailed {
			t0 = w.pool.now()
		}
		for k := range res.N {
			w.pool.copySample(res.Start+uint64(k), bufs[k].Data)
		}
		if w.pool.detailed {
			w.memcpy.Record(w.pool.now() - t0)
		}
		w.pool.ring.Commit(res)
		bufs = bufs[res.N:]
	}
	return nil
}

// claim reserves up to want slots, handing out the worker's spare slots
// first, and otherwise through the ring's one writer loop, which waits
// while the ring is full. Before it waits it flushes the acks owed to c
// (nil for producers). It returns ringbuf.ErrClosed once the ring is
// closed.
func (w *worker) claim(want int, c *conn) (ringbuf.Reservation, error) {
	if w.spare.N > 0 {
		res := ringbuf.Reservation{Start: w.spare.Start, N: min(want, w.spare.N)}
		w.spare.Start += uint64(res.N)
		w.spare.N -= res.N
		return res, nil
	}
	w.waiting = c
	res, err := w.pool.ring.Claim(want, w.onFull)
	w.waiting = nil
	return res, err
}

// flushWaiting is claim's onFull: a client bounded by its in-flight window
// must learn of the samples already in the ring, or it would wait for acks
// the worker is holding while the worker waits for the learner. An error
// resurfaces at the connection's next write, which drops it.
func (w *worker) flushWaiting() {
	if c := w.waiting; c != nil && c.owed > 0 {
		_ = w.flush(c)
	}
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
