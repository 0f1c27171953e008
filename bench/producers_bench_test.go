package bench_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/bench"
)

// BenchmarkProducers measures in-process producers: N goroutines, each with
// its own Producer, send as fast as they can while the benchmark goroutine
// samples. One op is one sample delivered in a batch. On a 2-core machine,
// more producers than cores measures contention and scheduling, not
// scaling.
func BenchmarkProducers(b *testing.B) {
	for _, w := range bench.Workloads()[:2] {
		for _, n := range []int{1, 4, 64, 1024} {
			b.Run(fmt.Sprintf("%s/%d", w.Short, n), func(b *testing.B) {
				benchProducers(b, w, n)
			})
		}
	}
}

// BenchmarkDetailedMetrics shows the cost of WithDetailedMetrics on the
// per-sample path with the least noise: one goroutine's Submit calls and
// the Samples that take them, W1, with the metrics off and on.
func BenchmarkDetailedMetrics(b *testing.B) {
	w := bench.Workloads()[0]
	for _, on := range []bool{false, true} {
		b.Run(fmt.Sprintf("W1/detailed=%v", on), func(b *testing.B) {
			benchSubmitSample(b, w, echo.WithDetailedMetrics(on))
		})
	}
}

func benchProducers(b *testing.B, w bench.Workload, n int, opts ...echo.Option) {
	s, err := echo.NewServer(w.MustSample(0), w.BatchSize, opts...)
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	for p := range n {
		prod, err := s.NewProducer()
		if err != nil {
			b.Fatal(err)
		}
		sample := w.MustSample(byte(p))
		wg.Go(func() {
			defer prod.Close()
			for prod.Send(sample) == nil {
			}
		})
	}
	sampleBatches(b, s, w)
	wg.Wait()
}

// sampleBatches is the consumer side of the multi-producer benchmarks: it
// samples batches covering b.N samples, reports rates, then closes s.
func sampleBatches(b *testing.B, s *echo.Server, w bench.Workload) {
	ctx := context.Background()
	// Warm up: every producer's buffers and the ring's slabs in use once.
	for range 3 {
		if _, err := s.Sample(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(w.PayloadBytes))
	b.ReportAllocs()
	b.ResetTimer()
	batches := (b.N + w.BatchSize - 1) / w.BatchSize
	for range batches {
		if _, err := s.Sample(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	samples := float64(batches * w.BatchSize)
	secs := b.Elapsed().Seconds()
	b.ReportMetric(samples/secs, "samples/s")
	b.ReportMetric(samples*float64(w.PayloadBytes)/secs/copyCeiling(w), "x_copy")
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkSubmitParallel is the baseline beside BenchmarkProducers: the
// same N goroutines calling Server.Submit, which claims a slot with a CAS
// on the shared cursor and copies straight into it (one copy, contended
// claims) instead of going through a queue (two copies, no contention).
func BenchmarkSubmitParallel(b *testing.B) {
	for _, w := range bench.Workloads()[:2] {
		for _, n := range []int{4, 64} {
			b.Run(fmt.Sprintf("%s/%d", w.Short, n), func(b *testing.B) {
				s, err := echo.NewServer(w.MustSample(0), w.BatchSize)
				if err != nil {
					b.Fatal(err)
				}
				var wg sync.WaitGroup
				for p := range n {
					sample := w.MustSample(byte(p))
					wg.Go(func() {
						for s.Submit(sample) == nil {
						}
					})
				}
				sampleBatches(b, s, w)
				wg.Wait()
			})
		}
	}
}
