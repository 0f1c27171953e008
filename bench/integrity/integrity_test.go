package integrity

import (
	"testing"

	"github.com/seed-a9ef92a1/echo/pytree"
)

const body = 40

// batch builds a batch's leaves from whole payloads, as a server lays them
// out: every body, then every stamp.
func batch(t *testing.T, payloads ...[]byte) []pytree.Array {
	t.Helper()
	var bodies, stamps []byte
	for _, p := range payloads {
		bodies = append(bodies, p[:body]...)
		stamps = append(stamps, p[body:]...)
	}
	b, err := pytree.NewArray(pytree.Uint8, []int{len(payloads), body}, bodies)
	if err != nil {
		t.Fatal(err)
	}
	s, err := pytree.NewArray(pytree.Uint64, []int{len(payloads), 3}, stamps)
	if err != nil {
		t.Fatal(err)
	}
	return []pytree.Array{b, s} // flatten order: "body" < "stamp"
}

// stamped returns the payload of sample seq of stream id (of the checker
// the test uses: ids are checker-relative).
func stamped(id, seq uint64) []byte {
	s := NewSample(body)
	s.Fill(id, seq)
	return s.Payload
}

// newChecker returns a checker whose epoch is 0, so that small ids are its
// streams' ids.
func newChecker() *Checker {
	c := NewChecker(body)
	c.epoch = 0
	return c
}

func TestCleanStream(t *testing.T) {
	c := newChecker()
	c.Batch(batch(t, stamped(1, 0), stamped(2, 0), stamped(1, 1)))
	c.Batch(batch(t, stamped(2, 1), stamped(1, 2), stamped(Filler, 0)))
	c.Sent(1, 3, 3)
	c.Sent(2, 3, 1) // the third never arrived, and was never acked
	r := c.Report()
	want := Report{Streams: 2, Sent: 6, Acked: 4, Delivered: 5, Fillers: 1}
	if r != want || !r.OK() {
		t.Fatalf("got %+v, want %+v", r, want)
	}
}

// Every fault the checker exists for, one at a time: each must show.
func TestFaultsShow(t *testing.T) {
	flipped := stamped(1, 1)
	flipped[3] ^= 0x10
	renumbered := stamped(1, 1)
	renumbered[body+8] = 0 // sequence 1 claims to be 0: the hash no longer fits
	corruptFiller := stamped(Filler, 3)
	corruptFiller[0] ^= 1
	spliced := append(append([]byte(nil), stamped(1, 1)[:body/2]...), stamped(1, 2)[body/2:]...)
	for _, tc := range []struct {
		name  string
		got   [][]byte
		sent  uint64
		acked uint64
		check func(Report) bool
	}{
		{"lost", [][]byte{stamped(1, 0)}, 2, 2, func(r Report) bool { return r.Lost == 1 }},
		{"duplicated", [][]byte{stamped(1, 0), stamped(1, 1), stamped(1, 1)}, 2, 2, func(r Report) bool { return r.Duplicated == 1 }},
		{"reordered", [][]byte{stamped(1, 1), stamped(1, 0)}, 2, 2, func(r Report) bool { return r.Reordered == 1 && r.Duplicated == 1 }},
		{"gap", [][]byte{stamped(1, 0), stamped(1, 2)}, 3, 3, func(r Report) bool { return r.Reordered == 1 }},
		{"bit flip", [][]byte{stamped(1, 0), flipped}, 2, 2, func(r Report) bool { return r.Corrupted == 1 && r.Lost == 1 }},
		{"renumbered", [][]byte{stamped(1, 0), renumbered}, 2, 2, func(r Report) bool { return r.Corrupted == 1 }},
		{"spliced", [][]byte{stamped(1, 0), spliced}, 3, 1, func(r Report) bool { return r.Corrupted == 1 }},
		{"phantom", [][]byte{stamped(1, 0), stamped(1, 1)}, 1, 1, func(r Report) bool { return r.Phantom == 1 }},
		{"unknown stream", [][]byte{stamped(9, 0)}, 0, 0, func(r Report) bool { return r.Corrupted == 1 }},
		{"corrupted filler", [][]byte{corruptFiller}, 0, 0, func(r Report) bool { return r.Corrupted == 1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newChecker()
			c.Batch(batch(t, tc.got...))
			c.Sent(1, tc.sent, tc.acked)
			r := c.Report()
			if r.OK() || !tc.check(r) {
				t.Fatalf("report %+v", r)
			}
		})
	}
}

func TestFillAllocatesNothing(t *testing.T) {
	s := NewSample(1000)
	seq := uint64(0)
	if n := testing.AllocsPerRun(100, func() { s.Fill(3, seq); seq++ }); n != 0 {
		t.Fatalf("Fill allocates %v times", n)
	}
}

func TestSamplesDiffer(t *testing.T) {
	a, b := stamped(1, 0), stamped(1, 1)
	if string(a[:body]) == string(b[:body]) {
		t.Fatal("two samples of a stream have the same body")
	}
}

// Bytes that are no integrity sample, from a stream nobody reported, are
// foreign: counted apart, and not a fault of the honest streams.
func TestForeignBytes(t *testing.T) {
	c := newChecker()
	junk := make([]byte, body+StampBytes)
	for i := range junk {
		junk[i] = byte(i * 7)
	}
	c.Batch(batch(t, stamped(1, 0), junk, stamped(1, 1)))
	c.Sent(1, 2, 2)
	r := c.Report()
	if !r.OK() || r.Foreign != 1 || r.Delivered != 2 {
		t.Fatalf("report %+v", r)
	}
}

// A second checker on the same server ignores the first one's leftovers.
func TestStaleSamples(t *testing.T) {
	first, second := NewChecker(body), NewChecker(body)
	for first.epoch == second.epoch {
		second = NewChecker(body)
	}
	c := second
	c.Batch(batch(t, stamped(first.StreamID(1), 7), stamped(Filler, first.FillerSeq(2)),
		stamped(c.StreamID(1), 0), stamped(Filler, c.FillerSeq(0))))
	c.Sent(c.StreamID(1), 1, 1)
	r := c.Report()
	if !r.OK() || r.Stale != 2 || r.Delivered != 1 || r.Fillers != 1 {
		t.Fatalf("report %+v", r)
	}
}

func TestFillersOnly(t *testing.T) {
	c := newChecker()
	other := NewChecker(body)
	leaves := batch(t, stamped(1, 0), stamped(Filler, c.FillerSeq(0)), stamped(Filler, other.FillerSeq(0)), stamped(Filler, c.FillerSeq(1)))
	if n := c.Fillers(leaves); n != 2 {
		t.Fatalf("Fillers %d, want 2", n)
	}
	if r := c.Report(); r.Delivered != 0 || r.Fillers != 0 {
		t.Fatalf("Fillers checked something: %+v", r)
	}
}
