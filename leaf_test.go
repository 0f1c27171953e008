//go:build linux

package echo_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/pytree"
)

// takeNumbered submits n samples of numbered(3, seq) to a server of
// batches of n and returns the batch.
func takeNumbered(t *testing.T, n int) echo.Sample {
	t.Helper()
	s := newServer(t, n)
	for seq := range n {
		if err := s.Submit(t.Context(), numbered(3, seq)); err != nil {
			t.Fatal(err)
		}
	}
	smp, err := s.Sample(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return smp
}

func TestSampleLeaf(t *testing.T) {
	smp := takeNumbered(t, 2)
	tree := smp.Batch.(map[string]any)
	for path, want := range map[string]pytree.Array{
		"z_id":     tree["z_id"].(pytree.Array),
		"nested/b": tree["nested"].(map[string]any)["b"].(pytree.Array),
		"pair/0":   tree["pair"].(pytree.Tuple)[0].(pytree.Array),
	} {
		got, err := smp.Leaf(path)
		if err != nil {
			t.Fatalf("Leaf(%q): %v", path, err)
		}
		if got.String() != want.String() || &got.Bytes()[0] != &want.Bytes()[0] {
			t.Errorf("Leaf(%q) = %v at %p, want %v at %p", path, got, &got.Bytes()[0], want, &want.Bytes()[0])
		}
	}
}

func TestView(t *testing.T) {
	smp := takeNumbered(t, 2)
	ids, err := echo.View[int64](smp, "z_id")
	if err != nil {
		t.Fatal(err)
	}
	if want := []int64{3, 0, 3, 1}; !slices.Equal(ids, want) {
		t.Errorf("z_id = %v, want %v", ids, want)
	}
	b, err := echo.View[float32](smp, "nested/b")
	if err != nil {
		t.Fatal(err)
	}
	if want := []float32{0, 3, -1, 1, 3, -1}; !slices.Equal(b, want) {
		t.Errorf("nested/b = %v, want %v", b, want)
	}
	pair, err := echo.View[uint16](smp, "pair/0")
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint16{0, 1}; !slices.Equal(pair, want) {
		t.Errorf("pair/0 = %v, want %v", pair, want)
	}
	// The view is the batch's memory, not a copy.
	leaf, _ := smp.Leaf("nested/b")
	if f, _ := leaf.Float32(); &f[0] != &b[0] {
		t.Error("View copied the leaf")
	}
	// A copy's view reads the same values from its own memory.
	cp := smp.Copy()
	cb, err := echo.View[float32](cp, "nested/b")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cb, b) || &cb[0] == &b[0] {
		t.Errorf("view of a copy: %v at %p, want %v elsewhere than %p", cb, &cb[0], b, &b[0])
	}
}

func TestViewErrors(t *testing.T) {
	smp := takeNumbered(t, 2)
	for _, tc := range []struct {
		name string
		err  func() error
		is   error
		text string
	}{{
		name: "unknown path",
		err:  func() error { _, err := echo.View[float32](smp, "nested/c"); return err },
		is:   echo.ErrUnknownLeaf,
		text: `echo: unknown leaf: "nested/c" (known: "nested/a", "nested/b", "pair/0", "payload", "z_id")`,
	}, {
		name: "inner node",
		err:  func() error { _, err := smp.Leaf("nested"); return err },
		is:   echo.ErrUnknownLeaf,
		text: `echo: unknown leaf: "nested" (known: "nested/a", "nested/b", "pair/0", "payload", "z_id")`,
	}, {
		name: "dtype",
		err:  func() error { _, err := echo.View[float64](smp, "nested/b"); return err },
		is:   pytree.ErrDType,
		text: `echo: leaf "nested/b": pytree: bad dtype: float32[2 3] viewed as float64`,
	}, {
		name: "same size, other dtype",
		err:  func() error { _, err := echo.View[int32](smp, "nested/b"); return err },
		is:   pytree.ErrDType,
		text: `echo: leaf "nested/b": pytree: bad dtype: float32[2 3] viewed as int32`,
	}, {
		name: "zero Sample",
		err:  func() error { _, err := echo.View[int64](echo.Sample{}, "z_id"); return err },
		is:   echo.ErrUnknownLeaf,
		text: `echo: unknown leaf: "z_id": the Sample holds no batch`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.err()
			if !errors.Is(err, tc.is) {
				t.Fatalf("error %v, want one wrapping %v", err, tc.is)
			}
			if err.Error() != tc.text {
				t.Errorf("error text\n%s\nwant\n%s", err, tc.text)
			}
		})
	}
}

// TestViewRootLeaf: an example that is a single array has one leaf, at
// path "".
func TestViewRootLeaf(t *testing.T) {
	s := newServerFor(t, pytree.MustOf([]float32{0, 0}), 2)
	for i := range 2 {
		if err := s.Submit(t.Context(), pytree.MustOf([]float32{float32(i), 1})); err != nil {
			t.Fatal(err)
		}
	}
	smp, err := s.Sample(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	v, err := echo.View[float32](smp, "")
	if err != nil {
		t.Fatal(err)
	}
	if want := []float32{0, 1, 1, 1}; !slices.Equal(v, want) {
		t.Errorf("root leaf = %v, want %v", v, want)
	}
	_, err = echo.View[float32](smp, "obs")
	if want := `echo: unknown leaf: "obs" (known: "")`; err == nil || err.Error() != want {
		t.Errorf("error %v, want %s", err, want)
	}
}
