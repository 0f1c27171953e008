//go:build !race

package hist

import "testing"

func TestRecordDoesNotAllocate(t *testing.T) {
	var h Histogram
	v := int64(1)
	if n := testing.AllocsPerRun(1000, func() {
		h.Record(v)
		v = v*3 + 7
	}); n != 0 {
		t.Fatalf("Record allocates %v times per call, want 0", n)
	}
}

func TestSnapshotDoesNotAllocate(t *testing.T) {
	var h Histogram
	for v := range int64(1000) {
		h.Record(v * v)
	}
	var s Summary
	if n := testing.AllocsPerRun(100, func() { s = h.Snapshot() }); n != 0 {
		t.Fatalf("Snapshot allocates %v times per call, want 0", n)
	}
	if s.Count != 1000 {
		t.Fatalf("Count = %d", s.Count)
	}
}

func TestSumDoesNotAllocate(t *testing.T) {
	var a, b Histogram
	a.Record(1)
	b.Record(2)
	if n := testing.AllocsPerRun(100, func() { _ = Sum(&a, &b) }); n != 0 {
		t.Fatalf("Sum allocates %v times per call, want 0", n)
	}
}
