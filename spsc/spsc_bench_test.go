package spsc

import (
	"runtime"
	"sync"
	"testing"
)

// benchCapacity is the ring size of every variant, the channel baseline
// included.
const benchCapacity = 1024

// benchBatch is the batch size of the batched variant.
const benchBatch = 64

// BenchmarkSPSC moves b.N uint64 items from one producer goroutine to
// one consumer goroutine. Both sides yield with runtime.Gosched when
// the queue is full or empty. "chan" is the baseline: a buffered
// channel of the same capacity doing the same transfer.
func BenchmarkSPSC(b *testing.B) {
	b.Run("single", func(b *testing.B) {
		q, err := New[uint64](benchCapacity)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		var wg sync.WaitGroup
		wg.Go(func() { // producer
			for i := range uint64(b.N) {
				for !q.Push(i) {
					runtime.Gosched()
				}
			}
		})
		var sum uint64
		for range b.N { // consumer
			for {
				v, ok := q.Pop()
				if ok {
					sum += v
					break
				}
				runtime.Gosched()
			}
		}
		wg.Wait()
		b.StopTimer()
		checkSum(b, sum)
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "items/s")
	})

	b.Run("batched", func(b *testing.B) {
		q, err := New[uint64](benchCapacity)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		var wg sync.WaitGroup
		wg.Go(func() { // producer
			var batch [benchBatch]uint64
			for next := 0; next < b.N; {
				k := min(benchBatch, b.N-next)
				for i := range k {
					batch[i] = uint64(next + i)
				}
				for pending := batch[:k]; len(pending) > 0; {
					m := q.PushN(pending)
					if m == 0 {
						runtime.Gosched()
					}
					pending = pending[m:]
				}
				next += k
			}
		})
		var sum uint64
		var dst [benchBatch]uint64
		for got := 0; got < b.N; { // consumer
			m := q.PopN(dst[:])
			if m == 0 {
				runtime.Gosched()
				continue
			}
			for _, v := range dst[:m] {
				sum += v
			}
			got += m
		}
		wg.Wait()
		b.StopTimer()
		checkSum(b, sum)
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "items/s")
	})

	b.Run("chan", func(b *testing.B) {
		ch := make(chan uint64, benchCapacity)
		b.ReportAllocs()
		b.ResetTimer()
		var wg sync.WaitGroup
		wg.Go(func() { // producer
			for i := range uint64(b.N) {
				ch <- i
			}
			close(ch)
		})
		var sum uint64
		for v := range ch { // consumer
			sum += v
		}
		wg.Wait()
		b.StopTimer()
		checkSum(b, sum)
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "items/s")
	})
}

// checkSum verifies that the consumer saw 0..b.N-1, so the benchmark
// cannot silently measure a broken transfer.
func checkSum(b *testing.B, sum uint64) {
	b.Helper()
	n := uint64(b.N)
	if want := n * (n - 1) / 2; sum != want {
		b.Fatalf("consumer sum = %d, want %d", sum, want)
	}
}
