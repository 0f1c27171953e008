package ringbuf

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// TestConsumersTakeEachBatchOnce: four consumers taking and giving back
// batches while a writer fills the ring take every batch exactly once, in
// the order complete, and slabs go back to the writer only in order.
func TestConsumersTakeEachBatchOnce(t *testing.T) {
	r := mustNew(t, Layout{BatchSize: 4, NumSlabs: 3, LeafBytes: []int{8}})
	c := NewConsumers(r)
	const batches = 300
	go func() {
		for i := range batches * 4 {
			res, err := r.Claim(context.Background(), 1)
			if err != nil {
				return
			}
			slot := r.Slot(res.Start, 0)
			for k := range slot {
				slot[k] = byte(i >> (8 * k))
			}
			r.Commit(res)
		}
	}()
	var mu sync.Mutex
	seen := make(map[uint64]int)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
				s, err := c.Take(ctx)
				cancel()
				if err != nil {
					return // the writer is done: no batch comes
				}
				block := r.LeafBlock(s, 0)
				first := uint64(block[0]) | uint64(block[1])<<8 | uint64(block[2])<<16
				mu.Lock()
				seen[first/4]++
				mu.Unlock()
				if w == 0 {
					time.Sleep(time.Millisecond) // a slow one: the others wait on it in order
				}
				if err := c.Give(s); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if len(seen) != batches {
		t.Fatalf("%d batches taken, want %d", len(seen), batches)
	}
	for b, n := range seen {
		if n != 1 {
			t.Fatalf("batch %d taken %d times", b, n)
		}
	}
	if st := c.Stats(); st.Batches != batches || st.Stored != 0 || st.Inserted != batches*4 {
		t.Fatalf("stats %+v", st)
	}
	if err := c.Give(0); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("Give of a slab not held: %v", err)
	}
}

// TestConsumersCloseWakesTakers: Close ends a waiting Take with ErrClosed.
func TestConsumersCloseWakesTakers(t *testing.T) {
	r := mustNew(t, Layout{BatchSize: 2, NumSlabs: 2, LeafBytes: []int{8}})
	c := NewConsumers(r)
	errc := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := c.Take(context.Background())
			errc <- err
		}()
	}
	time.Sleep(10 * time.Millisecond)
	r.Close()
	for range 2 {
		if err := <-errc; !errors.Is(err, ErrClosed) {
			t.Fatalf("Take after Close: %v", err)
		}
	}
}

// TestConsumersUntakeHandsTheBatchOutAgain: a batch put back with Untake
// goes to the next Take, before newer batches, and wakes a Take already
// waiting on the ring; Give and Untake refuse it while it waits.
func TestConsumersUntakeHandsTheBatchOutAgain(t *testing.T) {
	r := mustNew(t, Layout{BatchSize: 1, NumSlabs: 3, LeafBytes: []int{8}})
	c := NewConsumers(r)
	fill := func(v byte) {
		res, err := r.Claim(context.Background(), 1)
		if err != nil {
			t.Fatal(err)
		}
		r.Slot(res.Start, 0)[0] = v
		r.Commit(res)
	}
	fill(1)
	fill(2)
	a, err := c.Take(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Untake(a); err != nil {
		t.Fatal(err)
	}
	if err := c.Untake(a); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("second Untake: %v", err)
	}
	if err := c.Give(a); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("Give of a slab put back: %v", err)
	}
	again, err := c.Take(context.Background())
	if err != nil || again != a || r.LeafBlock(again, 0)[0] != 1 {
		t.Fatalf("Take after Untake: slab %d (%v), want %d holding 1", again, err, a)
	}
	b, err := c.Take(context.Background())
	if err != nil || r.LeafBlock(b, 0)[0] != 2 {
		t.Fatalf("then the newer batch: slab %d (%v)", b, err)
	}
	// A Take waiting on the ring (no third batch) gets a batch put back.
	got := make(chan int, 1)
	go func() {
		s, err := c.Take(context.Background())
		if err != nil {
			t.Error(err)
		}
		got <- s
	}()
	time.Sleep(10 * time.Millisecond)
	select {
	case s := <-got:
		t.Fatalf("Take returned slab %d with no batch complete", s)
	default:
	}
	if err := c.Untake(b); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if s != b {
			t.Fatalf("the waiting Take got slab %d, want %d", s, b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Untake did not wake the waiting Take")
	}
	for _, s := range []int{again, b} {
		if err := c.Give(s); err != nil {
			t.Fatal(err)
		}
	}
	if st := c.Stats(); st.Batches != 2 || st.Stored != 0 {
		t.Fatalf("stats %+v: two batches taken, none stored", st)
	}
}
