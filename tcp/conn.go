package tcp

import (
	"context"
	"errors"
	"io"
	"log/slog"

	"golang.org/x/sys/unix"

	"github.com/seed-a9ef92a1/echo/internal/sockio"
	"github.com/seed-a9ef92a1/echo/ringbuf"
)

// Socket ingress. A connection is registered edge-triggered, once, for
// EPOLLIN|EPOLLOUT|EPOLLRDHUP, and never modified:
//
//   - Edge-triggered because a gated connection leaves a partial sample in
//     the kernel on purpose: level-triggered epoll would report that socket
//     readable on every wait until the rest arrives. On TCP, SO_RCVLOWAT =
//     payload suppresses wake-ups for partial samples at the source.
//   - Edge-triggered epoll never reminds: a connection left with whole
//     samples when its turn ran out goes on the worker's backlog, which the
//     loop serves before it waits again.
//   - EPOLLOUT stays registered. On TCP its edge fires only after a write
//     came up short, which is exactly when pending acks need a retry; on
//     Unix sockets also each time the peer reads, which costs a turn that
//     finds nothing.
//
// Invariants, whatever the peer does:
//
//   - A claimed slot is filled or given back (ringbuf.Ring.Return): slots
//     are claimed only for whole samples the kernel reports queued, and a
//     read that comes up short returns the slots it did not fill.
//   - A partial sample holds no slot, and holds staging memory only once
//     its first byte is read, within the pool's staging budget.
//   - A full ring or an empty staging budget parks the connection, not the
//     worker: the worker goes on serving its other connections (acks, EOFs,
//     partial reads) and its producers, and the ring's release (or a
//     staging buffer's return) wakes it to resume the parked ones.
//   - Acks owed are written before a connection is closed, for any reason.
//
// On a Unix socket a partial sample is staged as soon as it arrives: the
// kernel charges each write's overhead to the sender's buffer, so a sender
// that writes a gated sample in tiny pieces can fill that buffer before a
// whole sample is queued, and a reader that waited for the whole sample
// would wait for ever. TCP collapses such a queue, and SO_RCVLOWAT keeps
// it from waking the worker for partial samples at all.

// iovMax is the most iovecs one readv takes (IOV_MAX on Linux).
const iovMax = sockio.MaxIovecs

// turnSamples bounds the samples one connection delivers per turn, so that
// a client streaming faster than the worker drains cannot starve the
// others on the same worker.
const turnSamples = 1024

// ackBufLen is the length of the shared run of ack bytes: acks for up to
// this many samples go out in one write.
const ackBufLen = 4096

// errServerClosed is the reason logged for connections closed by Close.
var errServerClosed = errors.New("server closed")

// reasonText describes why a connection ended.
func reasonText(err error) string {
	if err == io.EOF {
		return "peer closed"
	}
	return err.Error()
}

// errShortRead reports a readv that returned less than FIONREAD promised:
// the connection was reset under the read. The slots it did not fill go
// back to the ring and the connection is dropped, as one that closed
// mid-sample.
var errShortRead = errors.New("tcp: readv returned less than FIONREAD reported")

// errRingFull and errNoStage park a connection until the ring frees a slot
// or the staging budget a buffer; they never leave serve.
var (
	errRingFull = errors.New("tcp: ring full")
	errNoStage  = errors.New("tcp: staging budget spent")
)

// errStalled is the reason logged for a connection dropped for holding a
// partial sample without progress for the stall timeout.
var errStalled = errors.New("no progress on a partial sample")

// conn is one accepted socket. Every field not marked otherwise belongs to
// the worker that owns the connection.
type conn struct {
	fd   int
	slot int // index in the worker's conns table; 0 until adopted

	// gated: whole samples wait in the kernel until they are read straight
	// into ring slots. Otherwise samples are staged: read into stage as
	// they arrive, then copied into one slot. stagePartials (Unix
	// sockets): a gated connection stages a partial sample on arrival.
	gated, stagePartials bool
	// stage is a staging buffer from the pool's budget, held only while
	// bytes of an unfinished sample are in it; staged counts them.
	stage  []byte
	staged int

	// queuedPartial is the bytes of a partial sample a gated connection
	// had in the kernel at its last look. partialAt is when the partial
	// sample it holds (staged + queuedPartial bytes) last grew, in ns
	// since the pool's epoch, 0 when it holds none; partialBytes is its
	// size then. inPartials: on the worker's stall watch list.
	queuedPartial int
	partialAt     int64
	partialBytes  int
	inPartials    bool

	// waitRing, waitStage: parked on the worker's list of connections
	// waiting for a ring slot or a staging buffer.
	waitRing, waitStage bool

	peer       string   // the remote address, for logs
	sess       *session // version 2: the session this connection serves
	samples    uint64   // samples delivered, for logs
	owed       int      // acks owed to the peer and not yet written
	peerClosed bool     // EPOLLRDHUP, EPOLLHUP or EPOLLERR seen
	inBacklog  bool

	// depth is the number of whole samples seen waiting in the kernel at
	// the connection's last turn. Worker only: Stats reads the worker's
	// sum and maximum of them (setDepth).
	depth int
}

// addConn hands an accepted socket whose prologue is done (see
// acceptor.go) to the worker with the fewest connections, which moves its
// samples into the ring from then on. gated says whether the socket can
// buffer two whole samples or more (see transport.go), in which case
// samples wait in the kernel until whole and are read straight into their
// slots. The pool owns fd from now on, even when addConn fails.
func (p *Pool) addConn(fd int, gated, stagePartials bool, peer string, sess *session) error {
	c := &conn{fd: fd, gated: gated, stagePartials: stagePartials, peer: peer, sess: sess}
	p.mu.Lock()
	if p.closed.Load() {
		p.mu.Unlock()
		if sess != nil {
			sess.detach(fd, p.acceptor.Load())
		}
		unix.Close(fd)
		return ErrClosed
	}
	w := p.workers[0]
	for _, o := range p.workers {
		if o.nconns.Load() < w.nconns.Load() {
			w = o
		}
	}
	w.nconns.Add(1)
	w.adoptMu.Lock()
	w.adoptConns = append(w.adoptConns, c)
	w.hasAdopt.Store(true)
	w.adoptMu.Unlock()
	p.mu.Unlock()
	if p.log != nil {
		p.log.Debug("echo: connection opened", "peer", peer, "gated", gated)
	}
	w.poller.Wake()
	return nil
}

// adoptConn registers c in the worker's epoll set.
func (w *worker) adoptConn(c *conn) {
	if n := len(w.freeSlots); n > 0 {
		c.slot = w.freeSlots[n-1]
		w.freeSlots = w.freeSlots[:n-1]
		w.conns[c.slot] = c
	} else {
		c.slot = len(w.conns)
		w.conns = append(w.conns, c)
	}
	events := uint32(unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET)
	if err := w.poller.Add(c.fd, events, int32(c.slot)); err != nil {
		w.drop(c, err)
		w.pool.fail(err)
	}
	// Samples that arrived before the registration are reported by
	// epoll_ctl's initial readiness check, as an event.
}

// drop closes c for reason (io.EOF: the peer closed; errServerClosed) and
// forgets it. Acks owed go out first. What c's peer sent and was not yet
// read is discarded with the socket; a partial sample is never committed.
func (w *worker) drop(c *conn, reason error) {
	if c.owed > 0 && reason != errServerClosed {
		_ = w.flush(c) // best effort: the connection is ending anyway
	}
	partial := c.staged
	if reason == io.EOF || reason == errStalled {
		// The peer closed, or stalled, with a partial sample unread. Read
		// it out first: closing a socket with unread bytes sends a reset,
		// which can destroy the acks for the whole samples before it.
		partial += sockio.Drain(c.fd, w.scratch)
	}
	if p := w.pool; p.log != nil {
		level, msg := slog.LevelDebug, "echo: connection closed"
		if reason != io.EOF && reason != errServerClosed {
			level, msg = slog.LevelWarn, "echo: connection dropped"
		}
		attrs := []slog.Attr{slog.String("peer", c.peer),
			slog.String("reason", reasonText(reason)), slog.Uint64("samples", c.samples),
			slog.Int("partial_bytes_discarded", partial)}
		if reason == errStalled {
			attrs = append(attrs, slog.Duration("after", w.pool.stallTimeout))
		}
		p.log.LogAttrs(context.Background(), level, msg, attrs...)
	}
	if c.slot > 0 && w.conns[c.slot] == c {
		w.conns[c.slot] = nil
		w.freeSlots = append(w.freeSlots, c.slot)
	}
	c.slot = 0
	w.setDepth(c, 0)
	w.releaseStage(c)
	c.partialAt = 0
	if c.sess != nil {
		// Before the close: a reconnection of the session may be waiting
		// for this end, and must not see the descriptor reused.
		c.sess.detach(c.fd, w.pool.acceptor.Load())
	}
	unix.Close(c.fd) // removes it from the epoll set; nothing to report on failure
	c.fd = -1
	w.nconns.Add(-1)
}

// committed counts n samples of c's just committed to the ring: acks owed
// to the peer, and its session's position.
func (c *conn) committed(n int) {
	c.owed += n
	c.samples += uint64(n)
	if c.sess != nil {
		c.sess.committed.Add(uint64(n))
	}
}

// setDepth records that c has d whole samples waiting, keeping the
// worker's sum and maximum, which Stats reads without visiting every
// connection: with 10,000 idle connections a walk over them per batch cost
// the other actors a third of their rate.
func (w *worker) setDepth(c *conn, d int) {
	if d != c.depth {
		w.connDepthSum.Add(int64(d - c.depth))
		c.depth = d
	}
	if int64(d) > w.connDepthMax.Load() {
		w.connDepthMax.Store(int64(d))
	}
}

// serveEvent handles one epoll event of a connection and returns the
// number of samples it moved into the ring.
func (w *worker) serveEvent(c *conn, events uint32) (int, error) {
	if events&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		c.peerClosed = true
	}
	return w.serve(c)
}

// serve gives c one turn: it moves up to turnSamples of c's whole samples
// into the ring, writes their acks, and closes c once its peer has gone and
// nothing whole is left. It returns ringbuf.ErrClosed when the ring closed
// under it; every other error is c's alone and closes c.
func (w *worker) serve(c *conn) (int, error) {
	var moved int
	var err error
	if c.gated {
		moved, err = w.readWhole(c)
	} else {
		moved, err = w.readStaged(c, false)
	}
	switch err {
	case io.EOF:
		c.peerClosed, err = true, nil
	case errRingFull:
		if w.pool.ring.Closed() {
			return moved, ringbuf.ErrClosed
		}
		w.park(c, &c.waitRing, &w.ringWait)
		w.armSpace()
		err = nil
	case errNoStage:
		w.park(c, &c.waitStage, &w.stageWait)
		err = nil
	}
	if errors.Is(err, ringbuf.ErrClosed) {
		return moved, err
	}
	if err == nil {
		// Acks first, even when the peer has closed its side: a client
		// that half-closes still waits for them, and one bounded by its
		// in-flight window must learn of the samples already in the ring
		// while its next ones wait for space.
		err = w.flush(c)
	}
	switch {
	case err != nil:
		w.drop(c, err)
	case c.waitRing || c.waitStage:
		// Served again when the ring frees a slot or the budget a buffer.
	case moved == turnSamples:
		if !c.inBacklog {
			c.inBacklog = true
			w.backlog = append(w.backlog, c)
		}
	case c.peerClosed && c.owed == 0:
		// Everything whole was read and acked: what is left is a partial
		// sample, or nothing.
		w.drop(c, io.EOF)
	default:
		w.watchPartial(c)
	}
	// A closed peer still owed acks waits for the EPOLLOUT edge (or for
	// the write that fails because it is gone).
	return moved, nil
}

// park puts c on a worker's wait list, once.
func (w *worker) park(c *conn, flag *bool, list *[]*conn) {
	if !*flag {
		*flag = true
		*list = append(*list, c)
	}
}

// readWhole is the gated path: FIONREAD says how many whole samples the
// kernel holds; slots are claimed for them (never past a batch boundary),
// and one readv scatters them straight into their slots.
func (w *worker) readWhole(c *conn) (int, error) {
	p := w.pool
	moved := 0
	for moved < turnSamples {
		if c.staged == 0 {
			inq, err := sockio.Queued(c.fd)
			if err != nil {
				return moved, err
			}
			k := inq / p.payload
			w.setDepth(c, k)
			c.queuedPartial = 0
			if k > 0 {
				n, err := w.readWholeSamples(c, min(k, w.maxPerRead, turnSamples-moved))
				moved += n
				if err != nil {
					return moved, err
				}
				continue
			}
			if inq == 0 || !c.stagePartials {
				c.queuedPartial = inq
				return moved, nil
			}
		}
		// A partial sample staged on arrival (Unix), finished before the
		// gate takes over again.
		n, err := w.readStaged(c, true)
		moved += n
		if err != nil || c.staged > 0 {
			return moved, err
		}
	}
	return moved, nil
}

// readWholeSamples claims slots for k whole samples queued in c's socket,
// reads them with readv straight into the slots, and commits them.
func (w *worker) readWholeSamples(c *conn, k int) (int, error) {
	p := w.pool
	res, ok := p.ring.TryClaim(k)
	if !ok {
		return 0, errRingFull
	}
	got, err := w.readInto(c.fd, res)
	if got > 0 {
		p.commit(ringbuf.Reservation{Start: res.Start, N: got})
		c.committed(got)
		w.setDepth(c, c.depth-got)
	}
	if got < res.N {
		// The ring invariant: what was claimed and not filled goes back,
		// and the next claim of any writer fills it.
		p.ring.Return(ringbuf.Reservation{Start: res.Start + uint64(got), N: res.N - got})
	}
	return got, err
}

// readInto reads res.N whole samples from fd into res's slots with as few
// readv calls as IOV_MAX allows, and returns how many it read whole.
func (w *worker) readInto(fd int, res ringbuf.Reservation) (int, error) {
	p := w.pool
	iov := w.iov[:0]
	for k := range res.N {
		for j, n := range p.leafBytes {
			if n > 0 {
				slot := p.ring.Slot(res.Start+uint64(k), j)
				iov = append(iov, unix.Iovec{Base: &slot[0], Len: uint64(n)})
			}
		}
	}
	built := len(iov)
	defer clear(w.iov[:built]) // the iovecs point into the ring: drop them
	done := 0
	for len(iov) > 0 {
		n, err := sockio.Readv(fd, iov)
		if err == io.EOF || (err == nil && n == 0) {
			// FIONREAD promised these bytes.
			err = errShortRead
		}
		if err != nil {
			return done / p.payload, err
		}
		done += n
		iov = sockio.Advance(iov, n)
	}
	return res.N, nil
}

// readStaged is the path for samples too large to wait whole in the
// kernel: bytes are read into a staging buffer as they come, and each
// completed sample is copied into one slot. With one, it returns once the
// sample under way is committed, for a gated connection to go back to its
// gate. The staging buffer is taken when a sample's first byte is there
// and given back when the connection has no bytes of a sample left.
func (w *worker) readStaged(c *conn, one bool) (int, error) {
	p := w.pool
	moved := 0
	for moved < turnSamples {
		if c.staged < p.payload {
			if c.stage == nil {
				if c.waitStage {
					return moved, errNoStage // parked already
				}
				inq, err := sockio.Queued(c.fd)
				if err != nil {
					return moved, err
				}
				if inq == 0 {
					w.setDepth(c, 0)
					return moved, nil
				}
				if c.stage = p.stages.get(); c.stage == nil {
					w.setDepth(c, inq/p.payload)
					return moved, errNoStage
				}
			}
			n, err := sockio.Read(c.fd, c.stage[c.staged:])
			if err != nil {
				return moved, err
			}
			if n == 0 {
				inq, err := sockio.Queued(c.fd)
				if err != nil {
					return moved, err
				}
				w.setDepth(c, (inq+c.staged)/p.payload)
				if c.staged == 0 {
					w.releaseStage(c)
				}
				return moved, nil
			}
			c.staged += n
			if c.staged < p.payload {
				continue
			}
		}
		res, ok := p.ring.TryClaim(1)
		if !ok {
			return moved, errRingFull // the sample waits, whole, in stage
		}
		p.copySample(res.Start, c.stage)
		p.commit(res)
		c.staged = 0
		c.committed(1)
		moved++
		if one {
			w.releaseStage(c)
			return moved, nil
		}
	}
	return moved, nil
}

// releaseStage gives c's staging buffer back to the budget.
func (w *worker) releaseStage(c *conn) {
	if c.stage != nil {
		w.pool.stages.put(c.stage)
		c.stage, c.staged = nil, 0
	}
}

// watchPartial notes whether c holds a partial sample after its turn, and
// when that sample last grew, for the stall timeout.
func (w *worker) watchPartial(c *conn) {
	held := c.staged + c.queuedPartial
	if held == 0 {
		c.partialAt = 0 // the watch list drops it lazily
		return
	}
	if c.partialAt == 0 || held != c.partialBytes {
		c.partialAt, c.partialBytes = w.pool.now(), held
	}
	if !c.inPartials {
		c.inPartials = true
		w.partials = append(w.partials, c)
	}
	w.stallAt = min(w.stallAt, c.partialAt+int64(w.pool.stallTimeout))
}

// flush writes c's owed acks until done or the socket's send buffer is
// full; in the latter case the EPOLLOUT edge
// brings c back. A peer that does not read its acks therefore costs a
// counter, never a blocked worker.
func (w *worker) flush(c *conn) error {
	acks := w.pool.acks
	for c.owed > 0 {
		n, err := sockio.Write(c.fd, acks[:min(c.owed, len(acks))])
		if n == 0 || err != nil {
			return err
		}
		c.owed -= n
	}
	return nil
}

// serveBacklog gives every connection on the backlog another turn.
func (w *worker) serveBacklog() (int, error) {
	moved := 0
	pending := w.backlog
	w.backlog = w.backlogSpare[:0]
	w.backlogSpare = pending
	for i, c := range pending {
		pending[i] = nil
		c.inBacklog = false
		if c.fd < 0 {
			continue // dropped since it was queued
		}
		n, err := w.serve(c)
		moved += n
		if err != nil {
			clear(pending[i:])
			return moved, err
		}
	}
	return moved, nil
}
