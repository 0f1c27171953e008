package hist

import (
	"math/rand/v2"
	"sync/atomic"
	"testing"
)

// benchValues is a fixed spread of latencies, 1 µs to about 1 s, so that
// benchmarks touch many buckets and rarely move Min or Max.
var benchValues = func() []int64 {
	r := rand.New(rand.NewPCG(11, 12))
	vs := make([]int64, 4096)
	for i := range vs {
		vs[i] = 1_000 + r.Int64N(1<<uint(10+r.IntN(20)))
	}
	return vs
}()

const benchMask = 4096 - 1

// BenchmarkAtomicAdd is the floor: one uncontended atomic add, against
// which Record's handful of atomics can be read.
func BenchmarkAtomicAdd(b *testing.B) {
	b.ReportAllocs()
	var c atomic.Uint64
	for i := 0; b.Loop(); i++ {
		c.Add(uint64(benchValues[i&benchMask]))
	}
}

// BenchmarkRecord: one goroutine, one histogram.
func BenchmarkRecord(b *testing.B) {
	b.ReportAllocs()
	var h Histogram
	for i := 0; b.Loop(); i++ {
		h.Record(benchValues[i&benchMask])
	}
}

// BenchmarkRecordParallel: all goroutines share one histogram, the worst
// case (every Record contends on count and sum).
func BenchmarkRecordParallel(b *testing.B) {
	b.ReportAllocs()
	var h Histogram
	var seed atomic.Uint64
	b.RunParallel(func(pb *testing.PB) {
		i := int(seed.Add(997))
		for pb.Next() {
			h.Record(benchValues[i&benchMask])
			i++
		}
	})
}

// BenchmarkRecordParallelOwned: each goroutine records into its own
// histogram, the intended use; compare with BenchmarkRecordParallel.
func BenchmarkRecordParallelOwned(b *testing.B) {
	b.ReportAllocs()
	var seed atomic.Uint64
	b.RunParallel(func(pb *testing.PB) {
		h := new(Histogram)
		i := int(seed.Add(997))
		for pb.Next() {
			h.Record(benchValues[i&benchMask])
			i++
		}
	})
}

// BenchmarkSnapshot: the reader's cost, one full pass over the buckets.
func BenchmarkSnapshot(b *testing.B) {
	b.ReportAllocs()
	var h Histogram
	for _, v := range benchValues {
		h.Record(v)
	}
	for b.Loop() {
		_ = h.Snapshot()
	}
}
