package ringbuf

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"
)

// fill claims and commits every slot of r.
func fill(t *testing.T, r *Ring) {
	t.Helper()
	for range r.NumSlabs() {
		res, err := r.Claim(context.Background(), r.BatchSize())
		if err != nil || res.N != r.BatchSize() {
			t.Fatalf("Claim(%d) = %+v, %v", r.BatchSize(), res, err)
		}
		r.Commit(res)
	}
}

// claimResult is what a Claim running on another goroutine returned.
type claimResult struct {
	res Reservation
	err error
}

// blockedClaim starts Claim(ctx, want) on a full ring and returns once it
// has counted itself blocked, with the result to come.
func blockedClaim(t *testing.T, ctx context.Context, r *Ring, want int) chan claimResult {
	t.Helper()
	before := r.blocked.Load()
	done := make(chan claimResult, 1)
	go func() {
		res, err := r.Claim(ctx, want)
		done <- claimResult{res, err}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for r.blocked.Load() == before {
		if time.Now().After(deadline) {
			t.Fatal("Claim on a full ring never counted itself blocked")
		}
		time.Sleep(time.Millisecond)
	}
	return done
}

// TestClaimWaitsForSpace checks that Claim on a full ring counts itself
// blocked once, waits until the consumer gives a slab back, and then reserves from
// it; and that the writer counters say so. Both kinds of wait: a ctx that
// is never done, and one that could be.
func TestClaimWaitsForSpace(t *testing.T) {
	forEachContext(t, testClaimWaitsForSpace)
}

// forEachContext runs test with context.Background(), whose wait is the
// condition variable's, and with a cancellable context never cancelled,
// whose wait is the pooled waiter's.
func forEachContext(t *testing.T, test func(*testing.T, context.Context)) {
	t.Run("background", func(t *testing.T) { test(t, context.Background()) })
	t.Run("cancellable", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		test(t, ctx)
	})
}

func testClaimWaitsForSpace(t *testing.T, wctx context.Context) {
	r := mustNew(t, Layout{BatchSize: 2, NumSlabs: 2, LeafBytes: []int{8}, Detailed: true})
	fill(t, r)
	done := blockedClaim(t, wctx, r, 3)
	select {
	case c := <-done:
		t.Fatalf("Claim on a full ring returned %+v, %v", c.res, c.err)
	case <-time.After(20 * time.Millisecond):
	}

	ctx := context.Background()
	if _, err := r.Next(ctx); err != nil { // holds slab 0: still full
		t.Fatal(err)
	}
	if _, err := r.Next(ctx); err != nil { // gives slab 0 back
		t.Fatal(err)
	}
	var c claimResult
	select {
	case c = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Claim still waiting 10s after a slab was released")
	}
	if c.err != nil || c.res != (Reservation{Start: 4, N: 2}) {
		t.Fatalf("Claim = %+v, %v; want 2 slots from 4 (capped at the batch)", c.res, c.err)
	}
	st := r.Stats()
	if st.Blocked != 1 || st.CASSuccess != 3 || st.CASFailure != 0 || st.Retries < 1 {
		t.Errorf("stats %+v: want 1 blocked, 3 successes, no failure, at least 1 retry", st)
	}
}

// TestClaimReturnsErrClosed checks that Close wakes a Claim waiting for
// space, and that Claim on a closed ring fails at once without counting a
// blocked claim.
func TestClaimReturnsErrClosed(t *testing.T) {
	forEachContext(t, testClaimReturnsErrClosed)
}

func testClaimReturnsErrClosed(t *testing.T, wctx context.Context) {
	r := mustNew(t, Layout{BatchSize: 2, NumSlabs: 2, LeafBytes: []int{8}})
	fill(t, r)
	done := blockedClaim(t, wctx, r, 1)
	r.Close()
	select {
	case c := <-done:
		if !errors.Is(c.err, ErrClosed) {
			t.Fatalf("Claim through Close = %+v, %v; want ErrClosed", c.res, c.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Claim still waiting 10s after Close")
	}

	r2 := mustNew(t, Layout{BatchSize: 2, NumSlabs: 2, LeafBytes: []int{8}})
	r2.Close()
	if _, err := r2.Claim(wctx, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Claim on a closed ring = %v, want ErrClosed", err)
	}
	if r2.Stats().Blocked != 0 {
		t.Error("Claim on a closed, empty ring counted itself blocked")
	}
	if err := r2.WaitSpace(wctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("WaitSpace on a closed ring = %v, want ErrClosed", err)
	}
}

// TestClaimCounters runs writers against one consumer, with and without
// the detailed counters: every reservation is one success, every wait one
// blocked claim and at least one retry; contention shows as CAS failures,
// counted only when detailed.
func TestClaimCounters(t *testing.T) {
	const writers, perWriter, batch = 4, 2000, 64
	run := func(detailed bool) Stats {
		r := mustNew(t, Layout{BatchSize: batch, NumSlabs: 4, LeafBytes: []int{1}, Detailed: detailed})
		var wg sync.WaitGroup
		live, stop := context.WithCancel(context.Background())
		defer stop()
		for i := range writers {
			// Half the writers wait on the condition variable, half on
			// pooled waiters: both kinds wake.
			wctx := context.Background()
			if i%2 == 1 {
				wctx = live
			}
			wg.Go(func() {
				for range perWriter {
					res, err := r.Claim(wctx, 1)
					if err != nil {
						t.Error(err)
						return
					}
					r.Commit(res)
				}
			})
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for got := 0; got < writers*perWriter; got += batch {
			if _, err := r.Next(ctx); err != nil {
				t.Fatalf("after %d samples: %v", got, err)
			}
		}
		wg.Wait()
		st := r.Stats()
		if st.Inserted != writers*perWriter || st.Batches != writers*perWriter/batch {
			t.Fatalf("stats %+v: want %d samples in %d batches", st, writers*perWriter, writers*perWriter/batch)
		}
		return st
	}

	if st := run(false); st.CASSuccess != 0 || st.CASFailure != 0 || st.Retries != 0 {
		t.Errorf("stats %+v: detailed counters kept without Detailed", st)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := run(true)
		if st.CASSuccess != writers*perWriter {
			t.Fatalf("stats %+v: want one success per claim of one slot", st)
		}
		if st.Retries < st.Blocked {
			t.Fatalf("stats %+v: fewer retries than blocked claims", st)
		}
		if st.CASFailure > 0 {
			break
		}
		if runtime.GOMAXPROCS(0) < 2 {
			t.Log("one P: writers never race, no CAS failure to count")
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no CAS failure counted in 5s of %d racing writers", writers)
		}
	}
}

// TestClaimHonoursContext: a Claim waiting on a full ring returns ctx's
// error once ctx ends, holding no slot and leaving no waiter behind; the
// ring then serves the next claim as if the cancelled one had never been.
func TestClaimHonoursContext(t *testing.T) {
	r := mustNew(t, Layout{BatchSize: 2, NumSlabs: 2, LeafBytes: []int{8}})
	fill(t, r)
	ctx, cancel := context.WithCancel(context.Background())
	done := blockedClaim(t, ctx, r, 1)
	cancel()
	select {
	case c := <-done:
		if !errors.Is(c.err, context.Canceled) || c.res != (Reservation{}) {
			t.Fatalf("Claim through cancel = %+v, %v; want context.Canceled and no slot", c.res, c.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Claim still waiting 10s after its context was cancelled")
	}
	if n := r.spaceWaiters.Load(); n != 0 {
		t.Fatalf("%d space waiters left after the cancelled claim", n)
	}
	r.spaceMu.Lock()
	left := len(r.wakers)
	r.spaceMu.Unlock()
	if left != 0 {
		t.Fatalf("%d wakers left after the cancelled claim", left)
	}
	// A context done before the call: no wait at all.
	if _, err := r.Claim(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("Claim with a cancelled context on a full ring = %v, want context.Canceled", err)
	}

	// The next claim waits and gets the first slot the consumer frees.
	live, stop := context.WithCancel(context.Background())
	defer stop()
	next := blockedClaim(t, live, r, 1)
	for range 2 { // hold slab 0, then give it back
		if _, err := r.Next(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case c := <-next:
		if c.err != nil || c.res != (Reservation{Start: 4, N: 1}) {
			t.Fatalf("Claim after the cancelled one = %+v, %v; want slot 4", c.res, c.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Claim still waiting 10s after a slab was released")
	}
}
