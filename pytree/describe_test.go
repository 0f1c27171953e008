package pytree

import (
	"encoding/json"
	"errors"
	"testing"
)

// TestDescribeRoundTrip: a description of a spec, with its leaves
// written in, builds an example whose spec is the same.
func TestDescribeRoundTrip(t *testing.T) {
	tree := map[string]any{
		"obs":  map[string]any{"x": MustOf(make([]float32, 6), 2, 3), "y": Scalar(int8(0))},
		"seq":  []any{Scalar(uint16(0)), nil, Tuple{Scalar(true), MustOf(make([]float64, 2))}},
		"done": Scalar(false),
	}
	s, err := SpecOf(tree)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := json.Marshal(s.Describe())
	if err != nil {
		t.Fatal(err)
	}
	want := `{"dict":[["done",{"leaf":0}],["obs",{"dict":[["x",{"leaf":1}],["y",{"leaf":2}]]}],["seq",{"list":[{"leaf":3},{"none":true},{"tuple":[{"leaf":4},{"leaf":5}]}]}]]}`
	if string(desc) != want {
		t.Fatalf("description %s\nwant        %s", desc, want)
	}
	spec := `{"dict":[["done",{"leaf":{"dtype":"bool","shape":[]}}],["obs",{"dict":[["x",{"leaf":{"dtype":"float32","shape":[2,3]}}],["y",{"leaf":{"dtype":"int8","shape":[]}}]]}],` +
		`["seq",{"list":[{"leaf":{"dtype":"uint16"}},{"none":true},{"tuple":[{"leaf":{"dtype":"bool","shape":[]}},{"leaf":{"dtype":"float64","shape":[2]}}]}]}]]}`
	ex, err := ExampleOf([]byte(spec))
	if err != nil {
		t.Fatal(err)
	}
	s2, err := SpecOf(ex)
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Compare(s); err != nil {
		t.Fatalf("the example's spec differs: %v", err)
	}
	for _, bad := range []string{`[]`, `{"leaf":{"dtype":"float128"}}`, `{"dict":[["a",{"leaf":{"dtype":"int8"}}],["a",{"none":true}]]}`, `{"set":[]}`, `{"leaf":1,"none":true}`} {
		if _, err := ExampleOf([]byte(bad)); !errors.Is(err, ErrDescription) {
			t.Errorf("ExampleOf(%s) = %v, want ErrDescription", bad, err)
		}
	}
}
