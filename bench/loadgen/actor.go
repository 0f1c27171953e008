// Package loadgen drives a server with many actors that crash, reconnect
// and misbehave, and checks with package integrity that nothing they had
// acknowledged was lost, duplicated, reordered or corrupted.
//
// Run is one fault run: Config.Actors actors each send Config.Samples
// integrity samples over as many connections as it takes, killing a
// fraction of their connections at a random byte (in the handshake, between
// samples or inside one) and reconnecting, while a consumer checks every
// batch, pausing when told to. The hostile scenarios in hostile.go attack a
// live server while such a run goes on. The tests of this package and
// tools/echo-load use both.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/bench/integrity"
	"github.com/seed-a9ef92a1/echo/pytree"
	"github.com/seed-a9ef92a1/echo/wire"
)

// Config describes a fault run.
type Config struct {
	// Actors is the number of concurrent actors.
	Actors int
	// Samples is what each actor sends, in whole samples, across all its
	// connections.
	Samples int
	// Body is the integrity sample's body size in bytes.
	Body int
	// Kill is the probability that a connection is killed at a random
	// byte instead of ending cleanly.
	Kill float64
	// Client sends through echo.Client instead of a raw connection. A
	// client cannot be killed mid-sample, so Kill then closes it at a
	// random sample boundary; faults inside samples come from the network
	// (a proxy between client and server).
	Client bool
	// Reconnect sends through an echo.Client on wire version 2 that
	// reconnects by itself (echo.WithReconnect): each actor dials once and
	// sends all its samples through the one Client, and Kills is the
	// number of times each actor's connection is cut under it, at random
	// samples, half between two Sends and half from another goroutine
	// while Sends go on, with a reset half the time. Every sample handed
	// to Send must then arrive exactly once. Kill and Client are ignored.
	Reconnect bool
	Kills     int
	// Secret is the server's shared secret, for Client actors.
	Secret []byte
	// MaxInflight is the number of unacknowledged samples a connection may
	// have; 0 means echo.DefaultMaxInflight.
	MaxInflight int
	// Stall is how long a connection may go without an acknowledgement
	// while it waits for one before the actor gives up on it and
	// reconnects; 0 means 10 s.
	Stall time.Duration
	// Seed seeds the kill points.
	Seed uint64
	// Dial connects one actor to the server.
	Dial func(ctx context.Context) (net.Conn, error)
	// Unchecked skips the integrity checks: the consumer only looks for
	// the run's end, and the report's delivery figures stay 0. For
	// measuring what the checks cost.
	Unchecked bool
	// During, if set, runs once every actor has connected once (or
	// given up), alongside the rest of the run; the run ends after it
	// returns. Hostile scenarios attack from here.
	During func(ctx context.Context, check *integrity.Checker) error
	// StopDuring cancels During's context once every actor is done, for
	// attacks that go on until then, so that they last as long as the
	// actors they run beside.
	StopDuring bool
}

// Kill kinds: where a killed connection was cut.
const (
	KillHandshake = iota // while reading the server's handshake
	KillBetween          // between two samples
	KillMidSample        // inside a sample
	numKinds
)

// Actors is what the actors did.
type Actors struct {
	Connections uint64           // connections opened
	Killed      [numKinds]uint64 // connections killed, by where
	Reset       uint64           // killed connections closed with a reset rather than a FIN
	Failed      uint64           // connections that ended on an error the actor did not cause
	DialErrors  uint64           // dials that failed (then retried)
	// UnackedAtKills sums, over the kills of reconnecting Clients, the
	// samples sent and not yet acknowledged when the connection was cut.
	UnackedAtKills uint64
}

// KilledTotal is the number of connections killed on purpose.
func (a *Actors) KilledTotal() uint64 {
	return a.Killed[KillHandshake] + a.Killed[KillBetween] + a.Killed[KillMidSample]
}

// counters is Actors, written concurrently.
type counters struct {
	conns, reset, failed, dialErrs atomic.Uint64
	unacked                        atomic.Uint64
	killed                         [numKinds]atomic.Uint64
}

func (c *counters) snapshot() Actors {
	a := Actors{Connections: c.conns.Load(), Reset: c.reset.Load(), Failed: c.failed.Load(), DialErrors: c.dialErrs.Load(),
		UnackedAtKills: c.unacked.Load()}
	for i := range a.Killed {
		a.Killed[i] = c.killed[i].Load()
	}
	return a
}

// streams hands out the checker's stream ids, from 1 up.
type streams struct {
	check *integrity.Checker
	next  atomic.Uint32
}

func (s *streams) new() uint64 { return s.check.StreamID(s.next.Add(1)) }

// actor is one actor: it sends its samples over connection after
// connection until all are sent.
type actor struct {
	cfg     *Config
	rng     *rand.Rand
	check   *integrity.Checker
	ids     *streams
	count   *counters
	sample  *integrity.Sample
	example any
	// handshakeLen is the size of the server's handshake.
	handshakeLen int
	// connected is called after the first connection, and at the end.
	connected func()
}

// run sends the actor's samples.
func (a *actor) run(ctx context.Context) error {
	left := a.cfg.Samples
	backoff := time.Millisecond
	for left > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		conn, err := a.cfg.Dial(ctx)
		if err != nil {
			a.count.dialErrs.Add(1)
			if ctx.Err() != nil {
				return ctx.Err()
			}
			time.Sleep(backoff)
			backoff = min(2*backoff, 100*time.Millisecond)
			continue
		}
		backoff = time.Millisecond
		a.count.conns.Add(1)
		a.connected()
		if a.cfg.Reconnect {
			return a.viaReconnecting(ctx, conn)
		}
		var sent int
		if a.cfg.Client {
			sent = a.viaClient(ctx, conn, left)
		} else {
			sent = a.viaRaw(ctx, conn, left)
		}
		left -= sent
	}
	return nil
}

// plan decides whether this connection is killed and, if so, where: with
// kind KillHandshake after reading at bytes of the handshake, otherwise
// after at whole samples of the n it could send, plus cut bytes of the next
// (cut > 0 only for KillMidSample). The three kinds are equally likely.
func (a *actor) plan(handshake, n int) (kill bool, kind, at, cut int) {
	if a.rng.Float64() >= a.cfg.Kill {
		return false, 0, 0, 0
	}
	switch kind = a.rng.IntN(numKinds); kind {
	case KillHandshake:
		return true, kind, a.rng.IntN(handshake), 0
	case KillBetween:
		return true, kind, a.rng.IntN(n), 0
	default:
		return true, kind, a.rng.IntN(n), 1 + a.rng.IntN(len(a.sample.Payload)-1)
	}
}

// viaRaw serves one connection with raw reads and writes, so that it can
// be cut at any byte. It returns the whole samples written.
func (a *actor) viaRaw(ctx context.Context, conn net.Conn, left int) int {
	id := a.ids.new()
	s := &rawStream{conn: conn, window: a.cfg.MaxInflight, stall: a.cfg.Stall, acked: make(chan struct{}, 1), done: make(chan struct{})}
	hsLen := a.handshakeLen
	kill, kind, at, cut := a.plan(hsLen, left)
	if kill && kind == KillHandshake {
		// Read part of the handshake, then vanish.
		io.ReadFull(conn, make([]byte, at))
		a.kill(conn, KillHandshake)
		a.check.Sent(id, 0, 0)
		return 0
	}
	if _, err := wire.ReadHandshake(conn, wire.Limits{}); err != nil {
		conn.Close()
		a.count.failed.Add(1)
		a.check.Sent(id, 0, 0)
		return 0
	}
	go s.readAcks()
	sent, err := 0, error(nil)
	stop := left
	if kill {
		stop = at
	}
	for sent < stop && err == nil {
		if err = s.waitWindow(ctx, sent); err != nil {
			break
		}
		a.sample.Fill(id, uint64(sent))
		if _, err = conn.Write(a.sample.Payload); err == nil {
			sent++
		}
	}
	switch {
	case err != nil:
		conn.Close()
		a.count.failed.Add(1)
	case kill:
		if cut > 0 {
			a.sample.Fill(id, uint64(sent))
			conn.Write(a.sample.Payload[:cut])
		}
		a.kill(conn, kind)
	default:
		// Wait for every ack: sent+window-1 is "sent" with room for none.
		if err := s.waitWindow(ctx, sent+s.window-1); err != nil {
			a.count.failed.Add(1)
		}
		conn.Close()
	}
	<-s.done
	a.check.Sent(id, uint64(sent), s.ackCount.Load())
	return sent
}

// kill ends conn abruptly, as a crashing process would: half the time with
// a reset (unread acks make the kernel send one anyway), half with a FIN.
func (a *actor) kill(conn net.Conn, kind int) { a.killWith(conn, kind, a.rng.IntN(2) == 0) }

// killWith is kill with the choice of a reset made: from goroutines other
// than the actor's, which must not touch its rng.
func (a *actor) killWith(conn net.Conn, kind int, reset bool) {
	a.count.killed[kind].Add(1)
	if tc, ok := conn.(*net.TCPConn); ok && reset {
		tc.SetLinger(0)
		a.count.reset.Add(1)
	}
	conn.Close()
}

// rawStream is a raw connection's ack accounting.
type rawStream struct {
	conn     net.Conn
	window   int
	stall    time.Duration
	ackCount atomic.Uint64
	acked    chan struct{} // a token after every read of acks
	done     chan struct{} // closed when readAcks returns
	err      error         // why readAcks returned; read after done
}

// readAcks counts acknowledgements until the connection ends.
func (s *rawStream) readAcks() {
	defer close(s.done)
	buf := make([]byte, 512)
	for {
		n, err := s.conn.Read(buf)
		for _, b := range buf[:n] {
			if b != wire.Ack {
				s.err = fmt.Errorf("loadgen: ack byte %#x", b)
				s.conn.Close()
				return
			}
		}
		if n > 0 {
			s.ackCount.Add(uint64(n))
			select {
			case s.acked <- struct{}{}:
			default:
			}
		}
		if err != nil {
			s.err = err
			return
		}
	}
}

// waitWindow waits until at most window-1 of sent samples are unacked, so
// that one more may be sent.
func (s *rawStream) waitWindow(ctx context.Context, sent int) error {
	timer := time.NewTimer(s.stall)
	defer timer.Stop()
	for sent-int(s.ackCount.Load()) >= s.window {
		select {
		case <-s.acked:
			timer.Reset(s.stall)
		case <-s.done:
			if sent-int(s.ackCount.Load()) < s.window {
				return nil
			}
			return fmt.Errorf("loadgen: connection ended with %d unacked: %v", sent-int(s.ackCount.Load()), s.err)
		case <-timer.C:
			return fmt.Errorf("loadgen: no ack for %v", s.stall)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// viaClient serves one connection through echo.Client. It returns the
// samples handed to Send, counting one that failed: its bytes may have
// reached the server whole.
func (a *actor) viaClient(ctx context.Context, conn net.Conn, left int) int {
	id := a.ids.new()
	opts := []echo.ClientOption{echo.WithMaxInflight(a.cfg.MaxInflight)}
	if a.cfg.Secret != nil {
		opts = append(opts, echo.WithClientSecret(a.cfg.Secret))
	}
	c, err := echo.NewClient(ctx, conn, a.example, opts...)
	if err != nil {
		conn.Close()
		a.count.failed.Add(1)
		a.check.Sent(id, 0, 0)
		return 0
	}
	// A Client cuts only between samples: read the plan that way.
	kill, _, at, _ := a.plan(1, left)
	stop := left
	if kill {
		stop = at
	}
	sent := 0
	for sent < stop {
		a.sample.Fill(id, uint64(sent))
		err = c.Send(ctx, a.sample.Tree)
		sent++ // see above
		if err != nil {
			break
		}
	}
	if err == nil && !kill {
		wctx, cancel := context.WithTimeout(ctx, a.cfg.Stall)
		err = c.Wait(wctx)
		cancel()
	}
	acked := uint64(sent - c.Inflight())
	c.Close()
	switch {
	case err != nil:
		a.count.failed.Add(1)
	case kill:
		a.count.killed[KillBetween].Add(1)
	}
	a.check.Sent(id, uint64(sent), acked)
	return sent
}

// viaReconnecting sends all of the actor's samples through one
// reconnecting Client whose first connection is conn, cutting its
// connection cfg.Kills times, and waits for every ack.
func (a *actor) viaReconnecting(ctx context.Context, first net.Conn) error {
	id := a.ids.new()
	var (
		mu  sync.Mutex
		cur = first
	)
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		mu.Lock()
		defer mu.Unlock()
		if first != nil {
			conn := first
			first = nil
			return conn, nil
		}
		conn, err := a.cfg.Dial(ctx)
		if err != nil {
			a.count.dialErrs.Add(1)
			return nil, err
		}
		a.count.conns.Add(1)
		cur = conn
		return conn, nil
	}
	opts := []echo.ClientOption{
		echo.WithMaxInflight(a.cfg.MaxInflight),
		echo.WithDialer(dial),
		echo.WithReconnect(echo.Backoff{Min: time.Millisecond, Max: 50 * time.Millisecond, GiveUp: a.cfg.Stall}),
	}
	if a.cfg.Secret != nil {
		opts = append(opts, echo.WithClientSecret(a.cfg.Secret))
	}
	c, err := echo.Dial(ctx, "loadgen", a.example, opts...)
	if err != nil {
		a.count.failed.Add(1)
		a.check.Sent(id, 0, 0)
		return nil
	}
	defer c.Close()
	// The samples at which the connection is cut, in order.
	at := make([]int, a.cfg.Kills)
	for i := range at {
		at[i] = a.rng.IntN(a.cfg.Samples)
	}
	slices.Sort(at)
	cut := func(kind int, reset bool) {
		mu.Lock()
		conn := cur
		mu.Unlock()
		a.count.unacked.Add(uint64(c.Inflight()))
		a.killWith(conn, kind, reset)
	}
	var cutters sync.WaitGroup
	sent := 0
	for ; sent < a.cfg.Samples; sent++ {
		for len(at) > 0 && at[0] == sent {
			at = at[1:]
			reset := a.rng.IntN(2) == 0
			if a.rng.IntN(2) == 0 {
				cut(KillBetween, reset)
			} else {
				delay := time.Duration(a.rng.IntN(200)) * time.Microsecond
				cutters.Go(func() {
					time.Sleep(delay)
					cut(KillMidSample, reset)
				})
			}
		}
		a.sample.Fill(id, uint64(sent))
		if err = c.Send(ctx, a.sample.Tree); err != nil {
			break
		}
	}
	cutters.Wait()
	if err == nil {
		wctx, cancel := context.WithTimeout(ctx, 2*a.cfg.Stall)
		err = c.Wait(wctx)
		cancel()
	}
	if err != nil {
		a.count.failed.Add(1)
	}
	a.check.Sent(id, uint64(sent), uint64(sent-c.Inflight()))
	return nil
}

// handshakeLen is the size of the version-1 handshake of a server for
// example: a header, then per leaf its dtype size, rank and dims.
func handshakeLen(example any) int {
	spec, err := pytree.SpecOf(example)
	if err != nil {
		panic(err)
	}
	n := len(wire.Magic) + 1 + 4
	for _, l := range spec.Leaves() {
		n += 4 + 4 + 4*len(l.Shape)
	}
	return n
}

// Result is a fault run's outcome.
type Result struct {
	integrity.Report
	Actors
	Batches uint64
	Elapsed time.Duration
	// ActorsElapsed is the time from the start until the last actor was
	// done: without the attacks that may run on (Config.During).
	ActorsElapsed time.Duration
	// ActorSamples is what the actors were to send: Actors × Samples.
	ActorSamples int
	// Info is the server's SampleInfo with the last batch, taken after
	// every actor and attacker was done.
	Info echo.SampleInfo
	// Ring is the address of the first batch's memory: a leak check can
	// look for its mapping after Close.
	Ring uintptr
}

// Rate is the samples sent per second.
func (r Result) Rate() float64 { return float64(r.Sent) / r.Elapsed.Seconds() }

// ActorRate is the actors' own samples per second, until the last of them
// was done: the rate of honest actors, whatever attacks ran beside them.
func (r Result) ActorRate() float64 {
	return float64(r.ActorSamples) / r.ActorsElapsed.Seconds()
}

// ErrIncomplete: the consumer did not see every acknowledged sample before
// the run's context ended.
var ErrIncomplete = errors.New("loadgen: run incomplete")

// Run runs cfg's actors against srv, a started server built with
// integrity.Example(cfg.Body) and a batch size of batch, consuming and
// checking every batch. pause, if non-nil, is called after each batch with
// the number of batches so far, and may sleep to play a slow learner. Run
// returns once every actor is done and every acknowledged sample was
// checked, or when ctx ends (with ErrIncomplete).
func Run(ctx context.Context, srv *echo.Server, cfg Config, pause func(batches int)) (Result, error) {
	if cfg.Stall == 0 {
		cfg.Stall = 10 * time.Second
	}
	if cfg.MaxInflight == 0 {
		cfg.MaxInflight = echo.DefaultMaxInflight
	}
	start := time.Now()
	check := integrity.NewChecker(cfg.Body)
	var res Result
	consumed := make(chan error, 1)
	fillersIn, sawFiller := make(chan struct{}), make(chan struct{})
	cctx, stopConsumer := context.WithCancel(ctx)
	defer stopConsumer()
	go func() {
		consumed <- consume(cctx, srv, check, !cfg.Unchecked, fillersIn, sawFiller, pause, &res)
	}()

	ids := streams{check: check}
	var (
		count  counters
		wg     sync.WaitGroup // actors and During
		actors sync.WaitGroup // actors alone
		errMu  sync.Mutex
		first  error
	)
	example := integrity.Example(cfg.Body)
	hsLen := handshakeLen(example)
	var connected sync.WaitGroup
	connected.Add(cfg.Actors)
	res.ActorSamples = cfg.Actors * cfg.Samples
	var lastActor atomic.Int64 // ns after start the last actor was done
	actorDone := func() {
		d := int64(time.Since(start))
		for old := lastActor.Load(); d > old && !lastActor.CompareAndSwap(old, d); old = lastActor.Load() {
		}
	}
	for i := range cfg.Actors {
		var once sync.Once
		a := &actor{
			cfg:          &cfg,
			rng:          rand.New(rand.NewPCG(cfg.Seed, uint64(i))),
			check:        check,
			ids:          &ids,
			count:        &count,
			sample:       integrity.NewSample(cfg.Body),
			example:      example,
			handshakeLen: hsLen,
			connected:    func() { once.Do(connected.Done) },
		}
		actors.Add(1)
		wg.Go(func() {
			defer actors.Done()
			defer actorDone()
			defer a.connected()
			if err := a.run(ctx); err != nil {
				errMu.Lock()
				first = cmp(first, err)
				errMu.Unlock()
			}
		})
	}
	if cfg.During != nil {
		dctx := ctx
		if cfg.StopDuring {
			var stop context.CancelFunc
			dctx, stop = context.WithCancel(ctx)
			defer stop()
			go func() {
				actors.Wait()
				stop()
			}()
		}
		wg.Go(func() {
			connected.Wait()
			if err := cfg.During(dctx, check); err != nil {
				errMu.Lock()
				first = cmp(first, fmt.Errorf("loadgen: during the run: %w", err))
				errMu.Unlock()
			}
		})
	}
	wg.Wait()
	// Every acknowledged sample is in the ring. Fill the open batch (and
	// at most one more) with fillers: the batch that holds one holds or
	// follows every sample committed before. The consumer goes on taking
	// batches meanwhile: samples of connections that were still being
	// read may fill the ring ahead of the fillers.
	close(fillersIn)
	filler := integrity.NewSample(cfg.Body)
	var err error
	for i := range srv.BatchSize() {
		filler.Fill(integrity.Filler, check.FillerSeq(uint32(i)))
		if err = srv.Submit(ctx, filler.Tree); err != nil {
			err = fmt.Errorf("loadgen: submitting fillers: %w", err)
			break
		}
	}
	if err == nil {
		select {
		case <-sawFiller:
		case <-ctx.Done():
		}
	}
	stopConsumer()
	err = cmp(err, <-consumed)
	res.Report = check.Report()
	res.Actors = count.snapshot()
	res.Elapsed = time.Since(start)
	res.ActorsElapsed = time.Duration(lastActor.Load())
	if first != nil {
		return res, first
	}
	return res, err
}

func cmp(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// consume checks batches until ctx ends. It closes sawFiller at the first
// batch with one of the run's fillers, which must come after fillersIn
// closed; ctx ending after that is a success. It never stops early: a run
// whose consumer left would block in Submit.
func consume(ctx context.Context, srv *echo.Server, check *integrity.Checker, checked bool, fillersIn <-chan struct{}, sawFiller chan<- struct{}, pause func(int), res *Result) error {
	saw := false
	var early error
	for {
		smp, err := srv.Sample(ctx)
		if err != nil {
			if saw && ctx.Err() != nil {
				return early
			}
			return fmt.Errorf("%w: %w", ErrIncomplete, err)
		}
		if res.Batches == 0 {
			res.Ring = uintptr(unsafe.Pointer(unsafe.SliceData(smp.Leaves[0].Bytes())))
		}
		res.Batches++
		res.Info = smp.Info
		var fillers int
		if checked {
			fillers = check.Batch(smp.Leaves)
		} else {
			fillers = check.Fillers(smp.Leaves)
		}
		if fillers > 0 && !saw {
			select {
			case <-fillersIn:
			default:
				early = errors.New("loadgen: a filler arrived before the actors were done")
			}
			saw = true
			close(sawFiller)
		}
		if pause != nil {
			pause(int(res.Batches))
		}
	}
}
