package ingress

import (
	"errors"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/seed-a9ef92a1/echo/internal/hist"
)

// maxEvents is the size of the epoll event array each worker passes to
// epoll_wait. Today the set holds only the worker's eventfd.
const maxEvents = 64

// Worker is one ingress loop: it owns a set of producer queues, moves their
// samples into the ring in rounds, and parks in epoll_wait on its eventfd
// when they are all empty. Every field not marked otherwise belongs to the
// worker's goroutine.
type Worker struct {
	pool *Pool
	epfd int // epoll set: the eventfd now, sockets later
	efd  int // eventfd that producers write to wake a parked worker

	queues []*Queue
	// assigned counts the queues placed on this worker and not yet
	// pruned, for placement. Guarded by pool.mu.
	assigned int
	start    int       // rotating offset of the first queue of a round
	popped   []*Buffer // this round's buffers, in insertion order
	events   []unix.EpollEvent

	// parked is set by the worker before its last look for work and
	// cleared by whoever wakes it: a producer that CASes it true→false
	// writes the eventfd, so a burst of Publishes costs one write.
	parked atomic.Bool
	_      [120]byte

	// fdMu keeps the eventfd open while a waker writes to it: signal holds
	// it shared, closeFDs exclusively (and then sets efd to -1), so a
	// wake that lost the race with Close never writes to a reused fd.
	fdMu sync.RWMutex

	// adoptMu guards adopt, the queues handed to this worker and not yet
	// picked up; hasAdopt says (lock-free) that there are some.
	adoptMu  sync.Mutex
	adopt    []*Queue
	hasAdopt atomic.Bool

	// Counters written by the worker, read by snapshots.
	pushBlocked, casSuccess, casFailure, retries atomic.Uint64
	drainRound, memcpy, dwell                    hist.Histogram
}

func newWorker(p *Pool) (*Worker, error) {
	w := &Worker{pool: p, events: make([]unix.EpollEvent, maxEvents)}
	var err error
	if w.efd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		return nil, os.NewSyscallError("eventfd", err)
	}
	if w.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		unix.Close(w.efd)
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(w.efd)}
	if err := unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, w.efd, &ev); err != nil {
		w.closeFDs()
		return nil, os.NewSyscallError("epoll_ctl add", err)
	}
	return w, nil
}

func (w *Worker) closeFDs() error {
	w.fdMu.Lock()
	defer w.fdMu.Unlock()
	err := errors.Join(
		wrapSyscall("close eventfd", unix.Close(w.efd)),
		wrapSyscall("close epoll", unix.Close(w.epfd)))
	w.efd, w.epfd = -1, -1
	return err
}

// wake makes sure a parked worker runs again. Any goroutine may call it.
func (w *Worker) wake() {
	if w.parked.Load() && w.parked.CompareAndSwap(true, false) {
		w.signal()
	}
}

// signal writes the eventfd. EAGAIN means the counter is saturated, which
// already guarantees a wake-up.
func (w *Worker) signal() {
	w.fdMu.RLock()
	defer w.fdMu.RUnlock()
	if w.efd < 0 {
		return // the pool is closed: nobody to wake
	}
	one := uint64(1)
	_, err := unix.Write(w.efd, (*[8]byte)(unsafe.Pointer(&one))[:])
	if err != nil && err != unix.EAGAIN {
		w.pool.fail(os.NewSyscallError("eventfd write", err))
	}
}

// run is the worker's loop; it returns when the pool closes. After an
// empty round it yields and looks again, up to spinRounds times, before it
// parks: a producer that sends again within that window costs no syscall
// on either side.
func (w *Worker) run() {
	idle := 0
	for !w.pool.closed.Load() {
		if w.round() > 0 {
			idle = 0
			continue
		}
		if idle < spinRounds && len(w.queues) > 0 {
			idle++
			runtime.Gosched()
			continue
		}
		idle = 0
		if err := w.park(); err != nil {
			// epoll_wait failing means a broken fd, which the pool
			// reports at Close. Until then poll, so that no queue of
			// this worker's is stranded.
			w.pool.fail(err)
			time.Sleep(time.Millisecond)
		}
	}
}

// round moves every sample its queues held on arrival into the ring and
// returns how many it moved.
func (w *Worker) round() int {
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
			return moved // closed: the loop ends
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
	return moved
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
func (w *Worker) insert(bufs []*Buffer) error {
	ring := w.pool.ring
	detailed := w.pool.detailed
	blocked := false
	for len(bufs) > 0 {
		res, fails, ok := ring.Reserve(len(bufs))
		if detailed && fails > 0 {
			w.casFailure.Add(uint64(fails))
		}
		if !ok {
			if !blocked {
				blocked = true
				w.pushBlocked.Add(1)
			}
			if detailed {
				w.retries.Add(1)
			}
			if err := ring.WaitSpace(); err != nil {
				return err
			}
			continue
		}
		var t0 int64
		if detailed {
			w.casSuccess.Add(1)
			t0 = w.pool.now()
		}
		for k := range res.N {
			w.pool.copySample(res.Start+uint64(k), bufs[k].Data)
		}
		if detailed {
			w.memcpy.Record(w.pool.now() - t0)
		}
		ring.Commit(res)
		bufs = bufs[res.N:]
	}
	return nil
}

// prune drops closed queues that have nothing left to deliver.
func (w *Worker) prune() {
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

func (w *Worker) takeAdopted() {
	w.adoptMu.Lock()
	w.queues = append(w.queues, w.adopt...)
	clear(w.adopt)
	w.adopt = w.adopt[:0]
	w.hasAdopt.Store(false)
	w.adoptMu.Unlock()
}

// hasWork reports whether a round now would find something to do.
func (w *Worker) hasWork() bool {
	if w.hasAdopt.Load() || w.pool.closed.Load() {
		return true
	}
	for _, q := range w.queues {
		if q.filled.Len() > 0 || q.closed.Load() {
			return true
		}
	}
	return false
}

// park waits in epoll_wait until a producer (or Close) wakes the worker.
func (w *Worker) park() error {
	w.parked.Store(true)
	// Last look after announcing: either it sees a producer's push, or the
	// producer sees parked and writes the eventfd.
	if w.hasWork() {
		if !w.parked.CompareAndSwap(true, false) {
			w.drainEventfd() // a waker got there first; consume its write
		}
		return nil
	}
	for {
		_, err := unix.EpollWait(w.epfd, w.events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return os.NewSyscallError("epoll_wait", err)
		}
		break
	}
	w.parked.Store(false)
	w.drainEventfd()
	return nil
}

// drainEventfd resets the eventfd counter; EAGAIN means it was already zero.
func (w *Worker) drainEventfd() {
	var buf [8]byte
	if _, err := unix.Read(w.efd, buf[:]); err != nil && err != unix.EAGAIN {
		w.pool.fail(os.NewSyscallError("eventfd read", err))
	}
}

// wrapSyscall names a syscall error, passing nil through.
func wrapSyscall(name string, err error) error {
	if err == nil {
		return nil
	}
	return os.NewSyscallError(name, err)
}
