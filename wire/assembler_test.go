package wire

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
	"unsafe"
)

// samples returns k distinct samples of p bytes each and their
// concatenation, the stream a client would send.
func samples(k, p int) ([][]byte, []byte) {
	out := make([][]byte, k)
	var stream []byte
	for i := range out {
		s := make([]byte, p)
		for j := range s {
			s[j] = byte(i*131 + j*7 + i*j)
		}
		out[i] = s
		stream = append(stream, s...)
	}
	return out, stream
}

// feedAll feeds stream to a in chunks of the given sizes (the last chunk
// takes whatever is left) and returns copies of the samples emitted. It
// checks Feed's count and Pending after every chunk.
func feedAll(t *testing.T, a *Assembler, stream []byte, cut func() int) [][]byte {
	t.Helper()
	var got [][]byte
	emit := func(s []byte) {
		if len(s) != a.Payload() || cap(s) != a.Payload() {
			t.Fatalf("emitted len %d cap %d, want both %d", len(s), cap(s), a.Payload())
		}
		got = append(got, bytes.Clone(s))
	}
	fed := 0
	for fed < len(stream) {
		n := min(cut(), len(stream)-fed)
		before := len(got)
		c := a.Feed(stream[fed:fed+n], emit)
		fed += n
		if c != len(got)-before {
			t.Fatalf("Feed returned %d, emitted %d", c, len(got)-before)
		}
		if want := fed % a.Payload(); a.Pending() != want {
			t.Fatalf("after %d bytes Pending = %d, want %d", fed, a.Pending(), want)
		}
	}
	return got
}

func checkSamples(t *testing.T, got, want [][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("emitted %d samples, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("sample %d = % x, want % x", i, got[i], want[i])
		}
	}
}

func TestNewAssemblerRejectsEmptyPayload(t *testing.T) {
	for _, p := range []int{0, -1} {
		if a, err := NewAssembler(p); a != nil || !errors.Is(err, ErrMalformed) {
			t.Errorf("NewAssembler(%d) = %v, %v; want nil, ErrMalformed", p, a, err)
		}
	}
}

func TestAssemblerFixedChunks(t *testing.T) {
	for _, p := range []int{1, 2, 3, 7, 37, 64} {
		want, stream := samples(9, p)
		for c := 1; c <= p+3; c++ {
			a, err := NewAssembler(p)
			if err != nil {
				t.Fatal(err)
			}
			got := feedAll(t, a, stream, func() int { return c })
			checkSamples(t, got, want)
			if a.Pending() != 0 {
				t.Fatalf("payload %d chunk %d: Pending = %d at the end", p, c, a.Pending())
			}
		}
	}
}

func TestAssemblerRandomSplits(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for range 300 {
		p := 1 + rng.IntN(64)
		want, stream := samples(rng.IntN(12), p)
		a, err := NewAssembler(p)
		if err != nil {
			t.Fatal(err)
		}
		// Cuts from empty to several samples long.
		got := feedAll(t, a, stream, func() int { return rng.IntN(3*p + 2) })
		checkSamples(t, got, want)
		if a.Pending() != 0 {
			t.Fatalf("Pending = %d at the end", a.Pending())
		}
	}
}

func TestAssemblerZeroCopy(t *testing.T) {
	const p = 8
	a, err := NewAssembler(p)
	if err != nil {
		t.Fatal(err)
	}
	_, stream := samples(4, p)
	chunk := stream[3:] // the first sample is split: 3 bytes, then 5
	a.Feed(stream[:3], func([]byte) { t.Fatal("emitted from a partial sample") })
	var ptrs []unsafe.Pointer
	n := a.Feed(chunk, func(s []byte) { ptrs = append(ptrs, unsafe.Pointer(&s[0])) })
	if n != 4 || len(ptrs) != 4 {
		t.Fatalf("Feed emitted %d (returned %d), want 4", len(ptrs), n)
	}
	// The split sample comes from the buffer; the whole ones alias chunk.
	if ptrs[0] == unsafe.Pointer(&chunk[0]) {
		t.Errorf("split sample was not reassembled in the buffer")
	}
	for i := 1; i < 4; i++ {
		if want := unsafe.Pointer(&chunk[p*i-3]); ptrs[i] != want {
			t.Errorf("sample %d was copied, want it emitted from chunk", i)
		}
	}
}

func TestAssemblerReset(t *testing.T) {
	a, err := NewAssembler(4)
	if err != nil {
		t.Fatal(err)
	}
	a.Feed([]byte{9, 9, 9}, func([]byte) {})
	if a.Pending() != 3 {
		t.Fatalf("Pending = %d, want 3", a.Pending())
	}
	a.Reset()
	if a.Pending() != 0 {
		t.Fatalf("Pending after Reset = %d", a.Pending())
	}
	var got []byte
	a.Feed([]byte{1, 2, 3, 4}, func(s []byte) { got = bytes.Clone(s) })
	if !bytes.Equal(got, []byte{1, 2, 3, 4}) {
		t.Fatalf("after Reset emitted %v, want [1 2 3 4]", got)
	}
}

func TestAppendAcks(t *testing.T) {
	if got := AppendAcks([]byte{9}, 3); !bytes.Equal(got, []byte{9, Ack, Ack, Ack}) {
		t.Errorf("AppendAcks([9], 3) = %v", got)
	}
	for _, n := range []int{0, -1} {
		if got := AppendAcks([]byte{9}, n); !bytes.Equal(got, []byte{9}) {
			t.Errorf("AppendAcks([9], %d) = %v", n, got)
		}
	}
	if got := AppendAcks(nil, 1000); len(got) != 1000 || bytes.Count(got, []byte{Ack}) != 1000 {
		t.Errorf("AppendAcks(nil, 1000) has len %d", len(got))
	}
}
