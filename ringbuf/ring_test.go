package ringbuf

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
	"unsafe"
)

func mustNew(t testing.TB, l Layout) *Ring {
	t.Helper()
	r, err := New(l)
	if err != nil {
		t.Fatalf("New(%+v): %v", l, err)
	}
	t.Cleanup(func() {
		if err := r.Free(); err != nil {
			t.Errorf("Free: %v", err)
		}
	})
	return r
}

func TestLayoutErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		l    Layout
		want error
	}{
		{"batch 0", Layout{BatchSize: 0, NumSlabs: 3, LeafBytes: []int{4}}, ErrLayout},
		{"one slab", Layout{BatchSize: 4, NumSlabs: 1, LeafBytes: []int{4}}, ErrLayout},
		{"no leaves", Layout{BatchSize: 4, NumSlabs: 2}, ErrLayout},
		{"negative leaf", Layout{BatchSize: 4, NumSlabs: 2, LeafBytes: []int{-1}}, ErrLayout},
		{"overflowing block", Layout{BatchSize: math.MaxInt, NumSlabs: 2, LeafBytes: []int{math.MaxInt}}, ErrTooLarge},
		{"overflowing ring", Layout{BatchSize: 1 << 20, NumSlabs: 1 << 30, LeafBytes: []int{1 << 10}}, ErrTooLarge},
		{"overflowing capacity", Layout{BatchSize: 1 << 62, NumSlabs: 4, LeafBytes: []int{0}}, ErrTooLarge},
		{"more than memory", Layout{BatchSize: 1 << 20, NumSlabs: 2, LeafBytes: []int{1 << 24}}, ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := New(tc.l)
			if !errors.Is(err, tc.want) {
				if r != nil {
					r.Free()
				}
				t.Fatalf("New(%+v) = %v, want %v", tc.l, err, tc.want)
			}
		})
	}
}

// apart reports whether a field group ending at end (exclusive) and one
// starting at start never share an aligned 128-byte block (a pair of cache
// lines, which x86 prefetches together), wherever an 8-aligned allocator
// places the struct.
func apart(end, start uintptr) bool {
	for base := uintptr(0); base < 128; base += 8 {
		if (base+end-1)/128 == (base+start)/128 {
			return false
		}
	}
	return true
}

// TestHotFieldsOnOwnLines checks that each group of Ring's fields written
// by a different party sits on 128 bytes of its own: the read-only fields
// (with the space-wait lock), the write cursor (writers' CAS), the
// released cursor (the consumer), the waiters, wake count and closed flag,
// the writer counters (Claim), and the consumer's own state.
func TestHotFieldsOnOwnLines(t *testing.T) {
	var r Ring
	end := func(off, size uintptr) uintptr { return off + size }
	groups := []struct {
		name       string
		start, end uintptr
	}{
		{"read-only", 0, end(unsafe.Offsetof(r.spaceCond), unsafe.Sizeof(r.spaceCond))},
		{"write cursor", unsafe.Offsetof(r.write), end(unsafe.Offsetof(r.write.v), unsafe.Sizeof(r.write.v))},
		{"released cursor", unsafe.Offsetof(r.released), end(unsafe.Offsetof(r.released), unsafe.Sizeof(r.released.v))},
		{"waiters, notifies, closed", unsafe.Offsetof(r.spaceWaiters), end(unsafe.Offsetof(r.closed), unsafe.Sizeof(r.closed))},
		{"writer counters", unsafe.Offsetof(r.blocked), end(unsafe.Offsetof(r.retries), unsafe.Sizeof(r.retries))},
		{"consumer", unsafe.Offsetof(r.next), end(unsafe.Offsetof(r.holding), unsafe.Sizeof(r.holding))},
	}
	for _, f := range []uintptr{unsafe.Offsetof(r.notifies), unsafe.Offsetof(r.casSuccess), unsafe.Offsetof(r.casFailure)} {
		if f < groups[3].start || f >= groups[4].end {
			t.Errorf("a counter at %d lies outside its groups", f)
		}
	}
	for i := 1; i < len(groups); i++ {
		a, b := groups[i-1], groups[i]
		if b.start-a.start < 128 || !apart(a.end, b.start) {
			t.Errorf("%s [%d, %d) and %s at %d can share a 128-byte block", a.name, a.start, a.end, b.name, b.start)
		}
	}
	if unsafe.Sizeof(slabState{}) != 128 || unsafe.Sizeof(cursor{}) != 128 {
		t.Errorf("slabState is %d bytes, cursor %d; want 128", unsafe.Sizeof(slabState{}), unsafe.Sizeof(cursor{}))
	}
}

// forEachMemory runs test on an anonymous ring's layout and on a shared
// one's.
func forEachMemory(t *testing.T, test func(t *testing.T, shared bool)) {
	for _, shared := range []bool{false, true} {
		name := "anonymous"
		if shared {
			name = "shared"
		}
		t.Run(name, func(t *testing.T) { test(t, shared) })
	}
}

func TestBlocksAlignedAndContiguous(t *testing.T) { forEachMemory(t, testBlocksAlignedAndContiguous) }

func testBlocksAlignedAndContiguous(t *testing.T, shared bool) {
	r := mustNew(t, Layout{BatchSize: 5, NumSlabs: 3, LeafBytes: []int{3, 0, 28232, 4, 1}, Shared: shared})
	if r.Capacity() != 15 {
		t.Fatalf("capacity %d, want 15", r.Capacity())
	}
	for s := range 3 {
		for j, n := range r.leafBytes {
			b := r.LeafBlock(s, j)
			if len(b) != 5*n {
				t.Errorf("slab %d leaf %d block is %d bytes, want %d", s, j, len(b), 5*n)
			}
			if n > 0 && uintptr(unsafe.Pointer(&b[0]))%BlockAlign != 0 {
				t.Errorf("slab %d leaf %d block not %d-aligned", s, j, BlockAlign)
			}
			if n > 0 && &b[0] != &r.mem[s*r.SlabBytes()+r.LeafOffset(j)] {
				t.Errorf("slab %d leaf %d block is not at SlabBytes·%d + LeafOffset(%d)", s, j, s, j)
			}
			for i := range 5 {
				pos := uint64(s*5 + i)
				slot := r.Slot(pos, j)
				if n > 0 && &slot[0] != &b[i*n] {
					t.Errorf("Slot(%d, %d) is not element %d of its block", pos, j, i)
				}
			}
		}
	}
	if m := r.Memory(); m.Bytes%hugePageSize != 0 || m.Prefault == "" {
		t.Errorf("memory info %+v: want a 2 MiB multiple and a prefault method", m)
	}
}

func TestReserveCapsAtBatchAndFree(t *testing.T) {
	r := mustNew(t, Layout{BatchSize: 4, NumSlabs: 2, LeafBytes: []int{8}})
	// 3, then the batch's last slot, then a whole batch.
	for i, tc := range []struct{ ask, want int }{{3, 3}, {100, 1}, {100, 4}} {
		res, _, ok := r.Reserve(tc.ask)
		if !ok || res.N != tc.want {
			t.Fatalf("reservation %d = %+v ok=%v, want %d slots", i, res, ok, tc.want)
		}
		r.Commit(res)
	}
	if _, _, ok := r.Reserve(1); ok {
		t.Fatal("reserved a slot in a full ring")
	}
	if _, err := r.Next(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := r.Reserve(1); ok {
		t.Fatal("reserved a slot of the batch the consumer still holds")
	}
	if _, err := r.Next(context.Background()); err != nil { // releases batch 0
		t.Fatal(err)
	}
	res, _, ok := r.Reserve(9)
	if !ok || res.Start != 8 || res.N != 4 {
		t.Fatalf("after release got %+v ok=%v, want 4 slots from 8", res, ok)
	}
	st := r.Stats()
	if st.Inserted != 8 || st.Batches != 2 || st.Notifies != 2 || st.Stored != 0 {
		t.Errorf("stats %+v, want 8 inserted, 2 batches, 2 notifies, 0 stored", st)
	}
}

func TestOneWakePerBatch(t *testing.T) {
	r := mustNew(t, Layout{BatchSize: 8, NumSlabs: 2, LeafBytes: []int{1}})
	completions := 0
	for range 8 {
		res, _, ok := r.Reserve(1)
		if !ok {
			t.Fatal("ring full early")
		}
		if r.Commit(res) {
			completions++
		}
	}
	if completions != 1 || r.Stats().Notifies != 1 {
		t.Fatalf("%d completing commits, %d notifies; want 1 and 1", completions, r.Stats().Notifies)
	}
}

func TestCloseWakesConsumer(t *testing.T) {
	r := mustNew(t, Layout{BatchSize: 4, NumSlabs: 2, LeafBytes: []int{8}})
	errc := make(chan error)
	go func() {
		_, err := r.Next(context.Background())
		errc <- err
	}()
	time.Sleep(10 * time.Millisecond)
	r.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Next after Close = %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Next still blocked 5s after Close")
	}
	r.Close() // idempotent
}

func TestNextHonoursContext(t *testing.T) {
	r := mustNew(t, Layout{BatchSize: 4, NumSlabs: 2, LeafBytes: []int{8}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := r.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next = %v, want DeadlineExceeded", err)
	}
}

func TestCloseWakesWriterWaitingForSpace(t *testing.T) {
	r := mustNew(t, Layout{BatchSize: 2, NumSlabs: 2, LeafBytes: []int{8}})
	for {
		res, _, ok := r.Reserve(2)
		if !ok {
			break
		}
		r.Commit(res)
	}
	errc := make(chan error)
	go func() { errc <- r.WaitSpace(context.Background()) }()
	time.Sleep(10 * time.Millisecond)
	r.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("WaitSpace after Close = %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitSpace still blocked 5s after Close")
	}
	if _, _, ok := r.Reserve(1); ok {
		t.Fatal("Reserve succeeded on a closed ring")
	}
}

// TestStressExactlyOnce runs many writers with random reservation sizes
// against one consumer on a tiny ring, so that the ring wraps thousands of
// times, and checks that every sample arrives once, in each writer's order,
// with its bytes intact.
func TestStressExactlyOnce(t *testing.T) { forEachMemory(t, testStressExactlyOnce) }

func testStressExactlyOnce(t *testing.T, shared bool) {
	const writers = 8
	perWriter := 20_000
	if testing.Short() {
		perWriter = 2_000
	}
	const batch = 16
	r := mustNew(t, Layout{BatchSize: batch, NumSlabs: 3, LeafBytes: []int{8, 3, 4}, Shared: shared})

	var wg sync.WaitGroup
	live, stop := context.WithCancel(context.Background())
	defer stop()
	for w := range writers {
		wg.Add(1)
		// Odd writers wait on pooled waiters, even ones on the condition
		// variable.
		wctx := context.Background()
		if w%2 == 1 {
			wctx = live
		}
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			seq := 0
			for seq < perWriter {
				res, _, ok := r.Reserve(min(1+rng.IntN(5), perWriter-seq))
				if !ok {
					if err := r.WaitSpace(wctx); err != nil {
						t.Errorf("writer %d: %v", w, err)
						return
					}
					continue
				}
				for k := range res.N {
					writeSample(r, res.Start+uint64(k), w, seq+k)
				}
				seq += res.N
				r.Commit(res)
			}
		}()
	}

	nextSeq := make([]int, writers)
	total := writers * perWriter
	got, batches := 0, 0
	deadline, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for got < total {
		s, err := r.Next(deadline)
		if err != nil {
			t.Fatalf("after %d samples: %v", got, err)
		}
		batches++
		ids, tags, sums := r.LeafBlock(s, 0), r.LeafBlock(s, 1), r.LeafBlock(s, 2)
		for i := range batch {
			id := binary.LittleEndian.Uint64(ids[i*8:])
			w, seq := int(id>>32), int(uint32(id))
			if w >= writers || seq != nextSeq[w] {
				t.Fatalf("batch %d slot %d: writer %d seq %d, want seq %d", batches, i, w, seq, nextSeq[w])
			}
			if tags[i*3] != byte(w) || tags[i*3+1] != byte(seq) || tags[i*3+2] != byte(seq>>8) ||
				binary.LittleEndian.Uint32(sums[i*4:]) != checksum(id) {
				t.Fatalf("batch %d slot %d: writer %d seq %d corrupted", batches, i, w, seq)
			}
			nextSeq[w]++
			got++
		}
	}
	r.Close()
	wg.Wait()
	if batches < 1000 && !testing.Short() {
		t.Errorf("only %d batches: the ring did not wrap enough to stress it", batches)
	}
}

func writeSample(r *Ring, pos uint64, w, seq int) {
	id := uint64(w)<<32 | uint64(uint32(seq))
	binary.LittleEndian.PutUint64(r.Slot(pos, 0), id)
	copy(r.Slot(pos, 1), []byte{byte(w), byte(seq), byte(seq >> 8)})
	binary.LittleEndian.PutUint32(r.Slot(pos, 2), checksum(id))
}

func checksum(id uint64) uint32 { return uint32(id*0x9E3779B97F4A7C15>>32) ^ 0xA5A5A5A5 }
