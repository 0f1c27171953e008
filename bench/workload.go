// Package bench holds the benchmark workloads and the go test -bench suite
// that measures every layer against its ceiling.
//
// The workloads are the JSON files under workloads/, embedded in the binary:
// W1 (37-byte samples, batch 256: per-sample overhead), W2 (Atari frames of
// 28,232 bytes, batch 32: mid-size copies) and W3 (44 leaves, 1,020,388 bytes,
// batch 64: bandwidth).
package bench

import (
	"embed"
	"encoding/json"
	"fmt"
	"path"

	"github.com/seed-a9ef92a1/echo/pytree"
)

//go:embed workloads/*.json
var workloadFiles embed.FS

// Leaf is one array of a workload's sample.
type Leaf struct {
	DType string `json:"dtype"`
	Shape []int  `json:"shape"`
}

// Workload is a benchmark workload: a flat dict of arrays and a batch size.
type Workload struct {
	// Short is the workload's short name, "W1", "W2" or "W3".
	Short        string          `json:"-"`
	Name         string          `json:"name"`
	BatchSize    int             `json:"batch_size"`
	PayloadBytes int             `json:"payload_bytes"`
	Tree         map[string]Leaf `json:"tree"`
}

// Workloads returns W1, W2 and W3 in that order (the files' name order).
func Workloads() []Workload {
	names, err := workloadFiles.ReadDir("workloads")
	if err != nil {
		panic(err)
	}
	var ws []Workload
	for _, n := range names {
		data, err := workloadFiles.ReadFile(path.Join("workloads", n.Name()))
		if err != nil {
			panic(err)
		}
		var w Workload
		if err := json.Unmarshal(data, &w); err != nil {
			panic(fmt.Sprintf("bench: workload %s: %v", n.Name(), err))
		}
		w.Short = fmt.Sprintf("W%d", len(ws)+1)
		ws = append(ws, w)
	}
	return ws
}

// Get returns the workload with the given short name ("W1", "W2", "W3").
func Get(short string) (Workload, error) {
	for _, w := range Workloads() {
		if w.Short == short {
			return w, nil
		}
	}
	return Workload{}, fmt.Errorf("bench: no workload %q", short)
}

// NewSample returns a fresh sample tree of the workload, every byte of every
// leaf set from seed so that samples with different seeds differ everywhere.
func (w Workload) NewSample(seed byte) (map[string]any, error) {
	tree := make(map[string]any, len(w.Tree))
	total := 0
	for key, l := range w.Tree {
		dt, err := pytree.ParseDType(l.DType)
		if err != nil {
			return nil, fmt.Errorf("bench: %s/%s: %w", w.Short, key, err)
		}
		a, err := pytree.Zeros(dt, l.Shape...)
		if err != nil {
			return nil, fmt.Errorf("bench: %s/%s: %w", w.Short, key, err)
		}
		b := a.Bytes()
		for i := range b {
			b[i] = seed + byte(i)
		}
		total += len(b)
		tree[key] = a
	}
	if total != w.PayloadBytes {
		return nil, fmt.Errorf("bench: %s payload is %d bytes, its file says %d", w.Short, total, w.PayloadBytes)
	}
	return tree, nil
}

// MustSample is NewSample for benchmarks and examples; it panics on error.
func (w Workload) MustSample(seed byte) map[string]any {
	t, err := w.NewSample(seed)
	if err != nil {
		panic(err)
	}
	return t
}
