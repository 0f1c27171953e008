package bench

import (
	"context"
	"sync"
	"testing"

	"github.com/seed-a9ef92a1/echo"
)

// Producers measures n goroutines, each with its own Producer, sending as
// fast as they can while the benchmark goroutine samples. One op is one
// sample delivered in a batch.
func Producers(b *testing.B, w Workload, n int, opts ...echo.Option) {
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
			ctx := context.Background()
			for prod.Send(ctx, sample) == nil {
			}
		})
	}
	sampleBatches(b, s, w)
	wg.Wait()
}

// sampleBatches is the consumer side of the multi-producer benchmarks: it
// samples batches covering b.N samples, reports rates, then closes s.
func sampleBatches(b *testing.B, s *echo.Server, w Workload) {
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
	b.ReportMetric(samples*float64(w.PayloadBytes)/secs/CopyCeiling(w), "x_copy")
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
}

// SubmitParallel is the baseline beside Producers: the same n goroutines
// calling Server.Submit, which claims a slot with a CAS on the shared
// cursor and copies straight into it (one copy, contended claims) instead
// of going through a queue (two copies, no contention).
func SubmitParallel(b *testing.B, w Workload, n int) {
	s, err := echo.NewServer(w.MustSample(0), w.BatchSize)
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	for p := range n {
		sample := w.MustSample(byte(p))
		wg.Go(func() {
			ctx := context.Background()
			for s.Submit(ctx, sample) == nil {
			}
		})
	}
	sampleBatches(b, s, w)
	wg.Wait()
}
