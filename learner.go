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
	"time"

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
		Tree:   s.spec.Describe(),
		Memory: wire.LearnerMemory{Kind: m.Kind, Bytes: m.Bytes, HugePageBytes: m.HugePageBytes},
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

// serve is one learner's connection: its requests in order, its held slab
// given back however it ends.
func (l *learners) serve(c *net.UnixConn) {
	ctx, gone := context.WithCancel(l.ctx)
	frames := make(chan frame)
	go func() {
		defer close(frames)
		defer gone()
		r := bufio.NewReader(c)
		for {
			f, err := readFrame(r, l.s.spec.PayloadBytes())
			if err != nil {
				return
			}
			select {
			case frames <- f:
			case <-ctx.Done():
				return
			}
		}
	}()
	held := -1
	defer func() {
		gone()
		if held >= 0 {
			l.cons.Give(held) // not redelivered: see docs/learner.md
		}
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
	if _, _, err := c.WriteMsgUnix(l.welcome, unix.UnixRights(l.s.ring.FD()), nil); err != nil {
		return
	}
	var out []byte
	for f := range frames {
		out = out[:0]
		switch f.typ {
		case wire.FrameNext, wire.FrameRelease:
			if held >= 0 {
				l.cons.Give(held)
				held = -1
			}
			if f.typ == wire.FrameRelease {
				out = wire.AppendFrame(out, wire.FrameOK, nil)
				break
			}
			slab, err := l.cons.Take(ctx)
			switch {
			case errors.Is(err, ringbuf.ErrClosed):
				out = wire.AppendFrame(out, wire.FrameClosed, nil)
			case err != nil:
				return // the learner left while it waited
			default:
				held = slab
				info := l.s.learnerInfo(slab)
				out = wire.AppendBatch(out, &info)
			}
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
