package bench

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/ringbuf"
)

// WireVersions measures what wire version 2 costs against echo's version
// 1: the same Go clients send the same samples to a server of this
// package, once in each version, and once more in version 2 with
// reconnection on (echo.WithReconnect), whose Send copies each sample into
// its replay buffer before writing it. The benchmark's own timer and
// samples/s are version 2's; v1_samples/s and v2_reconnect_samples/s are
// the others, and x_v1, x_v1_reconnect the ratios of version 2's rates to
// version 1's (1 is free). All run in one run, each on a fresh server once
// the kernel has settled the last one's sockets. allocs/op counts the 16
// clients' goroutines of each timed half, spread over few samples for
// W3: the allocation tests show Send and the server allocate nothing per
// sample.
//
// Clients and server share this machine's cores: with 16 clients on 2
// cores this measures contention, not scaling.
func WireVersions(b *testing.B, w Workload, clients int) {
	sample := w.MustSample(1)
	per := (b.N + clients - 1) / clients
	b.SetBytes(int64(w.PayloadBytes))
	b.ReportAllocs()
	b.StopTimer()
	half := (per + 1) / 2 // each of the ABBA runs takes half of b.N
	v1, v2 := abba(func() time.Duration {
		SettleTCP()
		d, _ := timeIngest(b, w, sample, clients, half, 1, false, []echo.Option{echo.WithVersion1Only()}, echo.WithWireVersion(1))
		return d
	}, func() time.Duration {
		SettleTCP()
		d, _ := timeIngest(b, w, sample, clients, half, 1, true, nil, echo.WithWireVersion(2))
		return d
	})
	SettleTCP()
	v2r, _ := timeIngest(b, w, sample, clients, 2*half, 1, false, nil, echo.WithReconnect(echo.Backoff{}))
	total := float64(2 * half * clients)
	b.ReportMetric(total/v2.Seconds(), "samples/s")
	b.ReportMetric(total/v1.Seconds(), "v1_samples/s")
	b.ReportMetric(total/v2r.Seconds(), "v2_reconnect_samples/s")
	b.ReportMetric(v1.Seconds()/v2.Seconds(), "x_v1")
	b.ReportMetric(v1.Seconds()/v2r.Seconds(), "x_v1_reconnect")
}

// abba runs first, second, second, first and returns the sums of each
// one's two times: an order in which a drift of the machine over the run
// weighs on both alike.
func abba(first, second func() time.Duration) (time.Duration, time.Duration) {
	a := first()
	b := second()
	b += second()
	a += first()
	return a, b
}

// timeIngest times clients sending per samples each, group per call, to a
// fresh server built with opts, dialed with copts, and returns the time
// and how the server's ring was mapped; timed runs on the benchmark's
// clock. Every TCP benchmark against this package's server times with it.
func timeIngest(b *testing.B, w Workload, sample any, clients, per, group int, timed bool, opts []echo.Option, copts ...echo.ClientOption) (time.Duration, ringbuf.MemoryInfo) {
	s, err := echo.NewServer(sample, w.BatchSize, append([]echo.Option{echo.WithTCP("127.0.0.1:0")}, opts...)...)
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Start(); err != nil {
		b.Fatal(err)
	}
	var consumer sync.WaitGroup
	consumer.Go(func() {
		for {
			if _, err := s.Sample(context.Background()); err != nil {
				return
			}
		}
	})
	cl := dial(b, s.Addr().String(), sample, clients, copts...)
	if timed {
		b.StartTimer()
	}
	t0 := time.Now()
	send(b, cl, sample, per, group)
	d := time.Since(t0)
	b.StopTimer()
	CloseClients(cl)
	mem := s.Memory()
	s.Close()
	consumer.Wait()
	return d, mem
}
