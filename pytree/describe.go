package pytree

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Describe returns the spec's structure as plain values that encoding/json
// writes in the learner protocol's form (docs/learner.md): a dict is
// {"dict": [[key, node], …]} in sorted key order, a list {"list": […]}, a
// tuple {"tuple": […]}, nil {"none": true}, and leaf j {"leaf": j}.
func (s *Spec) Describe() any { return describe(&s.root) }

func describe(n *node) any {
	switch n.kind {
	case leafNode:
		return map[string]any{"leaf": n.leaf}
	case noneNode:
		return map[string]any{"none": true}
	case dictNode:
		pairs := make([][2]any, len(n.children))
		for i := range n.children {
			pairs[i] = [2]any{n.keys[i], describe(&n.children[i])}
		}
		return map[string]any{"dict": pairs}
	}
	kids := make([]any, len(n.children))
	for i := range n.children {
		kids[i] = describe(&n.children[i])
	}
	if n.kind == tupleNode {
		return map[string]any{"tuple": kids}
	}
	return map[string]any{"list": kids}
}

// ErrDescription: a tree description that ExampleOf cannot read.
var ErrDescription = errors.New("pytree: bad tree description")

// ExampleOf builds an example tree of zero arrays from a JSON description
// in Describe's form whose leaves are {"leaf": {"dtype": "float32",
// "shape": [4]}}: the spec a standalone server is given. Errors wrap
// ErrDescription, naming the path.
func ExampleOf(data []byte) (any, error) {
	var raw json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDescription, err)
	}
	return exampleNode(raw, "")
}

func exampleNode(raw json.RawMessage, path string) (any, error) {
	var n map[string]json.RawMessage
	if err := json.Unmarshal(raw, &n); err != nil || len(n) != 1 {
		return nil, fmt.Errorf("%w: %s: want an object with one of leaf, none, dict, list, tuple", ErrDescription, displayPath(path))
	}
	for kind, body := range n {
		switch kind {
		case "leaf":
			var l struct {
				DType string `json:"dtype"`
				Shape []int  `json:"shape"`
			}
			if err := json.Unmarshal(body, &l); err != nil {
				return nil, fmt.Errorf("%w: %s: %v", ErrDescription, displayPath(path), err)
			}
			dt, err := ParseDType(l.DType)
			if err != nil {
				return nil, fmt.Errorf("%w: %s: %w", ErrDescription, displayPath(path), err)
			}
			a, err := Zeros(dt, l.Shape...)
			if err != nil {
				return nil, fmt.Errorf("%w: %s: %w", ErrDescription, displayPath(path), err)
			}
			return a, nil
		case "none":
			return nil, nil
		case "dict":
			var pairs [][2]json.RawMessage
			if err := json.Unmarshal(body, &pairs); err != nil {
				return nil, fmt.Errorf("%w: %s: dict: %v", ErrDescription, displayPath(path), err)
			}
			m := make(map[string]any, len(pairs))
			for _, p := range pairs {
				var key string
				if err := json.Unmarshal(p[0], &key); err != nil {
					return nil, fmt.Errorf("%w: %s: dict key: %v", ErrDescription, displayPath(path), err)
				}
				if _, dup := m[key]; dup {
					return nil, fmt.Errorf("%w: %s: key %q twice", ErrDescription, displayPath(path), key)
				}
				v, err := exampleNode(p[1], joinPath(path, key))
				if err != nil {
					return nil, err
				}
				m[key] = v
			}
			return m, nil
		case "list", "tuple":
			var kids []json.RawMessage
			if err := json.Unmarshal(body, &kids); err != nil {
				return nil, fmt.Errorf("%w: %s: %s: %v", ErrDescription, displayPath(path), kind, err)
			}
			out := make([]any, len(kids))
			for i, k := range kids {
				v, err := exampleNode(k, joinPath(path, fmt.Sprint(i)))
				if err != nil {
					return nil, err
				}
				out[i] = v
			}
			if kind == "tuple" {
				return Tuple(out), nil
			}
			return out, nil
		}
		return nil, fmt.Errorf("%w: %s: unknown node kind %q", ErrDescription, displayPath(path), kind)
	}
	panic("unreachable")
}
