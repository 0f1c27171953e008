package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/pytree"
	"github.com/seed-a9ef92a1/echo/wire"
)

// Latency across processes, the way users deploy a learner: the learner's
// server in one process, the actor in another, one TCP connection, and the
// time from the actor's timestamp (taken just before its write) to the
// learner holding the batch. Both processes read CLOCK_MONOTONIC, which
// every process on the host shares.
//
// A learner process runs ServeLatency and obeys a line protocol on its
// standard input: "reset" (start a window: forget the latencies, note the
// CPU time) and "report" (print the window's LatencyReport as one JSON
// line); it prints {"addr": ...} once it listens and exits when its input
// ends. tools/interop/latency_server.py speaks the same protocol for echo's
// own server.

// LatencyExample is the sample of the latency runs: 16 bytes, the send time
// (CLOCK_MONOTONIC, ns) and 8 bytes of payload; "t" flattens first.
func LatencyExample() any {
	return map[string]any{"t": pytree.Scalar(int64(0)), "x": pytree.MustOf(make([]float32, 2))}
}

// latencyPayload is LatencyExample's size on the wire.
const latencyPayload = 16

// Monotonic returns CLOCK_MONOTONIC in nanoseconds.
func Monotonic() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err) // CLOCK_MONOTONIC cannot fail on Linux
	}
	return ts.Nano()
}

// LatencyReport is what a learner process measured in one window.
type LatencyReport struct {
	N                int     // samples recorded
	P50, P99, P999   float64 // send-to-learner latency, µs
	CPUSeconds, Wall float64 // the learner process's user+system CPU and the window's length, s
}

// CPU is the share of one core the learner process used in the window.
func (r LatencyReport) CPU() float64 { return r.CPUSeconds / r.Wall }

// recorder keeps a window's latencies; the learner's consumer records, the
// control loop resets and reports.
type recorder struct {
	mu    sync.Mutex
	lat   []int64
	start time.Time
	cpu0  float64
}

func newRecorder() *recorder {
	r := &recorder{lat: make([]int64, 0, 1<<20)}
	r.reset()
	return r
}

// record adds the latency of every send time in sent, measured now.
func (r *recorder) record(sent func(i int) int64, n int) {
	now := Monotonic()
	r.mu.Lock()
	for i := range n {
		if len(r.lat) < cap(r.lat) {
			r.lat = append(r.lat, now-sent(i))
		}
	}
	r.mu.Unlock()
}

func (r *recorder) reset() {
	r.mu.Lock()
	r.lat = r.lat[:0]
	r.start, r.cpu0 = time.Now(), cpuSeconds()
	r.mu.Unlock()
}

func (r *recorder) report() LatencyReport {
	r.mu.Lock()
	lat := slices.Clone(r.lat)
	rep := LatencyReport{N: len(lat), CPUSeconds: cpuSeconds() - r.cpu0, Wall: time.Since(r.start).Seconds()}
	r.mu.Unlock()
	slices.Sort(lat)
	q := func(p float64) float64 {
		if len(lat) == 0 {
			return 0
		}
		return float64(lat[int(p*float64(len(lat)-1))]) / 1e3
	}
	rep.P50, rep.P99, rep.P999 = q(0.50), q(0.99), q(0.999)
	return rep
}

// cpuSeconds is this process's user and system CPU time.
func cpuSeconds() float64 {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// ServeLatency is the body of a learner process: kind "echo" (this
// package's server with wait strategy ws), "reference" (the minimal Go
// learner: a goroutine per connection reading through Go's poller, handing
// each sample to a consumer goroutine over a channel, acking each) or
// "sink" (acks whole samples, for the ping-pong floor). It takes batches of
// batch samples. It listens on loopback, prints its address to out and
// obeys the commands read from in until in ends.
func ServeLatency(kind string, batch int, ws echo.WaitStrategy, in io.Reader, out io.Writer) error {
	rec := newRecorder()
	var addr string
	var stop func()
	switch kind {
	case "echo":
		srv, err := echo.NewServer(LatencyExample(), batch, echo.WithTCP("127.0.0.1:0"), echo.WithWaitStrategy(ws))
		if err != nil {
			return err
		}
		if err := srv.Start(); err != nil {
			srv.Close()
			return err
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				smp, err := srv.Sample(context.Background())
				if err != nil {
					return
				}
				t, err := echo.View[int64](smp, "t")
				if err != nil {
					panic(err) // the example has an int64 "t"
				}
				rec.record(func(i int) int64 { return t[i] }, len(t))
			}
		}()
		addr, stop = srv.Addr().String(), func() { srv.Close(); <-done }
	case "reference":
		ref, err := newReference(batch, rec)
		if err != nil {
			return err
		}
		addr, stop = ref.Addr(), ref.close
	case "sink":
		sink, err := NewSink(LatencyExample())
		if err != nil {
			return err
		}
		addr, stop = sink.Addr(), sink.Close
	default:
		return fmt.Errorf("bench: no latency server %q", kind)
	}
	defer stop()
	enc := json.NewEncoder(out)
	if err := enc.Encode(map[string]string{"addr": addr}); err != nil {
		return err
	}
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		switch strings.TrimSpace(sc.Text()) {
		case "reset":
			rec.reset()
			if err := enc.Encode(map[string]bool{"ok": true}); err != nil {
				return err
			}
		case "report":
			if err := enc.Encode(rec.report()); err != nil {
				return err
			}
		}
	}
	return sc.Err()
}

// reference is the minimal parked Go learner the project's latency is held
// to: nothing but Go's poller, one read per sample, a channel, an ack.
type reference struct {
	*netServer
	ch   chan int64
	done chan struct{}
}

func newReference(batch int, rec *recorder) (*reference, error) {
	r := &reference{ch: make(chan int64, 4096), done: make(chan struct{})}
	s, _, err := newNetServer(LatencyExample(), func(_ *netServer, c net.Conn) {
		buf := make([]byte, latencyPayload)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			r.ch <- int64(binary.LittleEndian.Uint64(buf))
			if _, err := c.Write([]byte{wire.Ack}); err != nil {
				return
			}
		}
	})
	if err != nil {
		return nil, err
	}
	r.netServer = s
	go func() {
		defer close(r.done)
		sent := make([]int64, 0, batch)
		for t := range r.ch {
			if sent = append(sent, t); len(sent) == batch {
				rec.record(func(i int) int64 { return sent[i] }, batch)
				sent = sent[:0]
			}
		}
	}()
	return r, nil
}

func (r *reference) close() {
	r.netServer.close()
	close(r.ch)
	<-r.done
}

// LatencyActor sends LatencyExample samples to a learner over one TCP
// connection, from an OS thread of its own that sleeps between samples
// with nanosleep (Go's timers wake a millisecond late here), with at most
// DefaultMaxInflight unacknowledged, as echo's client does.
type LatencyActor struct {
	conn  net.Conn
	acks  chan struct{} // a token per sample in flight
	acked chan struct{} // a token after acks arrive, for PingPong
	done  chan error
}

// DialLatency connects an actor to addr and reads the handshake.
func DialLatency(addr string) (*LatencyActor, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if _, err := wire.ReadHandshake(conn, wire.Limits{}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("bench: handshake from %s: %w", addr, err)
	}
	a := &LatencyActor{
		conn: conn, acks: make(chan struct{}, echo.DefaultMaxInflight),
		acked: make(chan struct{}, 1), done: make(chan error, 1),
	}
	go a.readAcks()
	return a, nil
}

func (a *LatencyActor) readAcks() {
	buf := make([]byte, 256)
	for {
		n, err := a.conn.Read(buf)
		for range n {
			select {
			case <-a.acks:
			default:
				a.done <- errors.New("bench: more acks than samples")
				return
			}
		}
		if n > 0 {
			select {
			case a.acked <- struct{}{}:
			default:
			}
		}
		if err != nil {
			a.done <- err
			return
		}
	}
}

// pace sleeps the calling OS thread, with nanosleep, until sample i of a
// stream of rate per second that began at start (Monotonic) is due; a
// rate of 0 never sleeps.
func pace(start int64, i int, rate float64) {
	if rate <= 0 {
		return
	}
	due := start + int64(float64(i)*1e9/rate)
	if wait := due - Monotonic(); wait > 0 {
		ts := unix.NsecToTimespec(wait)
		for unix.Nanosleep(&ts, &ts) == unix.EINTR {
		}
	}
}

// ErrStalled: the learner acknowledged nothing for stallAfter while the
// actor's window was full.
var ErrStalled = errors.New("bench: the learner stopped acknowledging")

// stallAfter is how long Send waits on a full window before it gives up.
const stallAfter = 5 * time.Second

// Send sends n samples at rate per second (0: as fast as the window
// allows) and waits for their acks. It returns ErrStalled if the learner
// stops acknowledging.
func (a *LatencyActor) Send(rate float64, n int) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	buf := make([]byte, latencyPayload)
	stall := time.NewTimer(stallAfter)
	defer stall.Stop()
	start := Monotonic()
	for i := range n {
		pace(start, i, rate)
		if err := a.take(stall); err != nil {
			return err
		}
		binary.LittleEndian.PutUint64(buf, uint64(Monotonic()))
		if _, err := a.conn.Write(buf); err != nil {
			return err
		}
	}
	// Every sample is acked once the whole window can be taken.
	for range cap(a.acks) {
		if err := a.take(stall); err != nil {
			return err
		}
	}
	for range cap(a.acks) {
		<-a.acks
	}
	return nil
}

// take takes a place in the in-flight window, waiting at most stallAfter
// (stall is the caller's timer) for an ack to free one.
func (a *LatencyActor) take(stall *time.Timer) error {
	select {
	case a.acks <- struct{}{}:
		return nil
	default:
	}
	stall.Reset(stallAfter)
	select {
	case a.acks <- struct{}{}:
		return nil
	case err := <-a.done:
		return err
	case <-stall.C:
		return ErrStalled
	}
}

// PingPong sends n samples one at a time, each after the last one's ack,
// and returns the round trips' p50 and p99 in µs: the floor of any
// learner's latency over this loopback.
func (a *LatencyActor) PingPong(n int) (p50, p99 float64, err error) {
	buf := make([]byte, latencyPayload)
	rtt := make([]int64, n)
	for i := range rtt {
		select {
		case <-a.acked: // a token left from earlier sends
		default:
		}
		t0 := Monotonic()
		a.acks <- struct{}{}
		binary.LittleEndian.PutUint64(buf, uint64(t0))
		if _, err := a.conn.Write(buf); err != nil {
			return 0, 0, err
		}
		select {
		case <-a.acked:
		case err := <-a.done:
			return 0, 0, err
		}
		rtt[i] = Monotonic() - t0
	}
	slices.Sort(rtt)
	return float64(rtt[n/2]) / 1e3, float64(rtt[n*99/100]) / 1e3, nil
}

// Close closes the connection.
func (a *LatencyActor) Close() error { return a.conn.Close() }

// ProducerLatency is the in-process path: a Producer on an OS thread of
// its own, sleeping between samples, sends n samples at rate per second (0:
// as fast as it can) to a server with wait strategy ws, whose learner
// records each sample's time from Send to Sample's return. CPU is the whole
// process's: producer, worker and learner.
func ProducerLatency(ws echo.WaitStrategy, batch int, rate float64, n int) (LatencyReport, error) {
	srv, err := echo.NewServer(LatencyExample(), batch, echo.WithWaitStrategy(ws))
	if err != nil {
		return LatencyReport{}, err
	}
	defer srv.Close()
	prod, err := srv.NewProducer()
	if err != nil {
		return LatencyReport{}, err
	}
	defer prod.Close()
	rec := newRecorder()
	done := make(chan error, 1)
	go func() {
		for got := 0; got < n; got += batch {
			smp, err := srv.Sample(context.Background())
			if err != nil {
				done <- err
				return
			}
			t, err := echo.View[int64](smp, "t")
			if err != nil {
				done <- err
				return
			}
			rec.record(func(i int) int64 { return t[i] }, len(t))
		}
		done <- nil
	}()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	sample := LatencyExample().(map[string]any)
	ts, _ := sample["t"].(pytree.Array).Int64()
	rec.reset()
	start := Monotonic()
	for i := range n {
		pace(start, i, rate)
		ts[0] = Monotonic()
		if err := prod.Send(context.Background(), sample); err != nil {
			return LatencyReport{}, err
		}
	}
	select {
	case err := <-done:
		if err != nil {
			return LatencyReport{}, err
		}
	case <-time.After(30 * time.Second):
		return LatencyReport{}, ErrStalled
	}
	return rec.report(), nil
}
