package pytree

import (
	"slices"
	"strconv"
)

// Unflatten returns a new tree of the spec's structure (fresh maps, slices
// and Tuples; nil stays nil) holding leaves, in flatten order. Leaves of any
// dtype and shape are accepted: it builds batch trees, whose leaves have a
// leading batch dimension. It fails with a *MismatchError if len(leaves) is
// not NumLeaves.
func (s *Spec) Unflatten(leaves []Array) (any, error) {
	if e := s.checkLeafCount(len(leaves)); e != nil {
		return nil, e
	}
	boxed := Box(leaves)
	return s.newTree(&s.root, boxed), nil
}

// Box returns each leaf in an interface value. Putting an Array into an
// interface copies it to the heap once; assigning the interface value
// afterwards copies two words and allocates nothing, which is what lets
// Refill run without allocating.
func Box(leaves []Array) []any {
	boxed := make([]any, len(leaves))
	for i, a := range leaves {
		boxed[i] = a
	}
	return boxed
}

// Refill stores boxed leaves (see Box), in flatten order, into a tree of this
// spec's structure, restoring the structure in place: each dict gets back
// exactly the spec's keys and each list and tuple its elements, so a caller
// who deleted a key, added one or replaced a leaf or a subtree gets the tree
// back intact. Each element of leaves must hold an Array.
//
// Refill does not allocate when the tree's containers are intact; restoring
// a deleted or replaced container allocates its replacement. It fails with a
// *MismatchError if len(leaves) is not NumLeaves or if the root is not a
// container of the spec's kind and length, since the root cannot be
// replaced in place (a spec whose root is a leaf has nothing to refill).
func (s *Spec) Refill(tree any, leaves []any) error {
	if e := s.checkLeafCount(len(leaves)); e != nil {
		return e
	}
	if s.root.kind == leafNode || !s.refill(&s.root, tree, leaves) {
		return &MismatchError{What: "structure", Got: describeValue(tree), Want: describeNode(s, &s.root)}
	}
	return nil
}

func (s *Spec) checkLeafCount(n int) *MismatchError {
	if n != len(s.leaves) {
		return &MismatchError{What: "leaf count", Got: strconv.Itoa(n), Want: strconv.Itoa(len(s.leaves))}
	}
	return nil
}

// newTree returns a fresh subtree of node n's structure holding leaves.
func (s *Spec) newTree(n *node, leaves []any) any {
	switch n.kind {
	case leafNode:
		return leaves[n.leaf]
	case noneNode:
		return nil
	case dictNode:
		m := make(map[string]any, len(n.keys))
		for i, k := range n.keys {
			m[k] = s.newTree(&n.children[i], leaves)
		}
		return m
	}
	seq := make([]any, len(n.children))
	for i := range seq {
		seq[i] = s.newTree(&n.children[i], leaves)
	}
	if n.kind == tupleNode {
		return Tuple(seq)
	}
	return seq
}

// refill restores the container v in place to node n's structure, holding
// leaves. It reports false, having changed nothing, when v is not a
// container of n's kind and length; the caller then replaces v.
func (s *Spec) refill(n *node, v any, leaves []any) bool {
	var seq []any
	switch n.kind {
	case dictNode:
		m, ok := v.(map[string]any)
		if !ok {
			return false
		}
		for i, k := range n.keys {
			m[k] = s.child(&n.children[i], m[k], leaves)
		}
		if len(m) != len(n.keys) { // the caller added keys
			for k := range m {
				if _, found := slices.BinarySearch(n.keys, k); !found {
					delete(m, k)
				}
			}
		}
		return true
	case listNode:
		l, ok := v.([]any)
		if !ok {
			return false
		}
		seq = l
	case tupleNode:
		t, ok := v.(Tuple)
		if !ok {
			return false
		}
		seq = t
	default:
		return false
	}
	if len(seq) != len(n.children) {
		return false
	}
	for i := range seq {
		seq[i] = s.child(&n.children[i], seq[i], leaves)
	}
	return true
}

// child returns the value to store for node n, whose current value is old:
// the leaf itself, nil, old refilled in place, or a new subtree.
func (s *Spec) child(n *node, old any, leaves []any) any {
	switch n.kind {
	case leafNode:
		return leaves[n.leaf]
	case noneNode:
		return nil
	}
	if s.refill(n, old, leaves) {
		return old
	}
	return s.newTree(n, leaves)
}
