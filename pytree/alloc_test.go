//go:build !race

package pytree

import "testing"

func TestFlattenIntoDoesNotAllocate(t *testing.T) {
	tree, _ := sampleTree()
	spec, err := SpecOf(tree)
	if err != nil {
		t.Fatal(err)
	}
	dst := make([]Array, 0, spec.NumLeaves())
	allocs := testing.AllocsPerRun(100, func() {
		var err error
		if dst, err = spec.FlattenInto(tree, dst); err != nil || len(dst) != spec.NumLeaves() {
			t.Fatalf("FlattenInto: %d leaves, %v", len(dst), err)
		}
	})
	if allocs != 0 {
		t.Errorf("FlattenInto allocates %v times per call", allocs)
	}
	allocs = testing.AllocsPerRun(100, func() {
		if err := spec.Check(tree); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Check allocates %v times per call", allocs)
	}
}

func TestRefillDoesNotAllocate(t *testing.T) {
	sample, _ := sampleTree()
	spec, err := SpecOf(sample)
	if err != nil {
		t.Fatal(err)
	}
	// Two sets of batch leaves of the same shapes, over different memory.
	sets := [2][]Array{batchLeaves(t, spec, 32), batchLeaves(t, spec, 32)}
	boxed := [2][]any{Box(sets[0]), Box(sets[1])}
	tree, err := spec.Unflatten(sets[0])
	if err != nil {
		t.Fatal(err)
	}
	round := 0
	allocs := testing.AllocsPerRun(100, func() {
		round++
		if err := spec.Refill(tree, boxed[round%2]); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Refill allocates %v times per call", allocs)
	}
	got, _, _ := Flatten(tree)
	checkLeaves(t, got, sets[round%2])
}
