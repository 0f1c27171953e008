package tcp

import (
	"testing"
	"unsafe"
)

// apart reports whether a field group ending at end (exclusive) and one
// starting at start never share an aligned 128-byte block (a pair of
// cache lines, which x86 prefetches together), wherever an 8-aligned
// allocator places the struct.
func apart(end, start uintptr) bool {
	for base := uintptr(0); base < 128; base += 8 {
		if (base+end-1)/128 == (base+start)/128 {
			return false
		}
	}
	return true
}

// TestWorkerLayout checks the three groups of worker's comment: the
// worker's own state, what other goroutines write, and what Stats reads.
func TestWorkerLayout(t *testing.T) {
	var w worker
	own := unsafe.Offsetof(w.popped) + unsafe.Sizeof(w.popped)
	others, othersEnd := unsafe.Offsetof(w.nconns), unsafe.Offsetof(w.hasAdopt)+unsafe.Sizeof(w.hasAdopt)
	stats := unsafe.Offsetof(w.connDepthSum)
	for _, f := range []uintptr{unsafe.Offsetof(w.pool), unsafe.Offsetof(w.queues), unsafe.Offsetof(w.popped)} {
		if f >= others {
			t.Errorf("a group-0 field at %d lies after group 1 at %d", f, others)
		}
	}
	for _, f := range []uintptr{unsafe.Offsetof(w.assigned), unsafe.Offsetof(w.adoptMu), unsafe.Offsetof(w.adopt), unsafe.Offsetof(w.adoptConns)} {
		if f < others || f >= othersEnd {
			t.Errorf("a group-1 field at %d lies outside [%d, %d)", f, others, othersEnd)
		}
	}
	if others-own < 128 || !apart(own, others) {
		t.Errorf("the worker's own fields end at %d, those others write start at %d: want 128 bytes between", own, others)
	}
	if stats-othersEnd < 128 || !apart(othersEnd, stats) {
		t.Errorf("the fields others write end at %d, the Stats group starts at %d: want 128 bytes between", othersEnd, stats)
	}
	if unsafe.Offsetof(w.memcpy) < stats || unsafe.Offsetof(w.dwell) < stats {
		t.Error("a histogram lies before the Stats group")
	}
}
