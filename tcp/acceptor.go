package tcp

import (
	"crypto/rand"
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
	"github.com/seed-a9ef92a1/echo/wire"
)

// acceptPause is how long the acceptor waits after the process ran out of
// file descriptors (EMFILE, ENFILE) or memory, before it tries again: the
// listening socket stays readable meanwhile, so without a pause the loop
// would spin.
const acceptPause = 10 * time.Millisecond

// Config configures an Acceptor.
type Config struct {
	// Logger gets a Warn record for each connection refused (nil: no
	// logs).
	Logger *slog.Logger
	// MaxConns caps the connections open at once, served or
	// authenticating (0: no cap).
	MaxConns int
	// Secret, when set, makes every connection authenticate with it (see
	// package wire) before it is handed to the pool. At least
	// wire.MinSecretLen bytes.
	Secret []byte
	// AuthTimeout is how long a connection may take to authenticate;
	// 0 means DefaultAuthTimeout.
	AuthTimeout time.Duration
}

// DefaultAuthTimeout is the time a peer has to answer the challenge: ample
// for a round trip across the world, short for a connection that only
// holds a descriptor.
const DefaultAuthTimeout = 5 * time.Second

// Acceptor accepts connections on a set of listeners and hands them to an
// ingress pool, after authenticating them when a secret is set. It runs one
// goroutine, parked in epoll_wait on the listeners, the connections
// authenticating and an eventfd that Close writes.
//
// An authenticating connection never reaches the pool: until its proof
// checks out it is only a descriptor and 120 bytes here, and it touches no
// ring slot.
type Acceptor struct {
	pool *ingress.Pool
	cfg  Config
	log  *slog.Logger // nil: no logs
	// refused counts connections closed before they were served: over
	// MaxConns, or failing authentication. authFailed counts the latter.
	// Written by the loop, read by anyone.
	refused    atomic.Uint64
	authFailed atomic.Uint64
	listeners  []*Listener
	epfd, efd  int
	done       chan struct{} // closed when the loop has exited

	// Connections authenticating, loop only: by descriptor, and in the
	// order of their deadlines (every one gets the same timeout).
	authing map[int]*authConn
	queue   []*authConn

	closeOnce sync.Once
	closeErr  error

	mu  sync.Mutex
	err error // the first error the loop could not handle
}

// authConn is a connection in the middle of authenticating.
type authConn struct {
	fd       int
	l        *Listener // accepted it
	peer     string
	deadline time.Time
	nonce    wire.Nonce
	resp     [wire.ResponseLen]byte
	n        int  // bytes of resp read
	gone     bool // authenticated or refused; still in queue
}

// authPad marks an authenticating connection's epoll events.
const authPad = -1

// Serve starts accepting on listeners. The Acceptor owns the listeners from
// now on, even when Serve fails.
func Serve(pool *ingress.Pool, listeners []*Listener, cfg Config) (*Acceptor, error) {
	if cfg.Secret != nil {
		if err := wire.CheckSecret(cfg.Secret); err != nil {
			errs := []error{err}
			for _, l := range listeners {
				errs = append(errs, l.close())
			}
			return nil, errors.Join(errs...)
		}
		cfg.Secret = append([]byte(nil), cfg.Secret...)
	}
	if cfg.AuthTimeout <= 0 {
		cfg.AuthTimeout = DefaultAuthTimeout
	}
	a := &Acceptor{
		pool: pool, cfg: cfg, log: cfg.Logger, listeners: listeners, epfd: -1, efd: -1,
		done: make(chan struct{}), authing: make(map[int]*authConn),
	}
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
	// Pad carries the listener's index + 1; 0 is the eventfd, authPad an
	// authenticating connection.
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
	events := make([]unix.EpollEvent, 256)
	for {
		n, err := unix.EpollWait(a.epfd, events, a.timeout())
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
			switch {
			case ev.Pad == 0:
				return // Close
			case ev.Pad == authPad:
				if c := a.authing[int(ev.Fd)]; c != nil {
					a.authRead(c)
				}
			default:
				a.acceptAll(a.listeners[ev.Pad-1])
			}
		}
		a.expire(time.Now())
	}
}

// timeout is epoll_wait's timeout: until the first authentication deadline,
// or forever.
func (a *Acceptor) timeout() int {
	for len(a.queue) > 0 && a.queue[0].gone {
		a.queue[0] = nil
		a.queue = a.queue[1:]
	}
	if len(a.queue) == 0 {
		return -1
	}
	d := time.Until(a.queue[0].deadline)
	return int(max(0, (d+time.Millisecond-1)/time.Millisecond))
}

// expire refuses the connections whose time to authenticate is over.
func (a *Acceptor) expire(now time.Time) {
	for len(a.queue) > 0 && (a.queue[0].gone || !now.Before(a.queue[0].deadline)) {
		if c := a.queue[0]; !c.gone {
			a.refuseAuth(c, "authentication timed out", "after", a.cfg.AuthTimeout)
		}
		a.queue[0] = nil
		a.queue = a.queue[1:]
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
		if a.cfg.MaxConns > 0 && a.pool.ActiveConnections()+len(a.authing) >= a.cfg.MaxConns {
			// Closed before the handshake: the peer's connect succeeds,
			// its read of the handshake meets the end of the stream.
			a.refuse(fd, peer, false, "max connections", "max", a.cfg.MaxConns)
			continue
		}
		if a.cfg.Secret != nil {
			// Prepared once authenticated: SO_RCVLOWAT at a sample's
			// size would hide a response shorter than one.
			a.challenge(fd, l, peer)
			continue
		}
		if err := a.serve(fd, l, peer); errors.Is(err, ingress.ErrClosed) {
			return // AddConn closed fd
		}
		// Any other error is this peer's alone (it left before its
		// handshake); AddConn closed its fd.
	}
}

// serve prepares fd for its listener and hands it to the pool. Errors are
// the connection's own and closed it, except ingress.ErrClosed.
func (a *Acceptor) serve(fd int, l *Listener, peer string) error {
	gated, err := l.prepare(fd, a.pool.Payload())
	if err != nil {
		if a.log != nil {
			a.log.Warn("echo: connection refused", "peer", peer, "reason", err)
		}
		unix.Close(fd) // the peer sees the connection close
		return err
	}
	return a.pool.AddConn(fd, gated, peer)
}

// challenge sends a new connection its challenge and waits for the answer.
func (a *Acceptor) challenge(fd int, l *Listener, peer string) {
	c := &authConn{fd: fd, l: l, peer: peer, deadline: time.Now().Add(a.cfg.AuthTimeout)}
	rand.Read(c.nonce[:]) // never fails: crypto/rand crashes the program first
	msg := wire.AppendChallenge(make([]byte, 0, wire.ChallengeLen), &c.nonce)
	// A new socket's send buffer is empty: the challenge goes whole, or the
	// peer is gone.
	if n, err := ingress.WriteSome(fd, msg); err != nil || n < len(msg) {
		a.refuse(fd, peer, true, "left before its challenge", "err", err)
		return
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: int32(fd), Pad: authPad}
	if err := unix.EpollCtl(a.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		unix.Close(fd)
		a.fail(os.NewSyscallError("epoll_ctl add", err))
		return
	}
	a.authing[fd] = c
	a.queue = append(a.queue, c)
}

// authRead reads what c's peer sent of its response and, once it is
// whole, checks it: on success c goes to the pool with the server's proof
// sent, otherwise it is closed. Bytes after the response stay in the
// socket for the pool.
func (a *Acceptor) authRead(c *authConn) {
	n, err := unix.Read(c.fd, c.resp[c.n:])
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return
	case err != nil:
		a.refuseAuth(c, "read failed", "err", os.NewSyscallError("read", err))
		return
	case n == 0:
		a.refuseAuth(c, "left during authentication", "bytes", c.n)
		return
	}
	c.n += n
	if c.n < wire.ResponseLen {
		return
	}
	client, err := wire.VerifyResponse(c.resp[:], a.cfg.Secret, &c.nonce)
	if err != nil {
		a.refuseAuth(c, "authentication failed")
		return
	}
	a.forget(c)
	proof := wire.ServerProof(a.cfg.Secret, &c.nonce, &client)
	if n, err := ingress.WriteSome(c.fd, proof[:]); err != nil || n < len(proof) {
		unix.Close(c.fd)
		if a.log != nil {
			a.log.Debug("echo: connection left after authenticating", "peer", c.peer, "err", err)
		}
		return
	}
	// Errors closed the connection; the pool's closing is Close's to
	// report.
	a.serve(c.fd, c.l, c.peer)
}

// forget takes c out of the epoll set and the map; the queue drops it
// lazily.
func (a *Acceptor) forget(c *authConn) {
	c.gone = true
	delete(a.authing, c.fd)
	if err := unix.EpollCtl(a.epfd, unix.EPOLL_CTL_DEL, c.fd, nil); err != nil {
		a.fail(os.NewSyscallError("epoll_ctl del", err))
	}
}

// refuseAuth forgets c and refuses it.
func (a *Acceptor) refuseAuth(c *authConn, reason string, attrs ...any) {
	a.forget(c)
	a.refuse(c.fd, c.peer, true, reason, attrs...)
}

// refuse counts fd's refusal (as an authentication failure too when auth
// is true), logs it once with its reason, and closes fd. The close comes
// last, so that a peer that sees it finds the count and the log line
// already there.
func (a *Acceptor) refuse(fd int, peer string, auth bool, reason string, attrs ...any) {
	a.refused.Add(1)
	if auth {
		a.authFailed.Add(1)
	}
	if a.log != nil {
		a.log.Warn("echo: connection refused", append([]any{"peer", peer, "reason", reason}, attrs...)...)
	}
	unix.Close(fd)
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
			// The loop is gone: the connections still authenticating
			// are ours to close.
			for fd := range a.authing {
				unix.Close(fd)
			}
			clear(a.authing)
			a.queue = nil
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

// Refused returns the number of connections closed before they were
// served: over MaxConns, or failing authentication.
func (a *Acceptor) Refused() uint64 { return a.refused.Load() }

// AuthFailures returns the number of connections refused because they did
// not authenticate: a wrong proof, no answer in time, or leaving first.
func (a *Acceptor) AuthFailures() uint64 { return a.authFailed.Load() }
