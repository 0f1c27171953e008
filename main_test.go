package echo_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/seed-a9ef92a1/echo/pytree"
)

// TestMain fails the package's tests if any goroutine outlives them: a
// Client's ack reader or write watcher, a server's workers.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// numbered is a sample whose every byte derives from (producer, seq), with
// nested dicts in unsorted key order and a tuple, so that a misplaced leaf
// or a torn copy shows up.
func numbered(producer, seq int) map[string]any {
	id := []int64{int64(producer), int64(seq)}
	payload := make([]uint8, 13)
	for i := range payload {
		payload[i] = byte(producer*31 + seq*7 + i)
	}
	return map[string]any{
		"z_id":    pytree.MustOf(id),
		"payload": pytree.MustOf(payload),
		"nested": map[string]any{
			"b": pytree.MustOf([]float32{float32(seq), float32(producer), -1}),
			"a": pytree.Scalar(int32(seq ^ producer)),
		},
		"pair": pytree.Tuple{pytree.Scalar(uint16(seq)), nil},
	}
}

// wireBytes is numbered(p, seq) as it crosses the wire.
func wireBytes(p, seq int) []byte {
	leaves, _, err := pytree.Flatten(numbered(p, seq))
	if err != nil {
		panic(err)
	}
	var b []byte
	for _, a := range leaves {
		b = append(b, a.Bytes()...)
	}
	return b
}
