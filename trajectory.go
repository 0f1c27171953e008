package echo

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/seed-a9ef92a1/echo/pytree"
)

// Trajectory errors, wrapped with detail.
var (
	// ErrUnknownTimescale is returned by Add for a name the example does
	// not have.
	ErrUnknownTimescale = errors.New("echo: unknown timescale")
	// ErrTrajectoryFull is returned by Add for a timescale whose slots are
	// all written since the last Build or Reset.
	ErrTrajectoryFull = errors.New("echo: trajectory timescale full")
)

// TrajectoryAccumulator assembles an actor's sample from steps that arrive
// one at a time, following echo's rules. Its example is a map whose keys
// name timescales, each a subtree of arrays:
//
//   - A buffered timescale has leaves that all share a leading dimension
//     N > 1 (or N = 0): it holds N steps, and each Add writes the next row,
//     a tree of the leaves' shapes without that dimension ([T, 4] leaves
//     take [4] steps). A step shaped [1, 4] is taken as [4].
//   - A single-item timescale has at least one scalar leaf, or leading
//     dimension 1 on every leaf: it holds one item, and Add replaces it
//     whole. Its leaves of shape [1, ...] also take items without the 1.
//
// Any other example (leaves disagreeing on the leading dimension, with no
// scalar among them) is refused by NewTrajectoryAccumulator.
//
// Build returns the accumulated tree, shaped exactly like the example, and
// starts over; it does not copy. Its arrays are the accumulator's own
// buffers, reused from then on: the tree is valid until the next Add, which
// is the moment to Send it. Add copies each step in and allocates nothing.
//
// A TrajectoryAccumulator is for one goroutine.
type TrajectoryAccumulator struct {
	tree       map[string]any
	timescales map[string]*timescale
	names      []string // sorted
}

// timescale is one key of the example and its buffers.
type timescale struct {
	name     string
	buffered bool
	capacity int            // rows for a buffered timescale, 1 otherwise
	filled   int            // steps written since the last Build or Reset
	leaves   []pytree.Array // the buffers, in flatten order
	rowBytes []int          // bytes per row of each leaf (buffered)
	step     *pytree.Spec   // what Add accepts
	alt      *pytree.Spec   // also accepted: leaves with a leading 1 added or dropped
	scratch  []pytree.Array // Add's flatten buffer
}

// NewTrajectoryAccumulator builds an accumulator shaped like example, with
// zeroed buffers of its own; example's arrays are only read for their
// dtypes and shapes.
func NewTrajectoryAccumulator(example map[string]any) (*TrajectoryAccumulator, error) {
	if len(example) == 0 {
		return nil, fmt.Errorf("%w: trajectory example has no timescales", ErrBadExample)
	}
	t := &TrajectoryAccumulator{
		tree:       make(map[string]any, len(example)),
		timescales: make(map[string]*timescale, len(example)),
		names:      slices.Sorted(maps.Keys(example)),
	}
	for _, name := range t.names {
		ts, tree, err := newTimescale(name, example[name])
		if err != nil {
			return nil, err
		}
		t.timescales[name] = ts
		t.tree[name] = tree
	}
	return t, nil
}

func newTimescale(name string, example any) (*timescale, any, error) {
	spec, err := pytree.SpecOf(example)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: timescale %q: %w", ErrBadExample, name, err)
	}
	ls := spec.Leaves()
	ts := &timescale{name: name, capacity: 1, scratch: make([]pytree.Array, 0, len(ls))}
	scalar, allOne := false, true
	lead := make([]int, len(ls))
	for i, l := range ls {
		if len(l.Shape) == 0 {
			scalar = true
			lead[i] = -1
			continue
		}
		lead[i] = l.Shape[0]
		allOne = allOne && l.Shape[0] == 1
	}
	if !scalar && !allOne {
		for _, n := range lead {
			if n != lead[0] {
				return nil, nil, fmt.Errorf("%w: timescale %q: leaves have leading dimensions %v: "+
					"a buffered timescale needs one shared leading dimension (the number of steps); "+
					"make a leaf a scalar, or every leaf [1, ...], for a single-item timescale",
					ErrBadExample, name, lead)
			}
		}
		ts.buffered, ts.capacity = true, lead[0]
	}
	// Zeroed buffers, and the shapes of one step.
	step := make([]pytree.Array, len(ls))
	alt := make([]pytree.Array, len(ls))
	for i, l := range ls {
		buf, err := pytree.Zeros(l.DType, l.Shape...)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: timescale %q: %s: %w", ErrBadExample, name, l.Path, err)
		}
		ts.leaves = append(ts.leaves, buf)
		shape := l.Shape
		if ts.buffered {
			shape = l.Shape[1:]
			ts.rowBytes = append(ts.rowBytes, buf.NumBytes()/max(1, ts.capacity))
		}
		altShape := append([]int{1}, shape...) // a leading 1 added...
		if len(shape) > 0 && shape[0] == 1 && !ts.buffered {
			altShape = shape[1:] // ...or, for [1, ...] items, dropped
		}
		if step[i], err = pytree.Zeros(l.DType, shape...); err == nil {
			alt[i], err = pytree.Zeros(l.DType, altShape...)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%w: timescale %q: %s: %w", ErrBadExample, name, l.Path, err)
		}
	}
	var err2 error
	if ts.step, err2 = specOfLeaves(spec, step); err2 == nil {
		ts.alt, err2 = specOfLeaves(spec, alt)
	}
	if err2 != nil {
		return nil, nil, fmt.Errorf("%w: timescale %q: %w", ErrBadExample, name, err2)
	}
	tree, err := spec.Unflatten(ts.leaves)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: timescale %q: %w", ErrBadExample, name, err)
	}
	return ts, tree, nil
}

// specOfLeaves is the spec of spec's structure holding leaves.
func specOfLeaves(spec *pytree.Spec, leaves []pytree.Array) (*pytree.Spec, error) {
	tree, err := spec.Unflatten(leaves)
	if err != nil {
		return nil, err
	}
	return pytree.SpecOf(tree)
}

// Add copies one step into the named timescale: the next row of a buffered
// timescale, or the whole item of a single-item one. The step must match
// the timescale's leaves in structure, dtype and row shape (ErrSpecMismatch
// otherwise). Adding to a full timescale returns ErrTrajectoryFull; an
// unknown name ErrUnknownTimescale. Nothing is written on error.
func (t *TrajectoryAccumulator) Add(name string, step any) error {
	ts, ok := t.timescales[name]
	if !ok {
		return fmt.Errorf("%w: %q (known: %s)", ErrUnknownTimescale, name, strings.Join(t.names, ", "))
	}
	if ts.filled >= ts.capacity {
		return fmt.Errorf("%w: timescale %q has %d slots, all written; Build or Reset first",
			ErrTrajectoryFull, name, ts.capacity)
	}
	leaves, err := ts.step.FlattenInto(step, ts.scratch)
	if err != nil {
		clear(ts.scratch[:cap(ts.scratch)])
		if leaves, err = ts.lenient(step, err); err != nil {
			return fmt.Errorf("%w: timescale %q: %w", ErrSpecMismatch, name, err)
		}
	}
	for i, a := range leaves {
		dst := ts.leaves[i].Bytes()
		if ts.buffered {
			n := ts.rowBytes[i]
			dst = dst[ts.filled*n : (ts.filled+1)*n]
		}
		copy(dst, a.Bytes())
	}
	clear(leaves)
	ts.filled++
	return nil
}

// lenient accepts, leaf by leaf, the shapes numpy's assignment would: a
// step leaf with a leading 1 added or dropped (see ts.alt). It is the slow
// path, taken only after the exact match failed with exact.
func (ts *timescale) lenient(step any, exact error) ([]pytree.Array, error) {
	leaves, paths, err := pytree.Flatten(step)
	if err != nil || len(leaves) != len(ts.leaves) {
		return nil, exact
	}
	want, alt := ts.step.Leaves(), ts.alt.Leaves()
	for i, a := range leaves {
		if paths[i] != want[i].Path || a.DType() != want[i].DType ||
			!(slices.Equal(a.Shape(), want[i].Shape) || slices.Equal(a.Shape(), alt[i].Shape)) {
			return nil, exact
		}
	}
	return leaves, nil
}

// Len returns the steps written to the named timescale since the last
// Build or Reset, and its capacity; (0, 0) for an unknown name.
func (t *TrajectoryAccumulator) Len(name string) (filled, capacity int) {
	ts, ok := t.timescales[name]
	if !ok {
		return 0, 0
	}
	return ts.filled, ts.capacity
}

// Full reports whether every timescale holds all its steps.
func (t *TrajectoryAccumulator) Full() bool {
	for _, ts := range t.timescales {
		if ts.filled < ts.capacity {
			return false
		}
	}
	return true
}

// Build returns the accumulated tree and starts a new trajectory. Like
// echo's, it does not check that every slot was written: slots not written
// since the last Build hold what they held before (zeros at first). The
// tree aliases the accumulator's buffers and is valid until the next Add.
func (t *TrajectoryAccumulator) Build() map[string]any {
	t.Reset()
	return t.tree
}

// Reset starts a new trajectory without building; buffers keep their bytes.
func (t *TrajectoryAccumulator) Reset() {
	for _, ts := range t.timescales {
		ts.filled = 0
	}
}
