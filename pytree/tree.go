package pytree

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
)

// Tuple is a tree node holding its children in order, like a Python tuple.
// It flattens like []any but is a different structure: a spec built from a
// Tuple does not match a list.
type Tuple []any

var (
	// ErrDType reports an invalid dtype or a view of the wrong dtype.
	ErrDType = errors.New("pytree: bad dtype")
	// ErrShape reports a negative dimension, a shape that does not fit the
	// data, or a size that overflows int.
	ErrShape = errors.New("pytree: bad shape")
	// ErrAlignment reports a typed view of data that is misaligned for the
	// element type.
	ErrAlignment = errors.New("pytree: misaligned data")
	// ErrNotArray reports a tree node of an unsupported Go type (a []float32,
	// an int, an *Array, a map[string]int, ...).
	ErrNotArray = errors.New("pytree: leaf is not an Array")
	// ErrNoLeaves reports a tree with no leaves, which has no spec.
	ErrNoLeaves = errors.New("pytree: tree has no leaves")
	// ErrMismatch reports a tree, spec or leaf list that does not match a
	// spec. *MismatchError values match it with errors.Is.
	ErrMismatch = errors.New("pytree: tree does not match spec")
)

// Flatten returns the leaves of tree in optree's order, with the path of
// each: dict keys and list or tuple indices joined by "/" ("obs/radars",
// "items/0/x"); a tree that is a single leaf has the path "". A node of an
// unsupported type gives an error wrapping ErrNotArray that names its path.
// The zero Array is returned like any other leaf; SpecOf rejects it.
func Flatten(tree any) (leaves []Array, paths []string, err error) {
	var b specBuilder
	if _, err := b.build(tree, ""); err != nil {
		return nil, nil, err
	}
	paths = make([]string, len(b.leaves))
	for i, l := range b.leaves {
		paths[i] = l.Path
	}
	return b.arrays, paths, nil
}

// nodeKind is the kind of a tree node.
type nodeKind uint8

const (
	leafNode nodeKind = iota
	noneNode
	dictNode
	listNode
	tupleNode
)

// node is one node of a spec's structure. Nodes are immutable once built.
type node struct {
	kind nodeKind
	// path is the node's path; it is only read to report errors.
	path string
	// keys holds a dict's keys in sorted order; keys[i] names children[i].
	keys []string
	// children holds the children of a dict, list or tuple.
	children []node
	// leaf is a leaf's index in flatten order.
	leaf int
}

// specBuilder walks a tree in flatten order, building its structure and
// collecting its leaves.
type specBuilder struct {
	leaves []LeafSpec
	arrays []Array
}

// build returns the node for the subtree v found at path.
func (b *specBuilder) build(v any, path string) (node, error) {
	n := node{path: path}
	var seq []any
	switch v := v.(type) {
	case nil:
		n.kind = noneNode
		return n, nil
	case Array:
		n.kind, n.leaf = leafNode, len(b.leaves)
		b.leaves = append(b.leaves, LeafSpec{Path: path, DType: v.dtype, Shape: slices.Clone(v.shape)})
		b.arrays = append(b.arrays, v)
		return n, nil
	case map[string]any:
		n.kind, n.keys = dictNode, sortedKeys(v)
		n.children = make([]node, len(n.keys))
		for i, k := range n.keys {
			var err error
			if n.children[i], err = b.build(v[k], joinPath(path, k)); err != nil {
				return node{}, err
			}
		}
		return n, nil
	case []any:
		n.kind, seq = listNode, v
	case Tuple:
		n.kind, seq = tupleNode, v
	default:
		return node{}, fmt.Errorf("%w: %s is a %s", ErrNotArray, displayPath(path), describeGo(v))
	}
	n.children = make([]node, len(seq))
	for i, c := range seq {
		var err error
		if n.children[i], err = b.build(c, joinPath(path, strconv.Itoa(i))); err != nil {
			return node{}, err
		}
	}
	return n, nil
}

// joinPath returns the path of the child elem of the node at path.
func joinPath(path, elem string) string {
	if path == "" {
		return elem
	}
	return path + "/" + elem
}

// displayPath returns path for error messages: "<root>" for the root.
func displayPath(path string) string {
	if path == "" {
		return "<root>"
	}
	return path
}
