package spsc

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// stressItem carries a sequence number and a value derived from it, so
// a torn or stale slot read shows up as a mismatch between the two.
type stressItem struct {
	seq   uint64
	check uint64
}

func makeStressItem(seq uint64) stressItem {
	return stressItem{seq: seq, check: ^seq * 0x9e3779b97f4a7c15}
}

func (it stressItem) valid() bool { return it == makeStressItem(it.seq) }

// stressTimeout bounds one stress run. A broken queue that loses an item
// or never reports room again would otherwise spin forever. A healthy
// run takes well under a second without -race and a few seconds with
// it.
const stressTimeout = 2 * time.Minute

// stressMode selects which calls the two sides of a stress run use.
type stressMode int

const (
	// mixed: each call is picked at random, single or batched.
	mixed stressMode = iota
	// single: Push and Pop only.
	single
	// batched: PushN and PopN only.
	batched
)

func (m stressMode) String() string {
	return [...]string{"mixed", "single", "batched"}[m]
}

// useSingle reports whether the next call should be Push/Pop rather
// than PushN/PopN.
func (m stressMode) useSingle(rng *rand.Rand) bool {
	switch m {
	case single:
		return true
	case batched:
		return false
	}
	return rng.IntN(2) == 0
}

func TestStress(t *testing.T) {
	n := 2_000_000
	if testing.Short() {
		n = 100_000
	}
	for _, capacity := range []int{1024, 64, 4, 2} {
		for _, mode := range []stressMode{mixed, single, batched} {
			t.Run(fmt.Sprintf("cap=%d/%v", capacity, mode), func(t *testing.T) {
				runStress(t, capacity, n, mode, uint64(capacity)*1000+uint64(mode))
			})
		}
	}
}

// runStress moves items 0..n-1 from one producer goroutine to one
// consumer goroutine through a queue of the given capacity, each side
// using the calls that mode selects, with random batch sizes. Mixing
// modes exercises the interplay of the single and batched paths; the
// pure modes make sure each path makes progress on its own. The producer records every
// item it successfully pushed, in order, in a plain slice (the reference
// model); the consumer records every item it popped. Afterwards the two
// logs must be identical and every sequence number must appear exactly
// once, in order.
func runStress(t *testing.T, capacity, n int, mode stressMode, seed uint64) {
	q, err := New[stressItem](capacity)
	if err != nil {
		t.Fatal(err)
	}
	maxBatch := min(2*q.Cap()+1, 97)

	timeout := stressTimeout
	if d, ok := t.Deadline(); ok {
		// Leave most of the test binary's time to the runs that
		// follow, so each failing run reports itself instead of the
		// whole binary hitting its deadline.
		timeout = min(timeout, time.Until(d)/4)
	}
	var (
		abort    atomic.Bool // set on timeout or on a detected failure
		timedOut atomic.Bool
		done     atomic.Bool // set when producer and consumer are finished
	)
	timer := time.AfterFunc(timeout, func() {
		timedOut.Store(true)
		abort.Store(true)
	})
	defer timer.Stop()

	sent := make([]stressItem, 0, n) // reference model, producer-owned
	got := make([]stressItem, 0, n)  // consumer-owned
	var pushed, popped atomic.Int64  // progress, for the timeout report

	var wg, observer sync.WaitGroup
	wg.Go(func() { // producer
		rng := rand.New(rand.NewPCG(seed, 1))
		batch := make([]stressItem, maxBatch)
		next := uint64(0)
		for next < uint64(n) && !abort.Load() {
			if mode.useSingle(rng) {
				it := makeStressItem(next)
				if !q.Push(it) {
					runtime.Gosched()
					continue
				}
				sent = append(sent, it)
				next++
			} else {
				k := min(1+rng.IntN(maxBatch), n-int(next))
				for i := range k {
					batch[i] = makeStressItem(next + uint64(i))
				}
				m := q.PushN(batch[:k])
				if m < 0 || m > k {
					t.Errorf("PushN(%d items) = %d", k, m)
					abort.Store(true)
					return
				}
				if m == 0 {
					runtime.Gosched()
					continue
				}
				sent = append(sent, batch[:m]...)
				next += uint64(m)
			}
			pushed.Store(int64(next))
		}
	})
	wg.Go(func() { // consumer
		rng := rand.New(rand.NewPCG(seed, 2))
		poison := stressItem{seq: ^uint64(0), check: 1} // never valid
		dst := make([]stressItem, maxBatch)
		want := uint64(0)
		accept := func(it stressItem) bool {
			if !it.valid() || it.seq != want {
				t.Errorf("received %+v (valid=%v), want seq %d", it, it.valid(), want)
				abort.Store(true)
				return false
			}
			got = append(got, it)
			want++
			return true
		}
		for want < uint64(n) && !abort.Load() {
			if mode.useSingle(rng) {
				it, ok := q.Pop()
				if !ok {
					if it != (stressItem{}) {
						t.Errorf("Pop on empty returned %+v, want zero value", it)
						abort.Store(true)
						return
					}
					runtime.Gosched()
					continue
				}
				if !accept(it) {
					return
				}
			} else {
				k := 1 + rng.IntN(maxBatch)
				for i := range dst {
					dst[i] = poison
				}
				m := q.PopN(dst[:k])
				if m < 0 || m > k {
					t.Errorf("PopN(dst of %d) = %d", k, m)
					abort.Store(true)
					return
				}
				for i := m; i < len(dst); i++ {
					if dst[i] != poison {
						t.Errorf("PopN returned %d but wrote dst[%d]", m, i)
						abort.Store(true)
						return
					}
				}
				if m == 0 {
					runtime.Gosched()
					continue
				}
				for _, it := range dst[:m] {
					if !accept(it) {
						return
					}
				}
			}
			popped.Store(int64(want))
		}
	})
	observer.Go(func() { // Len from a third goroutine stays in range
		for !done.Load() && !abort.Load() {
			if l := q.Len(); l < 0 || l > q.Cap() {
				t.Errorf("Len() = %d outside [0, %d]", l, q.Cap())
				abort.Store(true)
				return
			}
			runtime.Gosched()
		}
	})
	wg.Wait()
	done.Store(true)
	observer.Wait()

	if timedOut.Load() {
		t.Fatalf("cap %d: timed out after %v with %d of %d items pushed and %d popped",
			q.Cap(), timeout, pushed.Load(), n, popped.Load())
	}
	if t.Failed() {
		return
	}

	// Compare the consumer's log with the producer's reference model,
	// and both with the expected sequence 0..n-1.
	if len(sent) != n || len(got) != n {
		t.Fatalf("sent %d and received %d items, want %d each", len(sent), len(got), n)
	}
	seen := make([]uint8, n)
	for i := range n {
		if got[i] != sent[i] {
			t.Fatalf("item %d: received %+v, model has %+v", i, got[i], sent[i])
		}
		if sent[i].seq != uint64(i) {
			t.Fatalf("item %d: model has seq %d", i, sent[i].seq)
		}
		seen[got[i].seq]++
	}
	for i, c := range seen {
		if c != 1 {
			t.Fatalf("seq %d received %d times, want exactly once", i, c)
		}
	}
	if l := q.Len(); l != 0 {
		t.Fatalf("Len after transfer = %d, want 0", l)
	}
	assertAllZero(t, q)
}
