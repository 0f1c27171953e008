//go:build !race

package wire

import (
	"errors"
	"math"
	"runtime"
	"testing"
)

func TestDecodeHandshakeAllocs(t *testing.T) {
	w1b := w1.mustEncode(t)
	scalars := Handshake{Version: Version1, Arrays: []ArraySpec{{DTypeSize: 4}, {DTypeSize: 8}}}.mustEncode(t)
	empty := Handshake{Version: Version1}.mustEncode(t)
	tests := []struct {
		name string
		in   []byte
		want float64
	}{
		// The Arrays slice, and one backing array for every Shape.
		{"w1", w1b, 2},
		// No dims, no backing array.
		{"scalars", scalars, 1},
		// No arrays: an empty slice costs nothing.
		{"empty", empty, 0},
		// A caller retrying on a short read pays nothing.
		{"short", w1b[:len(w1b)-1], 0},
		{"short header", w1b[:3], 0},
	}
	for _, tt := range tests {
		got := testing.AllocsPerRun(100, func() {
			DecodeHandshake(tt.in, Limits{})
		})
		if got != tt.want {
			t.Errorf("%s: DecodeHandshake allocates %v times, want %v", tt.name, got, tt.want)
		}
	}
}

func TestAssemblerFeedAllocs(t *testing.T) {
	const p = 37
	a, err := NewAssembler(p)
	if err != nil {
		t.Fatal(err)
	}
	_, stream := samples(10, p)
	count := 0
	emit := func(s []byte) { count += int(s[0]) }
	feed := func() {
		// Chunks of 23, 100 and the rest: samples split across chunks,
		// whole samples inside one, and a partial left over.
		a.Feed(stream[:23], emit)
		a.Feed(stream[23:123], emit)
		a.Feed(stream[123:], emit)
	}
	feed() // the first split allocates the buffer
	if got := testing.AllocsPerRun(100, feed); got != 0 {
		t.Errorf("Assembler.Feed allocates %v times in steady state, want 0", got)
	}
	_ = count
}

// bytesPerCall returns the heap bytes f allocates per call, averaged.
func bytesPerCall(f func()) uint64 {
	const runs = 100
	f()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range runs {
		f()
	}
	runtime.ReadMemStats(&after)
	return (after.TotalAlloc - before.TotalAlloc) / runs
}

func TestHostileCountsAllocateLittle(t *testing.T) {
	// Declared counts, within the limits or not, must not size any
	// allocation: only the bytes present may.
	huge := Limits{MaxArrays: 1 << 30, MaxDims: 1 << 30, MaxPayload: math.MaxInt64}
	bigNdim := array(header(1, 1), 4)
	bigNdim[len(bigNdim)-1] = 0x40 // ndim = 1<<30, no dims
	tests := []struct {
		name string
		in   []byte
		lim  Limits
		want error
	}{
		{"num_arrays over limit", header(1, math.MaxUint32), Limits{}, ErrLimit},
		{"num_arrays within a huge limit", header(1, 1<<30), huge, ErrShort},
		{"ndim over limit", hugeNdim, Limits{}, ErrLimit},
		{"ndim within a huge limit", bigNdim, huge, ErrShort},
	}
	for _, tt := range tests {
		var err error
		n := bytesPerCall(func() { _, _, err = DecodeHandshake(tt.in, tt.lim) })
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: DecodeHandshake = %v, want %v", tt.name, err, tt.want)
		}
		if n > 512 {
			t.Errorf("%s: DecodeHandshake allocates %d bytes per call", tt.name, n)
		}
	}
}
