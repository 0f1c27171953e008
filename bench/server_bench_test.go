package bench_test

import (
	"testing"

	"github.com/seed-a9ef92a1/echo/bench"
)

// BenchmarkSubmitSample: see bench.SubmitSample.
func BenchmarkSubmitSample(b *testing.B) {
	for _, w := range bench.Workloads() {
		b.Run(w.Short, func(b *testing.B) { bench.SubmitSample(b, w) })
	}
}

// BenchmarkCopyCeiling: see bench.CopyBatches.
func BenchmarkCopyCeiling(b *testing.B) {
	for _, w := range bench.Workloads() {
		b.Run(w.Short, func(b *testing.B) { bench.CopyBatches(b, w) })
	}
}
