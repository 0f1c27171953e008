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

	"golang.org/x/sys/unix"

	"github.com/seed-a9ef92a1/echo/internal/poller"
	"github.com/seed-a9ef92a1/echo/internal/sockio"
	"github.com/seed-a9ef92a1/echo/wire"
)

// acceptPause is how long the acceptor waits after the process ran out of
// file descriptors (EMFILE, ENFILE) or memory, before it tries again: the
// listening socket stays readable meanwhile, so without a pause the loop
// would spin.
const acceptPause = 10 * time.Millisecond

// DefaultPrologueTimeout is the time a peer has for its prologue (answering
// the challenge, taking the handshake): ample for a round trip across the
// world, short for a connection that only holds a descriptor.
const DefaultPrologueTimeout = 5 * time.Second

// ServeConfig configures the acceptor that Serve starts.
type ServeConfig struct {
	// MaxConns caps the connections open at once, served or in their
	// prologue (0: no cap).
	MaxConns int
	// Secret, when set, makes every connection authenticate with it (see
	// package wire) before it is served. At least wire.MinSecretLen bytes.
	Secret []byte
	// PrologueTimeout is how long a connection may take over its
	// prologue; 0 means DefaultPrologueTimeout.
	PrologueTimeout time.Duration
}

// acceptor accepts connections on a set of listeners and runs each one's
// prologue: with a secret, the challenge, the peer's response and the
// server's proof; then the handshake. Only then does the connection go to
// a worker. It is the one owner of the prologue: the workers never see a
// connection before it.
//
// A connection in its prologue is only a descriptor and a few hundred bytes
// here, and it touches no ring slot. Its loop runs on one goroutine, parked
// in its poller on the listeners and the connections in their prologue.
type acceptor struct {
	pool   *Pool
	cfg    ServeConfig
	log    *slog.Logger // nil: no logs
	poller *poller.Poller
	// refused counts connections closed before they were served;
	// authFailed those refused in authentication. Written by the loop,
	// read by Stats.
	refused    atomic.Uint64
	authFailed atomic.Uint64
	listeners  []*Listener
	closing    atomic.Bool
	done       chan struct{} // closed when the loop has exited

	// Connections in their prologue, loop only: by descriptor, and in the
	// order of their deadlines (every one gets the same timeout).
	pending map[int]*prologue
	queue   []*prologue

	closeOnce sync.Once
	closeErr  error

	mu  sync.Mutex
	err error // the first error the loop could not handle
}

// prologue is a connection between accept and its hand-over to a worker.
type prologue struct {
	fd       int
	l        *Listener // accepted it
	peer     string
	deadline time.Time
	// authing: the challenge went out and the response is awaited in
	// resp (n bytes so far).
	authing bool
	nonce   wire.Nonce
	resp    [wire.ResponseLen]byte
	n       int
	// out is what is left to write: the challenge, or the proof and the
	// handshake.
	out  []byte
	gone bool // served or refused; still in queue
}

// prologueTag marks the epoll events of a connection in its prologue;
// listeners are tagged with their index + 1.
const prologueTag = -1

// Serve starts accepting on listeners and feeding the workers. The pool owns
// the listeners from now on, even when Serve fails; Close stops them. It
// fails for samples of 0 bytes, which a stream cannot delimit.
func (p *Pool) Serve(listeners []*Listener, cfg ServeConfig) error {
	closeAll := func(err error) error {
		for _, l := range listeners {
			err = errors.Join(err, l.Close())
		}
		return err
	}
	if p.payload == 0 {
		// The wire has no framing: samples of no bytes cannot be counted,
		// and a worker would divide by the sample size.
		return closeAll(errors.New("tcp: samples of 0 bytes cannot travel over a transport"))
	}
	if cfg.Secret != nil {
		if err := wire.CheckSecret(cfg.Secret); err != nil {
			return closeAll(err)
		}
		cfg.Secret = append([]byte(nil), cfg.Secret...)
	}
	if cfg.PrologueTimeout <= 0 {
		cfg.PrologueTimeout = DefaultPrologueTimeout
	}
	pl, err := poller.New(maxEvents)
	if err != nil {
		return closeAll(err)
	}
	a := &acceptor{
		pool: p, cfg: cfg, log: p.log, poller: pl, listeners: listeners,
		done: make(chan struct{}), pending: make(map[int]*prologue),
	}
	for i, l := range listeners {
		if err := pl.Add(l.fd, unix.EPOLLIN, int32(i+1)); err != nil {
			return closeAll(errors.Join(err, pl.Close()))
		}
	}
	p.mu.Lock()
	if p.closed.Load() || p.acceptor.Load() != nil {
		p.mu.Unlock()
		if p.closed.Load() {
			err = ErrClosed
		} else {
			err = errors.New("tcp: pool already serving")
		}
		return closeAll(errors.Join(err, pl.Close()))
	}
	p.acceptor.Store(a)
	p.mu.Unlock()
	go a.run()
	return nil
}

func (a *acceptor) run() {
	defer close(a.done)
	hasWork := a.closing.Load
	for !a.closing.Load() {
		events, err := a.poller.Park(hasWork, a.nextDeadline())
		if err != nil {
			// Close reports it; meanwhile keep trying, so that the
			// listeners are not left open with nobody accepting.
			a.fail(err)
			time.Sleep(acceptPause)
			continue
		}
		for _, ev := range events {
			if ev.Pad == prologueTag {
				if c := a.pending[int(ev.Fd)]; c != nil {
					a.advance(c)
				}
				continue
			}
			a.acceptAll(a.listeners[ev.Pad-1])
		}
		a.expire(time.Now())
	}
}

// nextDeadline is the first prologue deadline, or the zero time.
func (a *acceptor) nextDeadline() time.Time {
	for len(a.queue) > 0 && a.queue[0].gone {
		a.queue[0] = nil
		a.queue = a.queue[1:]
	}
	if len(a.queue) == 0 {
		return time.Time{}
	}
	return a.queue[0].deadline
}

// expire refuses the connections whose time for their prologue is over.
func (a *acceptor) expire(now time.Time) {
	for len(a.queue) > 0 && (a.queue[0].gone || !now.Before(a.queue[0].deadline)) {
		if c := a.queue[0]; !c.gone {
			reason := "handshake timed out"
			if c.authing {
				reason = "authentication timed out"
			}
			a.refusePending(c, reason, "after", a.cfg.PrologueTimeout)
		}
		a.queue[0] = nil
		a.queue = a.queue[1:]
	}
}

// acceptAll accepts every connection waiting on l and starts its prologue.
func (a *acceptor) acceptAll(l *Listener) {
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
		// Before anything is written: a peer that has the handshake may
		// send at once, and an urgent byte that arrives before this is
		// set leaves the stream.
		if err := oobInline(fd); err != nil {
			a.refuse(fd, peer, false, "cannot prepare socket", "err", err)
			continue
		}
		if a.cfg.MaxConns > 0 && a.pool.ActiveConnections()+len(a.pending) >= a.cfg.MaxConns {
			// Closed before the handshake: the peer's connect succeeds,
			// its read of the handshake meets the end of the stream.
			a.refuse(fd, peer, false, "max connections", "max", a.cfg.MaxConns)
			continue
		}
		c := &prologue{fd: fd, l: l, peer: peer, deadline: time.Now().Add(a.cfg.PrologueTimeout)}
		if a.cfg.Secret != nil {
			rand.Read(c.nonce[:]) // never fails: crypto/rand crashes the program first
			c.authing = true
			c.out = wire.AppendChallenge(make([]byte, 0, wire.ChallengeLen), &c.nonce)
		} else {
			c.out = a.pool.handshake
		}
		if a.advance(c) && !c.gone {
			// Waiting on the peer: watch it until its deadline.
			if err := a.poller.Add(fd, unix.EPOLLIN|unix.EPOLLOUT|unix.EPOLLRDHUP|unix.EPOLLET, prologueTag); err != nil {
				a.refuse(fd, peer, false, "cannot watch", "err", err)
				a.fail(err)
				continue
			}
			a.pending[fd] = c
			a.queue = append(a.queue, c)
		}
	}
}

// advance moves c's prologue as far as the socket allows: it writes what
// is pending, reads the response, checks it, and hands c to the pool once
// the handshake is out. It returns true while c waits on its peer;
// false once c was served or refused.
func (a *acceptor) advance(c *prologue) bool {
	for {
		for len(c.out) > 0 {
			n, err := sockio.Write(c.fd, c.out)
			if err != nil {
				a.refusePending(c, "left during its prologue", "err", err)
				return false
			}
			if n == 0 {
				return true // the EPOLLOUT edge brings c back
			}
			c.out = c.out[n:]
		}
		if !c.authing {
			a.serve(c)
			return false
		}
		for c.n < len(c.resp) {
			n, err := sockio.Read(c.fd, c.resp[c.n:])
			if err != nil {
				a.refusePending(c, "left during authentication", "bytes", c.n, "err", err)
				return false
			}
			if n == 0 {
				return true // the EPOLLIN edge brings c back
			}
			c.n += n
		}
		// Bytes after the response stay in the socket for the worker.
		client, err := wire.VerifyResponse(c.resp[:], a.cfg.Secret, &c.nonce)
		if err != nil {
			a.refusePending(c, "authentication failed")
			return false
		}
		proof := wire.ServerProof(a.cfg.Secret, &c.nonce, &client)
		c.authing = false
		c.out = append(append(make([]byte, 0, len(proof)+len(a.pool.handshake)), proof[:]...), a.pool.handshake...)
	}
}

// serve ends c's prologue: it prepares the socket for its listener and
// hands it to the pool.
func (a *acceptor) serve(c *prologue) {
	a.forget(c)
	gated, err := c.l.prepare(c.fd, a.pool.payload)
	if err != nil {
		a.refuse(c.fd, c.peer, false, "cannot prepare socket", "err", err)
		return
	}
	// An error closed fd: the pool is closing, which Close reports.
	_ = a.pool.addConn(c.fd, gated, c.l.stagePartials, c.peer)
}

// forget takes c out of the poller and the map; the queue drops it lazily.
func (a *acceptor) forget(c *prologue) {
	if c.gone {
		return
	}
	c.gone = true
	if a.pending[c.fd] == c {
		delete(a.pending, c.fd)
		if err := a.poller.Delete(c.fd); err != nil {
			a.fail(err)
		}
	}
}

// refusePending forgets c and refuses it.
func (a *acceptor) refusePending(c *prologue, reason string, attrs ...any) {
	a.forget(c)
	a.refuse(c.fd, c.peer, c.authing, reason, attrs...)
}

// refuse counts fd's refusal (as an authentication failure too when auth
// is true), logs it once with its reason, and closes fd. The close comes
// last, so that a peer that sees it finds the count and the log line
// already there.
func (a *acceptor) refuse(fd int, peer string, auth bool, reason string, attrs ...any) {
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
func (a *acceptor) fail(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.err == nil {
		a.err = err
	}
}

// close stops accepting, waits for the loop to exit and closes the
// listeners and the connections still in their prologue. Connections
// already served belong to the workers. close is idempotent.
func (a *acceptor) close() error {
	a.closeOnce.Do(func() {
		a.closing.Store(true)
		a.poller.Wake()
		<-a.done
		for fd := range a.pending {
			unix.Close(fd)
		}
		clear(a.pending)
		a.queue = nil
		errs := []error{a.poller.Close()}
		for _, l := range a.listeners {
			errs = append(errs, l.Close())
		}
		a.mu.Lock()
		errs = append(errs, a.err)
		a.mu.Unlock()
		a.closeErr = errors.Join(errs...)
	})
	return a.closeErr
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
