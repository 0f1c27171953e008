package ringbuf

import (
	"context"
	"errors"
	"testing"
)

// commitN reserves and commits n slots, one reservation per batch.
func commitN(t *testing.T, r *Ring, n int) {
	t.Helper()
	for n > 0 {
		res, _, ok := r.Reserve(n)
		if !ok {
			t.Fatalf("ring full with %d to go", n)
		}
		r.Commit(res)
		n -= res.N
	}
}

// TestStatsFields walks a ring through commits, hand-outs and releases and
// checks every field of Stats at each step: samples in the held batch are
// neither stored nor lost.
func TestStatsFields(t *testing.T) {
	r := mustNew(t, Layout{BatchSize: 4, NumSlabs: 3, LeafBytes: []int{2}})
	if r.BatchSize() != 4 || r.NumSlabs() != 3 || r.Capacity() != 12 {
		t.Fatalf("shape %d×%d=%d, want 4×3=12", r.BatchSize(), r.NumSlabs(), r.Capacity())
	}
	ctx := context.Background()
	check := func(step string, want Stats, holding bool) {
		t.Helper()
		if st := r.Stats(); st != want {
			t.Errorf("%s: stats %+v, want %+v", step, st, want)
		}
		if r.Holding() != holding {
			t.Errorf("%s: Holding() = %v, want %v", step, r.Holding(), holding)
		}
	}
	check("new", Stats{}, false)
	commitN(t, r, 6)
	check("6 committed", Stats{Inserted: 6, Stored: 6, Notifies: 1}, false)
	if _, err := r.Next(ctx); err != nil {
		t.Fatal(err)
	}
	check("batch 0 held", Stats{Inserted: 6, Stored: 2, Notifies: 1, Batches: 1}, true)
	r.Release()
	check("batch 0 released", Stats{Inserted: 6, Stored: 2, Notifies: 1, Batches: 1}, false)
	r.Release() // nothing held: nothing happens
	check("released twice", Stats{Inserted: 6, Stored: 2, Notifies: 1, Batches: 1}, false)
	commitN(t, r, 10)
	check("16 committed", Stats{Inserted: 16, Stored: 12, Notifies: 4, Batches: 1}, false)
	for range 3 {
		if _, err := r.Next(ctx); err != nil {
			t.Fatal(err)
		}
	}
	check("batch 3 held", Stats{Inserted: 16, Stored: 0, Notifies: 4, Batches: 4}, true)
}

// TestFreeIsIdempotent frees a ring twice and checks that every call after
// Free fails cleanly instead of touching the unmapped memory.
func TestFreeIsIdempotent(t *testing.T) {
	r, err := New(Layout{BatchSize: 2, NumSlabs: 2, LeafBytes: []int{8}})
	if err != nil {
		t.Fatal(err)
	}
	m := r.Memory()
	if m.HugePages() != (m.HugePageBytes > 0) || m.HugePageBytes > m.Bytes {
		t.Errorf("memory info %+v inconsistent", m)
	}
	for i := range 2 {
		if err := r.Free(); err != nil {
			t.Fatalf("Free #%d: %v", i+1, err)
		}
	}
	if _, _, ok := r.Reserve(1); ok {
		t.Error("Reserve succeeded after Free")
	}
	if _, err := r.Claim(context.Background(), 1); !errors.Is(err, ErrClosed) {
		t.Errorf("Claim after Free = %v, want ErrClosed", err)
	}
	if _, err := r.Next(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Next after Free = %v, want ErrClosed", err)
	}
}

func TestSlabOverLimit(t *testing.T) {
	// Each block is within the limit; together they are not.
	l := Layout{BatchSize: 1, NumSlabs: 2, LeafBytes: []int{1 << 45, 1 << 45, 1 << 45}}
	if r, err := New(l); !errors.Is(err, ErrTooLarge) {
		if r != nil {
			r.Free()
		}
		t.Fatalf("New(%+v) = %v, want ErrTooLarge", l, err)
	}
}

func TestParseRange(t *testing.T) {
	for _, tc := range []struct {
		line   string
		lo, hi uint64
		ok     bool
	}{
		{"7f0000000000-7f0000200000 rw-p 00000000 00:00 0", 0x7f0000000000, 0x7f0000200000, true},
		{"Size:               2048 kB", 0, 0, false},
		{"AnonHugePages:", 0, 0, false},
		{"zz-10 rw-p", 0, 0, false},
		{"10-zz rw-p", 0, 0, false},
		{"1000 rw-p", 0, 0, false},
	} {
		lo, hi, ok := parseRange([]byte(tc.line))
		if ok != tc.ok || ok && (lo != tc.lo || hi != tc.hi) {
			t.Errorf("parseRange(%q) = %x, %x, %v; want %x, %x, %v", tc.line, lo, hi, ok, tc.lo, tc.hi, tc.ok)
		}
	}
}
