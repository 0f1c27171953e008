package wire

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"
)

// unhex decodes hex written with spaces for readability.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatalf("bad test hex %q: %v", s, err)
	}
	return b
}

// w1 is the spec {done: uint8[], obs: float32[8], reward: float32[]}: dict
// keys in sorted order, so done, obs, reward.
var w1 = Handshake{Version: Version1, Arrays: []ArraySpec{
	{DTypeSize: 1},
	{DTypeSize: 4, Shape: []int{8}},
	{DTypeSize: 4},
}}

// w1Hex is w1's encoding, written by hand from the format.
const w1Hex = "45 43 48 4f" + // "ECHO"
	" 01" + // version
	" 03 00 00 00" + // num_arrays = 3
	" 01 00 00 00  00 00 00 00" + // done: dtype 1, ndim 0
	" 04 00 00 00  01 00 00 00  08 00 00 00" + // obs: dtype 4, ndim 1, [8]
	" 04 00 00 00  00 00 00 00" // reward: dtype 4, ndim 0

// handVectors are handshakes and their encodings, written by hand.
var handVectors = []struct {
	name    string
	h       Handshake
	hex     string
	payload int64
}{
	{"w1", w1, w1Hex, 1 + 8*4 + 4},
	{"empty", Handshake{Version: Version1}, "4543484f 01 00000000", 0},
	{
		// Multi-byte dims check the byte order of every field.
		"byte order",
		Handshake{Version: Version1, Arrays: []ArraySpec{{DTypeSize: 8, Shape: []int{2, 0x01020304}}}},
		"4543484f 01 01000000 08000000 02000000 02000000 04030201",
		8 * 2 * 0x01020304,
	},
	{
		"zero dim",
		Handshake{Version: Version1, Arrays: []ArraySpec{{DTypeSize: 2, Shape: []int{0, 5}}, {DTypeSize: 16, Shape: []int{1, 1, 3}}}},
		"4543484f 01 02000000 02000000 02000000 00000000 05000000" +
			" 10000000 03000000 01000000 01000000 03000000",
		16 * 3,
	},
}

func TestHandVectors(t *testing.T) {
	for _, v := range handVectors {
		t.Run(v.name, func(t *testing.T) {
			want := unhex(t, v.hex)
			got, err := AppendHandshake(nil, v.h)
			if err != nil {
				t.Fatalf("AppendHandshake: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("AppendHandshake = % x\nwant              % x", got, want)
			}
			if n := v.h.EncodedLen(); n != len(want) {
				t.Errorf("EncodedLen = %d, want %d", n, len(want))
			}
			if p, err := v.h.PayloadSize(Limits{}); err != nil || p != v.payload {
				t.Errorf("PayloadSize = %d, %v; want %d", p, err, v.payload)
			}

			// Trailing bytes (the first acks, say) are not consumed.
			in := append(bytes.Clone(want), 0x01, 0x01)
			h, n, err := DecodeHandshake(in, Limits{})
			if err != nil {
				t.Fatalf("DecodeHandshake: %v", err)
			}
			if n != len(want) {
				t.Errorf("DecodeHandshake consumed %d, want %d", n, len(want))
			}
			if !h.Equal(v.h) {
				t.Errorf("DecodeHandshake = %+v, want %+v", h, v.h)
			}

			rd := bytes.NewReader(in)
			h, err = ReadHandshake(iotest.OneByteReader(rd), Limits{})
			if err != nil {
				t.Fatalf("ReadHandshake: %v", err)
			}
			if !h.Equal(v.h) {
				t.Errorf("ReadHandshake = %+v, want %+v", h, v.h)
			}
			if rd.Len() != 2 {
				t.Errorf("ReadHandshake left %d bytes unread, want 2", rd.Len())
			}
		})
	}
}

func TestW1Bytes(t *testing.T) {
	// The W1 encoding spelled out once more as a literal, independent of
	// the helpers above.
	want := []byte("ECHO\x01\x03\x00\x00\x00" +
		"\x01\x00\x00\x00\x00\x00\x00\x00" +
		"\x04\x00\x00\x00\x01\x00\x00\x00\x08\x00\x00\x00" +
		"\x04\x00\x00\x00\x00\x00\x00\x00")
	got, err := AppendHandshake([]byte("prefix"), w1)
	if err != nil {
		t.Fatal(err)
	}
	if string(got[:6]) != "prefix" || !bytes.Equal(got[6:], want) {
		t.Fatalf("AppendHandshake = %q, want prefix + %q", got, want)
	}
	if len(want) != 37 {
		t.Fatalf("test literal has %d bytes, want 37", len(want))
	}
}

// randHandshake returns a valid handshake with small random arrays.
func randHandshake(rng *rand.Rand) Handshake {
	h := Handshake{Version: Version1, Arrays: make([]ArraySpec, rng.IntN(8))}
	sizes := []int{1, 2, 4, 8, 16, 3, 100}
	for i := range h.Arrays {
		a := ArraySpec{DTypeSize: sizes[rng.IntN(len(sizes))]}
		if nd := rng.IntN(5); nd > 0 {
			a.Shape = make([]int, nd)
			for j := range a.Shape {
				a.Shape[j] = rng.IntN(6)
			}
		}
		h.Arrays[i] = a
	}
	return h
}

func TestRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 500 {
		h := randHandshake(rng)
		b, err := AppendHandshake(nil, h)
		if err != nil {
			t.Fatalf("AppendHandshake(%+v): %v", h, err)
		}
		if len(b) != h.EncodedLen() {
			t.Fatalf("len = %d, EncodedLen = %d", len(b), h.EncodedLen())
		}
		got, n, err := DecodeHandshake(b, Limits{})
		if err != nil || n != len(b) || !got.Equal(h) {
			t.Fatalf("DecodeHandshake = %+v, %d, %v; want %+v, %d", got, n, err, h, len(b))
		}
		if err := h.Compare(got); err != nil {
			t.Fatalf("Compare after round trip: %v", err)
		}
		again, err := AppendHandshake(nil, got)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("re-encoding = % x, %v; want % x", again, err, b)
		}
		rgot, err := ReadHandshake(bytes.NewReader(b), Limits{})
		if err != nil || !rgot.Equal(h) {
			t.Fatalf("ReadHandshake = %+v, %v; want %+v", rgot, err, h)
		}
	}
}

func TestDecodedShapesDoNotAlias(t *testing.T) {
	h := Handshake{Version: Version1, Arrays: []ArraySpec{
		{DTypeSize: 4, Shape: []int{2, 3}},
		{DTypeSize: 4, Shape: []int{5}},
	}}
	b, err := AppendHandshake(nil, h)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := DecodeHandshake(b, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	// Shapes share one backing array; appending to one must not clobber
	// the next.
	_ = append(got.Arrays[0].Shape, 99)
	if got.Arrays[1].Shape[0] != 5 {
		t.Fatalf("append to Arrays[0].Shape overwrote Arrays[1].Shape: %v", got.Arrays[1].Shape)
	}
}

// header builds a handshake header with the given version and num_arrays.
func header(version uint8, numArrays uint32) []byte {
	b := append([]byte(Magic), version)
	return binary.LittleEndian.AppendUint32(b, numArrays)
}

// array appends an array's fields to b.
func array(b []byte, dtype uint32, dims ...uint32) []byte {
	b = binary.LittleEndian.AppendUint32(b, dtype)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(dims)))
	for _, d := range dims {
		b = binary.LittleEndian.AppendUint32(b, d)
	}
	return b
}

// hugeNdim is a header and one array head declaring u32-max dims, with no
// dims after it.
var hugeNdim = binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(header(1, 1), 4), math.MaxUint32)

func TestDecodeErrors(t *testing.T) {
	const u32max = math.MaxUint32
	many := make([]uint32, 33)
	for i := range many {
		many[i] = 1
	}
	tests := []struct {
		name string
		in   []byte
		lim  Limits
		want error
	}{
		{"empty", nil, Limits{}, ErrShort},
		{"magic prefix", []byte("EC"), Limits{}, ErrShort},
		{"bad magic", append([]byte("ECHX"), w1.mustEncode(t)[4:]...), Limits{}, ErrBadMagic},
		{"bad first byte", []byte("X"), Limits{}, ErrBadMagic},
		{"http", []byte("HTTP/1.1 200 OK\r\n"), Limits{}, ErrBadMagic},
		{"lower case magic", []byte("echo\x01\x00\x00\x00\x00"), Limits{}, ErrBadMagic},
		{"version 2", header(2, 0), Limits{}, ErrVersion},
		{"version 0", header(0, 0), Limits{}, ErrVersion},
		{"version 2 before count", []byte("ECHO\x02"), Limits{}, ErrVersion},
		{"num_arrays u32 max", header(1, u32max), Limits{}, ErrLimit},
		{"num_arrays over default", header(1, 4097), Limits{}, ErrLimit},
		{"num_arrays at default, short", header(1, 4096), Limits{}, ErrShort},
		{"num_arrays over custom", array(array(array(header(1, 3), 1), 1), 1), Limits{MaxArrays: 2}, ErrLimit},
		{"ndim u32 max", hugeNdim, Limits{}, ErrLimit},
		{"ndim 33", array(header(1, 1), 4, many...), Limits{}, ErrLimit},
		{"ndim over custom", array(header(1, 1), 4, 1, 1, 1), Limits{MaxDims: 2}, ErrLimit},
		{"dtype 0", array(header(1, 1), 0, 3), Limits{}, ErrMalformed},
		{"dims overflow int64", array(header(1, 1), 8, u32max, u32max, u32max), Limits{}, ErrLimit},
		{"dims overflow int64, no payload limit", array(header(1, 1), 8, u32max, u32max, u32max), Limits{MaxPayload: math.MaxInt64}, ErrLimit},
		{"array over MaxPayload", array(header(1, 1), 1, 1<<30+1), Limits{}, ErrLimit},
		{"dtype alone over MaxPayload", array(header(1, 1), 1<<31), Limits{}, ErrLimit},
		{"sum over MaxPayload", array(array(header(1, 2), 1, 1<<29), 1, 1<<29+1), Limits{}, ErrLimit},
		{"sum over custom", array(array(header(1, 2), 4, 3), 4, 3), Limits{MaxPayload: 23}, ErrLimit},
		{"limit before short", append(array(header(1, 2), 1, 1<<30+1), 1, 0), Limits{}, ErrLimit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, n, err := DecodeHandshake(tt.in, tt.lim)
			if !errors.Is(err, tt.want) {
				t.Fatalf("DecodeHandshake error = %v, want %v", err, tt.want)
			}
			if n != 0 || h.Arrays != nil || h.Version != 0 {
				t.Errorf("DecodeHandshake returned %+v, %d with an error", h, n)
			}
			if tt.want == ErrShort && err != ErrShort {
				t.Errorf("ErrShort came wrapped: %v", err)
			}
			// ReadHandshake agrees, except that it reads whole fields, so
			// input that ends inside one is short, not yet wrong.
			_, rerr := ReadHandshake(bytes.NewReader(tt.in), tt.lim)
			if !errors.Is(rerr, tt.want) && !errors.Is(rerr, ErrShort) && !errors.Is(rerr, io.EOF) {
				t.Errorf("ReadHandshake error = %v, want %v", rerr, tt.want)
			}
		})
	}
}

func (h Handshake) mustEncode(t testing.TB) []byte {
	t.Helper()
	b, err := AppendHandshake(nil, h)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestVersionError(t *testing.T) {
	_, _, err := DecodeHandshake(header(2, 0), Limits{})
	var ve *VersionError
	if !errors.As(err, &ve) || ve.Version != 2 {
		t.Fatalf("error %v is not a *VersionError with Version 2", err)
	}
	if !strings.Contains(err.Error(), "version 2") {
		t.Errorf("message %q does not name the version", err)
	}
}

func TestDecodeAccepts(t *testing.T) {
	const u32max = math.MaxUint32
	tests := []struct {
		name    string
		in      []byte
		lim     Limits
		payload int64
	}{
		{"ndim at default", array(header(1, 1), 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1), Limits{}, 2},
		{"payload at MaxPayload", array(header(1, 1), 1, 1<<30), Limits{}, 1 << 30},
		{"zero dim beside huge dims", array(header(1, 1), 8, 0, u32max, u32max, u32max), Limits{}, 0},
		{"scalar", array(header(1, 1), 8), Limits{}, 8},
		{"large dtype", array(header(1, 1), 1000, 2), Limits{}, 2000},
		{"custom payload limit", array(array(header(1, 2), 4, 3), 4, 3), Limits{MaxPayload: 24}, 24},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, n, err := DecodeHandshake(tt.in, tt.lim)
			if err != nil || n != len(tt.in) {
				t.Fatalf("DecodeHandshake = %d, %v; want %d, nil", n, err, len(tt.in))
			}
			if p, err := h.PayloadSize(tt.lim); err != nil || p != tt.payload {
				t.Errorf("PayloadSize = %d, %v; want %d", p, err, tt.payload)
			}
		})
	}
}

func TestEveryPrefixIsShort(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	inputs := [][]byte{w1.mustEncode(t)}
	for range 50 {
		inputs = append(inputs, randHandshake(rng).mustEncode(t))
	}
	for _, b := range inputs {
		for k := range len(b) {
			if _, n, err := DecodeHandshake(b[:k], Limits{}); err != ErrShort || n != 0 {
				t.Fatalf("DecodeHandshake(% x) (prefix %d of %d) = %d, %v; want ErrShort", b[:k], k, len(b), n, err)
			}
			_, err := ReadHandshake(bytes.NewReader(b[:k]), Limits{})
			switch {
			case k == 0 && !errors.Is(err, io.EOF):
				t.Fatalf("ReadHandshake(empty) = %v, want io.EOF", err)
			case k > 0 && !(errors.Is(err, ErrShort) && errors.Is(err, io.ErrUnexpectedEOF)):
				t.Fatalf("ReadHandshake(prefix %d) = %v, want ErrShort and io.ErrUnexpectedEOF", k, err)
			}
		}
	}
}

func TestReadHandshakeStopsEarly(t *testing.T) {
	// A hostile ndim is rejected after its array head: the dims it
	// announces are never read.
	in := bytes.Clone(hugeNdim)
	rest := bytes.Repeat([]byte{0xff}, 100)
	rd := bytes.NewReader(append(in, rest...))
	if _, err := ReadHandshake(rd, Limits{}); !errors.Is(err, ErrLimit) {
		t.Fatalf("ReadHandshake = %v, want ErrLimit", err)
	}
	if rd.Len() != len(rest) {
		t.Errorf("ReadHandshake read %d bytes past the array head", len(rest)-rd.Len())
	}

	// A hostile num_arrays is rejected after the header.
	rd = bytes.NewReader(append(header(1, math.MaxUint32), rest...))
	if _, err := ReadHandshake(rd, Limits{}); !errors.Is(err, ErrLimit) {
		t.Fatalf("ReadHandshake = %v, want ErrLimit", err)
	}
	if rd.Len() != len(rest) {
		t.Errorf("ReadHandshake read %d bytes past the header", len(rest)-rd.Len())
	}
}

func TestReadHandshakeIOError(t *testing.T) {
	boom := errors.New("boom")
	_, err := ReadHandshake(iotest.ErrReader(boom), Limits{})
	if !errors.Is(err, boom) {
		t.Fatalf("ReadHandshake = %v, want it to wrap %v", err, boom)
	}
	// An error after some bytes is wrapped too, not mistaken for ErrShort.
	r := io.MultiReader(bytes.NewReader(w1.mustEncode(t)[:12]), iotest.ErrReader(boom))
	_, err = ReadHandshake(r, Limits{})
	if !errors.Is(err, boom) || errors.Is(err, ErrShort) {
		t.Fatalf("ReadHandshake = %v, want it to wrap %v only", err, boom)
	}
}

func TestArraySpecBytes(t *testing.T) {
	const u32max = math.MaxUint32
	tests := []struct {
		a    ArraySpec
		want int64
		err  error
	}{
		{ArraySpec{DTypeSize: 4}, 4, nil},
		{ArraySpec{DTypeSize: 4, Shape: []int{8, 6}}, 192, nil},
		{ArraySpec{DTypeSize: 4, Shape: []int{}}, 4, nil},
		{ArraySpec{DTypeSize: 8, Shape: []int{0, math.MaxInt, math.MaxInt}}, 0, nil},
		{ArraySpec{DTypeSize: 8, Shape: []int{u32max, u32max, u32max}}, 0, ErrLimit},
		{ArraySpec{DTypeSize: 2, Shape: []int{1 << 62}}, 0, ErrLimit},
		// 2^62 · 2 = 2^63 overflows int64 by one; MaxInt64 itself fits.
		{ArraySpec{DTypeSize: 1, Shape: []int{1 << 62, 2}}, 0, ErrLimit},
		{ArraySpec{DTypeSize: 1, Shape: []int{math.MaxInt64}}, math.MaxInt64, nil},
		{ArraySpec{DTypeSize: 0, Shape: []int{3}}, 0, ErrMalformed},
		{ArraySpec{DTypeSize: -1}, 0, ErrMalformed},
		{ArraySpec{DTypeSize: 4, Shape: []int{3, -1}}, 0, ErrMalformed},
	}
	for _, tt := range tests {
		got, err := tt.a.Bytes()
		if got != tt.want || !errors.Is(err, tt.err) {
			t.Errorf("%+v.Bytes() = %d, %v; want %d, %v", tt.a, got, err, tt.want, tt.err)
		}
	}
}

func TestPayloadSize(t *testing.T) {
	h := Handshake{Version: Version1, Arrays: []ArraySpec{
		{DTypeSize: 1, Shape: []int{1 << 29}},
		{DTypeSize: 1, Shape: []int{1 << 29}},
	}}
	if p, err := h.PayloadSize(Limits{}); err != nil || p != 1<<30 {
		t.Fatalf("PayloadSize = %d, %v; want 1<<30", p, err)
	}
	h.Arrays[1].Shape[0]++
	if _, err := h.PayloadSize(Limits{}); !errors.Is(err, ErrLimit) {
		t.Fatalf("PayloadSize over the default limit = %v, want ErrLimit", err)
	}
	if p, err := h.PayloadSize(Limits{MaxPayload: 1 << 31}); err != nil || p != 1<<30+1 {
		t.Fatalf("PayloadSize with a raised limit = %d, %v", p, err)
	}
	h.Arrays[0] = ArraySpec{DTypeSize: 8, Shape: []int{math.MaxUint32, math.MaxUint32, math.MaxUint32}}
	if _, err := h.PayloadSize(Limits{MaxPayload: math.MaxInt64}); !errors.Is(err, ErrLimit) {
		t.Fatalf("PayloadSize overflowing int64 = %v, want ErrLimit", err)
	}
	h.Arrays[0] = ArraySpec{DTypeSize: 8, Shape: []int{-2}}
	if _, err := h.PayloadSize(Limits{}); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "array 0") {
		t.Fatalf("PayloadSize with a negative dim = %v, want ErrMalformed naming array 0", err)
	}
	// Sums that would overflow int64 are caught even with no limit.
	big := ArraySpec{DTypeSize: 1, Shape: []int{math.MaxInt64/2 + 1}}
	h.Arrays = []ArraySpec{big, big}
	if _, err := h.PayloadSize(Limits{MaxPayload: math.MaxInt64}); !errors.Is(err, ErrLimit) {
		t.Fatalf("PayloadSize with an overflowing sum = %v, want ErrLimit", err)
	}
}

func TestAppendHandshakeErrors(t *testing.T) {
	tests := []struct {
		name string
		h    Handshake
		want error
	}{
		{"version 0", Handshake{Arrays: w1.Arrays}, ErrVersion},
		{"version 2", Handshake{Version: 2}, ErrVersion},
		{"dtype 0", Handshake{Version: 1, Arrays: []ArraySpec{{DTypeSize: 0}}}, ErrMalformed},
		{"dtype negative", Handshake{Version: 1, Arrays: []ArraySpec{{DTypeSize: -4}}}, ErrMalformed},
		{"dtype over u32", Handshake{Version: 1, Arrays: []ArraySpec{{DTypeSize: 1 << 32}}}, ErrLimit},
		{"dim negative", Handshake{Version: 1, Arrays: []ArraySpec{{DTypeSize: 4, Shape: []int{2, -1}}}}, ErrMalformed},
		{"dim over u32", Handshake{Version: 1, Arrays: []ArraySpec{{DTypeSize: 4, Shape: []int{1 << 32}}}}, ErrLimit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := []byte("keep")
			got, err := AppendHandshake(dst, tt.h)
			if !errors.Is(err, tt.want) {
				t.Fatalf("AppendHandshake error = %v, want %v", err, tt.want)
			}
			if string(got) != "keep" {
				t.Errorf("AppendHandshake changed dst to %q on error", got)
			}
		})
	}
	// The largest values that fit still encode.
	h := Handshake{Version: 1, Arrays: []ArraySpec{{DTypeSize: math.MaxUint32, Shape: []int{math.MaxUint32, 0}}}}
	b, err := AppendHandshake(nil, h)
	if err != nil {
		t.Fatalf("AppendHandshake(u32 max fields): %v", err)
	}
	want := unhex(t, "4543484f 01 01000000 ffffffff 02000000 ffffffff 00000000")
	if !bytes.Equal(b, want) {
		t.Fatalf("AppendHandshake = % x, want % x", b, want)
	}
}

func TestCompare(t *testing.T) {
	spec := func(dtype int, shape ...int) ArraySpec { return ArraySpec{DTypeSize: dtype, Shape: shape} }
	four := Handshake{Version: 1, Arrays: []ArraySpec{spec(1), spec(4, 8), spec(4), spec(4, 8, 6)}}
	tests := []struct {
		name string
		a, b Handshake
		want string // "" for no mismatch
	}{
		{"same", four, four, ""},
		{"shape", four, Handshake{Version: 1, Arrays: []ArraySpec{spec(1), spec(4, 8), spec(4), spec(4, 8, 5)}},
			"wire: spec mismatch: array 3: shape [8 6], peer has [8 5]"},
		{"count", Handshake{Version: 1, Arrays: four.Arrays[:2]}, Handshake{Version: 1, Arrays: four.Arrays[:3]},
			"wire: spec mismatch: 2 arrays, peer has 3"},
		{"dtype", four, Handshake{Version: 1, Arrays: []ArraySpec{spec(1), spec(8, 8), spec(4), spec(4, 8, 5)}},
			"wire: spec mismatch: array 1: dtype size 4, peer has 8"},
		{"rank", Handshake{Version: 1, Arrays: []ArraySpec{spec(4)}}, Handshake{Version: 1, Arrays: []ArraySpec{spec(4, 1)}},
			"wire: spec mismatch: array 0: shape [], peer has [1]"},
		{"version", Handshake{Version: 1}, Handshake{Version: 2},
			"wire: spec mismatch: version 1, peer has 2"},
		{"nil and empty shape", Handshake{Version: 1, Arrays: []ArraySpec{{DTypeSize: 4, Shape: nil}}},
			Handshake{Version: 1, Arrays: []ArraySpec{{DTypeSize: 4, Shape: []int{}}}}, ""},
		{"nil and empty arrays", Handshake{Version: 1}, Handshake{Version: 1, Arrays: []ArraySpec{}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.a.Compare(tt.b)
			if eq := tt.a.Equal(tt.b); eq != (tt.want == "") {
				t.Errorf("Equal = %v, want %v", eq, tt.want == "")
			}
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Compare = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrSpecMismatch) {
				t.Fatalf("Compare = %v, want ErrSpecMismatch", err)
			}
			if err.Error() != tt.want {
				t.Errorf("Compare message\n got %q\nwant %q", err, tt.want)
			}
		})
	}
}
