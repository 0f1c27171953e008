package tcp

import (
	"errors"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/seed-a9ef92a1/echo/ingress"
)

// acceptPause is how long the acceptor waits after the process ran out of
// file descriptors (EMFILE, ENFILE) or memory, before it tries again: the
// listening socket stays readable meanwhile, so without a pause the loop
// would spin.
const acceptPause = 10 * time.Millisecond

// Acceptor accepts connections on a set of listeners and hands them to an
// ingress pool. It runs one goroutine, parked in epoll_wait on the listeners
// and an eventfd that Close writes.
type Acceptor struct {
	pool     *ingress.Pool
	log      *slog.Logger // nil: no logs
	maxConns int          // 0: no limit
	// refused counts connections closed at once because maxConns were
	// open. Written by the loop, read by anyone.
	refused   atomic.Uint64
	listeners []*Listener
	epfd, efd int
	done      chan struct{} // closed when the loop has exited

	closeOnce sync.Once
	closeErr  error

	mu  sync.Mutex
	err error // the first error the loop could not handle
}

// Serve starts accepting on listeners, logging refusals to log (nil: no
// logs) and refusing connections while maxConns are open (0: no limit).
// The Acceptor owns the listeners from now on, even when Serve fails.
func Serve(pool *ingress.Pool, listeners []*Listener, log *slog.Logger, maxConns int) (*Acceptor, error) {
	a := &Acceptor{pool: pool, log: log, maxConns: maxConns, listeners: listeners, epfd: -1, efd: -1, done: make(chan struct{})}
	fail := func(err error) (*Acceptor, error) {
		close(a.done)
		return nil, errors.Join(err, a.closeFDs())
	}
	var err error
	if a.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		a.epfd = -1
		return fail(os.NewSyscallError("epoll_create1", err))
	}
	if a.efd, err = unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC); err != nil {
		a.efd = -1
		return fail(os.NewSyscallError("eventfd", err))
	}
	// Pad carries the listener's index + 1; 0 is the eventfd.
	if err := unix.EpollCtl(a.epfd, unix.EPOLL_CTL_ADD, a.efd,
		&unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(a.efd)}); err != nil {
		return fail(os.NewSyscallError("epoll_ctl add", err))
	}
	for i, l := range listeners {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(l.fd), Pad: int32(i + 1)}
		if err := unix.EpollCtl(a.epfd, unix.EPOLL_CTL_ADD, l.fd, &ev); err != nil {
			return fail(os.NewSyscallError("epoll_ctl add", err))
		}
	}
	go a.run()
	return a, nil
}

func (a *Acceptor) run() {
	defer close(a.done)
	events := make([]unix.EpollEvent, len(a.listeners)+1)
	for {
		n, err := unix.EpollWait(a.epfd, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			// Close reports it; meanwhile keep trying, so that the
			// listeners are not left open with nobody accepting.
			a.fail(os.NewSyscallError("epoll_wait", err))
			time.Sleep(acceptPause)
			continue
		}
		for _, ev := range events[:n] {
			if ev.Pad == 0 {
				return // Close
			}
			a.acceptAll(a.listeners[ev.Pad-1])
		}
	}
}

// acceptAll accepts every connection waiting on l.
func (a *Acceptor) acceptAll(l *Listener) {
	for {
		fd, _, err := unix.Accept4(l.fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		switch err {
		case nil:
		case unix.EAGAIN:
			return
		case unix.EINTR, unix.ECONNABORTED:
			continue // the peer gave up before we took it
		case unix.ENETDOWN, unix.EPROTO, unix.ENOPROTOOPT, unix.EHOSTDOWN, unix.ENONET,
			unix.EHOSTUNREACH, unix.EOPNOTSUPP, unix.ENETUNREACH:
			continue // network errors of that one connection: accept(2) says retry
		case unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM:
			// Out of descriptors or memory, for now: leave the peers
			// queued and try again shortly.
			time.Sleep(acceptPause)
			return
		default:
			a.fail(os.NewSyscallError("accept4", err))
			return
		}
		peer := peerName(fd)
		if a.maxConns > 0 && a.pool.ActiveConnections() >= a.maxConns {
			// Counted first, so that a peer that sees the close sees
			// the count too. Closed before the handshake: the peer's
			// connect succeeds, its read of the handshake meets the end
			// of the stream.
			a.refused.Add(1)
			unix.Close(fd)
			if a.log != nil {
				a.log.Warn("echo: connection refused", "peer", peer, "reason", "max connections", "max", a.maxConns)
			}
			continue
		}
		gated, err := l.prepare(fd, a.pool.Payload())
		if err != nil {
			unix.Close(fd) // the peer sees the connection close
			if a.log != nil {
				a.log.Warn("echo: connection refused", "peer", peer, "reason", err)
			}
			continue
		}
		if err := a.pool.AddConn(fd, gated, peer); errors.Is(err, ingress.ErrClosed) {
			return // AddConn closed fd
		}
		// Any other error is this peer's alone (it left before its
		// handshake); AddConn closed its fd.
	}
}

// fail records an error; Close returns the first one.
func (a *Acceptor) fail(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.err == nil {
		a.err = err
	}
}

// Close stops accepting, waits for the loop to exit and closes the
// listeners. Connections already accepted belong to the pool. Close is
// idempotent.
func (a *Acceptor) Close() error {
	a.closeOnce.Do(func() {
		one := uint64(1)
		_, err := unix.Write(a.efd, (*[8]byte)(unsafe.Pointer(&one))[:])
		if err != nil {
			a.closeErr = os.NewSyscallError("eventfd write", err)
		} else {
			<-a.done
		}
		a.closeErr = errors.Join(a.closeErr, a.closeFDs())
		a.mu.Lock()
		a.closeErr = errors.Join(a.closeErr, a.err)
		a.err = nil
		a.mu.Unlock()
	})
	return a.closeErr
}

// closeFDs closes the listeners, the eventfd and the epoll set.
func (a *Acceptor) closeFDs() error {
	var errs []error
	for _, l := range a.listeners {
		errs = append(errs, l.close())
	}
	if a.efd >= 0 {
		errs = append(errs, wrap("close eventfd", unix.Close(a.efd)))
	}
	if a.epfd >= 0 {
		errs = append(errs, wrap("close epoll", unix.Close(a.epfd)))
	}
	a.efd, a.epfd = -1, -1
	return errors.Join(errs...)
}

// peerName is the remote address of a connected socket, for logs.
func peerName(fd int) string {
	sa, err := unix.Getpeername(fd)
	if err != nil {
		return "unknown"
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return (&net.TCPAddr{IP: a.Addr[:], Port: a.Port}).String()
	case *unix.SockaddrInet6:
		return (&net.TCPAddr{IP: a.Addr[:], Port: a.Port}).String()
	case *unix.SockaddrUnix:
		return "unix:" + a.Name
	}
	return "unknown"
}

// Refused returns the number of connections refused for MaxConnections.
func (a *Acceptor) Refused() uint64 { return a.refused.Load() }
