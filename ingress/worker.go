package ingress

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/seed-a9ef92a1/echo/internal/hist"
	"github.com/seed-a9ef92a1/echo/ringbuf"
)

// maxEvents is the size of the epoll event array each worker passes to
// epoll_wait.
const maxEvents = 256

// Worker is one ingress loop: it owns a set of producer queues and a set of
// connections, moves their samples into the ring, and parks in epoll_wait
// (on its eventfd and its sockets) when there is nothing to move. Every
// field not marked otherwise belongs to the worker's goroutine.
type Worker struct {
	pool *Pool
	epfd int // epoll set: the eventfd and the worker's sockets
	efd  int // eventfd that producers write to wake a parked worker
	// epoll is epfd registered with Go's own poller, so that a parked
	// worker is a goroutine waiting for its epoll set to become readable,
	// not a thread blocked in epoll_wait (see park). It owns epfd.
	epoll   *os.File
	epollRC syscall.RawConn
	// tryWaitFn is w.tryWait bound once; ready and waitErr are its results.
	tryWaitFn func(fd uintptr) bool
	ready     int
	waitErr   error

	// conns is the connection table, indexed by the slot carried in each
	// socket's epoll event; slot 0 is the eventfd's, so conns[0] is nil.
	conns     []*conn
	freeSlots []int
	live      int // connections in conns
	// nconns counts the connections placed on this worker and not yet
	// dropped, for placement. Guarded by pool.mu.
	nconns int
	// backlog holds connections whose turn ended with whole samples left;
	// edge-triggered epoll will not report them again.
	backlog, backlogSpare []*conn
	iov                   []unix.Iovec // readv scratch, cleared after use
	maxPerRead            int          // whole samples per readv (IOV_MAX)
	inq                   int32        // FIONREAD result
	scratch               [4096]byte   // discard's buffer
	// spare holds slots claimed and not yet written (after a short read,
	// which FIONREAD makes all but impossible); claim hands them out
	// before reserving more. Only this worker fills them, so a spare left
	// on a worker that never reads again would keep its batch open.
	spare ringbuf.Reservation

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
	adoptMu    sync.Mutex
	adopt      []*Queue
	adoptConns []*conn
	hasAdopt   atomic.Bool

	// Counters written by the worker, read by snapshots.
	pushBlocked, casSuccess, casFailure, retries atomic.Uint64
	drainRound, memcpy, dwell                    hist.Histogram
	// connDepthSum is the sum of the worker's connections' depths;
	// connDepthMax the largest depth it set since Stats last took it.
	connDepthSum, connDepthMax atomic.Int64
}

func newWorker(p *Pool) (*Worker, error) {
	w := &Worker{pool: p, events: make([]unix.EpollEvent, maxEvents), conns: make([]*conn, 1)}
	if nl := nonEmpty(p.leafBytes); nl > 0 {
		w.maxPerRead = max(1, iovMax/nl)
		w.iov = make([]unix.Iovec, 0, w.maxPerRead*nl)
	}
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
	// An epoll fd is readable while events are ready in it. Non-blocking,
	// os.NewFile registers it with the runtime's poller.
	if err := unix.SetNonblock(w.epfd, true); err != nil {
		w.closeFDs()
		return nil, os.NewSyscallError("fcntl O_NONBLOCK", err)
	}
	w.epoll = os.NewFile(uintptr(w.epfd), "ingress-epoll")
	rc, err := w.epoll.SyscallConn()
	if err != nil {
		w.closeFDs()
		return nil, fmt.Errorf("ingress: epoll set: %w", err)
	}
	w.epollRC = rc
	w.tryWaitFn = w.tryWait
	return w, nil
}

func (w *Worker) closeFDs() error {
	w.fdMu.Lock()
	defer w.fdMu.Unlock()
	err := wrapSyscall("close eventfd", unix.Close(w.efd))
	if w.epoll != nil {
		err = errors.Join(err, w.epoll.Close())
	} else {
		err = errors.Join(err, wrapSyscall("close epoll", unix.Close(w.epfd)))
	}
	w.efd, w.epfd, w.epoll = -1, -1, nil
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
// on either side. With connections, each round also collects the socket
// events already pending (epoll_wait with a zero timeout).
func (w *Worker) run() {
	idle := 0
	for !w.pool.closed.Load() {
		moved, err := w.round()
		if err == nil && (w.live > 0 || len(w.backlog) > 0) {
			var n int
			n, err = w.poll(0)
			moved += n
		}
		if err != nil {
			if errors.Is(err, ringbuf.ErrClosed) {
				// The ring closes just before the pool: nothing can
				// move any more, so wait for Close instead of spinning.
				<-w.pool.done
				return
			}
			// epoll_wait failing means a broken fd, which the pool
			// reports at Close. Until then poll, so that no queue of
			// this worker's is stranded.
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
		if _, err := w.park(); err != nil && !errors.Is(err, ringbuf.ErrClosed) {
			w.pool.fail(err)
			time.Sleep(time.Millisecond)
		}
	}
}

// round moves every sample its queues held on arrival into the ring and
// returns how many it moved. It fails only with ringbuf.ErrClosed.
func (w *Worker) round() (int, error) {
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
func (w *Worker) insert(bufs []*Buffer) error {
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
	conns := w.adoptConns
	w.adoptConns = nil
	w.hasAdopt.Store(false)
	w.adoptMu.Unlock()
	for _, c := range conns {
		w.adoptConn(c)
	}
}

// hasWork reports whether a round now would find something to do.
func (w *Worker) hasWork() bool {
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

// park waits in epoll_wait until a producer (or Close) wakes the worker or
// a socket has something for it, and serves what the wait reported.
func (w *Worker) park() (int, error) {
	w.parked.Store(true)
	// Last look after announcing: either it sees a producer's push, or the
	// producer sees parked and writes the eventfd.
	if w.hasWork() {
		if !w.parked.CompareAndSwap(true, false) {
			w.drainEventfd() // a waker got there first; consume its write
		}
		return 0, nil
	}
	n, err := w.waitReady()
	w.parked.Store(false)
	if err != nil {
		return 0, err
	}
	return w.dispatch(w.events[:n])
}

// poll serves the backlog, then every event pending now, without waiting.
func (w *Worker) poll(timeout int) (int, error) {
	moved := 0
	if len(w.backlog) > 0 {
		n, err := w.serveBacklog()
		moved += n
		if err != nil {
			return moved, err
		}
	}
	n, err := w.wait(timeout)
	if err != nil {
		return moved, err
	}
	m, err := w.dispatch(w.events[:n])
	return moved + m, err
}

// waitReady parks the worker's goroutine in Go's poller until its epoll
// set has events, then collects them. Parked this way, the worker holds no
// OS thread and is woken by the scheduler like any network goroutine;
// a thread blocked in epoll_wait would have to win back a P after every
// wake, which on a few cores costs more than the work it wakes for.
func (w *Worker) waitReady() (int, error) {
	w.ready, w.waitErr = 0, nil
	if err := w.epollRC.Read(w.tryWaitFn); err != nil {
		return 0, fmt.Errorf("ingress: waiting on epoll set: %w", err)
	}
	return w.ready, w.waitErr
}

// tryWait is waitReady's callback: it returns false (wait for readiness)
// while no event is ready.
func (w *Worker) tryWait(fd uintptr) bool {
	w.ready, w.waitErr = w.wait(0)
	return w.ready > 0 || w.waitErr != nil
}

// wait is epoll_wait with EINTR retried.
func (w *Worker) wait(timeout int) (int, error) {
	for {
		n, err := unix.EpollWait(w.epfd, w.events, timeout)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, os.NewSyscallError("epoll_wait", err)
		}
		return n, nil
	}
}

// dispatch serves a batch of epoll events.
func (w *Worker) dispatch(events []unix.EpollEvent) (int, error) {
	moved := 0
	for i := range events {
		ev := &events[i]
		if ev.Pad == 0 {
			w.drainEventfd()
			continue
		}
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
func (w *Worker) closeConns() {
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
