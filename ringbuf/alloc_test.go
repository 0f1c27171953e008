//go:build !race

package ringbuf

import (
	"context"
	"testing"
)

// TestClaimCommitNextAllocateNothing: a batch of claims, writes and
// commits and the Next that takes it allocate nothing, on either memory.
func TestClaimCommitNextAllocateNothing(t *testing.T) {
	forEachMemory(t, func(t *testing.T, shared bool) {
		const batch = 8
		r := mustNew(t, Layout{BatchSize: batch, NumSlabs: 2, LeafBytes: []int{8, 3}, Shared: shared})
		ctx := context.Background()
		round := func() {
			for n := 0; n < batch; {
				res, err := r.Claim(ctx, 3)
				if err != nil {
					t.Fatal(err)
				}
				for pos := res.Start; pos < res.Start+uint64(res.N); pos++ {
					r.Slot(pos, 0)[0] = byte(pos)
					r.Slot(pos, 1)[2] = byte(pos)
				}
				r.Commit(res)
				n += res.N
			}
			if _, err := r.Next(ctx); err != nil {
				t.Fatal(err)
			}
		}
		round()
		if n := testing.AllocsPerRun(100, round); n != 0 {
			t.Fatalf("Claim/Commit×%d + Next allocate %.1f times, want 0", batch, n)
		}
	})
}
