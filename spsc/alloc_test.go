//go:build !race

package spsc

import "testing"

// The race detector instruments memory accesses and may allocate, so
// the zero-allocation claims are only checked without it.

func TestPushPopDoNotAllocate(t *testing.T) {
	q, err := New[uint64](64)
	if err != nil {
		t.Fatal(err)
	}
	failed := false
	allocs := testing.AllocsPerRun(1000, func() {
		if !q.Push(42) {
			failed = true
		}
		if v, ok := q.Pop(); !ok || v != 42 {
			failed = true
		}
	})
	if failed {
		t.Fatal("Push/Pop round trip failed")
	}
	if allocs != 0 {
		t.Fatalf("Push+Pop allocated %v times per run, want 0", allocs)
	}

	// Pointer-shaped elements go through write barriers and the slot
	// clear; neither may allocate either.
	qp, err := New[*int](64)
	if err != nil {
		t.Fatal(err)
	}
	p := new(int)
	allocs = testing.AllocsPerRun(1000, func() {
		if !qp.Push(p) {
			failed = true
		}
		if v, ok := qp.Pop(); !ok || v != p {
			failed = true
		}
	})
	if failed {
		t.Fatal("Push/Pop round trip of *int failed")
	}
	if allocs != 0 {
		t.Fatalf("Push+Pop of *int allocated %v times per run, want 0", allocs)
	}
}

func TestPushNPopNDoNotAllocate(t *testing.T) {
	q, err := New[uint64](64)
	if err != nil {
		t.Fatal(err)
	}
	src := make([]uint64, 48)
	for i := range src {
		src[i] = uint64(i)
	}
	dst := make([]uint64, 48)
	failed := false
	// 48 of 64 slots per round, so successive runs wrap the ring.
	allocs := testing.AllocsPerRun(1000, func() {
		if q.PushN(src) != len(src) {
			failed = true
		}
		if q.PopN(dst) != len(dst) {
			failed = true
		}
	})
	if failed {
		t.Fatal("PushN/PopN round trip failed")
	}
	if allocs != 0 {
		t.Fatalf("PushN+PopN allocated %v times per run, want 0", allocs)
	}
}
