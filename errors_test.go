//go:build linux

package echo_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/pytree"
)

// The one vocabulary of spec mismatches: every path that checks a caller's
// tree against an example says the same thing, in the same words, for the
// same mistake, and matches ErrSpecMismatch (never ErrPayloadSize).

// mismatchExample has a dict, a list and leaves of two dtypes, a scalar
// among them.
func mismatchExample() map[string]any {
	return map[string]any{
		"done":  pytree.Scalar(false),
		"obs":   pytree.MustOf(make([]float32, 8)),
		"items": []any{pytree.Scalar(int32(1)), pytree.Scalar(int32(2))},
	}
}

// mismatchCase is one mistake and what every path says of it, after its
// own prefix.
type mismatchCase struct {
	name   string
	tree   func() any
	detail string
}

// mismatchCases are the mistakes of the issue, made to edit(base()).
func mismatchCases(base func() map[string]any) []mismatchCase {
	edit := func(f func(map[string]any)) func() any {
		return func() any { m := base(); f(m); return m }
	}
	return []mismatchCase{
		{"wrong dtype", edit(func(m map[string]any) { m["obs"] = pytree.MustOf(make([]float64, 8)) }),
			"obs: dtype float64, expected float32"},
		{"wrong shape", edit(func(m map[string]any) { m["obs"] = pytree.MustOf(make([]float32, 9)) }),
			"obs: shape [9], expected [8]"},
		{"scalar for an array", edit(func(m map[string]any) { m["obs"] = pytree.Scalar(float32(0)) }),
			"obs: shape [], expected [8]"},
		{"missing key", edit(func(m map[string]any) { delete(m, "done") }),
			"done: missing key, expected bool[]"},
		{"extra key", edit(func(m map[string]any) { m["value"] = pytree.Scalar(float32(0)) }),
			"value: unexpected key"},
		{"nil tree", func() any { return nil },
			"<root>: nil, expected dict with keys [done items obs]"},
		{"nil leaf", edit(func(m map[string]any) { m["obs"] = nil }),
			"obs: nil, expected float32[8]"},
		{"wrong list length", edit(func(m map[string]any) { m["items"] = m["items"].([]any)[:1] }),
			"items: length 1, expected 2"},
		{"dict for a list", edit(func(m map[string]any) { m["items"] = map[string]any{"0": pytree.Scalar(int32(1))} }),
			"items: dict with keys [0], expected list of 2"},
		{"list for a dict", func() any { return []any{base()} },
			"<root>: list of 1, expected dict with keys [done items obs]"},
		{"Go int leaf", edit(func(m map[string]any) { m["done"] = 1 }),
			"done: Go int (not an Array), expected bool[]"},
		{"Go slice leaf", edit(func(m map[string]any) { m["obs"] = make([]float32, 8) }),
			"obs: Go []float32 (not an Array), expected float32[8]"},
	}
}

// checkMismatch checks err's exact text and its sentinels.
func checkMismatch(t *testing.T, call string, err error, want string) {
	t.Helper()
	if err == nil || err.Error() != want {
		t.Errorf("%s = %v\nwant      %s", call, err, want)
		return
	}
	if !errors.Is(err, echo.ErrSpecMismatch) {
		t.Errorf("%s = %v, does not match ErrSpecMismatch", call, err)
	}
	for _, wrong := range []error{echo.ErrPayloadSize, echo.ErrBadExample, echo.ErrClosed, echo.ErrVersion} {
		if errors.Is(err, wrong) {
			t.Errorf("%s = %v, matches %v", call, err, wrong)
		}
	}
	var me *pytree.MismatchError
	if !errors.As(err, &me) {
		t.Errorf("%s = %v, wraps no *pytree.MismatchError", call, err)
	}
}

func TestMismatchMessagesSubmit(t *testing.T) {
	s := newServerFor(t, mismatchExample(), 2)
	for _, c := range mismatchCases(mismatchExample) {
		checkMismatch(t, "Submit("+c.name+")", s.Submit(t.Context(), c.tree()), "echo: spec mismatch: "+c.detail)
	}
	if err := s.Submit(t.Context(), mismatchExample()); err != nil {
		t.Fatalf("Submit of the example: %v", err)
	}
}

func TestMismatchMessagesProducer(t *testing.T) {
	for _, route := range []struct {
		name   string
		direct int
	}{{"queued", -1}, {"direct", 0}} {
		s := newServerFor(t, mismatchExample(), 2, echo.WithDirectProducerBytes(route.direct))
		p, err := s.NewProducer()
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range mismatchCases(mismatchExample) {
			checkMismatch(t, route.name+" Producer.Send("+c.name+")", p.Send(t.Context(), c.tree()), "echo: spec mismatch: "+c.detail)
		}
		if err := p.Send(t.Context(), mismatchExample()); err != nil {
			t.Fatalf("%s Producer.Send of the example: %v", route.name, err)
		}
	}
}

func TestMismatchMessagesClient(t *testing.T) {
	s := newServerFor(t, mismatchExample(), 2, echo.WithTCP("127.0.0.1:0"))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	c, err := echo.Dial(t.Context(), s.Addr().String(), mismatchExample())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, tc := range mismatchCases(mismatchExample) {
		checkMismatch(t, "Client.Send("+tc.name+")", c.Send(t.Context(), tc.tree()), "echo: spec mismatch: "+tc.detail)
		checkMismatch(t, "Client.SendBatch("+tc.name+")", c.SendBatch(t.Context(), []any{mismatchExample(), tc.tree()}),
			"tree 1: echo: spec mismatch: "+tc.detail)
	}
	if c.Inflight() != 0 {
		t.Fatalf("%d samples in flight after refused sends", c.Inflight())
	}
	if err := c.Send(t.Context(), mismatchExample()); err != nil {
		t.Fatalf("Client.Send of the example: %v", err)
	}
	if err := c.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func TestMismatchMessagesTrajectory(t *testing.T) {
	// A buffered timescale of 4 steps: each step is shaped like
	// mismatchExample.
	acc, err := echo.NewTrajectoryAccumulator(map[string]any{"steps": map[string]any{
		"done":  mustZeros(t, pytree.Bool, 4),
		"obs":   mustZeros(t, pytree.Float32, 4, 8),
		"items": []any{mustZeros(t, pytree.Int32, 4), mustZeros(t, pytree.Int32, 4)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range mismatchCases(mismatchExample) {
		checkMismatch(t, "Add("+c.name+")", acc.Add("steps", c.tree()), `echo: spec mismatch: timescale "steps": `+c.detail)
	}
	if filled, _ := acc.Len("steps"); filled != 0 {
		t.Fatalf("%d refused steps counted", filled)
	}
	if err := acc.Add("steps", mismatchExample()); err != nil {
		t.Fatalf("Add of a step shaped like the example: %v", err)
	}
}

// TestMismatchMessagesHandshake checks what NewClient (and so Dial, which
// adds "echo: dial ADDR: " before it) says of a server whose handshake
// describes other samples. The version 1 handshake has no dtypes, only
// their sizes, and no paths: leaves pair up in flatten order.
func TestMismatchMessagesHandshake(t *testing.T) {
	s := newServerFor(t, mismatchExample(), 2, echo.WithTCP("127.0.0.1:0"))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	edit := func(f func(map[string]any)) any { m := mismatchExample(); f(m); return m }
	for _, c := range []struct {
		name    string
		example any
		want    string
	}{
		{"wrong shape", edit(func(m map[string]any) { m["obs"] = pytree.MustOf(make([]float32, 9)) }),
			"echo: spec mismatch: obs: shape [9], expected [8]"},
		{"wrong dtype size", edit(func(m map[string]any) { m["obs"] = pytree.MustOf(make([]float64, 8)) }),
			"echo: spec mismatch: obs: dtype float64 (8 bytes), expected a 4-byte dtype"},
		{"extra leaf", edit(func(m map[string]any) { m["value"] = pytree.Scalar(float32(0)) }),
			"echo: spec mismatch: <root>: leaf count 5, expected 4"},
		{"missing leaf", edit(func(m map[string]any) { delete(m, "done") }),
			"echo: spec mismatch: <root>: leaf count 3, expected 4"},
	} {
		conn, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		cl, err := echo.NewClient(t.Context(), conn, c.example)
		conn.Close()
		if err == nil {
			cl.Close()
		}
		checkMismatch(t, "NewClient("+c.name+")", err, c.want)
	}
	// The same dtype size passes: the client checks dtypes itself.
	// The same dtype size: version 1 cannot tell, version 2 refuses it on
	// both sides, naming the leaf.
	int32s := edit(func(m map[string]any) { m["obs"] = pytree.MustOf(make([]int32, 8)) })
	c, err := echo.Dial(t.Context(), s.Addr().String(), int32s, echo.WithWireVersion(1))
	if err != nil {
		t.Fatalf("Dial in version 1 with an int32 leaf for a float32 one: %v", err)
	}
	c.Close()
	_, err = echo.Dial(t.Context(), s.Addr().String(), int32s)
	want := "echo: spec mismatch: obs: dtype int32, expected float32 (dialing " + s.Addr().String() + ")"
	if err == nil || err.Error() != want || !errors.Is(err, echo.ErrSpecMismatch) || errors.Is(err, echo.ErrPayloadSize) {
		t.Errorf("Dial(int32 for float32) = %v, want %q", err, want)
	}
}

// TestBadExampleMessages checks that a Go value in an example is named as
// such, under one echo: prefix.
func TestBadExampleMessages(t *testing.T) {
	for _, c := range []struct {
		example any
		want    string
	}{
		{map[string]any{"a": 1}, "echo: bad example: pytree: leaf is not an Array: a is a Go int"},
		{[]any{pytree.Scalar(int8(0)), []float32{1}}, "echo: bad example: pytree: leaf is not an Array: 1 is a Go []float32"},
		{3, "echo: bad example: pytree: leaf is not an Array: <root> is a Go int"},
	} {
		_, err := echo.NewServer(c.example, 2)
		if err == nil || err.Error() != c.want || !errors.Is(err, echo.ErrBadExample) || !errors.Is(err, pytree.ErrNotArray) {
			t.Errorf("NewServer(%#v) = %v\nwant %s", c.example, err, c.want)
		}
	}
	_, err := echo.NewTrajectoryAccumulator(map[string]any{"steps": map[string]any{"a": 1}})
	if want := `echo: bad example: timescale "steps": pytree: leaf is not an Array: a is a Go int`; err == nil || err.Error() != want {
		t.Errorf("NewTrajectoryAccumulator = %v\nwant %s", err, want)
	}
}

// TestClosedMessages checks that calls on a closed server say so once:
// "echo: server closed", with no second echo: prefix.
func TestClosedMessages(t *testing.T) {
	for _, direct := range []int{-1, 0} {
		s, err := echo.NewServer(mismatchExample(), 2, echo.WithDirectProducerBytes(direct))
		if err != nil {
			t.Fatal(err)
		}
		p, err := s.NewProducer()
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		_, newErr := s.NewProducer()
		_, sampleErr := s.Sample(context.Background())
		for call, err := range map[string]error{
			"Submit":        s.Submit(t.Context(), mismatchExample()),
			"Producer.Send": p.Send(t.Context(), mismatchExample()),
			"NewProducer":   newErr,
			"Sample":        sampleErr,
			"Start":         s.Start(),
		} {
			if err == nil || err.Error() != "echo: server closed" || !errors.Is(err, echo.ErrClosed) {
				t.Errorf("%s after Close (direct %d) = %v, want echo: server closed", call, direct, err)
			}
		}
	}
}

// ExampleServer_Submit_mismatch shows the message of a tree that does not
// match the example.
func ExampleServer_Submit_mismatch() {
	s, err := echo.NewServer(map[string]any{"obs": pytree.MustOf(make([]float32, 8))}, 4)
	if err != nil {
		panic(err)
	}
	defer s.Close()
	err = s.Submit(context.Background(), map[string]any{"obs": pytree.MustOf(make([]float64, 8))})
	fmt.Println(err)
	fmt.Println(errors.Is(err, echo.ErrSpecMismatch))
	// Output:
	// echo: spec mismatch: obs: dtype float64, expected float32
	// true
}
