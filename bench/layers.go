package bench

import (
	"context"
	"io"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/pytree"
	"github.com/seed-a9ef92a1/echo/ringbuf"
	"github.com/seed-a9ef92a1/echo/spsc"
)

// RingClaims measures the ring's own bookkeeping, no bytes copied: one op
// is one slot claimed alone (Reserve(1), as Submit claims) and committed,
// with the consumer taking each batch as it completes. Its ceiling is one
// uncontended compare-and-swap on a counter, measured in the same run
// (x_cas = CAS time / op time).
func RingClaims(b *testing.B, batch int) {
	r, err := ringbuf.New(ringbuf.Layout{BatchSize: batch, NumSlabs: 3, LeafBytes: []int{8}})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Free()
	ctx := context.Background()
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		res, _, ok := r.Reserve(1)
		if !ok {
			b.Fatal("ring full with the consumer keeping up")
		}
		if r.Commit(res) {
			if _, err := r.Next(ctx); err != nil {
				b.Fatal(err)
			}
		}
		n++
	}
	b.StopTimer()
	op := b.Elapsed().Seconds() / float64(n)
	b.ReportMetric(1/op, "slots/s")
	b.ReportMetric(casSeconds()/op, "x_cas")
}

// casSeconds times one uncontended CAS on a counter.
func casSeconds() float64 {
	var v atomic.Uint64
	const n = 1 << 22
	t0 := time.Now()
	for i := range uint64(n) {
		v.CompareAndSwap(i, i+1)
	}
	return time.Since(t0).Seconds() / n
}

// ClientSend measures Client.Send alone: one client sends w's samples to
// the raw sink, which reads and acks them. Its ceiling is the same bytes,
// already concatenated, written with net.Conn.Write to the same sink with
// no in-flight bound (what echo's Python client does after joining the
// leaves, less the bound), measured in the same run: x_write = ceiling
// time / Send time.
func ClientSend(b *testing.B, w Workload) {
	sample := w.MustSample(1)
	sink, err := NewSink(sample)
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	ctx := context.Background()
	c, err := echo.Dial(ctx, sink.Addr(), sample, echo.WithWireVersion(1)) // the sink speaks version 1
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.SetBytes(int64(w.PayloadBytes))
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		if err := c.Send(ctx, sample); err != nil {
			b.Fatal(err)
		}
		n++
	}
	if err := c.Wait(ctx); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	send := b.Elapsed().Seconds() / float64(n)
	write, err := rawWriteSeconds(sink, sample, n)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(1/send, "samples/s")
	b.ReportMetric(write/send, "x_write")
}

// rawWriteSeconds times n writes of sample's bytes, concatenated, to sink
// over a plain net.Conn that reads its acks, and returns seconds per write.
func rawWriteSeconds(sink *Sink, sample any, n int) (float64, error) {
	leaves, _, err := pytree.Flatten(sample)
	if err != nil {
		return 0, err
	}
	var payload []byte
	for _, a := range leaves {
		payload = append(payload, a.Bytes()...)
	}
	conn, err := dialRaw(sink.Addr())
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	acks := make(chan error, 1)
	go func() {
		buf := make([]byte, 4096)
		for got := 0; got < n; {
			k, err := conn.Read(buf)
			if err != nil {
				acks <- err
				return
			}
			got += k
		}
		acks <- nil
	}()
	t0 := time.Now()
	for range n {
		if _, err := conn.Write(payload); err != nil {
			return 0, err
		}
	}
	if err := <-acks; err != nil {
		return 0, err
	}
	return time.Since(t0).Seconds() / float64(n), nil
}

// TrajectoryAdd measures the accumulator: one op is steps Add calls of a
// W2-shaped step (an 84×84×4 frame, an action, a reward) and the Build that
// ends the trajectory. Its ceiling is copy() of the same bytes into a
// buffer of the trajectory's size (x_copy).
func TrajectoryAdd(b *testing.B, steps int) {
	frame := make([]uint8, 84*84*4)
	for i := range frame {
		frame[i] = byte(i)
	}
	zeros := func(dt pytree.DType, shape ...int) pytree.Array {
		a, err := pytree.Zeros(dt, shape...)
		if err != nil {
			b.Fatal(err)
		}
		return a
	}
	acc, err := echo.NewTrajectoryAccumulator(map[string]any{"steps": map[string]any{
		"obs":    zeros(pytree.Uint8, steps, 84, 84, 4),
		"action": zeros(pytree.Int32, steps),
		"reward": zeros(pytree.Float32, steps),
	}})
	if err != nil {
		b.Fatal(err)
	}
	step := map[string]any{
		"obs":    pytree.MustOf(frame, 84, 84, 4),
		"action": pytree.Scalar(int32(3)),
		"reward": pytree.Scalar(float32(1)),
	}
	stepBytes := len(frame) + 8
	b.SetBytes(int64(steps * stepBytes))
	b.ReportAllocs()
	for b.Loop() {
		for range steps {
			if err := acc.Add("steps", step); err != nil {
				b.Fatal(err)
			}
		}
		acc.Build()
	}
	b.StopTimer()
	op := b.Elapsed().Seconds() / float64(b.N)
	b.ReportMetric(trajectoryCopySeconds(frame, steps)/op, "x_copy")
}

// trajectoryCopySeconds times copy() of steps frames (and their 8 bytes of
// action and reward) into trajectory-sized buffers.
func trajectoryCopySeconds(frame []byte, steps int) float64 {
	obs := make([]byte, steps*len(frame))
	small := make([]byte, steps*8)
	var eight [8]byte
	const rounds = 200
	t0 := time.Now()
	for range rounds {
		for s := range steps {
			copy(obs[s*len(frame):], frame)
			copy(small[s*8:], eight[:])
		}
	}
	return time.Since(t0).Seconds() / rounds
}

// latencySample is W1 with a send timestamp: the sample Latency sends.
func latencySample() map[string]any {
	return map[string]any{
		"obs":    pytree.MustOf(make([]float32, 8)),
		"reward": pytree.Scalar(float32(0)),
		"done":   pytree.Scalar(uint8(0)),
		"sent":   pytree.Scalar(int64(0)),
	}
}

// Latency measures send-to-sample time: one client sends W1-sized samples
// carrying their send time (a leaf of nanoseconds on this process's
// monotonic clock) over TCP, at load × the rate the same setup sustains
// when saturated (measured first, in the same run; load 0 means
// saturation), and the learner records, for every row of every batch, the
// time from send to Sample's return. It reports p50, p99 and p99.9 in
// microseconds, and the p50 as a multiple of the loopback's floor measured
// in the same run (x_floor: see sinkRoundTrip). With batch > 1 a sample
// also waits for its batch to fill, which at low rates dominates.
func Latency(b *testing.B, batch int, load float64) {
	capacity := 0.0
	if load > 0 {
		c, _, err := runLatency(batch, 20000, 0)
		if err != nil {
			b.Fatal(err)
		}
		capacity = c
	}
	n := max(b.N, 4*batch)
	rate, lat, err := runLatency(batch, n, load*capacity)
	if err != nil {
		b.Fatal(err)
	}
	floor, err := sinkRoundTrip(2000)
	if err != nil {
		b.Fatal(err)
	}
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / 1e3 }
	b.ReportMetric(rate, "samples/s")
	b.ReportMetric(q(0.50), "p50_µs")
	b.ReportMetric(q(0.99), "p99_µs")
	b.ReportMetric(q(0.999), "p99.9_µs")
	b.ReportMetric(floor/1e3, "floor_µs")
	b.ReportMetric(q(0.50)*1e3/floor, "x_floor")
}

// sinkRoundTrip is the latency floor of this loopback: the median time
// from writing one W1-sized sample to the raw sink to reading its ack, over
// n samples sent one at a time, in ns. A sample cannot reach a learner
// faster than the sink can say it arrived.
func sinkRoundTrip(n int) (float64, error) {
	example := latencySample()
	sink, err := NewSink(example)
	if err != nil {
		return 0, err
	}
	defer sink.Close()
	conn, err := dialRaw(sink.Addr())
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	leaves, _, err := pytree.Flatten(example)
	if err != nil {
		return 0, err
	}
	var payload []byte
	for _, a := range leaves {
		payload = append(payload, a.Bytes()...)
	}
	ack := make([]byte, 1)
	rtt := make([]int64, n)
	for i := range rtt {
		t0 := time.Now()
		if _, err := conn.Write(payload); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(conn, ack); err != nil {
			return 0, err
		}
		rtt[i] = int64(time.Since(t0))
	}
	slices.Sort(rtt)
	return float64(rtt[n/2]), nil
}

// runLatency sends n samples at rate per second (0: as fast as possible)
// and returns the achieved rate and every sample's latency in ns.
func runLatency(batch, n int, rate float64) (float64, []int64, error) {
	example := latencySample()
	s, err := echo.NewServer(example, batch, echo.WithTCP("127.0.0.1:0"))
	if err != nil {
		return 0, nil, err
	}
	defer s.Close()
	if err := s.Start(); err != nil {
		return 0, nil, err
	}
	ctx := context.Background()
	c, err := echo.Dial(ctx, s.Addr().String(), example)
	if err != nil {
		return 0, nil, err
	}
	defer c.Close()
	epoch := time.Now()
	total := (n + batch - 1) / batch * batch
	sendErr := make(chan error, 1)
	go func() {
		sample := latencySample()
		sent := sample["sent"].(pytree.Array)
		stamp, _ := sent.Int64()
		for k := range total {
			if rate > 0 {
				// Sample k is due at k/rate. Sleep while the next is
				// more than a timer tick away; samples that fell due
				// during a sleep go out back to back.
				due := time.Duration(float64(k) / rate * 1e9)
				for wait := due - time.Since(epoch); wait > 0; wait = due - time.Since(epoch) {
					if wait > 100*time.Microsecond {
						time.Sleep(wait - 50*time.Microsecond)
					} else {
						runtime.Gosched()
					}
				}
			}
			stamp[0] = int64(time.Since(epoch))
			if err := c.Send(ctx, sample); err != nil {
				sendErr <- err
				return
			}
		}
		sendErr <- nil
	}()
	lat := make([]int64, 0, total)
	t0 := time.Now()
	for len(lat) < total {
		smp, err := s.Sample(ctx)
		if err != nil {
			return 0, nil, err
		}
		now := int64(time.Since(epoch))
		stamps, err := smp.Batch.(map[string]any)["sent"].(pytree.Array).Int64()
		if err != nil {
			return 0, nil, err
		}
		for _, t := range stamps {
			lat = append(lat, now-t)
		}
	}
	achieved := float64(total) / time.Since(t0).Seconds()
	if err := <-sendErr; err != nil {
		return 0, nil, err
	}
	return achieved, lat, nil
}

// SPSCQueue measures the lock-free queue between two goroutines: one op is
// one uint64 moved through a 1024-slot queue, pushed and popped one at a
// time or, with batch > 1, batch at a time. Its baseline is a buffered
// channel of the same capacity moving the same items, timed in the same
// run: x_chan = channel time / queue time.
func SPSCQueue(b *testing.B, batch int) {
	q, err := spsc.New[uint64](1024)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	n := b.N
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]uint64, batch)
		for i := 0; i < n; {
			k := min(batch, n-i)
			for j := range k {
				buf[j] = uint64(i + j)
			}
			for sent := 0; sent < k; {
				if batch == 1 {
					if q.Push(buf[0]) {
						sent++
						continue
					}
				} else if m := q.PushN(buf[sent:k]); m > 0 {
					sent += m
					continue
				}
				runtime.Gosched()
			}
			i += k
		}
	})
	buf := make([]uint64, batch)
	var sum uint64
	for got := 0; got < n; {
		var m int
		if batch == 1 {
			if v, ok := q.Pop(); ok {
				buf[0], m = v, 1
			}
		} else {
			m = q.PopN(buf)
		}
		if m == 0 {
			runtime.Gosched()
			continue
		}
		for _, v := range buf[:m] {
			sum += v
		}
		got += m
	}
	wg.Wait()
	b.StopTimer()
	if want := uint64(n) * uint64(n-1) / 2; sum != want {
		b.Fatalf("items sum to %d, want %d: an item was lost or doubled", sum, want)
	}
	op := b.Elapsed().Seconds() / float64(n)
	b.ReportMetric(1/op, "items/s")
	b.ReportMetric(chanSeconds(n)/op, "x_chan")
}

// chanSeconds times n uint64s through a buffered channel of 1024 between
// two goroutines, per item.
func chanSeconds(n int) float64 {
	n = max(n, 1<<16)
	ch := make(chan uint64, 1024)
	t0 := time.Now()
	go func() {
		for i := range uint64(n) {
			ch <- i
		}
	}()
	for range n {
		<-ch
	}
	return time.Since(t0).Seconds() / float64(n)
}
