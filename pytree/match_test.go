package pytree

import (
	"errors"
	"testing"
)

// sampleTree returns a fresh tree with every node kind, and its leaves in
// flatten order.
func sampleTree() (any, []Array) {
	radars := MustOf(make([]float32, 40), 8, 5)
	speed := Scalar(float32(1))
	item0 := MustOf([]int32{1, 2})
	item1 := Scalar(uint8(3))
	pair0, pair1 := Scalar(BF16From(1)), MustOf([]F16{F16From(2), F16From(3)})
	tree := map[string]any{
		"obs":   map[string]any{"speed": speed, "radars": radars},
		"items": []any{item0, nil, item1},
		"pair":  Tuple{pair0, pair1},
		"none":  nil,
	}
	return tree, []Array{item0, item1, radars, speed, pair0, pair1}
}

func TestFlattenIntoMatches(t *testing.T) {
	tree, want := sampleTree()
	spec, err := SpecOf(tree)
	if err != nil {
		t.Fatal(err)
	}
	dst := make([]Array, 2, spec.NumLeaves())
	got, err := spec.FlattenInto(tree, dst)
	if err != nil {
		t.Fatal(err)
	}
	checkLeaves(t, got, want)
	if &got[0] != &dst[:1][0] {
		t.Error("FlattenInto did not reuse dst")
	}
	// Without capacity it still works.
	got, err = spec.FlattenInto(tree, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkLeaves(t, got, want)
	if err := spec.Check(tree); err != nil {
		t.Errorf("Check: %v", err)
	}
	flat, _, _ := Flatten(tree)
	checkLeaves(t, flat, want)
}

func TestFlattenIntoMismatch(t *testing.T) {
	type tree = map[string]any
	f32 := func(shape ...int) Array {
		if shape == nil {
			return Scalar(float32(0))
		}
		n := 1
		for _, d := range shape {
			n *= d
		}
		return MustOf(make([]float32, n), shape...)
	}
	cases := []struct {
		name string
		edit func(tree)
		msg  string
	}{
		{"shape", func(m tree) { m["obs"].(tree)["radars"] = f32(8, 6) }, "obs/radars: shape [8 6], expected [8 5]"},
		{"scalar shape", func(m tree) { m["obs"].(tree)["speed"] = f32(1) }, "obs/speed: shape [1], expected []"},
		{"dtype", func(m tree) { m["obs"].(tree)["radars"] = MustOf(make([]float64, 40), 8, 5) }, "obs/radars: dtype float64, expected float32"},
		{"zero Array", func(m tree) { m["obs"].(tree)["speed"] = Array{} }, "obs/speed: dtype invalid, expected float32"},
		{"missing key", func(m tree) { delete(m["obs"].(tree), "radars") }, "obs/radars: missing key, expected float32[8 5]"},
		{"missing nil key", func(m tree) { delete(m, "none") }, "none: missing key, expected nil"},
		{"extra key", func(m tree) { m["obs"].(tree)["extra"] = f32() }, "obs/extra: unexpected key"},
		{"renamed key", func(m tree) { o := m["obs"].(tree); o["speeds"] = o["speed"]; delete(o, "speed") }, "obs/speed: missing key, expected float32[]"},
		{"renamed key, earlier", func(m tree) { o := m["obs"].(tree); o["a"] = o["speed"]; delete(o, "speed") }, "obs/a: unexpected key"},
		{"key set before inner leaf", func(m tree) { o := m["obs"].(tree); o["radars"] = f32(1); o["zz"] = o["speed"]; delete(o, "speed") }, "obs/speed: missing key, expected float32[]"},
		{"list length", func(m tree) { m["items"] = append(m["items"].([]any), nil) }, "items: length 4, expected 3"},
		{"list vs tuple", func(m tree) { m["items"] = Tuple(m["items"].([]any)) }, "items: tuple of 3, expected list of 3"},
		{"tuple vs list", func(m tree) { m["pair"] = []any(m["pair"].(Tuple)) }, "pair: list of 2, expected tuple of 2"},
		{"nil vs leaf", func(m tree) { m["items"].([]any)[0] = nil }, "items/0: nil, expected int32[2]"},
		{"leaf vs nil", func(m tree) { m["items"].([]any)[1] = f32() }, "items/1: float32[], expected nil"},
		{"dict vs leaf", func(m tree) { m["obs"] = f32() }, "obs: float32[], expected dict with keys [radars speed]"},
		{"leaf vs dict", func(m tree) { m["obs"].(tree)["speed"] = tree{"b": nil, "a": nil} }, "obs/speed: dict with keys [a b], expected float32[]"},
		{"unsupported leaf", func(m tree) { m["obs"].(tree)["speed"] = []float32{1} }, "obs/speed: Go []float32 (not an Array), expected float32[]"},
		{"Go int leaf", func(m tree) { m["obs"].(tree)["speed"] = 3 }, "obs/speed: Go int (not an Array), expected float32[]"},
		{"list vs dict", func(m tree) { m["obs"] = []any{f32(), f32()} }, "obs: list of 2, expected dict with keys [radars speed]"},
		{"dict vs list", func(m tree) { m["items"] = tree{"0": nil} }, "items: dict with keys [0], expected list of 3"},
		{"tuple length", func(m tree) { m["pair"] = Tuple{nil} }, "pair: length 1, expected 2"},
		{"first in flatten order", func(m tree) { m["pair"] = nil; m["items"].([]any)[2] = f32() }, "items/2: dtype float32, expected uint8"},
	}
	orig, _ := sampleTree()
	spec, err := SpecOf(orig)
	if err != nil {
		t.Fatal(err)
	}
	dst := make([]Array, 0, spec.NumLeaves())
	for _, c := range cases {
		bad, _ := sampleTree()
		c.edit(bad.(tree))
		_, err := spec.FlattenInto(bad, dst)
		if err == nil || err.Error() != c.msg {
			t.Errorf("%s: FlattenInto err = %v\nwant %s", c.name, err, c.msg)
			continue
		}
		if !errors.Is(err, ErrMismatch) || errors.Is(err, ErrNotArray) || errors.Is(err, ErrDType) {
			t.Errorf("%s: %v matches the wrong sentinels", c.name, err)
		}
		var me *MismatchError
		if !errors.As(err, &me) || me.Path == "" || me.What == "" {
			t.Errorf("%s: error %#v", c.name, err)
		}
		if cerr := spec.Check(bad); cerr == nil || cerr.Error() != c.msg {
			t.Errorf("%s: Check err = %v, want %s", c.name, cerr, c.msg)
		}
	}
	// The root itself.
	for _, c := range []struct {
		tree any
		msg  string
	}{
		{nil, "<root>: nil, expected dict with keys [items none obs pair]"},
		{[]any{}, "<root>: list of 0, expected dict with keys [items none obs pair]"},
		{f32(), "<root>: float32[], expected dict with keys [items none obs pair]"},
	} {
		if err := spec.Check(c.tree); err == nil || err.Error() != c.msg {
			t.Errorf("Check(%v) = %v, want %s", c.tree, err, c.msg)
		}
	}
	leafSpec, _ := SpecOf(f32(2))
	if err := leafSpec.Check(f32(3)); err == nil || err.Error() != "<root>: shape [3], expected [2]" {
		t.Errorf("root leaf mismatch: %v", err)
	}
}

func TestMismatchErrorFormat(t *testing.T) {
	cases := []struct {
		e    MismatchError
		want string
	}{
		{MismatchError{Path: "a/b", What: "shape", Got: "[1]", Want: "[2]"}, "a/b: shape [1], expected [2]"},
		{MismatchError{What: "leaf count", Got: "3", Want: "4"}, "<root>: leaf count 3, expected 4"},
		{MismatchError{Path: "x", What: "unexpected key"}, "x: unexpected key"},
		{MismatchError{Path: "x", What: "missing key", Want: "nil"}, "x: missing key, expected nil"},
		{MismatchError{Path: "x", What: "dtype", Got: "float64", Want: "float32"}, "x: dtype float64, expected float32"},
		{MismatchError{Path: "x", What: "length", Got: "4", Want: "3"}, "x: length 4, expected 3"},
		{MismatchError{Path: "x", What: "structure", Got: "nil", Want: "float32[]"}, "x: nil, expected float32[]"},
		{MismatchError{What: "spec", Got: "nil spec", Want: "float32[2]"}, "<root>: nil spec, expected float32[2]"},
	}
	for _, c := range cases {
		if got := c.e.Error(); got != c.want {
			t.Errorf("Error() = %q, want %q", got, c.want)
		}
	}
	var err error = &MismatchError{}
	if !errors.Is(err, ErrMismatch) || errors.Is(err, ErrShape) {
		t.Error("MismatchError matches the wrong sentinels")
	}
}
