package pytree

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// LeafSpec is the dtype and shape of one leaf, with its path.
type LeafSpec struct {
	Path  string
	DType DType
	Shape []int
}

// NumBytes returns the size in bytes of an array of this dtype and shape.
func (l LeafSpec) NumBytes() int {
	n := l.DType.Size()
	for _, d := range l.Shape {
		n *= d
	}
	return n
}

// String returns the leaf's dtype and shape, such as "float32[8 6]".
func (l LeafSpec) String() string { return fmt.Sprintf("%v%v", l.DType, l.Shape) }

// Spec is the structure of a tree (node kinds, sorted dict keys, list and
// tuple lengths, nil positions) plus each leaf's dtype and shape. It is
// immutable after creation and safe for concurrent use.
type Spec struct {
	root    node
	leaves  []LeafSpec // in flatten order; leaves[i] belongs to the leaf node with leaf == i
	payload int        // sum of the leaves' NumBytes
}

// SpecOf returns the spec of tree. It fails with an error wrapping
// ErrNotArray (naming the path) on a node of an unsupported type, wrapping
// ErrDType on a zero Array leaf, and wrapping ErrNoLeaves if the tree has no
// leaves.
func SpecOf(tree any) (*Spec, error) {
	var b specBuilder
	root, err := b.build(tree, "")
	if err != nil {
		return nil, err
	}
	if len(b.leaves) == 0 {
		return nil, fmt.Errorf("%w: %v", ErrNoLeaves, describeValue(tree))
	}
	s := &Spec{root: root, leaves: b.leaves}
	for _, l := range s.leaves {
		if !l.DType.Valid() {
			return nil, fmt.Errorf("%w: %s is a zero Array", ErrDType, displayPath(l.Path))
		}
		s.payload += l.NumBytes()
	}
	return s, nil
}

// NumLeaves returns the number of leaves.
func (s *Spec) NumLeaves() int { return len(s.leaves) }

// Leaves returns the leaves in flatten order. Callers must not modify the
// slice or the leaves' shapes.
func (s *Spec) Leaves() []LeafSpec { return s.leaves }

// PayloadBytes returns the sum of the leaves' sizes in bytes: the size of a
// sample with this spec on the wire.
func (s *Spec) PayloadBytes() int { return s.payload }

// Batched returns the spec of a batch of n trees of spec s: the same
// structure, each leaf's shape prefixed with n. It panics if n is negative.
func (s *Spec) Batched(n int) *Spec {
	if n < 0 {
		panic("pytree: Batched: negative batch size " + strconv.Itoa(n))
	}
	b := &Spec{root: s.root, leaves: make([]LeafSpec, len(s.leaves)), payload: n * s.payload}
	for i, l := range s.leaves {
		b.leaves[i] = LeafSpec{Path: l.Path, DType: l.DType, Shape: append([]int{n}, l.Shape...)}
	}
	return b
}

// String describes the spec on one line, dict entries in sorted order:
// "{done: uint8[], obs: float32[8], reward: float32[]}". Lists print as
// [a, b], tuples as (a, b) and nil as nil.
func (s *Spec) String() string {
	var sb strings.Builder
	s.format(&sb, &s.root)
	return sb.String()
}

func (s *Spec) format(sb *strings.Builder, n *node) {
	opening, closing := "[", "]"
	switch n.kind {
	case leafNode:
		sb.WriteString(s.leaves[n.leaf].String())
		return
	case noneNode:
		sb.WriteString("nil")
		return
	case dictNode:
		opening, closing = "{", "}"
	case tupleNode:
		opening, closing = "(", ")"
	}
	sb.WriteString(opening)
	for i := range n.children {
		if i > 0 {
			sb.WriteString(", ")
		}
		if n.kind == dictNode {
			sb.WriteString(n.keys[i] + ": ")
		}
		s.format(sb, &n.children[i])
	}
	if n.kind == tupleNode && len(n.children) == 1 {
		sb.WriteString(",")
	}
	sb.WriteString(closing)
}

// Equal reports whether s and o have the same structure, dtypes and shapes.
func (s *Spec) Equal(o *Spec) bool { return s.Compare(o) == nil }

// Compare returns nil if s and o are equal, and otherwise a *MismatchError
// describing the first difference in flatten order, with o as what was got
// and s as what was expected. At each dict, a difference in the key sets is
// reported before any difference inside the dict.
func (s *Spec) Compare(o *Spec) error {
	if s == o {
		return nil
	}
	if s == nil || o == nil {
		return &MismatchError{What: "spec", Got: specString(o), Want: specString(s)}
	}
	if e := compareNodes(s, o, &s.root, &o.root); e != nil {
		return e
	}
	return nil
}

func specString(s *Spec) string {
	if s == nil {
		return "nil spec"
	}
	return s.String()
}

// compareNodes compares node a of spec s (expected) with node b of spec o.
func compareNodes(s, o *Spec, a, b *node) *MismatchError {
	if a.kind != b.kind {
		return &MismatchError{Path: a.path, What: "structure", Got: describeNode(o, b), Want: describeNode(s, a)}
	}
	switch a.kind {
	case leafNode:
		return compareLeaf(a.path, o.leaves[b.leaf].DType, o.leaves[b.leaf].Shape, &s.leaves[a.leaf])
	case dictNode:
		if e := keySetMismatch(s, a, b.keys); e != nil {
			return e
		}
	case listNode, tupleNode:
		if len(a.children) != len(b.children) {
			return lengthMismatch(a, len(b.children))
		}
	}
	for i := range a.children {
		if e := compareNodes(s, o, &a.children[i], &b.children[i]); e != nil {
			return e
		}
	}
	return nil
}

// FlattenInto checks tree against s and appends its leaves, in flatten
// order, to dst[:0], returning the result. If the tree does not match it
// returns a *MismatchError describing the first difference (at each dict,
// differences in the key set come before those inside the dict), and the
// returned slice is garbage.
//
// This is the per-sample path: when cap(dst) >= NumLeaves and the tree
// matches, it does not allocate.
func (s *Spec) FlattenInto(tree any, dst []Array) ([]Array, error) {
	dst, e := s.match(&s.root, tree, dst[:0], true)
	if e != nil {
		return dst, e
	}
	return dst, nil
}

// Check is FlattenInto without the leaves: it returns nil if tree matches s
// and a *MismatchError otherwise. It does not allocate when the tree
// matches.
func (s *Spec) Check(tree any) error {
	if _, e := s.match(&s.root, tree, nil, false); e != nil {
		return e
	}
	return nil
}

// match checks the subtree v against node n, appending its leaves to dst if
// collect is set. It walks the spec, looking dict keys up in their sorted
// order, and builds strings only to report a mismatch.
func (s *Spec) match(n *node, v any, dst []Array, collect bool) ([]Array, *MismatchError) {
	var seq []any
	switch n.kind {
	case leafNode:
		a, ok := v.(Array)
		if !ok {
			return dst, structureMismatch(s, n, v)
		}
		if e := compareLeaf(n.path, a.dtype, a.shape, &s.leaves[n.leaf]); e != nil {
			return dst, e
		}
		if collect {
			dst = append(dst, a)
		}
		return dst, nil
	case noneNode:
		if v != nil {
			return dst, structureMismatch(s, n, v)
		}
		return dst, nil
	case dictNode:
		m, ok := v.(map[string]any)
		if !ok {
			return dst, structureMismatch(s, n, v)
		}
		if len(m) != len(n.keys) {
			return dst, keySetMismatch(s, n, sortedKeys(m))
		}
		for i, k := range n.keys {
			c, ok := m[k]
			var e *MismatchError
			if ok {
				dst, e = s.match(&n.children[i], c, dst, collect)
			}
			if !ok || e != nil {
				// A key-set difference, if any, comes first.
				if ke := keySetMismatch(s, n, sortedKeys(m)); ke != nil {
					return dst, ke
				}
				return dst, e
			}
		}
		return dst, nil
	case listNode:
		l, ok := v.([]any)
		if !ok {
			return dst, structureMismatch(s, n, v)
		}
		seq = l
	case tupleNode:
		t, ok := v.(Tuple)
		if !ok {
			return dst, structureMismatch(s, n, v)
		}
		seq = t
	}
	if len(seq) != len(n.children) {
		return dst, lengthMismatch(n, len(seq))
	}
	for i, c := range seq {
		var e *MismatchError
		if dst, e = s.match(&n.children[i], c, dst, collect); e != nil {
			return dst, e
		}
	}
	return dst, nil
}

// MismatchError describes the first difference between a tree (or spec) and
// the spec it was checked against. It matches ErrMismatch with errors.Is.
//
// Values are described the same way in every message: a dtype by its name
// ("float32"), a shape in brackets ("[8 5]", "[]" for a scalar), a leaf by
// both ("float32[8 5]", "float32[]"), other nodes as "nil", "list of 3",
// "tuple of 2", "dict with keys [a b]", and a Go value that is none of
// these by its type ("Go int (not an Array)").
type MismatchError struct {
	Path string // leaf or node path, "" for the root
	// What is the kind of difference: "dtype", "shape", "missing key",
	// "unexpected key", "length" (of a list or tuple), "leaf count",
	// "structure" (a node of another kind) or "spec" (a nil spec).
	What string
	Got  string // what the tree has, such as "[8 6]", "float64", "list of 3"; empty for a missing key
	Want string // what the spec expects, such as "[8 5]"; empty for an unexpected key
}

// Error describes the difference on one line, the path first (the root's
// reads "<root>") and what was expected last:
//
//	obs/radars: dtype float64, expected float32
//	obs/radars: shape [8 6], expected [8 5]
//	obs/radars: missing key, expected float32[8 5]
//	obs/extra: unexpected key
//	items: length 4, expected 3
//	obs: list of 2, expected dict with keys [radars speed]
//	obs/speed: nil, expected float32[]
//	obs/speed: Go int (not an Array), expected float32[]
//
// A structure or spec difference is told by the two descriptions alone.
func (e *MismatchError) Error() string {
	var parts []string
	if e.What != "structure" && e.What != "spec" {
		parts = append(parts, e.What)
	}
	if e.Got != "" {
		parts = append(parts, e.Got)
	}
	msg := displayPath(e.Path) + ": " + strings.Join(parts, " ")
	if e.Want != "" {
		msg += ", expected " + e.Want
	}
	return msg
}

// Is reports whether target is ErrMismatch.
func (e *MismatchError) Is(target error) bool { return target == ErrMismatch }

// Unwrap returns ErrMismatch.
func (e *MismatchError) Unwrap() error { return ErrMismatch }

// compareLeaf compares a leaf's dtype and shape with the expected ones.
func compareLeaf(path string, dt DType, shape []int, want *LeafSpec) *MismatchError {
	if dt != want.DType {
		return &MismatchError{Path: path, What: "dtype", Got: dt.String(), Want: want.DType.String()}
	}
	if !slices.Equal(shape, want.Shape) {
		return &MismatchError{Path: path, What: "shape", Got: fmt.Sprint(shape), Want: fmt.Sprint(want.Shape)}
	}
	return nil
}

func structureMismatch(s *Spec, n *node, v any) *MismatchError {
	return &MismatchError{Path: n.path, What: "structure", Got: describeValue(v), Want: describeNode(s, n)}
}

func lengthMismatch(n *node, got int) *MismatchError {
	return &MismatchError{Path: n.path, What: "length", Got: strconv.Itoa(got), Want: strconv.Itoa(len(n.children))}
}

// keySetMismatch compares the sorted keys got with those of dict node n and
// reports the first key, in sorted order, that one has and the other lacks;
// nil if the key sets are equal.
func keySetMismatch(s *Spec, n *node, got []string) *MismatchError {
	i, j := 0, 0
	for i < len(n.keys) || j < len(got) {
		switch {
		case j == len(got) || i < len(n.keys) && n.keys[i] < got[j]:
			c := &n.children[i]
			return &MismatchError{Path: c.path, What: "missing key", Want: describeNode(s, c)}
		case i == len(n.keys) || got[j] < n.keys[i]:
			return &MismatchError{Path: joinPath(n.path, got[j]), What: "unexpected key"}
		}
		i, j = i+1, j+1
	}
	return nil
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// describeNode describes a spec node for error messages.
func describeNode(s *Spec, n *node) string {
	switch n.kind {
	case leafNode:
		return s.leaves[n.leaf].String()
	case noneNode:
		return "nil"
	case dictNode:
		return fmt.Sprintf("dict with keys %v", n.keys)
	case listNode:
		return fmt.Sprintf("list of %d", len(n.children))
	default:
		return fmt.Sprintf("tuple of %d", len(n.children))
	}
}

// describeValue describes a tree node for error messages.
func describeValue(v any) string {
	switch v := v.(type) {
	case nil:
		return "nil"
	case Array:
		return v.String()
	case map[string]any:
		return fmt.Sprintf("dict with keys %v", sortedKeys(v))
	case []any:
		return fmt.Sprintf("list of %d", len(v))
	case Tuple:
		return fmt.Sprintf("tuple of %d", len(v))
	default:
		return describeGo(v) + " (not an Array)"
	}
}

// describeGo names the Go type of a value that is not a tree node:
// "Go int", "Go []float32".
func describeGo(v any) string { return fmt.Sprintf("Go %T", v) }
