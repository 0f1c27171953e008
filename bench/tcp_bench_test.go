package bench_test

import (
	"fmt"
	"testing"

	"github.com/seed-a9ef92a1/echo/bench"
)

// BenchmarkTCP: see bench.TCP. Clients and server share this machine's
// cores: with few cores, 16 and 256 clients measure contention, not scaling.
func BenchmarkTCP(b *testing.B) {
	for _, w := range bench.Workloads() {
		for _, clients := range []int{1, 16, 256} {
			for _, group := range []int{1, 16} {
				b.Run(fmt.Sprintf("%s/clients=%d/group=%d", w.Short, clients, group), func(b *testing.B) {
					bench.TCP(b, w, clients, group)
				})
			}
		}
	}
}

// BenchmarkWireVersions: see bench.WireVersions. x_v1 is version 2's rate
// over version 1's, measured in the same run.
func BenchmarkWireVersions(b *testing.B) {
	for _, w := range bench.Workloads() {
		for _, clients := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/clients=%d", w.Short, clients), func(b *testing.B) {
				bench.WireVersions(b, w, clients)
			})
		}
	}
}

// BenchmarkSharedRing: see bench.SharedRing. x_anon is the shared ring's
// rate over the anonymous ring's, measured in the same run.
func BenchmarkSharedRing(b *testing.B) {
	for _, w := range bench.Workloads() {
		b.Run(fmt.Sprintf("%s/clients=16", w.Short), func(b *testing.B) {
			bench.SharedRing(b, w, 16)
		})
	}
}
