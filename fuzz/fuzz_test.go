package fuzz

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/seed-a9ef92a1/echo/wire"
)

// sentinels are the errors a handshake decoder may return, wrapped.
var sentinels = []error{wire.ErrShort, wire.ErrBadMagic, wire.ErrVersion, wire.ErrLimit, wire.ErrMalformed}

// kind returns the sentinel err wraps, nil for nil, or fails the test when
// err wraps none of them.
func kind(t *testing.T, err error) error {
	t.Helper()
	if err == nil {
		return nil
	}
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return s
		}
	}
	t.Fatalf("error %v wraps no wire sentinel", err)
	return nil
}

// prefixLens returns the prefix lengths of an n-byte input to check: all of
// them for short inputs, an even spread for long ones.
func prefixLens(n int) []int {
	const most = 256
	var ks []int
	if n <= most {
		for k := range n {
			ks = append(ks, k)
		}
		return ks
	}
	for i := range most {
		ks = append(ks, i*n/most)
	}
	return append(ks, n-1)
}

func encode(h wire.Handshake) []byte {
	b, err := wire.AppendHandshake(nil, h)
	if err != nil {
		panic(err)
	}
	return b
}

func u32s(vs ...uint32) []byte {
	var b []byte
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint32(b, v)
	}
	return b
}

func FuzzDecodeHandshake(f *testing.F) {
	w1 := encode(wire.Handshake{Version: wire.Version1, Arrays: []wire.ArraySpec{
		{DTypeSize: 1},
		{DTypeSize: 4, Shape: []int{8}},
		{DTypeSize: 4},
	}})
	const u32max = math.MaxUint32
	f.Add(w1)
	f.Add(append(bytes.Clone(w1), wire.Ack, wire.Ack))
	f.Add(w1[:20])
	f.Add([]byte{})
	f.Add([]byte("ECHO"))
	f.Add(encode(wire.Handshake{Version: wire.Version1}))
	f.Add(encode(wire.Handshake{Version: wire.Version1, Arrays: []wire.ArraySpec{
		{DTypeSize: 8, Shape: []int{2, 0x01020304}},
		{DTypeSize: 2, Shape: []int{0, 5, 7}},
	}}))
	f.Add(append([]byte("ECHO\x02"), u32s(0)...))
	f.Add(append([]byte("ECHO\x01"), u32s(u32max)...))
	f.Add(append([]byte("ECHO\x01"), u32s(1, 4, u32max)...))
	f.Add(append([]byte("ECHO\x01"), u32s(1, 8, 3, u32max, u32max, u32max)...))
	f.Add(append([]byte("ECHO\x01"), u32s(1, 1, 1, 1<<30+1)...))
	f.Add(append([]byte("ECHO\x01"), u32s(1, 0, 1, 3)...))
	f.Add([]byte("HTTP/1.1 400 Bad Request\r\n"))

	f.Fuzz(func(t *testing.T, data []byte) {
		var lim wire.Limits
		h, n, err := wire.DecodeHandshake(data, lim)
		want := kind(t, err)

		if err != nil {
			if n != 0 {
				t.Fatalf("DecodeHandshake consumed %d bytes with error %v", n, err)
			}
		} else {
			if n < 1 || n > len(data) {
				t.Fatalf("DecodeHandshake consumed %d of %d bytes", n, len(data))
			}
			enc, err := wire.AppendHandshake(nil, h)
			if err != nil {
				t.Fatalf("re-encoding %+v: %v", h, err)
			}
			if !bytes.Equal(enc, data[:n]) {
				t.Fatalf("re-encoding = % x, consumed % x", enc, data[:n])
			}
			if h.EncodedLen() != n {
				t.Fatalf("EncodedLen = %d, consumed %d", h.EncodedLen(), n)
			}
			if _, err := h.PayloadSize(lim); err != nil {
				t.Fatalf("decoded handshake fails PayloadSize: %v", err)
			}
			if err := h.Compare(h); err != nil {
				t.Fatalf("Compare with itself: %v", err)
			}
		}

		// A prefix is short, or fails as the whole does. A prefix of a
		// valid handshake is always short.
		for _, k := range prefixLens(len(data)) {
			ph, pn, perr := wire.DecodeHandshake(data[:k], lim)
			if err == nil && k >= n {
				if perr != nil || pn != n || !ph.Equal(h) {
					t.Fatalf("prefix %d holding the whole handshake: %d, %v", k, pn, perr)
				}
				continue
			}
			if got := kind(t, perr); got != wire.ErrShort && got != want {
				t.Fatalf("prefix %d: error %v, whole input: %v", k, perr, err)
			}
		}

		// ReadHandshake accepts and rejects the same inputs, reading no
		// further than the handshake. It reads the fixed header whole, so
		// it may call a bad header short where DecodeHandshake, checking
		// byte by byte, already knows it is wrong.
		r := bytes.NewReader(data)
		rh, rerr := wire.ReadHandshake(r, lim)
		switch {
		case err == nil:
			if rerr != nil || !rh.Equal(h) {
				t.Fatalf("ReadHandshake = %+v, %v; DecodeHandshake = %+v", rh, rerr, h)
			}
			if read := len(data) - r.Len(); read != n {
				t.Fatalf("ReadHandshake read %d bytes, handshake is %d", read, n)
			}
		case len(data) == 0:
			if !errors.Is(rerr, io.EOF) {
				t.Fatalf("ReadHandshake(empty) = %v, want io.EOF", rerr)
			}
		default:
			got := kind(t, rerr)
			if got == wire.ErrShort && !errors.Is(rerr, io.ErrUnexpectedEOF) {
				t.Fatalf("ReadHandshake short without io.ErrUnexpectedEOF: %v", rerr)
			}
			if got != want && !(got == wire.ErrShort && len(data) < 9) {
				t.Fatalf("ReadHandshake = %v, DecodeHandshake = %v", rerr, err)
			}
		}
	})
}

func FuzzAssembler(f *testing.F) {
	f.Add(uint16(36), uint64(1), uint8(3), []byte("hello"))
	f.Add(uint16(0), uint64(0), uint8(0), []byte{})
	f.Add(uint16(1), uint64(7), uint8(200), []byte{0xff})
	f.Add(uint16(4095), uint64(42), uint8(7), []byte("a longer run of bytes that does not divide the payload"))
	f.Add(uint16(63), uint64(1<<63), uint8(31), bytes.Repeat([]byte{0, 1, 2}, 100))

	f.Fuzz(func(t *testing.T, payload uint16, seed uint64, count uint8, data []byte) {
		p := 1 + int(payload)%4096
		k := 1 + int(count)%8

		// k whole samples made by repeating data; each is marked with its
		// index so that reordering shows.
		want := make([][]byte, k)
		stream := make([]byte, 0, k*p)
		for i := range want {
			s := make([]byte, p)
			for j := range s {
				var d byte
				if len(data) > 0 {
					d = data[(i*p+j)%len(data)]
				}
				s[j] = d ^ byte(i*37)
			}
			want[i] = s
			stream = append(stream, s...)
		}

		a, err := wire.NewAssembler(p)
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
		var got [][]byte
		emit := func(s []byte) {
			if len(s) != p || cap(s) != p {
				t.Fatalf("emitted len %d cap %d, want %d", len(s), cap(s), p)
			}
			got = append(got, bytes.Clone(s))
		}
		fed := 0
		for fed < len(stream) {
			var c int
			switch rng.IntN(4) {
			case 0:
				c = rng.IntN(4) // tiny, including empty
			case 1:
				c = p - 1 + rng.IntN(3) // around one sample
			default:
				c = rng.IntN(3*p + 1)
			}
			c = min(c, len(stream)-fed)
			before := len(got)
			if n := a.Feed(stream[fed:fed+c], emit); n != len(got)-before {
				t.Fatalf("Feed returned %d, emitted %d", n, len(got)-before)
			}
			fed += c
			if a.Pending() != fed%p {
				t.Fatalf("after %d bytes Pending = %d, want %d", fed, a.Pending(), fed%p)
			}
		}
		if a.Pending() != 0 {
			t.Fatalf("Pending = %d at the end", a.Pending())
		}
		if len(got) != k {
			t.Fatalf("emitted %d samples, want %d", len(got), k)
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("sample %d differs", i)
			}
		}
	})
}
