package bench_test

import (
	"fmt"
	"testing"

	"github.com/seed-a9ef92a1/echo/bench"
)

// BenchmarkRingClaims: see bench.RingClaims.
func BenchmarkRingClaims(b *testing.B) {
	for _, batch := range []int{32, 256} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) { bench.RingClaims(b, batch) })
	}
}

// BenchmarkClientSend: see bench.ClientSend.
func BenchmarkClientSend(b *testing.B) {
	for _, w := range bench.Workloads() {
		b.Run(w.Short, func(b *testing.B) { bench.ClientSend(b, w) })
	}
}

// BenchmarkTrajectoryAdd: see bench.TrajectoryAdd.
func BenchmarkTrajectoryAdd(b *testing.B) {
	b.Run("W2x32", func(b *testing.B) { bench.TrajectoryAdd(b, 32) })
}

// BenchmarkLatency: see bench.Latency. Loads are fractions of the rate the
// same setup sustains saturated, measured in the same run; 0 is saturation.
func BenchmarkLatency(b *testing.B) {
	for _, batch := range []int{1, 32} {
		for _, load := range []float64{0.5, 0.9, 0} {
			b.Run(fmt.Sprintf("batch=%d/load=%v", batch, load), func(b *testing.B) { bench.Latency(b, batch, load) })
		}
	}
}

// BenchmarkSPSCQueue: see bench.SPSCQueue.
func BenchmarkSPSCQueue(b *testing.B) {
	for _, batch := range []int{1, 64} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) { bench.SPSCQueue(b, batch) })
	}
}
