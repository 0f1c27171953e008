//go:build linux

package echo

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/seed-a9ef92a1/echo/pytree"
	"github.com/seed-a9ef92a1/echo/ringbuf"
	"github.com/seed-a9ef92a1/echo/wire"
)

// WithLearnerSocket serves the server's batches to learner processes, in
// Python or any language, over a Unix-domain socket at path
// (docs/learner.md): the ring goes in shared memory (WithSharedMemory),
// each learner maps it and reads its batches in place, and each batch goes
// to exactly one of the learners attached. The server's own Sample and
// Batches are then not for use: its batches are the learners'.
func WithLearnerSocket(path string) Option {
	return func(c *config) {
		c.learnerSocket = path
		c.sharedMemory = true
	}
}

// errLearners is Sample's error on a server whose batches go to learner
// processes.
var errLearners = fmt.Errorf("%w: the server's batches go to learner processes (WithLearnerSocket)", ErrBadConfig)

// learners serves a server's batches to learner processes.
type learners struct {
	s       *Server
	cons    *ringbuf.Consumers
	ln      *net.UnixListener
	path    string
	welcome []byte // the WELCOME frame
	wg      sync.WaitGroup
	ctx     context.Context
	cancel  context.CancelFunc

	// takers counts the connections that asked for a batch: a learner
	// alone gets its next batches set aside for it.
	takers atomic.Int64

	mu     sync.Mutex
	conns  map[*net.UnixConn]struct{}
	closed bool
}

// startLearners listens on the learner socket. Under startMu.
func (s *Server) startLearners() error {
	path := s.cfg.learnerSocket
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		// A socket left by a server that died: nobody answers on it.
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return fmt.Errorf("echo: learner socket %s: another server listens there", path)
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("echo: learner socket: %w", err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return fmt.Errorf("echo: learner socket: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	body, err := json.Marshal(s.welcome())
	if err != nil {
		ln.Close()
		return fmt.Errorf("echo: learner welcome: %w", err)
	}
	l := &learners{s: s, cons: s.cons, ln: ln, path: path, conns: make(map[*net.UnixConn]struct{}),
		welcome: wire.AppendFrame(nil, wire.FrameWelcome, body)}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	s.learners = l
	l.wg.Go(l.accept)
	return nil
}

// welcome is the WELCOME frame's body.
func (s *Server) welcome() wire.Welcome {
	r := s.ring
	m := r.Memory()
	w := wire.Welcome{
		Protocol: int(wire.LearnerVersion), BatchSize: s.batchSize, NumSlabs: r.NumSlabs(),
		SlabBytes: r.SlabBytes(), MappingBytes: m.Bytes, PayloadBytes: s.spec.PayloadBytes(),
		Tree:       s.spec.Describe(),
		Memory:     wire.LearnerMemory{Kind: m.Kind, Bytes: m.Bytes, HugePageBytes: m.HugePageBytes},
		OfferBytes: wire.OfferPageBytes,
	}
	for j, leaf := range s.spec.Leaves() {
		shape := leaf.Shape
		if shape == nil {
			shape = []int{}
		}
		w.Leaves = append(w.Leaves, wire.LearnerLeaf{Path: leaf.Path, DType: leaf.DType.String(), Shape: shape, Offset: r.LeafOffset(j)})
	}
	for _, a := range s.addrs {
		if t, ok := a.(*net.TCPAddr); ok {
			w.Port = t.Port
			break
		}
	}
	return w
}

// LearnerSocket returns the path learners attach to, or "" without
// WithLearnerSocket.
func (s *Server) LearnerSocket() string { return s.cfg.learnerSocket }

func (l *learners) accept() {
	for {
		c, err := l.ln.AcceptUnix()
		if err != nil {
			return // closed
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			c.Close()
			return
		}
		l.conns[c] = struct{}{}
		l.wg.Go(func() { l.serve(c) })
		l.mu.Unlock()
	}
}

// frame is one frame a learner sent.
type frame struct {
	typ  uint8
	body []byte
}

// taken is what a Take for a learner returned.
type taken struct {
	slab int
	err  error
}

// offer is a batch set aside for a learner: its slab, and the BATCH body
// it was offered with.
type offer struct {
	slab int
	info wire.BatchInfo
}

// maxOffers is how many batches the server sets aside for a learner at
// once: one per record of the offer page (docs/learner.md, "Offers").
const maxOffers = 2

// learnerConn is the server's side of one learner connection: the slab its
// learner holds, and the batches set aside for it in its offer page.
type learnerConn struct {
	l    *learners
	c    *net.UnixConn
	ctx  context.Context
	page []byte // the offer page, shared with the learner
	held int    // the slab the learner holds, or -1
	// offers are the batches set aside, oldest first, with the tickets
	// ticket-len(offers)+1 … ticket.
	offers []offer
	ticket uint64 // the ticket of the last batch held or offered
	// taking is set while a Take for this learner runs; its result comes
	// on results. closed is set once a Take returned ErrClosed.
	taking  bool
	results chan taken
	closed  bool
	taker   bool // it asked for a batch: it counts in learners.takers
}

// serve is one learner's connection: its requests in order, its held slab
// given back however it ends.
func (l *learners) serve(c *net.UnixConn) {
	ctx, gone := context.WithCancel(l.ctx)
	frames := make(chan frame)
	// The reader ends only when its connection does: a request it read is
	// always served, so that a NEXT read as the server closes still gets
	// its CLOSED. Once serve has returned, its deferred drain takes what
	// the reader still sends, until the closed connection ends the reads.
	go func() {
		defer close(frames)
		defer gone()
		r := bufio.NewReader(c)
		for {
			f, err := readFrame(r, l.s.spec.PayloadBytes())
			if err != nil {
				return
			}
			frames <- f
		}
	}()
	lc := &learnerConn{l: l, c: c, ctx: ctx, held: -1, offers: make([]offer, 0, maxOffers), results: make(chan taken, 1)}
	defer func() {
		gone()
		lc.end()
		c.Close()
		for range frames {
		}
		l.mu.Lock()
		delete(l.conns, c)
		l.mu.Unlock()
	}()
	f, ok := <-frames
	if !ok {
		return
	}
	if f.typ != wire.FrameHello {
		writeError(c, fmt.Sprintf("first frame of type %d, want HELLO", f.typ))
		return
	}
	if err := wire.CheckLearnerHello(f.body); err != nil {
		writeError(c, err.Error())
		return
	}
	pageFD, page, err := newOfferPage()
	if err != nil {
		l.s.cfg.logger.Warn("echo: learner offer page", "err", err)
		writeError(c, err.Error())
		return
	}
	lc.page = page
	_, _, err = c.WriteMsgUnix(l.welcome, unix.UnixRights(l.s.ring.FD(), pageFD), nil)
	unix.Close(pageFD) // the learner has its own; the server keeps its mapping
	if err != nil {
		return
	}
	var out []byte
	for {
		lc.setAside()
		var f frame
		select {
		case r := <-lc.results:
			if !lc.offered(r) {
				return
			}
			continue
		case f, ok = <-frames:
			if !ok {
				return
			}
		}
		out = out[:0]
		switch f.typ {
		case wire.FrameNext:
			lc.ask()
			lc.release()
			if len(lc.offers) == 0 && !lc.closed {
				lc.startTake()
				if !lc.offered(<-lc.results) {
					return
				}
			}
			if len(lc.offers) == 0 {
				out = wire.AppendFrame(out, wire.FrameClosed, nil)
				break
			}
			out = wire.AppendBatch(out, &lc.offers[0].info)
			lc.hand()
		case wire.FrameTake:
			lc.ask()
			ticket, err := wire.DecodeTake(f.body)
			if err == nil && (len(lc.offers) == 0 || ticket != lc.offers[0].info.Ticket) {
				err = fmt.Errorf("TAKE of ticket %d, the offer is %d", ticket, lc.offerTicket())
			}
			if err != nil {
				writeError(c, err.Error()) // a broken learner: the connection ends
				return
			}
			lc.release()
			lc.hand()
			continue // TAKE has no answer
		case wire.FrameRelease:
			lc.release()
			out = wire.AppendFrame(out, wire.FrameOK, nil)
		case wire.FrameSubmit:
			out = l.submit(ctx, out, f.body)
		case wire.FrameResetHistograms:
			l.s.ResetHistograms()
			out = wire.AppendFrame(out, wire.FrameOK, nil)
		case wire.FrameClose:
			out = wire.AppendFrame(out, wire.FrameOK, nil)
			c.Write(out)
			go l.s.Close() // Close waits for this goroutine
			return
		default:
			out = wire.AppendFrame(out, wire.FrameError, []byte(fmt.Sprintf("frame of type %d", f.typ)))
		}
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

// newOfferPage makes a learner's offer page: a sealed memfd of
// OfferPageBytes, mapped here for writing; the learner maps it read-only.
func newOfferPage() (fd int, page []byte, err error) {
	fd, err = unix.MemfdCreate("echo-offers", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, nil, fmt.Errorf("echo: offer page: memfd_create: %w", err)
	}
	if err = unix.Ftruncate(fd, wire.OfferPageBytes); err != nil {
		err = fmt.Errorf("echo: offer page: ftruncate: %w", err)
	} else if _, err = unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		// Sealed, a learner cannot shrink the page under the server's writes.
		err = fmt.Errorf("echo: offer page: seal: %w", err)
	} else if page, err = unix.Mmap(fd, 0, wire.OfferPageBytes, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		err = fmt.Errorf("echo: offer page: mmap: %w", err)
	}
	if err != nil {
		unix.Close(fd)
		return -1, nil, err
	}
	return fd, page, nil
}

// ask counts the connection among those that take batches, once.
func (lc *learnerConn) ask() {
	if !lc.taker {
		lc.taker = true
		lc.l.takers.Add(1)
	}
}

// release gives back the slab the learner holds, if any.
func (lc *learnerConn) release() {
	if lc.held >= 0 {
		lc.l.cons.Give(lc.held)
		lc.held = -1
	}
}

// startTake starts a Take for this learner, unless one runs.
func (lc *learnerConn) startTake() {
	if lc.taking {
		return
	}
	lc.taking = true
	go func() {
		slab, err := lc.l.cons.Take(lc.ctx)
		lc.results <- taken{slab, err}
	}()
}

// setAside starts taking the learner's next batch ahead of its asking, so
// that it finds the batch in its offer page: only for a learner that takes
// batches alone (with several, a batch set aside for one would keep it
// from another that waits) and has a record free. A record is free once
// the learner has the batch offered in it before (its TAKE, or NEXT's
// answer, reached the server): with one offer out, the other record is.
func (lc *learnerConn) setAside() {
	if lc.taker && len(lc.offers) < maxOffers && !lc.closed && lc.l.takers.Load() == 1 {
		lc.startTake()
	}
}

// hand makes the oldest offer the batch the learner holds: it took it.
func (lc *learnerConn) hand() {
	lc.held = lc.offers[0].slab
	lc.offers = lc.offers[:copy(lc.offers, lc.offers[1:])]
}

// offered records a Take's result: the batch becomes the learner's newest
// offer, written into its page. It reports false when the learner left.
func (lc *learnerConn) offered(r taken) bool {
	lc.taking = false
	switch {
	case errors.Is(r.err, ringbuf.ErrClosed):
		lc.closed = true
		return true
	case r.err != nil:
		return false // the learner left while it waited
	}
	lc.ticket++
	o := offer{slab: r.slab, info: lc.l.s.learnerInfo(r.slab)}
	o.info.Ticket = lc.ticket
	lc.offers = append(lc.offers, o)
	// The record with no ticket first, then the ticket: a learner that
	// reads the ticket finds the record whole (docs/learner.md, "Offers").
	rec := lc.page[wire.OfferOffset(lc.ticket):]
	unticketed := o.info
	unticketed.Ticket = 0
	wire.AppendBatchBody(rec[:0:len(rec)], &unticketed)
	atomic.StoreUint64((*uint64)(unsafe.Pointer(&rec[0])), lc.ticket)
	return true
}

// offerTicket is the ticket a TAKE must name: the oldest offer's, or 0.
func (lc *learnerConn) offerTicket() uint64 {
	if len(lc.offers) == 0 {
		return 0
	}
	return lc.offers[0].info.Ticket
}

// end gives back what the connection had: the held slab (not redelivered:
// see docs/learner.md) and the offers, which the learner never took, for
// the next learners to take, oldest first.
func (lc *learnerConn) end() {
	if lc.taking {
		lc.offered(<-lc.results) // ctx is done: it ends at once
	}
	for _, o := range lc.offers {
		lc.l.cons.Untake(o.slab)
	}
	lc.offers = lc.offers[:0]
	lc.release()
	if lc.taker {
		lc.l.takers.Add(-1)
	}
	if lc.page != nil {
		unix.Munmap(lc.page)
	}
}

// submit writes one sample a learner sent into the ring, as Submit does.
func (l *learners) submit(ctx context.Context, out, body []byte) []byte {
	s := l.s
	if len(body) != s.spec.PayloadBytes() {
		return wire.AppendFrame(out, wire.FrameError,
			[]byte(fmt.Sprintf("sample of %d bytes, the server's are %d", len(body), s.spec.PayloadBytes())))
	}
	leaves := make([]pytree.Array, 0, s.spec.NumLeaves())
	off := 0
	for _, leaf := range s.spec.Leaves() {
		n := leaf.NumBytes()
		a, err := pytree.NewArray(leaf.DType, leaf.Shape, body[off:off+n])
		if err != nil {
			return wire.AppendFrame(out, wire.FrameError, []byte(err.Error()))
		}
		leaves = append(leaves, a)
		off += n
	}
	switch err := s.write(ctx, leaves); {
	case errors.Is(err, ErrClosed):
		return wire.AppendFrame(out, wire.FrameClosed, nil)
	case err != nil:
		return wire.AppendFrame(out, wire.FrameError, []byte(err.Error()))
	}
	return wire.AppendFrame(out, wire.FrameOK, nil)
}

// readFrame reads one learner frame, bounded by a sample's size.
func readFrame(r *bufio.Reader, payload int) (frame, error) {
	var head [wire.FrameHeaderLen]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return frame{}, err
	}
	n, err := wire.FrameLen(head[:], max(payload+1, 64))
	if err != nil {
		return frame{}, err
	}
	f := frame{typ: head[4], body: make([]byte, n-wire.FrameHeaderLen)}
	if _, err := io.ReadFull(r, f.body); err != nil {
		return frame{}, err
	}
	return f, nil
}

func writeError(c net.Conn, msg string) {
	c.Write(wire.AppendFrame(nil, wire.FrameError, []byte(msg)))
}

// learnerInfo is the BATCH frame of slab with the SampleInfo of now.
func (s *Server) learnerInfo(slab int) wire.BatchInfo {
	in := s.info()
	b := wire.BatchInfo{Slab: uint32(slab), Ints: [wire.InfoFields]int64{
		in.StoreSize, in.ActiveConnections, in.QueueDepthSum, in.QueueDepthMax, in.PushBlockedCount,
		in.SamplesInsertedTotal, in.NotifyCount, in.CASSuccessTotal, in.CASFailureTotal, in.ReservationRetriesTotal,
	}}
	for i, h := range []Histogram{in.DrainRound, in.Memcpy, in.QueueDwell} {
		w := wire.Hist{Count: h.Count, Min: int64(h.Min), Max: int64(h.Max), Mean: float64(h.Mean),
			P50: int64(h.P50), P90: int64(h.P90), P99: int64(h.P99)}
		switch i {
		case 0:
			b.DrainRound = w
		case 1:
			b.Memcpy = w
		default:
			b.QueueDwell = w
		}
	}
	return b
}

// close stops accepting learners, ends every connection (a learner waiting
// for a batch gets CLOSED first: the ring is closed already) and waits for
// their goroutines. Before the ring is freed: the memfd's number must not
// go out after its close.
func (l *learners) close() {
	l.mu.Lock()
	l.closed = true
	for c := range l.conns {
		c.CloseRead()
		// A learner that stopped reading must not hold Close: its
		// pending answer is dropped.
		c.SetWriteDeadline(time.Now().Add(time.Second))
	}
	l.mu.Unlock()
	l.ln.Close()
	l.cancel()
	l.wg.Wait()
}
