package bench

import (
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/ringbuf"
)

// SharedRing measures what putting the ring in shared memory
// (echo.WithSharedMemory, a memfd another process can map) costs TCP
// ingest: the same Go clients send the same samples to a server whose ring
// is anonymous and to one whose ring is shared, in one run, each on a
// fresh server once the kernel has settled the last one's sockets. The
// benchmark's own timer and samples/s are the shared ring's;
// anon_samples/s is the anonymous ring's, and x_anon the shared rate over
// the anonymous one (1 is free).
//
// The rings may not get the same pages (on a host whose shmem_enabled is
// never, the kernel's default, the shared ring has 4 KiB pages and the
// anonymous one transparent huge pages), so the pages each got are
// metrics too: shared_hugepages and anon_hugepages, the fraction of the
// ring the kernel backed with huge pages after the pre-fault;
// shared_hugetlb and shared_thp, 1 when the shared ring is
// ringbuf.KindMemfdHugeTLB or ringbuf.KindMemfdTHP.
//
// Clients and server share this machine's cores: with 16 clients on 2
// cores this measures contention, not scaling.
func SharedRing(b *testing.B, w Workload, clients int) {
	sample := w.MustSample(1)
	per := (b.N + clients - 1) / clients
	b.SetBytes(int64(w.PayloadBytes))
	b.ReportAllocs()
	b.StopTimer()
	half := (per + 1) / 2 // each of the ABBA runs takes half of b.N
	var anonMem, sharedMem ringbuf.MemoryInfo
	a, s := abba(func() time.Duration {
		SettleTCP()
		d, m := timeIngest(b, w, sample, clients, half, 1, false, nil)
		anonMem = m
		return d
	}, func() time.Duration {
		SettleTCP()
		d, m := timeIngest(b, w, sample, clients, half, 1, true, []echo.Option{echo.WithSharedMemory()})
		sharedMem = m
		return d
	})
	total := float64(2 * half * clients)
	b.ReportMetric(total/s.Seconds(), "samples/s")
	b.ReportMetric(total/a.Seconds(), "anon_samples/s")
	b.ReportMetric(a.Seconds()/s.Seconds(), "x_anon")
	b.ReportMetric(hugeFraction(sharedMem), "shared_hugepages")
	b.ReportMetric(hugeFraction(anonMem), "anon_hugepages")
	b.ReportMetric(boolMetric(sharedMem.Kind == ringbuf.KindMemfdHugeTLB), "shared_hugetlb")
	b.ReportMetric(boolMetric(sharedMem.Kind == ringbuf.KindMemfdTHP), "shared_thp")
}

// hugeFraction is the fraction of a ring backed by huge pages.
func hugeFraction(m ringbuf.MemoryInfo) float64 {
	if m.Bytes == 0 {
		return 0
	}
	return float64(m.HugePageBytes) / float64(m.Bytes)
}

// boolMetric reports a yes or no as a metric: 1 or 0.
func boolMetric(on bool) float64 {
	if on {
		return 1
	}
	return 0
}
