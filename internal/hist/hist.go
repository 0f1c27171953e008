// Package hist records latency histograms (durations in nanoseconds) from
// many goroutines at once without locks, and summarizes them on demand.
//
// It exists because the well-known histogram libraries (HdrHistogram-go among
// them) are not safe for concurrent recording without an external lock, and a
// lock on every request is too much for the hot path this package serves.
//
// # Recording
//
// Record costs three atomic adds (bucket, sum, count) plus one atomic load
// each for the minimum and the maximum; the compare-and-swap loops behind
// those loads run only when the value improves on the current extreme, which
// after warm-up is rare. Record never allocates and never blocks.
//
// # Buckets and error bound
//
// The histogram is log-linear with subBits = 4: values 0..31 each have their
// own bucket, and every power of two from 2^4 upward is split into 16
// equal-width sub-buckets. A bucket [lo, hi] that starts at 2^e + s*2^(e-4)
// is 2^(e-4) wide, so hi-lo < lo/16. Percentiles are reported as the upper
// bound of the bucket that holds the true percentile, clamped to [Min, Max];
// hence for a true percentile t below maxTrackable the reported value p
// satisfies
//
//	t <= p < t + t/16   (relative error below 6.25%, exact for t < 32).
//
// Values at or above maxTrackable (2^44 ns, about 4.9 hours) share one
// overflow bucket whose upper bound is taken as Max; Min, Max and the sum stay
// exact for them.
//
// # Layout and sharing
//
// A Histogram is a flat value of about 5.3 KB: a fixed array of counters and
// four scalars, no pointers. It is not padded to cache lines on purpose. The
// intended use is one Histogram per worker, merged by Sum at read time, so
// the only writer of its cache lines is its owner and there is no false
// sharing to cure. When several goroutines do share one Histogram they all
// write the same count and sum words anyway, and padding the scalars apart
// would only raise the number of lines each Record touches. A struct that
// embeds one Histogram per worker in a slice may pad between them.
//
// # Invariants (when no Reset races with Record)
//
//   - count == sum of buckets once every Record has returned.
//   - minPlusOne == 0 exactly when nothing has been recorded; otherwise it
//     is the smallest recorded value plus one.
//   - max is the largest recorded value (0 when nothing has been recorded).
//   - Summary: Min <= P50 <= P90 <= P99 <= Max and Min <= Mean <= Max.
package hist

import (
	"math"
	"math/bits"
	"sync/atomic"
)

const (
	// subBits is the number of bits of sub-bucket resolution per power of
	// two: 16 sub-buckets, a relative error below 1/16 (6.25%).
	subBits = 4
	// subCount is the number of sub-buckets per power of two.
	subCount = 1 << subBits

	// maxBits bounds the tracked range: values below 1<<maxBits
	// (2^44 ns, about 4.9 hours) get a bucket with the error bound above.
	maxBits = 44
	// maxTrackable is the smallest value that lands in the overflow bucket.
	maxTrackable = int64(1) << maxBits

	// groups is the number of powers of two split into sub-buckets: one per
	// exponent e in [subBits, maxBits).
	groups = maxBits - subBits
	// overflowIndex is the bucket for values >= maxTrackable.
	overflowIndex = (groups + 1) << subBits
	// numBuckets is the length of the bucket array: 16 exact buckets for
	// 0..15, groups*16 log-linear buckets, and the overflow bucket.
	numBuckets = overflowIndex + 1
)

// Histogram is a log-linear histogram of non-negative int64 values,
// normally durations in nanoseconds. See the package documentation for the
// bucket layout and the error bound.
//
// The zero value is an empty histogram ready to use. A Histogram must not be
// copied after first use (its atomic fields make go vet report copies).
// All methods are safe for concurrent use.
type Histogram struct {
	// count is the number of Record calls that have completed their
	// bucket and sum adds.
	// Written by: Record (atomic add, last of its writes), Reset (store 0).
	// Read by: Snapshot and Sum (atomic load, first of their reads).
	count atomic.Uint64

	// sum is the sum of all recorded values (after negatives become 0).
	// It wraps after 2^64 ns, about 585 years of total recorded time.
	// Written by: Record (atomic add), Reset (store 0).
	// Read by: Snapshot and Sum (atomic load).
	sum atomic.Uint64

	// minPlusOne is the smallest recorded value plus one, or 0 when none
	// has been recorded, so that the zero value means "no minimum yet".
	// v+1 cannot overflow: v <= MaxInt64 < MaxUint64.
	// Written by: Record (CAS, only when lowering it), Reset (store 0).
	// Read by: Record (atomic load), Snapshot and Sum (atomic load).
	minPlusOne atomic.Uint64

	// max is the largest recorded value; 0 when none has been recorded,
	// which is also the smallest value Record can store.
	// Written by: Record (CAS, only when raising it), Reset (store 0).
	// Read by: Record (atomic load), Snapshot and Sum (atomic load).
	max atomic.Int64

	// buckets[i] counts recorded values v with bucketIndex(v) == i.
	// Written by: Record (atomic add), Reset (store 0).
	// Read by: Snapshot and Sum (atomic load, one bucket at a time, so a
	// snapshot taken during recording is not a single instant).
	buckets [numBuckets]atomic.Uint64
}

// Summary is a point-in-time digest of one or more histograms. All values
// except Count are in the recorded unit (nanoseconds). Percentiles are
// bucket upper bounds clamped to [Min, Max]. Every field is zero when Count
// is zero.
type Summary struct {
	Count                         uint64
	Min, Max, Mean, P50, P90, P99 int64
}

// Record adds v to the histogram. Negative values are recorded as 0.
// It is safe to call from any number of goroutines at once, never allocates
// and never blocks.
func (h *Histogram) Record(v int64) {
	if v < 0 {
		v = 0
	}
	h.buckets[bucketIndex(v)].Add(1)
	h.sum.Add(uint64(v))
	// Last write: a snapshot that loads count first sees the bucket and
	// sum of every record this count includes.
	h.count.Add(1)

	// Lower the minimum. Exits on the first load unless v is a new low.
	m := uint64(v) + 1
	for {
		cur := h.minPlusOne.Load()
		if cur != 0 && cur <= m {
			break
		}
		if h.minPlusOne.CompareAndSwap(cur, m) {
			break
		}
	}
	// Raise the maximum. Exits on the first load unless v is a new high.
	for {
		cur := h.max.Load()
		if v <= cur {
			break
		}
		if h.max.CompareAndSwap(cur, v) {
			break
		}
	}
}

// Reset empties the histogram. It may run while other goroutines call
// Record: a record concurrent with Reset may be lost or partly counted (for
// example its bucket kept but its sum cleared), which is acceptable for a
// metrics window. It never panics, and later snapshots still satisfy the
// Summary invariants and contain no negative numbers.
func (h *Histogram) Reset() {
	// Count first, so that a concurrent snapshot that sees count == 0
	// reports an empty histogram rather than a half-cleared one.
	h.count.Store(0)
	for i := range h.buckets {
		h.buckets[i].Store(0)
	}
	h.sum.Store(0)
	h.minPlusOne.Store(0)
	h.max.Store(0)
}

// Snapshot summarizes the histogram. It may run concurrently with Record;
// the result then reflects each counter at a slightly different moment,
// which is consistent enough for metrics (the Summary invariants hold).
// Snapshot does not allocate.
func (h *Histogram) Snapshot() Summary {
	var a accumulator
	a.add(h)
	return a.summary()
}

// Sum merges the histograms, adding bucket counts, and summarizes the union,
// so that its percentiles are those of all values recorded into any of hs
// (within the usual error bound), not an average of per-histogram
// percentiles. Nil entries are skipped.
func Sum(hs ...*Histogram) Summary {
	var a accumulator
	for _, h := range hs {
		if h != nil {
			a.add(h)
		}
	}
	return a.summary()
}

// accumulator is a plain (non-atomic) copy of one or more histograms,
// owned by a single goroutine inside Snapshot or Sum.
type accumulator struct {
	sum     uint64
	min     uint64 // smallest minPlusOne seen, 0 when none
	max     int64
	buckets [numBuckets]uint64
}

// add folds h into a.
func (a *accumulator) add(h *Histogram) {
	// Acquire: every record included in count has its bucket and sum adds
	// visible to the loads below. Records that land later may show up in
	// the buckets too; the total is taken from the buckets, not from count.
	if h.count.Load() == 0 {
		return
	}
	for i := range h.buckets {
		a.buckets[i] += h.buckets[i].Load()
	}
	a.sum += h.sum.Load()
	if m := h.minPlusOne.Load(); m != 0 && (a.min == 0 || m < a.min) {
		a.min = m
	}
	if m := h.max.Load(); m > a.max {
		a.max = m
	}
}

// summary computes the Summary of the accumulated counts. Count is the
// bucket total, so the percentile ranks and Count describe the same
// population even when the copy raced with Record or Reset.
func (a *accumulator) summary() Summary {
	var total uint64
	first, last := -1, -1
	for i, c := range a.buckets {
		if c == 0 {
			continue
		}
		if first < 0 {
			first = i
		}
		last = i
		total += c
	}
	if total == 0 {
		return Summary{}
	}

	// Min and Max are exact unless a Reset raced with Record; then fall
	// back to what the buckets prove, so the invariants still hold.
	lo := bucketLower(first)
	minV := lo
	if a.min != 0 {
		minV = int64(a.min - 1)
	}
	if minV > bucketUpper(first) {
		minV = lo
	}
	maxV := a.max
	if l := bucketLower(last); maxV < l {
		maxV = l
	}
	if maxV < minV {
		maxV = minV
	}

	s := Summary{Count: total, Min: minV, Max: maxV}
	s.Mean = clamp(int64(min(a.sum/total, math.MaxInt64)), minV, maxV)
	s.P50 = clamp(a.valueAtRank(rank(total, 50)), minV, maxV)
	s.P90 = clamp(a.valueAtRank(rank(total, 90)), minV, maxV)
	s.P99 = clamp(a.valueAtRank(rank(total, 99)), minV, maxV)
	return s
}

// valueAtRank returns the upper bound of the bucket holding the rank-th
// smallest value (1-based). The overflow bucket's bound is MaxInt64, which
// the caller clamps to Max.
func (a *accumulator) valueAtRank(r uint64) int64 {
	var cum uint64
	for i, c := range a.buckets {
		cum += c
		if cum >= r {
			return bucketUpper(i)
		}
	}
	return math.MaxInt64
}

// rank returns the 1-based rank of the pct-th percentile of total values:
// ceil(total*pct/100), at least 1, computed without overflow.
func rank(total uint64, pct uint64) uint64 {
	r := total/100*pct + (total%100*pct+99)/100
	return max(r, 1)
}

func clamp(v, lo, hi int64) int64 {
	return max(lo, min(v, hi))
}

// bucketIndex returns the bucket for v >= 0.
func bucketIndex(v int64) int {
	if v < subCount {
		return int(v)
	}
	if v >= maxTrackable {
		return overflowIndex
	}
	u := uint64(v)
	// e is the exponent of the leading bit, in [subBits, maxBits); the
	// subBits bits below it select the sub-bucket.
	shift := bits.Len64(u) - 1 - subBits
	return (shift+1)<<subBits + int((u>>uint(shift))&(subCount-1))
}

// bucketLower returns the smallest value in bucket i.
func bucketLower(i int) int64 {
	if i < subCount {
		return int64(i)
	}
	if i >= overflowIndex {
		return maxTrackable
	}
	shift := uint(i>>subBits) - 1
	return int64(subCount+i&(subCount-1)) << shift
}

// bucketUpper returns the largest value in bucket i; MaxInt64 for the
// overflow bucket.
func bucketUpper(i int) int64 {
	if i < subCount {
		return int64(i)
	}
	if i >= overflowIndex {
		return math.MaxInt64
	}
	shift := uint(i>>subBits) - 1
	return bucketLower(i) + int64(1)<<shift - 1
}
