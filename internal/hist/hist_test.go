package hist

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
)

// truePercentile returns the pct-th percentile of sorted by the same rank
// rule the histogram uses: the ceil(n*pct/100)-th smallest value.
func truePercentile(sorted []int64, pct uint64) int64 {
	return sorted[rank(uint64(len(sorted)), pct)-1]
}

// withinBound reports whether reported p is an allowed answer for true
// percentile t: t <= p < t + t/16, and p == t for t < 32.
func withinBound(t, p int64) bool {
	if t < 32 {
		return p == t
	}
	return t <= p && (p-t)*subCount < t
}

// checkSummary compares s against the exact statistics of vals.
func checkSummary(t *testing.T, name string, vals []int64, s Summary) {
	t.Helper()
	sorted := slices.Clone(vals)
	for i, v := range sorted {
		sorted[i] = max(v, 0)
	}
	slices.Sort(sorted)
	var sum uint64
	for _, v := range sorted {
		sum += uint64(v)
	}
	n := uint64(len(sorted))
	if s.Count != n {
		t.Fatalf("%s: Count = %d, want %d", name, s.Count, n)
	}
	if s.Min != sorted[0] || s.Max != sorted[n-1] {
		t.Fatalf("%s: Min, Max = %d, %d, want %d, %d", name, s.Min, s.Max, sorted[0], sorted[n-1])
	}
	if want := int64(sum / n); s.Mean != want {
		t.Fatalf("%s: Mean = %d, want %d", name, s.Mean, want)
	}
	for _, c := range []struct {
		pct uint64
		got int64
	}{{50, s.P50}, {90, s.P90}, {99, s.P99}} {
		want := truePercentile(sorted, c.pct)
		if want >= maxTrackable {
			if c.got < want || c.got > s.Max {
				t.Fatalf("%s: P%d = %d, want in [%d, Max %d]", name, c.pct, c.got, want, s.Max)
			}
			continue
		}
		if !withinBound(want, c.got) {
			t.Fatalf("%s: P%d = %d, true %d: outside bound", name, c.pct, c.got, want)
		}
	}
}

func record(h *Histogram, vals []int64) {
	for _, v := range vals {
		h.Record(v)
	}
}

func TestZeroValueEmpty(t *testing.T) {
	var h Histogram
	if s := h.Snapshot(); s != (Summary{}) {
		t.Fatalf("empty Snapshot = %+v, want zero", s)
	}
	if s := Sum(); s != (Summary{}) {
		t.Fatalf("Sum() = %+v, want zero", s)
	}
	if s := Sum(nil, &h); s != (Summary{}) {
		t.Fatalf("Sum(nil, empty) = %+v, want zero", s)
	}
}

func TestExactSmallValues(t *testing.T) {
	// Every value below 32 has a bucket of its own.
	for v := range int64(32) {
		i := bucketIndex(v)
		if bucketLower(i) != v || bucketUpper(i) != v {
			t.Fatalf("value %d: bucket %d = [%d, %d], want exact", v, i, bucketLower(i), bucketUpper(i))
		}
	}
	// A histogram of 0..31, each once: percentiles exact.
	var h Histogram
	var vals []int64
	for v := range int64(32) {
		vals = append(vals, v)
	}
	record(&h, vals)
	s := h.Snapshot()
	want := Summary{Count: 32, Min: 0, Max: 31, Mean: 15, P50: 15, P90: 28, P99: 31}
	if s != want {
		t.Fatalf("Snapshot = %+v, want %+v", s, want)
	}
}

func TestSingleValueExact(t *testing.T) {
	// One value: clamping to [Min, Max] makes every statistic exact, in
	// range or not.
	for _, v := range []int64{0, 1, 17, 100, 1000, 123456789, maxTrackable - 1, maxTrackable, math.MaxInt64} {
		var h Histogram
		h.Record(v)
		s := h.Snapshot()
		want := Summary{Count: 1, Min: v, Max: v, Mean: v, P50: v, P90: v, P99: v}
		if s != want {
			t.Fatalf("Record(%d): Snapshot = %+v, want %+v", v, s, want)
		}
	}
}

func TestNegativeRecordedAsZero(t *testing.T) {
	var h Histogram
	h.Record(-5)
	h.Record(math.MinInt64)
	h.Record(10)
	s := h.Snapshot()
	want := Summary{Count: 3, Min: 0, Max: 10, Mean: 3, P50: 0, P90: 10, P99: 10}
	if s != want {
		t.Fatalf("Snapshot = %+v, want %+v", s, want)
	}
}

func TestBucketLayout(t *testing.T) {
	// Buckets tile [0, MaxInt64] with no gaps or overlaps, in order.
	if bucketLower(0) != 0 {
		t.Fatalf("bucket 0 starts at %d", bucketLower(0))
	}
	for i := range numBuckets - 1 {
		if bucketUpper(i)+1 != bucketLower(i+1) {
			t.Fatalf("bucket %d ends at %d, bucket %d starts at %d", i, bucketUpper(i), i+1, bucketLower(i+1))
		}
	}
	if bucketUpper(overflowIndex) != math.MaxInt64 {
		t.Fatalf("overflow bucket ends at %d", bucketUpper(overflowIndex))
	}
	// The documented range: at least 2^40 ns tracked with the error bound.
	if got := bucketUpper(overflowIndex - 1); got < 1<<40-1 {
		t.Fatalf("last tracked bucket ends at %d, want >= 2^40-1", got)
	}
	// Each bucket is narrower than 1/16 of its lower bound past 32.
	for i := 2 * subCount; i < overflowIndex; i++ {
		lo, hi := bucketLower(i), bucketUpper(i)
		if (hi-lo+1)*subCount > lo {
			t.Fatalf("bucket %d [%d, %d] too wide", i, lo, hi)
		}
	}
}

func TestBucketIndexBoundaries(t *testing.T) {
	check := func(v int64) {
		t.Helper()
		i := bucketIndex(v)
		if i < 0 || i >= numBuckets {
			t.Fatalf("bucketIndex(%d) = %d out of range", v, i)
		}
		if v < bucketLower(i) || v > bucketUpper(i) {
			t.Fatalf("bucketIndex(%d) = %d = [%d, %d]", v, i, bucketLower(i), bucketUpper(i))
		}
		if v < maxTrackable && !withinBound(v, bucketUpper(i)) {
			t.Fatalf("value %d: bucket upper %d outside bound", v, bucketUpper(i))
		}
	}
	for v := range int64(10_001) {
		check(v)
	}
	// Both edges of every bucket, and their neighbours.
	for i := range numBuckets {
		for _, v := range []int64{bucketLower(i), bucketUpper(i)} {
			for _, d := range []int64{-1, 0, 1} {
				if w := v + d; w >= 0 && !(d == 1 && v == math.MaxInt64) {
					check(w)
				}
			}
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 100_000 {
		check(r.Int64N(1 << uint(r.IntN(63))))
	}
	check(math.MaxInt64)
}

func TestPercentileErrorBound(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))

	// Every value 0..10000 once.
	var seq []int64
	for v := range int64(10_001) {
		seq = append(seq, v)
	}

	// Log-uniform values up to the tracked range, with a tail.
	var logU []int64
	for range 100_000 {
		logU = append(logU, r.Int64N(1<<uint(1+r.IntN(maxBits))))
	}

	// Many small random sets, to move percentiles across bucket edges.
	sets := map[string][]int64{"seq": seq, "loguniform": logU}
	for k := range 200 {
		n := 1 + r.IntN(300)
		scale := int64(1) << uint(5+r.IntN(35))
		vals := make([]int64, n)
		for i := range vals {
			vals[i] = scale + r.Int64N(scale)
		}
		sets[fmt.Sprintf("small%d", k)] = vals
	}

	for name, vals := range sets {
		var h Histogram
		record(&h, vals)
		checkSummary(t, name, vals, h.Snapshot())
	}
}

func TestPercentileEveryRank(t *testing.T) {
	// valueAtRank obeys the bound for every rank, not just 50/90/99.
	r := rand.New(rand.NewPCG(5, 6))
	vals := make([]int64, 5_000)
	for i := range vals {
		vals[i] = r.Int64N(1 << uint(r.IntN(40)))
	}
	var h Histogram
	record(&h, vals)
	var a accumulator
	a.add(&h)
	sorted := slices.Clone(vals)
	slices.Sort(sorted)
	for k, want := range sorted {
		if got := a.valueAtRank(uint64(k + 1)); !withinBound(want, got) {
			t.Fatalf("rank %d: got %d, true %d: outside bound", k+1, got, want)
		}
	}
}

func TestOverflowClamp(t *testing.T) {
	// Values past the tracked range share one bucket; Max stays exact and
	// percentiles in that bucket report Max.
	var h Histogram
	h.Record(100)
	h.Record(1 << 50)
	h.Record(1<<50 + 12345)
	s := h.Snapshot()
	if s.Max != 1<<50+12345 || s.Min != 100 {
		t.Fatalf("Min, Max = %d, %d", s.Min, s.Max)
	}
	if s.P99 != s.Max || s.P90 != s.Max || s.P50 != s.Max {
		t.Fatalf("percentiles %d %d %d, want Max %d", s.P50, s.P90, s.P99, s.Max)
	}
	if want := int64((100 + 1<<50 + 1<<50 + 12345) / 3); s.Mean != want {
		t.Fatalf("Mean = %d, want %d", s.Mean, want)
	}
}

func TestRank(t *testing.T) {
	for _, c := range []struct{ total, pct, want uint64 }{
		{1, 50, 1}, {1, 99, 1}, {2, 50, 1}, {3, 50, 2}, {10, 90, 9},
		{100, 99, 99}, {101, 99, 100}, {1000, 99, 990},
		{math.MaxUint64, 100, math.MaxUint64},
		{math.MaxUint64, 50, math.MaxUint64/2 + 1},
	} {
		if got := rank(c.total, c.pct); got != c.want {
			t.Errorf("rank(%d, %d) = %d, want %d", c.total, c.pct, got, c.want)
		}
	}
}

func TestReset(t *testing.T) {
	var h Histogram
	record(&h, []int64{5, 50, 500, 5000})
	h.Reset()
	if s := h.Snapshot(); s != (Summary{}) {
		t.Fatalf("after Reset: %+v, want zero", s)
	}
	var a accumulator
	a.add(&h)
	if a != (accumulator{}) {
		t.Fatal("after Reset: counters not all zero")
	}
	// Min and Max start over rather than remembering the old window.
	record(&h, []int64{300, 200})
	// 200 lies in bucket [200, 207]: P50 reports its upper bound.
	want := Summary{Count: 2, Min: 200, Max: 300, Mean: 250, P50: 207, P90: 300, P99: 300}
	if s := h.Snapshot(); s != want {
		t.Fatalf("after Reset and records: %+v, want %+v", s, want)
	}
}

func TestSumEqualsUnion(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	var a, b, both Histogram
	var all []int64
	for range 20_000 {
		v := r.Int64N(1 << uint(r.IntN(36)))
		a.Record(v)
		both.Record(v)
		all = append(all, v)
	}
	for range 7_000 {
		v := 1_000_000 + r.Int64N(1<<30) // b is slower: shifts the union
		b.Record(v)
		both.Record(v)
		all = append(all, v)
	}
	got, want := Sum(&a, &b), both.Snapshot()
	if got != want {
		t.Fatalf("Sum(a, b) = %+v, recording both into one = %+v", got, want)
	}
	checkSummary(t, "union", all, got)
	if s := Sum(&a); s != a.Snapshot() {
		t.Fatalf("Sum(a) = %+v, a.Snapshot() = %+v", s, a.Snapshot())
	}
	if s := Sum(&a, nil, new(Histogram)); s != a.Snapshot() {
		t.Fatalf("Sum(a, nil, empty) = %+v, want %+v", s, a.Snapshot())
	}
}

func TestConcurrentRecord(t *testing.T) {
	const goroutines = 8
	perG := 100_000
	if testing.Short() {
		perG = 10_000
	}
	var h Histogram
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 99))
			for range perG {
				h.Record(1 + r.Int64N(1<<30))
			}
		})
	}
	// A reader snapshots while the writers run; each snapshot must hold
	// the Summary invariants.
	done := make(chan struct{})
	var snaps sync.WaitGroup
	snaps.Go(func() {
		for {
			select {
			case <-done:
				return
			default:
			}
			checkInvariants(t, h.Snapshot())
		}
	})
	wg.Wait()
	close(done)
	snaps.Wait()

	// Recompute the exact values from the same seeds.
	var sum uint64
	minV, maxV := int64(math.MaxInt64), int64(0)
	for g := range goroutines {
		r := rand.New(rand.NewPCG(uint64(g), 99))
		for range perG {
			v := 1 + r.Int64N(1<<30)
			sum += uint64(v)
			minV, maxV = min(minV, v), max(maxV, v)
		}
	}
	n := uint64(goroutines * perG)
	if got := h.count.Load(); got != n {
		t.Fatalf("count = %d, want %d", got, n)
	}
	if got := h.sum.Load(); got != sum {
		t.Fatalf("sum = %d, want %d", got, sum)
	}
	s := h.Snapshot()
	if s.Count != n || s.Min != minV || s.Max != maxV || s.Mean != int64(sum/n) {
		t.Fatalf("Snapshot = %+v, want Count %d Min %d Max %d Mean %d", s, n, minV, maxV, sum/n)
	}
	checkInvariants(t, s)
}

func checkInvariants(t *testing.T, s Summary) {
	t.Helper()
	if s.Count == 0 {
		if s != (Summary{}) {
			t.Errorf("Count 0 but %+v", s)
		}
		return
	}
	if s.Min < 0 || !(s.Min <= s.P50 && s.P50 <= s.P90 && s.P90 <= s.P99 && s.P99 <= s.Max) ||
		s.Mean < s.Min || s.Mean > s.Max {
		t.Errorf("invariants broken: %+v", s)
	}
}

func TestResetRacesRecord(t *testing.T) {
	// Reset concurrent with Record and Snapshot: no panic, no negative or
	// disordered statistics.
	iters := 20_000
	if testing.Short() {
		iters = 2_000
	}
	var h Histogram
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 7))
			for range iters {
				h.Record(r.Int64N(1 << 40))
			}
		})
	}
	wg.Go(func() {
		for range iters / 10 {
			h.Reset()
			checkInvariants(t, h.Snapshot())
		}
	})
	wg.Wait()
	checkInvariants(t, h.Snapshot())
}
