package tcp

import (
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
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
	// V1Only turns version 2 off: connections are served as echo's version
	// 1 from the handshake on, with no look at their first bytes.
	V1Only bool
	// SessionTTL is how long a version 2 session outlives its last
	// connection (0: DefaultSessionTTL). MaxSessions bounds the sessions
	// kept (0: twice MaxConns, or DefaultMaxSessions without a cap).
	SessionTTL  time.Duration
	MaxSessions int
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
	queue   []deadline
	// v2 says whether connections may open version 2: it is on, and a
	// sample is longer than its probe. leaves is the server's tree for
	// version 2, limits what a hello may hold.
	v2       bool
	leaves   []wire.Leaf
	limits   wire.Limits
	sessions *sessions
	// resuming holds prologues waiting for their session's old connection
	// to end; resumeWake is set when one may have.
	resuming   []*prologue
	resumeWake atomic.Bool
	// sniffing counts connections that have their handshake and have sent
	// nothing yet: served, to their peer and to ActiveConnections, though
	// the acceptor still holds them.
	sniffing atomic.Int64
	scratch  []byte // for draining a refused connection

	closeOnce sync.Once
	closeErr  error

	mu  sync.Mutex
	err error // the first error the loop could not handle
}

// prologue is a connection between accept and its hand-over to a worker.
type prologue struct {
	fd    int
	l     *Listener // accepted it
	peer  string
	phase phase
	// gen counts c's deadlines: a queue entry of an older one is stale.
	// armed: c has a deadline now.
	gen   uint32
	armed bool
	// nonce and resp (n bytes so far): authentication's challenge and the
	// peer's response.
	nonce wire.Nonce
	resp  [wire.ResponseLen]byte
	n     int
	// hello is the version 2 hello read so far; sess the session it
	// attached to; refusal, when set, is why c closes once out is
	// written.
	hello   []byte
	sess    *session
	want    wire.SessionID // the session a resuming hello asked for
	refusal string
	// out is what is left to write: the challenge, the proof and the
	// handshake, the offer, or the reply.
	out  []byte
	gone bool // served or refused; may still be in queue
}

// phase is where a prologue stands: it waits on its peer for what the
// phase names, after out is written.
type phase uint8

const (
	phaseAuth      phase = iota // the response to the challenge
	phaseHandshake              // nothing: out holds the handshake
	phaseSniff                  // the first bytes: a sample (version 1) or the probe
	phaseHello                  // the version 2 hello
	phaseResume                 // the old connection of its session to end
	phaseReply                  // nothing: out holds the reply; then served or refused
)

// deadline is one entry of the acceptor's queue of deadlines.
type deadline struct {
	c   *prologue
	gen uint32
	at  time.Time
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
		// The probe must be shorter than a sample, so that an echo
		// server holds it as part of one (wire's v2.go).
		v2:     !cfg.V1Only && p.payload > wire.ProbeLen,
		leaves: p.leaves,
	}
	if a.v2 {
		a.limits = wire.Limits{MaxArrays: max(len(p.leaves), wire.DefaultLimits.MaxArrays)}
		a.limits.MaxDims = wire.DefaultLimits.MaxDims
		for _, l := range p.leaves {
			a.limits.MaxDims = max(a.limits.MaxDims, len(l.Shape))
		}
		own, err := wire.AppendHello(nil, wire.Hello{Leaves: p.leaves})
		if err != nil {
			return closeAll(errors.Join(err, pl.Close()))
		}
		a.limits.MaxHello = max(wire.DefaultLimits.MaxHello, 2*len(own))
		ttl, most := cfg.SessionTTL, cfg.MaxSessions
		if ttl <= 0 {
			ttl = DefaultSessionTTL
		}
		if most <= 0 {
			most = DefaultMaxSessions
			if cfg.MaxConns > 0 {
				most = 2 * cfg.MaxConns
			}
		}
		a.sessions = newSessions(most, ttl)
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
	hasWork := func() bool { return a.closing.Load() || a.resumeWake.Load() }
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
		if a.resumeWake.Swap(false) {
			a.retryResumes()
		}
		a.expire(time.Now())
	}
}

// nextDeadline is the first prologue deadline, or the zero time.
func (a *acceptor) nextDeadline() time.Time {
	for len(a.queue) > 0 && a.stale(a.queue[0]) {
		a.queue[0] = deadline{}
		a.queue = a.queue[1:]
	}
	if len(a.queue) == 0 {
		return time.Time{}
	}
	return a.queue[0].at
}

// stale reports whether a queue entry no longer bounds its prologue.
func (a *acceptor) stale(d deadline) bool { return d.c.gone || d.c.gen != d.gen }

// arm gives c a deadline of one prologue timeout from now, replacing any
// earlier one. Every deadline is the same timeout from its arming, so the
// queue stays in order.
func (a *acceptor) arm(c *prologue) {
	c.gen++
	c.armed = true
	a.queue = append(a.queue, deadline{c: c, gen: c.gen, at: time.Now().Add(a.cfg.PrologueTimeout)})
}

// disarm takes c's deadline away: it waits on its peer for as long as the
// peer likes, as a served connection does.
func (a *acceptor) disarm(c *prologue) { c.gen, c.armed = c.gen+1, false }

// expire refuses the connections whose time for their prologue is over.
func (a *acceptor) expire(now time.Time) {
	for len(a.queue) > 0 && (a.stale(a.queue[0]) || !now.Before(a.queue[0].at)) {
		if c := a.queue[0].c; !a.stale(a.queue[0]) {
			reason := "handshake timed out"
			switch c.phase {
			case phaseAuth:
				reason = "authentication timed out"
			case phaseSniff:
				// Only a partial probe arms a deadline here: what came is
				// the start of a version 1 sample after all, and the
				// worker's stall timeout watches the rest.
				a.queue[0] = deadline{}
				a.queue = a.queue[1:]
				a.serve(c)
				continue
			case phaseHello:
				reason = "version 2 hello timed out"
			case phaseResume:
				reason = "the session's old connection did not end in time"
			}
			a.refusePending(c, reason, "after", a.cfg.PrologueTimeout)
		}
		a.queue[0] = deadline{}
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
		if a.cfg.MaxConns > 0 && a.pool.servedConns()+len(a.pending) >= a.cfg.MaxConns {
			// Closed before the handshake: the peer's connect succeeds,
			// its read of the handshake meets the end of the stream.
			a.refuse(fd, peer, false, "max connections", "max", a.cfg.MaxConns)
			continue
		}
		c := &prologue{fd: fd, l: l, peer: peer}
		if a.cfg.Secret != nil {
			rand.Read(c.nonce[:]) // never fails: crypto/rand crashes the program first
			c.phase = phaseAuth
			c.out = wire.AppendChallenge(make([]byte, 0, wire.ChallengeLen), &c.nonce)
		} else {
			c.phase = phaseHandshake
			c.out = a.pool.handshake
		}
		if a.advance(c) && !c.gone && a.pending[fd] == nil {
			// Waiting on the peer: watch it.
			if err := a.poller.Add(fd, unix.EPOLLIN|unix.EPOLLOUT|unix.EPOLLRDHUP|unix.EPOLLET, prologueTag); err != nil {
				a.refusePending(c, "cannot watch", "err", err)
				a.fail(err)
				continue
			}
			a.pending[fd] = c
			if !c.armed && c.phase != phaseSniff {
				a.arm(c)
			}
		}
	}
}

// advance moves c's prologue as far as the socket allows: it writes what
// is pending, then reads and acts on what the phase waits for, until c
// waits on its peer (true) or was served or refused (false).
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
		var wait bool
		switch c.phase {
		case phaseAuth:
			wait = a.readResponse(c)
		case phaseHandshake:
			if !a.v2 {
				a.serve(c)
				return false
			}
			c.phase = phaseSniff
			a.sniffing.Add(1)
			a.disarm(c)
		case phaseSniff:
			wait = a.sniff(c)
		case phaseHello:
			wait = a.readHello(c)
		case phaseResume:
			wait = a.resume(c)
		case phaseReply:
			if c.refusal != "" {
				a.refusePending(c, c.refusal)
			} else {
				a.serve(c)
			}
			return false
		}
		if wait || c.gone {
			return !c.gone
		}
	}
}

// readResponse reads the peer's answer to the challenge and checks it;
// then the proof and the handshake go out. It returns true to wait for
// more of the response.
func (a *acceptor) readResponse(c *prologue) bool {
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
	// Bytes after the response stay in the socket.
	client, err := wire.VerifyResponse(c.resp[:], a.cfg.Secret, &c.nonce)
	if err != nil {
		a.refusePending(c, "authentication failed")
		return false
	}
	proof := wire.ServerProof(a.cfg.Secret, &c.nonce, &client)
	c.phase = phaseHandshake
	c.out = append(append(make([]byte, 0, len(proof)+len(a.pool.handshake)), proof[:]...), a.pool.handshake...)
	return false
}

// sniff looks at the first bytes the peer sent after the handshake,
// without taking them: version 2's probe, or the start of a sample, which
// the connection's worker reads from the socket as if nobody had looked.
// It returns true to wait for more bytes.
func (a *acceptor) sniff(c *prologue) bool {
	var first [wire.ProbeLen]byte
	n, err := sockio.Peek(c.fd, first[:])
	switch {
	case err != nil:
		// Gone before its first sample, as a served connection may go:
		// not a refusal.
		a.forget(c)
		if a.log != nil {
			a.log.Debug("echo: connection closed", "peer", c.peer, "reason", reasonText(err), "samples", 0)
		}
		unix.Close(c.fd)
		return false
	case n == 0:
		return true
	case string(first[:n]) != wire.Probe[:n]:
		a.serve(c) // version 1: a sample
		return false
	case n < wire.ProbeLen:
		// The probe's start, or a sample's: wait for more, but not for
		// ever.
		if !c.armed {
			a.arm(c)
		}
		return true
	}
	if _, err := io.ReadFull(fdReader(c.fd), first[:]); err != nil {
		a.refusePending(c, "left during its probe", "err", err)
		return false
	}
	a.sniffing.Add(-1)
	c.phase = phaseHello
	c.out = []byte(wire.Offer)
	if !c.armed {
		a.arm(c)
	}
	return false
}

// readHello reads the version 2 hello, checks its tree against the
// server's and finds or starts its session. It returns true to wait for
// more of the hello.
func (a *acceptor) readHello(c *prologue) bool {
	for {
		need, err := wire.HelloLen(c.hello, a.limits)
		switch {
		case err == wire.ErrShort:
			need = wire.HelloHeaderLen
		case err != nil:
			a.refusePending(c, "bad version 2 hello", "err", err)
			return false
		case len(c.hello) == need:
			need = 0
		}
		if need == 0 {
			break
		}
		if cap(c.hello) < need {
			c.hello = append(make([]byte, 0, need), c.hello...)
		}
		n, err := sockio.Read(c.fd, c.hello[len(c.hello):need])
		if err != nil {
			a.refusePending(c, "left during its version 2 hello", "bytes", len(c.hello), "err", err)
			return false
		}
		if n == 0 {
			return true
		}
		c.hello = c.hello[:len(c.hello)+n]
	}
	h, _, err := wire.DecodeHello(c.hello, a.limits)
	c.hello = nil
	if err != nil {
		a.refusePending(c, "bad version 2 hello", "err", err)
		return false
	}
	if msg := wire.LeafMismatch(h.Leaves, a.leaves); msg != "" {
		c.phase, c.refusal = phaseReply, "spec mismatch: "+msg
		c.out = wire.AppendReply(nil, wire.Reply{Status: wire.StatusRefused, Message: msg})
		return false
	}
	if h.Session.IsZero() {
		s := a.sessions.create(c.fd, time.Now())
		if s == nil {
			c.phase, c.refusal = phaseReply, "too many sessions"
			c.out = wire.AppendReply(nil, wire.Reply{Status: wire.StatusRefused, Message: "too many sessions with connections"})
			return false
		}
		c.sess, c.phase = s, phaseReply
		c.out = wire.AppendReply(nil, wire.Reply{Status: wire.StatusNew, Session: s.id})
		return false
	}
	c.want, c.phase = h.Session, phaseResume
	return false
}

// resume attaches c to the session its hello names once no other
// connection holds it, and replies with the session's position. It returns
// true while the old connection is still being closed.
func (a *acceptor) resume(c *prologue) bool {
	s := a.sessions.lookup(c.want, time.Now())
	if s == nil {
		c.phase, c.refusal = phaseReply, "unknown session"
		c.out = wire.AppendReply(nil, wire.Reply{Status: wire.StatusUnknownSession,
			Message: "session unknown: it expired, or the server restarted"})
		return false
	}
	if !s.attach(c.fd) {
		if !slices.Contains(a.resuming, c) {
			a.resuming = append(a.resuming, c)
		}
		return true
	}
	c.sess, c.phase = s, phaseReply
	c.out = wire.AppendReply(nil, wire.Reply{Status: wire.StatusResumed, Session: s.id, Committed: s.committed.Load()})
	return false
}

// retryResumes advances the prologues waiting for a session to detach.
func (a *acceptor) retryResumes() {
	waiting := a.resuming
	a.resuming = nil
	for _, c := range waiting {
		if !c.gone {
			a.advance(c)
		}
	}
}

// fdReader reads a socket whose bytes are known to be there.
type fdReader int

func (r fdReader) Read(b []byte) (int, error) {
	n, err := sockio.Read(int(r), b)
	if err == nil && n == 0 {
		return 0, io.ErrUnexpectedEOF // peeked bytes are there
	}
	return n, err
}

// serve ends c's prologue: it prepares the socket for its listener and
// hands it to the pool.
func (a *acceptor) serve(c *prologue) {
	a.forget(c)
	gated, err := c.l.prepare(c.fd, a.pool.payload)
	if err != nil {
		if c.sess != nil {
			c.sess.detach(c.fd, a) // before the close: the number may be reused
		}
		a.refuse(c.fd, c.peer, false, "cannot prepare socket", "err", err)
		return
	}
	// An error closed fd: the pool is closing, which Close reports.
	_ = a.pool.addConn(c.fd, gated, c.l.stagePartials, c.peer, c.sess)
}

// forget takes c out of the poller and the map; the queue drops it lazily.
// A session c held is handed on (serve) or let go (refuse) by the caller.
func (a *acceptor) forget(c *prologue) {
	if c.gone {
		return
	}
	c.gone = true
	if c.phase == phaseSniff {
		a.sniffing.Add(-1)
	}
	if a.pending[c.fd] == c {
		delete(a.pending, c.fd)
		if err := a.poller.Delete(c.fd); err != nil {
			a.fail(err)
		}
	}
}

// refusePending forgets c and refuses it, letting go of its session.
func (a *acceptor) refusePending(c *prologue, reason string, attrs ...any) {
	a.forget(c)
	if c.sess != nil {
		c.sess.detach(c.fd, a)
	}
	// Unread bytes would make the close a reset, which can destroy what
	// was written last: the refusal's reply.
	if a.scratch == nil {
		a.scratch = make([]byte, 4096)
	}
	sockio.Drain(c.fd, a.scratch)
	a.refuse(c.fd, c.peer, c.phase == phaseAuth, reason, attrs...)
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
