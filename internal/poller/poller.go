// Package poller is the project's one event loop primitive: an epoll set
// with an eventfd for wake-ups, parked in Go's own network poller. The
// ingress workers and the acceptor each own one.
//
// A loop polls (Poll) while it has work and parks (Park) when it has none.
// Other goroutines call Wake after making work for it. The wake is guarded
// by a CAS on the parked flag, so a burst of wakes costs one eventfd write,
// and a loop that is running costs its wakers nothing:
//
//	loop                                  waker
//	parked = true                         make work visible
//	hasWork()? → yes: un-park, return     parked CAS true→false? → write eventfd
//	epoll_wait in Go's poller
//
// Either the loop's last look (hasWork) sees the work, or the waker sees
// parked and writes the eventfd, which makes the epoll set readable.
//
// The epoll fd itself is registered with the Go runtime's poller, so a
// parked loop is a goroutine waiting for readiness, not an OS thread
// blocked in epoll_wait: on few cores, a thread blocked in a system call
// must win back a P after every wake, which costs more than the work it
// wakes for.
package poller

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// wakeTag is the tag of the eventfd's events; Add refuses it.
const wakeTag = 0

// ErrTag is returned by Add for the tag the poller keeps for itself.
var ErrTag = errors.New("poller: tag 0 is the wake-up's")

// Poller is an epoll set plus a wake-up eventfd. Poll, Park, Add, Delete
// and Close belong to the loop's goroutine; Wake may be called by any.
//
// Layout: parked, the one field wakers write, sits on its own 128 bytes
// (two lines: x86 prefetches lines in pairs), away from the loop's fields.
type Poller struct {
	// --- the loop's own fields, read-only to others after New ---
	epfd   int
	efd    int
	file   *os.File // epfd, registered with Go's poller; owns epfd
	rc     syscall.RawConn
	events []unix.EpollEvent
	// tryFn is p.try bound once, so Park allocates nothing; ready and
	// waitErr are its results.
	tryFn    func(fd uintptr) bool
	ready    int
	waitErr  error
	deadline bool // a read deadline is set on file
	_        [128]byte

	// parked is set by the loop before its last look for work and cleared
	// by the loop when it runs again, or by the waker whose CAS wins: that
	// waker writes the eventfd.
	parked atomic.Bool
	_      [124]byte

	// fdMu keeps the eventfd open while a waker writes it: Wake holds it
	// shared, Close exclusively (and sets efd to -1), so a wake that lost
	// the race with Close never writes to a reused descriptor.
	fdMu sync.RWMutex
	// failed holds the first error a waker hit, for the loop to see.
	failed atomic.Pointer[error]
}

// New makes a poller that returns at most maxEvents events per call.
func New(maxEvents int) (*Poller, error) {
	if maxEvents < 1 {
		return nil, fmt.Errorf("poller: %d events, need at least 1", maxEvents)
	}
	p := &Poller{epfd: -1, efd: -1, events: make([]unix.EpollEvent, maxEvents)}
	var err error
	if p.efd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		p.efd = -1
		return nil, os.NewSyscallError("eventfd", err)
	}
	if p.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		p.epfd = -1
		unix.Close(p.efd)
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	fail := func(err error) (*Poller, error) { return nil, errors.Join(err, p.Close()) }
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(p.efd), Pad: wakeTag}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, p.efd, &ev); err != nil {
		return fail(os.NewSyscallError("epoll_ctl add", err))
	}
	// An epoll fd is readable while events are ready in it. Non-blocking,
	// os.NewFile registers it with the runtime's poller.
	if err := unix.SetNonblock(p.epfd, true); err != nil {
		return fail(os.NewSyscallError("fcntl O_NONBLOCK", err))
	}
	p.file = os.NewFile(uintptr(p.epfd), "epoll")
	if p.rc, err = p.file.SyscallConn(); err != nil {
		return fail(fmt.Errorf("poller: epoll set: %w", err))
	}
	p.tryFn = p.try
	return p, nil
}

// Add registers fd for events; every event of fd comes back with tag in
// its Pad field. tag must not be 0.
func (p *Poller) Add(fd int, events uint32, tag int32) error {
	if tag == wakeTag {
		return ErrTag
	}
	ev := unix.EpollEvent{Events: events, Fd: int32(fd), Pad: tag}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return os.NewSyscallError("epoll_ctl add", err)
	}
	return nil
}

// Delete removes fd from the set. Closing fd removes it too.
func (p *Poller) Delete(fd int) error {
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, fd, nil); err != nil {
		return os.NewSyscallError("epoll_ctl del", err)
	}
	return nil
}

// Poll returns the events ready now, without waiting. The slice is the
// poller's and valid until the next Poll or Park.
func (p *Poller) Poll() ([]unix.EpollEvent, error) {
	n, err := p.wait()
	if err != nil {
		return nil, err
	}
	return p.filter(n)
}

// Park announces the loop parked, looks once more for work with hasWork,
// and, if there is none, waits until a registered descriptor has an event,
// Wake is called, or deadline passes (the zero time: no deadline). It
// returns the events ready, none after a wake or the deadline.
func (p *Poller) Park(hasWork func() bool, deadline time.Time) ([]unix.EpollEvent, error) {
	p.parked.Store(true)
	if hasWork() {
		if !p.parked.CompareAndSwap(true, false) {
			// A waker got there first and wrote the eventfd: consume the
			// write now, or the next Park returns at once for nothing.
			if err := p.drainWake(); err != nil {
				return nil, err
			}
		}
		return nil, nil
	}
	if !deadline.IsZero() || p.deadline {
		p.deadline = !deadline.IsZero()
		if err := p.file.SetReadDeadline(deadline); err != nil {
			p.parked.Store(false)
			return nil, fmt.Errorf("poller: deadline: %w", err)
		}
	}
	p.ready, p.waitErr = 0, nil
	err := p.rc.Read(p.tryFn)
	p.parked.Store(false)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("poller: waiting on epoll set: %w", err)
	}
	if p.waitErr != nil {
		return nil, p.waitErr
	}
	return p.filter(p.ready)
}

// try is Park's callback for RawConn.Read: it returns false (wait for
// readiness) while no event is ready.
func (p *Poller) try(uintptr) bool {
	p.ready, p.waitErr = p.wait()
	return p.ready > 0 || p.waitErr != nil
}

// wait is epoll_wait with a zero timeout, EINTR retried.
func (p *Poller) wait() (int, error) {
	for {
		n, err := unix.EpollWait(p.epfd, p.events, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, os.NewSyscallError("epoll_wait", err)
		}
		return n, nil
	}
}

// filter consumes the wake-up events among the first n and returns the
// others, compacted in place.
func (p *Poller) filter(n int) ([]unix.EpollEvent, error) {
	out := p.events[:0]
	for _, ev := range p.events[:n] {
		if ev.Pad == wakeTag {
			if err := p.drainWake(); err != nil {
				return nil, err
			}
			continue
		}
		out = append(out, ev)
	}
	if e := p.failed.Load(); e != nil {
		return out, *e
	}
	return out, nil
}

// drainWake resets the eventfd counter; EAGAIN means it was already zero.
func (p *Poller) drainWake() error {
	var buf [8]byte
	if _, err := unix.Read(p.efd, buf[:]); err != nil && err != unix.EAGAIN && err != unix.EINTR {
		return os.NewSyscallError("eventfd read", err)
	}
	return nil
}

// Wake makes sure the loop runs again: if it is parked, the first waker
// to clear the flag writes the eventfd. Any goroutine may call it.
func (p *Poller) Wake() {
	if p.parked.Load() && p.parked.CompareAndSwap(true, false) {
		p.signal()
	}
}

// signal writes the eventfd. EAGAIN means the counter is saturated, which
// already guarantees a wake-up.
func (p *Poller) signal() {
	p.fdMu.RLock()
	defer p.fdMu.RUnlock()
	if p.efd < 0 {
		return // closed: nobody to wake
	}
	one := uint64(1)
	if _, err := unix.Write(p.efd, (*[8]byte)(unsafe.Pointer(&one))[:]); err != nil && err != unix.EAGAIN {
		// Declared here, so that only a failure moves it to the heap.
		failed := error(os.NewSyscallError("eventfd write", err))
		p.failed.CompareAndSwap(nil, &failed)
	}
}

// Close closes the eventfd and the epoll set. Registered descriptors are
// the caller's. Only after the loop has stopped.
func (p *Poller) Close() error {
	p.fdMu.Lock()
	defer p.fdMu.Unlock()
	var errs []error
	if p.efd >= 0 {
		if err := unix.Close(p.efd); err != nil {
			errs = append(errs, os.NewSyscallError("close eventfd", err))
		}
	}
	if p.file != nil {
		errs = append(errs, p.file.Close())
	} else if p.epfd >= 0 {
		if err := unix.Close(p.epfd); err != nil {
			errs = append(errs, os.NewSyscallError("close epoll", err))
		}
	}
	p.efd, p.epfd, p.file = -1, -1, nil
	return errors.Join(errs...)
}
