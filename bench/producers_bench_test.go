package bench_test

import (
	"fmt"
	"testing"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/bench"
)

// BenchmarkProducers: see bench.Producers. On a 2-core machine, more
// producers than cores measures contention and scheduling, not scaling.
func BenchmarkProducers(b *testing.B) {
	for _, w := range bench.Workloads()[:2] {
		for _, n := range []int{1, 4, 64, 1024} {
			b.Run(fmt.Sprintf("%s/%d", w.Short, n), func(b *testing.B) { bench.Producers(b, w, n) })
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
			bench.SubmitSample(b, w, echo.WithDetailedMetrics(on))
		})
	}
}

// BenchmarkSubmitParallel: see bench.SubmitParallel.
func BenchmarkSubmitParallel(b *testing.B) {
	for _, w := range bench.Workloads()[:2] {
		for _, n := range []int{4, 64} {
			b.Run(fmt.Sprintf("%s/%d", w.Short, n), func(b *testing.B) { bench.SubmitParallel(b, w, n) })
		}
	}
}
