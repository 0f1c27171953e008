package wire

import (
	"bytes"
	"errors"
	"hash/crc32"
	"reflect"
	"testing"

	"github.com/seed-a9ef92a1/echo/pytree"
)

func sampleHello() Hello {
	return Hello{
		Session: SessionID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		Leaves: []Leaf{
			{Path: "done", DType: "bool", Shape: nil},
			{Path: "obs", DType: "float32", Shape: []int{8, 6}},
		},
	}
}

func TestHelloRoundTrip(t *testing.T) {
	h := sampleHello()
	b, err := AppendHello([]byte("x"), h)
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, "tail"...)
	got, n, err := DecodeHello(b[1:], Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if n != len(b)-1-len("tail") {
		t.Fatalf("length %d, want %d", n, len(b)-1-len("tail"))
	}
	if !reflect.DeepEqual(got, h) {
		t.Fatalf("decoded %+v, want %+v", got, h)
	}
	// Every strict prefix is short, never an error or a hello.
	for i := range n {
		if _, _, err := DecodeHello(b[1:1+i], Limits{}); err != ErrShort {
			t.Fatalf("prefix of %d bytes: %v, want ErrShort", i, err)
		}
	}
	if l, err := HelloLen(b[1:], Limits{}); err != nil || l != n {
		t.Fatalf("HelloLen = %d, %v; want %d", l, err, n)
	}
}

func TestHelloRefusals(t *testing.T) {
	good, _ := AppendHello(nil, sampleHello())
	flip := func(i int) []byte {
		b := bytes.Clone(good)
		b[i] ^= 0x40
		return b
	}
	cases := []struct {
		name string
		b    []byte
		lim  Limits
		want error
	}{
		{"magic", flip(0), Limits{}, ErrBadMagic},
		{"short magic", []byte("EC3"), Limits{}, ErrBadMagic},
		{"checksum", flip(len(good) - 1), Limits{}, ErrMalformed},
		{"body bit", flip(helloHeadLen + 3), Limits{}, ErrMalformed},
		{"too long", good, Limits{MaxHello: 10}, ErrLimit},
		{"too many leaves", good, Limits{MaxArrays: 1}, ErrLimit},
		{"too many dims", good, Limits{MaxDims: 1}, ErrLimit},
	}
	for _, c := range cases {
		if _, _, err := DecodeHello(c.b, c.lim); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	v3 := sampleHello()
	b, _ := AppendHello(nil, v3)
	b[helloHeadLen] = 3
	// Re-sum the body so that only the version is wrong.
	b = b[:len(b)-crcLen]
	b, _ = appendCRC(b)
	if _, _, err := DecodeHello(b, Limits{}); !errors.Is(err, ErrVersion) {
		t.Errorf("version 3: %v, want ErrVersion", err)
	}
}

// appendCRC appends the checksum of a hello's body to b, a hello without
// one.
func appendCRC(b []byte) ([]byte, error) {
	sum := crc32.Checksum(b[helloHeadLen:], castagnoli)
	return append(b, byte(sum), byte(sum>>8), byte(sum>>16), byte(sum>>24)), nil
}

func TestReplyRoundTrip(t *testing.T) {
	for _, r := range []Reply{
		{Status: StatusNew, Session: SessionID{9}, Committed: 0},
		{Status: StatusResumed, Session: SessionID{7, 7}, Committed: 1 << 40},
		{Status: StatusRefused, Message: "obs: dtype float32, expected int32"},
		{Status: StatusUnknownSession, Message: "gone"},
	} {
		b := AppendReply(nil, r)
		got, n, err := DecodeReply(append(b, 0xff))
		if err != nil || n != len(b) || !reflect.DeepEqual(got, r) {
			t.Fatalf("%+v: decoded %+v, %d, %v", r, got, n, err)
		}
		for i := range n {
			if _, _, err := DecodeReply(b[:i]); err != ErrShort {
				t.Fatalf("%+v: prefix %d: %v, want ErrShort", r, i, err)
			}
		}
	}
	bad := AppendReply(nil, Reply{Status: StatusRefused, Message: "a\x00b\xffc"})
	if r, _, _ := DecodeReply(bad); r.Message != "a\uFFFDb\uFFFDc" {
		t.Fatalf("message %q, want control and invalid bytes replaced", r.Message)
	}
	status := AppendReply(nil, Reply{Status: StatusRefused})
	status[len(v2Magic)] = 9
	if _, _, err := DecodeReply(status); !errors.Is(err, ErrMalformed) {
		t.Fatalf("status 9: %v", err)
	}
	long := AppendReply(nil, Reply{Status: StatusNew})
	long[len(v2Magic)+1] = 25
	if _, _, err := DecodeReply(long); !errors.Is(err, ErrMalformed) {
		t.Fatalf("accept of 25 bytes: %v", err)
	}
}

func TestCompareLeavesTexts(t *testing.T) {
	spec := func(tree any) []Leaf {
		s, err := pytree.SpecOf(tree)
		if err != nil {
			t.Fatal(err)
		}
		return LeavesOf(s)
	}
	server := spec(map[string]any{"a": z(pytree.Int32, 4), "b": z(pytree.Float32, 4)})
	cases := []struct {
		mine any
		want string
	}{
		{map[string]any{"a": z(pytree.Int32, 4), "b": z(pytree.Float32, 4)}, ""},
		{map[string]any{"a": z(pytree.Float32, 4), "b": z(pytree.Float32, 4)},
			"wire: spec mismatch: a: dtype float32, expected int32"},
		{map[string]any{"a": z(pytree.Float32, 4), "b": z(pytree.Int32, 4)},
			"wire: spec mismatch: a: dtype float32, expected int32"},
		{map[string]any{"a": z(pytree.Int32, 4), "c": z(pytree.Float32, 4)},
			"wire: spec mismatch: leaf 1 is c, expected b"},
		{map[string]any{"a": z(pytree.Int32, 2, 2), "b": z(pytree.Float32, 4)},
			"wire: spec mismatch: a: shape [2 2], expected [4]"},
		{map[string]any{"a": z(pytree.Int32, 4)},
			"wire: spec mismatch: leaf count 1, expected 2"},
	}
	for _, c := range cases {
		err := CompareLeaves(spec(c.mine), server)
		got := ""
		if err != nil {
			got = err.Error()
			if !errors.Is(err, ErrSpecMismatch) {
				t.Errorf("%v is not ErrSpecMismatch", err)
			}
		}
		if got != c.want {
			t.Errorf("got %q, want %q", got, c.want)
		}
	}
}

func TestProbeIsNotAnOffer(t *testing.T) {
	if len(Probe) != ProbeLen || len(Offer) != ProbeLen {
		t.Fatalf("probe %d bytes, offer %d, want %d", len(Probe), len(Offer), ProbeLen)
	}
	if Probe == Offer || bytes.HasPrefix([]byte(Probe), []byte(v2Magic)) {
		t.Fatal("the probe must not read as an offer or a hello")
	}
}

// z is a zero array of dtype dt and the given shape.
func z(dt pytree.DType, shape ...int) pytree.Array {
	a, err := pytree.Zeros(dt, shape...)
	if err != nil {
		panic(err)
	}
	return a
}
