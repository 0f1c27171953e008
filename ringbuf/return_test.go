package ringbuf

import (
	"context"
	"testing"
	"time"
)

// Slots given back while no later slot is claimed are claimed again in
// order: the cursor moves back.
func TestReturnMovesTheCursorBack(t *testing.T) {
	r := mustNew(t, Layout{BatchSize: 8, NumSlabs: 2, LeafBytes: []int{1}})
	res, ok := r.TryClaim(5)
	if !ok {
		t.Fatal("no claim")
	}
	r.Commit(Reservation{Start: 0, N: 2})
	r.Return(Reservation{Start: 2, N: 3})
	if got, _ := r.TryClaim(8); got != (Reservation{Start: 2, N: 6}) {
		t.Fatalf("claim after the return = %+v, want the cursor back at 2 (claim was %+v)", got, res)
	}
	if r.nReturned.Load() != 0 {
		t.Fatal("a return the cursor took back went on the list")
	}
}

// Slots given back after later ones were claimed are handed out first,
// lowest first, merged within a batch, and the batch they belong to
// completes once they are filled: no hole.
func TestReturnedSlotsClaimedFirst(t *testing.T) {
	r := mustNew(t, Layout{BatchSize: 8, NumSlabs: 2, LeafBytes: []int{1}})
	a, _ := r.TryClaim(3) // 0-2
	b, _ := r.TryClaim(3) // 3-5
	c, _ := r.TryClaim(4) // 6-7: capped at the batch
	if a.Start != 0 || b.Start != 3 || c != (Reservation{Start: 6, N: 2}) {
		t.Fatalf("claims %+v %+v %+v", a, b, c)
	}
	r.Commit(Reservation{Start: 0, N: 1})
	r.Commit(b)
	r.Commit(c)
	// a read one sample: 1-2 go back, after 3-7 were claimed. Returned in
	// two pieces, out of order, they merge.
	r.Return(Reservation{Start: 2, N: 1})
	r.Return(Reservation{Start: 1, N: 1})
	if n := r.nReturned.Load(); n != 1 {
		t.Fatalf("%d returned runs, want the two merged into 1", n)
	}
	if !r.HasSpace() {
		t.Fatal("HasSpace is false with slots given back")
	}
	got, ok := r.TryClaim(4)
	if !ok || got != (Reservation{Start: 1, N: 2}) {
		t.Fatalf("claim = %+v, %v; want the returned 1-2", got, ok)
	}
	r.Commit(got)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if slab, err := r.Next(ctx); err != nil || slab != 0 {
		t.Fatalf("Next = %d, %v: the batch with the returned slots did not complete", slab, err)
	}
}

// NotifySpace registers only when the ring is full, and Release wakes the
// registered waker once.
func TestNotifySpace(t *testing.T) {
	r := mustNew(t, Layout{BatchSize: 2, NumSlabs: 2, LeafBytes: []int{1}})
	var w countWaker
	if r.NotifySpace(&w) {
		t.Fatal("registered while the ring has space")
	}
	for range 2 {
		res, _ := r.TryClaim(2)
		r.Commit(res)
	}
	if !r.NotifySpace(&w) {
		t.Fatal("not registered on a full ring")
	}
	if st := r.Stats(); st.Blocked != 1 {
		t.Fatalf("Blocked = %d, want 1", st.Blocked)
	}
	if _, err := r.Next(context.Background()); err != nil {
		t.Fatal(err)
	}
	if w.n != 0 {
		t.Fatal("woken before any release")
	}
	if _, err := r.Next(context.Background()); err != nil { // releases slab 0
		t.Fatal(err)
	}
	if w.n != 1 {
		t.Fatalf("woken %d times by one release, want 1", w.n)
	}
	r.Release()
	if w.n != 1 {
		t.Fatal("woken again without registering again")
	}
	if r.spaceWaiters.Load() != 0 {
		t.Fatalf("%d space waiters left", r.spaceWaiters.Load())
	}
}

type countWaker struct{ n int }

func (c *countWaker) Wake() { c.n++ }
