package fuzz

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/seed-a9ef92a1/echo/wire"
)

// v2Sentinels are the errors the version 2 decoders may return, wrapped.
var v2Sentinels = []error{wire.ErrShort, wire.ErrBadMagic, wire.ErrVersion, wire.ErrLimit, wire.ErrMalformed}

func v2Kind(t *testing.T, err error) {
	t.Helper()
	for _, s := range v2Sentinels {
		if errors.Is(err, s) {
			return
		}
	}
	t.Fatalf("error %v wraps no wire sentinel", err)
}

func hello(t testing.TB, h wire.Hello) []byte {
	b, err := wire.AppendHello(nil, h)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzDecodeHello: a hello from a hostile peer decodes to an error wrapping
// a sentinel, or to a hello that encodes back to the very bytes it came
// from; every strict prefix of a valid one is ErrShort, and HelloLen agrees
// with the length decoded.
func FuzzDecodeHello(f *testing.F) {
	good := hello(f, wire.Hello{Session: wire.SessionID{3}, Leaves: []wire.Leaf{
		{Path: "done", DType: "bool"},
		{Path: "obs", DType: "float32", Shape: []int{84, 84, 4}},
		{Path: "reward", DType: "float32"},
	}})
	f.Add(good)
	f.Add(good[:11])
	f.Add(hello(f, wire.Hello{}))
	f.Add([]byte("ECH2\xff\xff\xff\xff"))
	f.Add([]byte(wire.Probe))
	f.Fuzz(func(t *testing.T, b []byte) {
		lim := wire.Limits{MaxHello: 1 << 16, MaxArrays: 64, MaxDims: 8}
		h, n, err := wire.DecodeHello(b, lim)
		if err != nil {
			v2Kind(t, err)
			return
		}
		if l, err := wire.HelloLen(b, lim); err != nil || l != n {
			t.Fatalf("HelloLen = %d, %v; DecodeHello took %d", l, err, n)
		}
		again, err := wire.AppendHello(nil, h)
		if err != nil {
			t.Fatalf("decoded hello %+v does not encode: %v", h, err)
		}
		if !bytes.Equal(again, b[:n]) {
			t.Fatalf("re-encoded % x, decoded from % x", again, b[:n])
		}
		for _, k := range prefixLens(n) {
			if _, _, err := wire.DecodeHello(b[:k], lim); err != wire.ErrShort {
				t.Fatalf("prefix of %d bytes of a valid hello: %v", k, err)
			}
		}
	})
}

// FuzzDecodeReply: a reply from a hostile server decodes to an error
// wrapping a sentinel or to a reply that encodes back to the same bytes,
// with a message the decoder made printable.
func FuzzDecodeReply(f *testing.F) {
	f.Add(wire.AppendReply(nil, wire.Reply{Status: wire.StatusResumed, Session: wire.SessionID{1}, Committed: 77}))
	f.Add(wire.AppendReply(nil, wire.Reply{Status: wire.StatusRefused, Message: "obs: dtype float32, server expects int32"}))
	f.Add([]byte("ECH2\x02\xff\xff\x00\x00"))
	f.Add([]byte(wire.Offer))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, n, err := wire.DecodeReply(b)
		if err != nil {
			v2Kind(t, err)
			return
		}
		again := wire.AppendReply(nil, r)
		if r.Accepted() && !bytes.Equal(again, b[:n]) {
			t.Fatalf("re-encoded % x, decoded from % x", again, b[:n])
		}
		r2, n2, err := wire.DecodeReply(again)
		if err != nil || n2 != len(again) || !reflect.DeepEqual(r, r2) {
			t.Fatalf("round trip of %+v: %+v, %d, %v", r, r2, n2, err)
		}
		for _, c := range r.Message {
			if c < 0x20 || c == 0x7f {
				t.Fatalf("message %q keeps a control character", r.Message)
			}
		}
	})
}
