package pytree

import (
	"errors"
	"testing"
)

// batchLeaves returns leaves for spec.Batched(n), each over fresh memory.
func batchLeaves(t *testing.T, spec *Spec, n int) []Array {
	t.Helper()
	var leaves []Array
	for _, l := range spec.Batched(n).Leaves() {
		a, err := Zeros(l.DType, l.Shape...)
		if err != nil {
			t.Fatal(err)
		}
		leaves = append(leaves, a)
	}
	return leaves
}

func TestUnflattenRoundTrip(t *testing.T) {
	tree, leaves := sampleTree()
	spec, err := SpecOf(tree)
	if err != nil {
		t.Fatal(err)
	}
	rebuilt, err := spec.Unflatten(leaves)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := Flatten(rebuilt)
	if err != nil {
		t.Fatal(err)
	}
	checkLeaves(t, got, leaves)
	if err := spec.Check(rebuilt); err != nil {
		t.Errorf("Check(Unflatten) = %v", err)
	}
	again, err := SpecOf(rebuilt)
	if err != nil || !again.Equal(spec) {
		t.Errorf("SpecOf(Unflatten) = %v, %v; want %v", again, err, spec)
	}
	// The new tree shares no containers with the original.
	rebuilt.(map[string]any)["obs"].(map[string]any)["speed"] = nil
	rebuilt.(map[string]any)["items"].([]any)[0] = nil
	rebuilt.(map[string]any)["pair"].(Tuple)[0] = nil
	if err := spec.Check(tree); err != nil {
		t.Errorf("editing the unflattened tree changed the original: %v", err)
	}

	batch := spec.Batched(4)
	bl := batchLeaves(t, spec, 4)
	bt, err := spec.Unflatten(bl)
	if err != nil {
		t.Fatal(err)
	}
	if err := batch.Check(bt); err != nil {
		t.Errorf("batched Check: %v", err)
	}
	for _, n := range []int{0, 5, 7} {
		if _, err := spec.Unflatten(make([]Array, n)); !errors.Is(err, ErrMismatch) {
			t.Errorf("Unflatten of %d leaves: err = %v, want ErrMismatch", n, err)
		}
	}
}

func TestRefillRestoresTree(t *testing.T) {
	sample, _ := sampleTree()
	spec, err := SpecOf(sample)
	if err != nil {
		t.Fatal(err)
	}
	batch := spec.Batched(8)
	tree, err := spec.Unflatten(batchLeaves(t, spec, 8))
	if err != nil {
		t.Fatal(err)
	}
	m := tree.(map[string]any)
	obs := m["obs"].(map[string]any)
	items := m["items"].([]any)
	heldArray := obs["radars"].(Array) // a copy of the leaf header

	// The caller damages the tree every way it can.
	delete(obs, "radars")
	obs["extra"] = Scalar(int8(1))
	m["added"] = []any{nil}
	delete(m, "none")
	items[0] = Scalar(float64(9))
	items[1] = Scalar(float64(9))
	m["pair"] = []any{nil, nil}

	next := batchLeaves(t, spec, 8)
	if err := spec.Refill(tree, Box(next)); err != nil {
		t.Fatal(err)
	}
	if err := batch.Check(tree); err != nil {
		t.Fatalf("Refill did not restore the tree: %v", err)
	}
	got, _, err := Flatten(tree)
	if err != nil {
		t.Fatal(err)
	}
	checkLeaves(t, got, next)
	if m["obs"].(map[string]any)["speed"] == nil || &m["items"].([]any)[0] != &items[0] {
		t.Fatal("containers replaced instead of refilled")
	}
	if heldArray.String() != "float32[8 8 5]" || sameArray(heldArray, next[2]) {
		t.Errorf("an Array copied out of the tree changed: %v", heldArray)
	}

	// Swapped and duplicated leaves each get their own leaf back, in a
	// second key set of the same size as the spec's.
	pair := m["pair"].(Tuple)
	pair[0], pair[1] = pair[1], pair[0]
	obs = m["obs"].(map[string]any)
	delete(obs, "speed")
	obs["zzz"] = obs["radars"]
	next = batchLeaves(t, spec, 16)
	if err := spec.Refill(tree, Box(next)); err != nil {
		t.Fatal(err)
	}
	if err := spec.Batched(16).Check(tree); err != nil {
		t.Fatalf("after a refill with batch 16: %v", err)
	}
	if got, _, err = Flatten(tree); err != nil {
		t.Fatal(err)
	}
	checkLeaves(t, got, next)
}

func TestRefillRoot(t *testing.T) {
	next := MustOf([]int16{5, 6})
	leafSpec, err := SpecOf(MustOf([]int16{1, 2}))
	if err != nil {
		t.Fatal(err)
	}
	if err := leafSpec.Refill(any(next), []any{next}); !errors.Is(err, ErrMismatch) {
		t.Errorf("Refill of a root leaf: err = %v, want ErrMismatch", err)
	}

	sample, leaves := sampleTree()
	spec, _ := SpecOf(sample)
	for _, bad := range []any{nil, []any{}, Tuple{}, next, map[string]int{}} {
		if err := spec.Refill(bad, Box(leaves)); !errors.Is(err, ErrMismatch) {
			t.Errorf("Refill(%#v): err = %v, want ErrMismatch", bad, err)
		}
	}
	if err := spec.Refill(sample, Box(leaves[1:])); !errors.Is(err, ErrMismatch) {
		t.Errorf("Refill with too few leaves: err = %v, want ErrMismatch", err)
	}
	listSpec, _ := SpecOf([]any{next, next})
	lt, _ := listSpec.Unflatten([]Array{next, next})
	if err := listSpec.Refill(append(lt.([]any), nil), Box([]Array{next, next})); !errors.Is(err, ErrMismatch) {
		t.Errorf("Refill of a root list of the wrong length: err = %v", err)
	}
}
