package pytree

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"unsafe"
)

// sameArray reports whether a and b are the same array: same dtype and
// shape, over the same memory.
func sameArray(a, b Array) bool {
	return a.dtype == b.dtype && slices.Equal(a.shape, b.shape) && len(a.data) == len(b.data) &&
		unsafe.SliceData(a.data) == unsafe.SliceData(b.data)
}

func checkLeaves(t *testing.T, got, want []Array) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d leaves %v, want %d %v", len(got), got, len(want), want)
	}
	for i := range got {
		if !sameArray(got[i], want[i]) {
			t.Errorf("leaf %d is %v at %p, want %v at %p", i, got[i], unsafe.SliceData(got[i].data), want[i], unsafe.SliceData(want[i].data))
		}
	}
}

func TestFlattenOptreeOrder(t *testing.T) {
	a, b, c := Scalar(int32(0)), Scalar(int32(1)), Scalar(int32(2))
	d, e, f := MustOf([]float32{3, 3}), MustOf([]float64{4}), Scalar(uint8(5))
	tree := map[string]any{
		"z": map[string]any{"b": a, "a": b},
		"a": []any{c, Tuple{d, nil, e}},
		"m": nil,
		"b": f,
	}
	// optree.tree_flatten_with_path gives, for the same Python tree:
	// leaves [C, D, E, F, B, A], paths ("a",0) ("a",1,0) ("a",1,2) ("b",) ("z","a") ("z","b").
	leaves, paths, err := Flatten(tree)
	if err != nil {
		t.Fatal(err)
	}
	checkLeaves(t, leaves, []Array{c, d, e, f, b, a})
	if want := []string{"a/0", "a/1/0", "a/1/2", "b", "z/a", "z/b"}; !slices.Equal(paths, want) {
		t.Errorf("paths = %q, want %q", paths, want)
	}
	spec, err := SpecOf(tree)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := spec.String(), "{a: [int32[], (float32[2], nil, float64[1])], b: uint8[], m: nil, z: {a: int32[], b: int32[]}}"; got != want {
		t.Errorf("String() = %q\nwant        %q", got, want)
	}
	var specPaths []string
	for _, l := range spec.Leaves() {
		specPaths = append(specPaths, l.Path)
	}
	if !slices.Equal(specPaths, paths) {
		t.Errorf("spec leaf paths %q differ from Flatten's %q", specPaths, paths)
	}
	if got := spec.PayloadBytes(); got != 4+8+8+1+4+4 {
		t.Errorf("PayloadBytes() = %d", got)
	}
}

func TestFlattenStringKeyOrder(t *testing.T) {
	tree := map[string]any{}
	var want []string
	for _, k := range []string{"feature_2", "feature_10", "Z", "_x", "a", "feature_1", "b.c", "a/b"} {
		tree[k] = Scalar(float32(len(k)))
	}
	// Python's sorted() on these keys; byte order puts "Z" before "_x" before "a".
	want = []string{"Z", "_x", "a", "a/b", "b.c", "feature_1", "feature_10", "feature_2"}
	_, paths, err := Flatten(tree)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(paths, want) {
		t.Errorf("paths = %q, want %q", paths, want)
	}
}

func TestFlattenRootAndEmpty(t *testing.T) {
	x := Scalar(int64(7))
	leaves, paths, err := Flatten(x)
	if err != nil || len(leaves) != 1 || !sameArray(leaves[0], x) || !slices.Equal(paths, []string{""}) {
		t.Errorf("Flatten(leaf) = %v, %q, %v", leaves, paths, err)
	}
	leaves, paths, err = Flatten([]any{x, map[string]any{}, Tuple{}, nil, []any{x}})
	if err != nil || len(leaves) != 2 || !slices.Equal(paths, []string{"0", "4/0"}) {
		t.Errorf("Flatten(list) = %v, %q, %v", leaves, paths, err)
	}
	leaves, paths, err = Flatten(nil)
	if err != nil || len(leaves) != 0 || len(paths) != 0 {
		t.Errorf("Flatten(nil) = %v, %q, %v", leaves, paths, err)
	}
}

func TestFlattenAndSpecOfErrors(t *testing.T) {
	x := Scalar(float32(1))
	cases := []struct {
		name string
		tree any
		err  error
		msg  string
	}{
		{"[]float32 leaf", map[string]any{"obs": map[string]any{"x": x, "y": []float32{1}}}, ErrNotArray, "pytree: leaf is not an Array: obs/y is a Go []float32"},
		{"int leaf", []any{x, Tuple{x, 3}}, ErrNotArray, "pytree: leaf is not an Array: 1/1 is a Go int"},
		{"*Array leaf", map[string]any{"p": &x}, ErrNotArray, "pytree: leaf is not an Array: p is a Go *pytree.Array"},
		{"map[string]int", map[string]any{"m": map[string]int{"a": 1}}, ErrNotArray, "pytree: leaf is not an Array: m is a Go map[string]int"},
		{"root int", 3, ErrNotArray, "pytree: leaf is not an Array: <root> is a Go int"},
	}
	for _, c := range cases {
		_, _, err := Flatten(c.tree)
		if !errors.Is(err, c.err) || err.Error() != c.msg {
			t.Errorf("Flatten(%s): err = %v, want %v: %q", c.name, err, c.err, c.msg)
		}
		if _, err := SpecOf(c.tree); !errors.Is(err, c.err) || err.Error() != c.msg {
			t.Errorf("SpecOf(%s): err = %v, want %v: %q", c.name, err, c.err, c.msg)
		}
	}
	for _, tree := range []any{nil, map[string]any{"a": nil, "b": nil}, []any{}, Tuple{map[string]any{}}} {
		if _, err := SpecOf(tree); !errors.Is(err, ErrNoLeaves) {
			t.Errorf("SpecOf(%#v): err = %v, want ErrNoLeaves", tree, err)
		}
	}
	_, err := SpecOf(map[string]any{"a": x, "b": []any{x, Array{}}})
	if !errors.Is(err, ErrDType) || !strings.Contains(err.Error(), "b/1") {
		t.Errorf("SpecOf with a zero Array: err = %v, want ErrDType naming b/1", err)
	}
}

func TestSpecString(t *testing.T) {
	w1 := map[string]any{
		"obs":    MustOf(make([]float32, 8)),
		"reward": Scalar(float32(0)),
		"done":   Scalar(uint8(0)),
	}
	spec, err := SpecOf(w1)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := spec.String(), "{done: uint8[], obs: float32[8], reward: float32[]}"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if spec.NumLeaves() != 3 || spec.PayloadBytes() != 37 {
		t.Errorf("NumLeaves() = %d, PayloadBytes() = %d; want 3, 37", spec.NumLeaves(), spec.PayloadBytes())
	}
	one, _ := SpecOf(Tuple{Scalar(int8(0))})
	if got := one.String(); got != "(int8[],)" {
		t.Errorf("one-tuple String() = %q", got)
	}
}

func TestBatched(t *testing.T) {
	spec, err := SpecOf(map[string]any{"obs": MustOf(make([]uint8, 84*84*4), 84, 84, 4), "r": Scalar(float32(0))})
	if err != nil {
		t.Fatal(err)
	}
	b := spec.Batched(32)
	if got := b.String(); got != "{obs: uint8[32 84 84 4], r: float32[32]}" {
		t.Errorf("Batched(32) = %q", got)
	}
	if b.PayloadBytes() != 32*spec.PayloadBytes() || b.NumLeaves() != 2 {
		t.Errorf("Batched(32): PayloadBytes %d, NumLeaves %d", b.PayloadBytes(), b.NumLeaves())
	}
	if got := spec.String(); got != "{obs: uint8[84 84 4], r: float32[]}" {
		t.Errorf("Batched changed the original spec: %q", got)
	}
	for i, l := range b.Leaves() {
		if l.Path != spec.Leaves()[i].Path || l.NumBytes() != 32*spec.Leaves()[i].NumBytes() {
			t.Errorf("batched leaf %d = %+v", i, l)
		}
	}
	if b.Equal(spec) || !b.Equal(spec.Batched(32)) || b.Equal(spec.Batched(16)) {
		t.Error("Batched specs compare wrongly")
	}
}

func TestEqualCompare(t *testing.T) {
	f := func(shape ...int) Array {
		n := 1
		for _, d := range shape {
			n *= d
		}
		return MustOf(make([]float32, n), shape...)
	}
	base := func() map[string]any {
		return map[string]any{"obs": map[string]any{"radars": f(8, 5), "speed": f(1)}, "items": []any{f(2), nil}}
	}
	specOf := func(tree any) *Spec {
		t.Helper()
		s, err := SpecOf(tree)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	want := specOf(base())
	if !want.Equal(specOf(base())) || want.Compare(specOf(base())) != nil || !want.Equal(want) {
		t.Fatal("equal specs compare unequal")
	}
	cases := []struct {
		edit func(map[string]any)
		msg  string
	}{
		{func(m map[string]any) { m["obs"].(map[string]any)["radars"] = f(8, 6) }, "obs/radars: shape [8 6], expected [8 5]"},
		{func(m map[string]any) { m["obs"].(map[string]any)["speed"] = MustOf([]float64{1}) }, "obs/speed: dtype float64, expected float32"},
		{func(m map[string]any) { delete(m["obs"].(map[string]any), "radars") }, "obs/radars: missing key, expected float32[8 5]"},
		{func(m map[string]any) { m["obs"].(map[string]any)["extra"] = f(1) }, "obs/extra: unexpected key"},
		{func(m map[string]any) { m["items"] = []any{f(2), nil, nil} }, "items: length 3, expected 2"},
		{func(m map[string]any) { m["items"] = Tuple{f(2), nil} }, "items: tuple of 2, expected list of 2"},
		{func(m map[string]any) { m["items"] = []any{f(2), f(1)} }, "items/1: float32[1], expected nil"},
		// The first difference in flatten order wins: items comes before obs.
		{func(m map[string]any) { m["items"] = []any{f(3), nil}; m["obs"] = nil }, "items/0: shape [3], expected [2]"},
	}
	for _, c := range cases {
		tree := base()
		c.edit(tree)
		got := specOf(tree)
		err := want.Compare(got)
		if err == nil || err.Error() != c.msg {
			t.Errorf("Compare: err = %v\nwant              %s", err, c.msg)
		}
		if !errors.Is(err, ErrMismatch) {
			t.Errorf("Compare error %v does not match ErrMismatch", err)
		}
		var me *MismatchError
		if !errors.As(err, &me) {
			t.Errorf("Compare error %T is not a *MismatchError", err)
		}
		if want.Equal(got) || got.Equal(want) {
			t.Errorf("Equal true for %s", c.msg)
		}
	}
	if want.Equal(nil) || want.Compare(nil) == nil {
		t.Error("a spec equals nil")
	}
}
