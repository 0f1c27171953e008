//go:build linux

package echo

import (
	"context"
	"errors"
	"expvar"
	"fmt"
	"iter"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/seed-a9ef92a1/echo/internal/hist"
	"github.com/seed-a9ef92a1/echo/pytree"
	"github.com/seed-a9ef92a1/echo/ringbuf"
	"github.com/seed-a9ef92a1/echo/tcp"
)

// Server errors. Each is wrapped with detail; test with errors.Is.
var (
	// ErrClosed is returned (wrapped) by every call on a closed server.
	ErrClosed = errors.New("echo: server closed")
	// ErrRingTooLarge is returned by NewServer when the ring of
	// NumBuffers·batchSize samples does not fit in memory.
	ErrRingTooLarge = ringbuf.ErrTooLarge
	// ErrStarted is returned by a second call of Start.
	ErrStarted = errors.New("echo: server already started")
)

// Server is the learner's side: it accepts samples matching its example and
// hands them out in batches of a fixed size.
//
// Submit may be called from any number of goroutines. Sample (and Batches)
// is for one consumer: concurrent calls are serialised, and each call ends
// the lifetime of the views the previous one returned.
type Server struct {
	// Read-only after NewServer.
	cfg       config
	spec      *pytree.Spec // one sample
	batchSpec *pytree.Spec // one batch: every leaf prefixed with batchSize
	batchSize int
	ring      *ringbuf.Ring
	pool      *tcp.Pool // ingress workers draining producers and sockets
	scratch   sync.Pool // *[]pytree.Array with capacity spec.NumLeaves()

	// Per-slab batch trees built once over the ring memory; Sample refills
	// and returns them, so handing out a batch allocates nothing.
	// Consumer only (under consumeMu).
	slabTrees  []any
	slabLeaves [][]pytree.Array // master copies, never handed out
	slabBoxed  [][]any          // the same leaves boxed once, for Refill
	outLeaves  [][]pytree.Array // the slices handed out, restored each call

	// consumeMu serialises Sample and the final unmap in Close.
	consumeMu sync.Mutex
	// writersDone is set under consumeMu once Close has seen every writer
	// leave; from then on the ring may be unmapped.
	writersDone bool
	freeErr     error

	// closed is set once by Close; writers load it after registering in
	// writers, Close loads writers after setting it (see Submit).
	closed atomic.Bool
	// writers counts Submit calls between their closed check and the end of
	// their copy. Close waits for zero before unmapping.
	writers atomic.Int64
	// lastInfo is the SampleInfo of the latest batch, for PublishExpvar:
	// Sample writes it, any goroutine reads it, both under lastMu.
	lastMu   sync.Mutex
	lastInfo SampleInfo
	batches  uint64

	// cons hands batches to learner processes (WithLearnerSocket), whose
	// service learners is, once Start has listened.
	cons     *ringbuf.Consumers
	learners *learners
	// done is closed once Close has finished.
	done chan struct{}

	// startMu serialises Start with Close; addrs is set by Start under it.
	startMu   sync.Mutex
	started   bool
	addrs     []net.Addr
	closeOnce sync.Once
	closeErr  error // the ingress pool's, set inside closeOnce
}

// NewServer returns a server for samples shaped like example, handed out in
// batches of batchSize. It maps and faults in the whole ring now
// (NumBuffers·batchSize samples; see Memory), so the first batch pays no
// page faults, and starts the workers that move samples into the ring
// (idle until a producer sends or, after Start, an actor connects); Close
// stops them. Until Start, the server takes samples in process only.
func NewServer(example any, batchSize int, opts ...Option) (*Server, error) {
	cfg := defaultConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if batchSize < 1 {
		return nil, fmt.Errorf("%w: batch size %d, must be at least 1", ErrBadConfig, batchSize)
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	spec, err := pytree.SpecOf(example)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadExample, err)
	}
	if int64(spec.PayloadBytes()) > cfg.maxPayload {
		return nil, fmt.Errorf("%w: samples of %d bytes, more than the %d of WithMaxPayloadBytes",
			ErrBadExample, spec.PayloadBytes(), cfg.maxPayload)
	}
	leafBytes := make([]int, spec.NumLeaves())
	for j, l := range spec.Leaves() {
		leafBytes[j] = l.NumBytes()
	}
	ring, err := ringbuf.New(ringbuf.Layout{
		BatchSize: batchSize, NumSlabs: cfg.numBuffers, LeafBytes: leafBytes, Detailed: cfg.detailedMetrics,
		Shared: cfg.sharedMemory,
	})
	if err != nil {
		if errors.Is(err, ringbuf.ErrTooLarge) {
			return nil, fmt.Errorf("echo: %d buffers of %d samples of %d bytes: %w",
				cfg.numBuffers, batchSize, spec.PayloadBytes(), err)
		}
		return nil, fmt.Errorf("echo: ring: %w", err)
	}
	s := &Server{
		cfg:       cfg,
		spec:      spec,
		batchSpec: spec.Batched(batchSize),
		batchSize: batchSize,
		ring:      ring,
		done:      make(chan struct{}),
	}
	if cfg.learnerSocket != "" {
		s.cons = ringbuf.NewConsumers(ring)
	}
	nleaves := spec.NumLeaves()
	s.scratch.New = func() any {
		b := make([]pytree.Array, 0, nleaves)
		return &b
	}
	for slab := range cfg.numBuffers {
		leaves := make([]pytree.Array, nleaves)
		for j, l := range s.batchSpec.Leaves() {
			a, err := pytree.NewArray(l.DType, l.Shape, ring.LeafBlock(slab, j))
			if err != nil {
				ring.Free()
				return nil, fmt.Errorf("echo: viewing slab %d leaf %s: %w", slab, l.Path, err)
			}
			leaves[j] = a
		}
		tree, err := s.batchSpec.Unflatten(leaves)
		if err != nil {
			ring.Free()
			return nil, fmt.Errorf("echo: building batch tree: %w", err)
		}
		s.slabTrees = append(s.slabTrees, tree)
		s.slabLeaves = append(s.slabLeaves, leaves)
		s.slabBoxed = append(s.slabBoxed, pytree.Box(leaves))
		s.outLeaves = append(s.outLeaves, append([]pytree.Array(nil), leaves...))
	}
	ring.SetSpin(cfg.wait.spin)
	s.pool, err = tcp.NewPool(tcp.Config{
		Ring: ring, Spec: spec, Workers: cfg.numDrainers, Detailed: cfg.detailedMetrics, Logger: cfg.logger,
		StagingBudget: cfg.stagingBudget, StallTimeout: cfg.stallTimeout, Spin: cfg.wait.spin,
	})
	if err != nil {
		ring.Free()
		return nil, fmt.Errorf("echo: ingress workers: %w", err)
	}
	return s, nil
}

// Start binds the server's listen addresses (WithTCP, WithUnix) and starts
// accepting actors; from then on Addr reports where. Submit,
// producers and Sample work without it. A second call returns ErrStarted;
// a bind failure closes nothing, and Start may not be retried.
func (s *Server) Start() error {
	s.startMu.Lock()
	defer s.startMu.Unlock()
	if s.closed.Load() {
		return ErrClosed
	}
	if s.started {
		return ErrStarted
	}
	s.started = true
	if err := s.startTransports(); err != nil {
		return err
	}
	if s.cfg.learnerSocket != "" {
		return s.startLearners()
	}
	return nil
}

// startTransports listens on the actors' transports. Under startMu.
func (s *Server) startTransports() error {
	if len(s.cfg.transports) == 0 {
		return nil
	}
	if s.spec.PayloadBytes() == 0 {
		// The wire has no framing: samples of no bytes cannot be counted.
		return fmt.Errorf("%w: samples of 0 bytes cannot travel over a transport", ErrBadExample)
	}
	var listeners []*tcp.Listener
	for _, t := range s.cfg.transports {
		l, err := t.Listen(s.spec.PayloadBytes())
		if err != nil {
			for _, l := range listeners {
				l.Close()
			}
			return fmt.Errorf("echo: start: %w", err)
		}
		listeners = append(listeners, l)
	}
	for _, l := range listeners {
		s.addrs = append(s.addrs, l.Addr())
	}
	err := s.pool.Serve(listeners, tcp.ServeConfig{
		MaxConns: s.cfg.maxConnections, Secret: s.cfg.secret, PrologueTimeout: s.cfg.authTimeout,
		SessionTTL: s.cfg.sessionTTL, V1Only: s.cfg.v1Only,
	})
	if err != nil {
		s.addrs = nil
		return fmt.Errorf("echo: start: %w", err)
	}
	return nil
}

// Addr returns the address of the first transport, once Start has bound
// it (with the port chosen, for port 0), and nil before.
func (s *Server) Addr() net.Addr {
	s.startMu.Lock()
	defer s.startMu.Unlock()
	if len(s.addrs) == 0 {
		return nil
	}
	return s.addrs[0]
}

// Addrs returns the addresses of every transport, in option order.
func (s *Server) Addrs() []net.Addr {
	s.startMu.Lock()
	defer s.startMu.Unlock()
	return slices.Clone(s.addrs)
}

// Spec returns the spec of one sample, derived from the example.
func (s *Server) Spec() *pytree.Spec { return s.spec }

// BatchSize returns the number of samples per batch.
func (s *Server) BatchSize() int { return s.batchSize }

// Memory says how the ring was mapped, huge pages included: its Kind is
// ringbuf.KindAnonymous, or with WithSharedMemory one of the memfd kinds.
func (s *Server) Memory() ringbuf.MemoryInfo { return s.ring.Memory() }

// Submit validates tree against the example and writes it into the next free
// slot of the ring. A tree that does not match returns an error wrapping
// ErrSpecMismatch and writes nothing. When the ring is full Submit waits for
// the consumer to release a batch; Close wakes it with ErrClosed.
//
// If ctx is done before Submit claims a slot (on entry, or while it waits
// for ring space), Submit returns an error wrapping ctx's error and writes
// nothing; the server is unaffected. Once a slot is claimed the copy is not
// interrupted.
//
// Submit is safe for concurrent use. It allocates nothing, with
// context.Background() as with a cancellable context.
func (s *Server) Submit(ctx context.Context, tree any) error {
	bufp := s.scratch.Get().(*[]pytree.Array)
	defer s.scratch.Put(bufp)
	leaves, err := s.spec.FlattenInto(tree, *bufp)
	if err != nil {
		clear((*bufp)[:cap(*bufp)]) // drop what the failed walk collected
		return mismatchError(err)
	}
	err = s.write(ctx, leaves)
	clear(leaves) // the pooled buffer must not keep the caller's arrays alive
	if err != nil && !errors.Is(err, ErrClosed) {
		return fmt.Errorf("echo: submit: %w", err)
	}
	return err
}

// write claims one slot through the ring's writer loop and copies leaves
// into it: the one-copy path of Submit and of producers of large samples.
// It waits while the ring is full, until ctx is done. It returns ErrClosed
// or ctx's error, unwrapped.
func (s *Server) write(ctx context.Context, leaves []pytree.Array) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// Register, then check closed: Close sets closed, then waits for
	// writers to reach zero, so either this check sees the close or Close
	// sees this writer and waits for it to leave the ring memory.
	s.writers.Add(1)
	defer s.writers.Add(-1)
	if s.closed.Load() {
		return ErrClosed
	}
	res, err := s.ring.Claim(ctx, 1)
	if err != nil {
		if errors.Is(err, ringbuf.ErrClosed) {
			return ErrClosed
		}
		return err // ctx's: no slot is held
	}
	for j, leaf := range leaves {
		copy(s.ring.Slot(res.Start, j), leaf.Bytes())
	}
	s.ring.Commit(res)
	return nil
}

// Sample waits for the next full batch and returns it. It first ends the
// lifetime of the batch returned by the previous call: its views may be
// overwritten from now on. It returns an error wrapping ErrClosed once the
// server is closed, and ctx's error if ctx is done first.
//
// Batches are whole: a batch comes out only once batchSize samples have
// filled it, and there is no partial last batch. Samples that do not yet
// make up a batch wait in the ring (SampleInfo.StoreSize counts them).
// Close ends delivery at once: from then on Sample returns ErrClosed, and
// the samples still in the ring, an unfinished batch's as well as those of
// batches not yet taken, are dropped. A learner that must see every sample
// has its actors send a multiple of batchSize and takes every batch before
// it calls Close.
//
// Sample allocates nothing.
func (s *Server) Sample(ctx context.Context) (Sample, error) {
	if s.cons != nil {
		return Sample{}, errLearners
	}
	s.consumeMu.Lock()
	defer s.consumeMu.Unlock()
	slab, err := s.ring.Next(ctx)
	if err != nil {
		if errors.Is(err, ringbuf.ErrClosed) {
			s.freeIfIdle()
			return Sample{}, ErrClosed
		}
		return Sample{}, err
	}
	tree := s.slabTrees[slab]
	// An example that is a single array makes a batch tree that is one
	// Array value, which no caller can edit: there is nothing to refill.
	if _, leaf := tree.(pytree.Array); !leaf {
		if err := s.batchSpec.Refill(tree, s.slabBoxed[slab]); err != nil {
			// The tree was built by Unflatten of this spec: a failure is a bug.
			panic("echo: refilling a batch tree: " + err.Error())
		}
	}
	out := s.outLeaves[slab]
	copy(out, s.slabLeaves[slab])
	info := s.info()
	s.lastMu.Lock()
	s.lastInfo = info
	s.batches++
	s.lastMu.Unlock()
	return Sample{Batch: tree, Leaves: out, Info: info, spec: s.batchSpec}, nil
}

// info takes the metrics snapshot. Consumer only (a learner's goroutine,
// with learners); allocates nothing.
func (s *Server) info() SampleInfo {
	var st ringbuf.Stats
	if s.cons != nil {
		st = s.cons.Stats()
	} else {
		st = s.ring.Stats()
	}
	ps := s.pool.Stats()
	in := SampleInfo{
		StoreSize:            int64(st.Stored),
		ActiveConnections:    int64(ps.Connections),
		RefusedConnections:   int64(ps.Refused),
		AuthFailures:         int64(ps.AuthFailures),
		StalledConnections:   int64(ps.Stalled),
		QueueDepthSum:        int64(ps.QueueDepthSum),
		QueueDepthMax:        int64(ps.QueueDepthMax),
		PushBlockedCount:     int64(st.Blocked + ps.PushBlocked),
		SamplesInsertedTotal: int64(st.Inserted),
		NotifyCount:          int64(st.Notifies),
		Detailed:             s.cfg.detailedMetrics,
	}
	if s.cfg.detailedMetrics {
		in.CASSuccessTotal = int64(st.CASSuccess)
		in.CASFailureTotal = int64(st.CASFailure)
		in.ReservationRetriesTotal = int64(st.Retries)
		in.DrainRound = histogram(ps.DrainRound)
		in.Memcpy = histogram(ps.Memcpy)
		in.QueueDwell = histogram(ps.QueueDwell)
	}
	return in
}

func histogram(h hist.Summary) Histogram {
	return Histogram{
		Count: int64(h.Count),
		Min:   time.Duration(h.Min), Max: time.Duration(h.Max), Mean: time.Duration(h.Mean),
		P50: time.Duration(h.P50), P90: time.Duration(h.P90), P99: time.Duration(h.P99),
	}
}

// BatchesOption configures Batches.
type BatchesOption func(*batchesConfig)

type batchesConfig struct{ copied bool }

// Copied makes Batches yield deep copies that outlive the next step.
func Copied() BatchesOption { return func(c *batchesConfig) { c.copied = true } }

// Batches returns an iterator over the server's batches for a range
// loop. Each step calls Sample and yields (batch, nil). When Sample fails
// the loop gets (Sample{}, err) once and the iteration ends: err wraps
// ErrClosed once the server is closed (the normal end), or is ctx's error
// once ctx is done.
//
//	for smp, err := range srv.Batches(ctx) {
//		if err != nil {
//			// errors.Is(err, echo.ErrClosed) is the normal end
//			break
//		}
//		train(smp.Batch)
//	}
//
// Like Sample, Batches yields whole batches only: samples of a batch still
// unfinished when the server closes never come out.
//
// Without Copied, each yielded sample views ring memory and is valid only
// until the next step; breaking out of the loop keeps the last batch valid
// until the next Sample. With Copied, each is a deep copy the caller may
// keep.
func (s *Server) Batches(ctx context.Context, opts ...BatchesOption) iter.Seq2[Sample, error] {
	var c batchesConfig
	for _, o := range opts {
		o(&c)
	}
	return func(yield func(Sample, error) bool) {
		for {
			smp, err := s.Sample(ctx)
			if err != nil {
				yield(Sample{}, err)
				return
			}
			if c.copied {
				smp = smp.Copy()
			}
			if !yield(smp, nil) {
				return
			}
		}
	}
}

// ResetHistograms clears the detailed metrics' histogram window; the
// counters keep running.
func (s *Server) ResetHistograms() { s.pool.ResetHistograms() }

// Close stops the server: blocked Sample and Submit calls return ErrClosed,
// and so does every later call. It waits for writers in flight to finish,
// then unmaps the ring — at once if the consumer holds no batch, else when
// the consumer next calls Sample, so that a learner still reading its last
// batch is not pulled from under. Close is idempotent and returns the unmap
// error, if any.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.startMu.Lock()
		s.closed.Store(true)
		s.startMu.Unlock()
		s.ring.Close() // wakes the consumer and every writer waiting for space
		// Stops accepting and closes every connection: their clients see
		// the connection end.
		s.closeErr = s.pool.Close()
		s.startMu.Lock()
		if s.learners != nil {
			s.learners.close()
		}
		s.startMu.Unlock()
		// Writers woken by ring.Close leave within a copy's time.
		for s.writers.Load() != 0 {
			runtime.Gosched()
			time.Sleep(50 * time.Microsecond)
		}
		s.consumeMu.Lock()
		s.writersDone = true
		if !s.ring.Holding() {
			s.freeIfIdle()
		}
		s.consumeMu.Unlock()
		close(s.done)
	})
	s.consumeMu.Lock()
	defer s.consumeMu.Unlock()
	return errors.Join(s.closeErr, s.freeErr)
}

// Done is closed once Close has finished: by the caller, or by a learner's
// CLOSE (WithLearnerSocket).
func (s *Server) Done() <-chan struct{} { return s.done }

// freeIfIdle unmaps the ring once Close has drained the writers. Called
// under consumeMu when the consumer holds no batch.
func (s *Server) freeIfIdle() {
	if s.writersDone {
		if err := s.ring.Free(); err != nil && s.freeErr == nil {
			s.freeErr = err
		}
	}
}

// expvarMu makes PublishExpvar's check and publish one step: expvar.Publish
// panics on a name taken in between.
var expvarMu sync.Mutex

// PublishExpvar exports the server's metrics through the standard expvar
// package under name: the SampleInfo of the latest batch and the number of
// batches handed out, as JSON at /debug/vars wherever the program serves
// expvar's handler (importing expvar registers it on
// http.DefaultServeMux). One line turns it on:
//
//	srv.PublishExpvar("echo")
//
// It fails if name is already published. expvar has no unpublish: the
// variable (and the server it reads) stays for the life of the process,
// showing the last batch after Close.
func (s *Server) PublishExpvar(name string) error {
	expvarMu.Lock()
	defer expvarMu.Unlock()
	if expvar.Get(name) != nil {
		return fmt.Errorf("echo: expvar %q is already published", name)
	}
	expvar.Publish(name, expvar.Func(func() any {
		s.lastMu.Lock()
		defer s.lastMu.Unlock()
		return struct {
			Batches uint64
			Last    SampleInfo
		}{s.batches, s.lastInfo}
	}))
	return nil
}
