package spsc

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestNewRoundsCapacity(t *testing.T) {
	cases := []struct{ in, want int }{
		{1, 2},
		{2, 2},
		{3, 4},
		{4, 4},
		{5, 8},
		{7, 8},
		{8, 8},
		{9, 16},
		{1000, 1024},
		{1024, 1024},
		{1025, 2048},
		{MaxCapacity/2 + 1, MaxCapacity},
		{MaxCapacity, MaxCapacity},
	}
	for _, c := range cases {
		// struct{} keeps the huge cases free of memory.
		q, err := New[struct{}](c.in)
		if err != nil {
			t.Fatalf("New(%d): unexpected error %v", c.in, err)
		}
		if got := q.Cap(); got != c.want {
			t.Errorf("New(%d).Cap() = %d, want %d", c.in, got, c.want)
		}
		if got := q.Len(); got != 0 {
			t.Errorf("New(%d).Len() = %d, want 0", c.in, got)
		}
		if q.mask != uint64(c.want-1) {
			t.Errorf("New(%d).mask = %d, want %d", c.in, q.mask, c.want-1)
		}
	}
}

func TestNewRejectsInvalidCapacity(t *testing.T) {
	for _, c := range []int{0, -1, -1024, math.MinInt, MaxCapacity + 1, math.MaxInt} {
		q, err := New[int](c)
		if err == nil {
			t.Errorf("New(%d): got nil error, want ErrInvalidCapacity", c)
			continue
		}
		if !errors.Is(err, ErrInvalidCapacity) {
			t.Errorf("New(%d): error %v does not wrap ErrInvalidCapacity", c, err)
		}
		if q != nil {
			t.Errorf("New(%d): got non-nil queue with error", c)
		}
	}
}

func TestFullAndEmpty(t *testing.T) {
	q, err := New[int](4)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := q.Pop(); ok || v != 0 {
		t.Fatalf("Pop on empty queue = (%d, %v), want (0, false)", v, ok)
	}
	for i := 1; i <= 4; i++ {
		if !q.Push(i) {
			t.Fatalf("Push(%d) into queue of len %d failed", i, q.Len())
		}
		if got := q.Len(); got != i {
			t.Fatalf("Len after %d pushes = %d", i, got)
		}
	}
	if q.Push(5) {
		t.Fatal("Push into full queue succeeded")
	}
	if got := q.PushN([]int{5, 6}); got != 0 {
		t.Fatalf("PushN into full queue = %d, want 0", got)
	}
	if got := q.Len(); got != 4 {
		t.Fatalf("Len of full queue = %d, want 4", got)
	}
	for i := 1; i <= 4; i++ {
		v, ok := q.Pop()
		if !ok || v != i {
			t.Fatalf("Pop = (%d, %v), want (%d, true)", v, ok, i)
		}
		if got := q.Len(); got != 4-i {
			t.Fatalf("Len after %d pops = %d", i, got)
		}
	}
	if v, ok := q.Pop(); ok || v != 0 {
		t.Fatalf("Pop on drained queue = (%d, %v), want (0, false)", v, ok)
	}
	dst := []int{-1, -1}
	if got := q.PopN(dst); got != 0 || dst[0] != -1 || dst[1] != -1 {
		t.Fatalf("PopN on drained queue = %d, dst %v; want 0, dst untouched", got, dst)
	}
	// Space freed by the pops is visible to the producer again.
	if !q.Push(9) {
		t.Fatal("Push after draining failed")
	}
	if v, ok := q.Pop(); !ok || v != 9 {
		t.Fatalf("Pop = (%d, %v), want (9, true)", v, ok)
	}
}

func TestEmptyBatches(t *testing.T) {
	q, err := New[int](2)
	if err != nil {
		t.Fatal(err)
	}
	if got := q.PushN(nil); got != 0 {
		t.Fatalf("PushN(nil) = %d", got)
	}
	if got := q.PopN(nil); got != 0 {
		t.Fatalf("PopN(nil) on empty queue = %d", got)
	}
	q.Push(1)
	if got := q.PopN([]int{}); got != 0 {
		t.Fatalf("PopN(empty dst) = %d", got)
	}
	if got := q.Len(); got != 1 {
		t.Fatalf("Len = %d, want 1", got)
	}
}

func TestWrapAroundManyLaps(t *testing.T) {
	for _, capacity := range []int{2, 4, 8} {
		q, err := New[uint64](capacity)
		if err != nil {
			t.Fatal(err)
		}
		const laps = 5000
		var pushed, popped uint64
		total := uint64(laps * capacity)
		rng := rand.New(rand.NewPCG(uint64(capacity), 7))
		for popped < total {
			// Fill to a random level, then drain a random amount, so
			// that the cursors cross the end of the ring at every
			// offset.
			for k := rng.IntN(capacity + 1); k > 0 && pushed < total; k-- {
				if !q.Push(pushed) {
					if n := pushed - popped; n != uint64(q.Cap()) {
						t.Fatalf("cap %d: Push failed with only %d items queued", capacity, n)
					}
					break
				}
				pushed++
			}
			if got, want := q.Len(), int(pushed-popped); got != want {
				t.Fatalf("cap %d: Len = %d, want %d", capacity, got, want)
			}
			for k := rng.IntN(capacity + 1); k > 0; k-- {
				v, ok := q.Pop()
				if !ok {
					if popped != pushed {
						t.Fatalf("cap %d: Pop empty with %d items queued", capacity, pushed-popped)
					}
					break
				}
				if v != popped {
					t.Fatalf("cap %d: Pop = %d, want %d", capacity, v, popped)
				}
				popped++
			}
		}
		if tail := q.tail.Load(); tail != total || tail/uint64(capacity) != laps {
			t.Fatalf("cap %d: tail = %d, want %d (%d laps)", capacity, tail, total, laps)
		}
	}
}

func TestCursorsWrapUint64(t *testing.T) {
	q, err := New[int](4)
	if err != nil {
		t.Fatal(err)
	}
	// Start both cursors just below 2^64 to run the index arithmetic
	// across the point where the absolute counters overflow.
	start := uint64(math.MaxUint64 - 5)
	q.head.Store(start)
	q.tail.Store(start)
	q.headCache = start
	q.tailCache = start
	next, want := 0, 0
	for range 10 {
		if got := q.PushN([]int{next, next + 1, next + 2}); got != 3 {
			t.Fatalf("PushN = %d, want 3", got)
		}
		next += 3
		if got := q.Len(); got != 3 {
			t.Fatalf("Len = %d, want 3", got)
		}
		if !q.Push(next) {
			t.Fatal("Push into queue with one free slot failed")
		}
		next++
		if q.Push(next) {
			t.Fatal("Push into full queue succeeded")
		}
		dst := make([]int, 3)
		if got := q.PopN(dst); got != 3 {
			t.Fatalf("PopN = %d, want 3", got)
		}
		for _, v := range dst {
			if v != want {
				t.Fatalf("PopN got %d, want %d", v, want)
			}
			want++
		}
		v, ok := q.Pop()
		if !ok || v != want {
			t.Fatalf("Pop = (%d, %v), want (%d, true)", v, ok, want)
		}
		want++
	}
	if q.tail.Load() >= start {
		t.Fatalf("tail = %d: expected the cursor to have wrapped", q.tail.Load())
	}
}

func TestPushNPopNPartial(t *testing.T) {
	q, err := New[int](8)
	if err != nil {
		t.Fatal(err)
	}
	if got := q.PushN([]int{1, 2, 3, 4, 5}); got != 5 {
		t.Fatalf("PushN(5 items) into empty cap-8 queue = %d, want 5", got)
	}
	// Only a prefix of three fits.
	if got := q.PushN([]int{6, 7, 8, 9, 10}); got != 3 {
		t.Fatalf("PushN(5 items) with 3 free = %d, want 3", got)
	}
	if got := q.Len(); got != 8 {
		t.Fatalf("Len = %d, want 8", got)
	}
	if got := q.PushN([]int{9}); got != 0 {
		t.Fatalf("PushN into full queue = %d, want 0", got)
	}

	dst := []int{-1, -1, -1}
	if got := q.PopN(dst); got != 3 {
		t.Fatalf("PopN(3) = %d, want 3", got)
	}
	assertInts(t, dst, []int{1, 2, 3})

	// The ring now holds 4..8 at slots 3..7; a push of 3 wraps to
	// slots 0..2.
	if got := q.PushN([]int{9, 10, 11, 12}); got != 3 {
		t.Fatalf("PushN(4 items) with 3 free = %d, want 3", got)
	}

	// Asking for more than is queued returns what there is, in order,
	// across the end of the ring, and leaves the tail of dst alone.
	dst = make([]int, 12)
	for i := range dst {
		dst[i] = -1
	}
	if got := q.PopN(dst); got != 8 {
		t.Fatalf("PopN(12) with 8 queued = %d, want 8", got)
	}
	assertInts(t, dst, []int{4, 5, 6, 7, 8, 9, 10, 11, -1, -1, -1, -1})
	if got := q.Len(); got != 0 {
		t.Fatalf("Len = %d, want 0", got)
	}
	assertAllZero(t, q)
}

func TestPopClearsSlots(t *testing.T) {
	q, err := New[*int](4)
	if err != nil {
		t.Fatal(err)
	}
	vals := make([]*int, 6)
	for i := range vals {
		vals[i] = new(int)
		*vals[i] = i
	}
	// Single-item path, including a lap around the ring.
	for i := range vals {
		if !q.Push(vals[i]) {
			t.Fatal("Push failed")
		}
		v, ok := q.Pop()
		if !ok || v != vals[i] {
			t.Fatalf("Pop = (%p, %v), want (%p, true)", v, ok, vals[i])
		}
		assertAllZero(t, q)
	}
	// Batch path, with a run that wraps the end of the ring.
	if got := q.PushN(vals[:3]); got != 3 {
		t.Fatalf("PushN = %d", got)
	}
	dst := make([]*int, 4)
	if got := q.PopN(dst); got != 3 {
		t.Fatalf("PopN = %d", got)
	}
	assertAllZero(t, q)
	if got := q.PushN(vals[2:]); got != 4 {
		t.Fatalf("PushN = %d", got)
	}
	if got := q.PopN(dst); got != 4 {
		t.Fatalf("PopN = %d", got)
	}
	for i, p := range dst {
		if p != vals[2+i] {
			t.Fatalf("PopN dst[%d] = %p, want %p", i, p, vals[2+i])
		}
	}
	assertAllZero(t, q)
}

// TestAgainstModel drives a queue from one goroutine with a random mix
// of all operations and checks every result against a plain slice used
// as a FIFO.
func TestAgainstModel(t *testing.T) {
	for _, capacity := range []int{1, 2, 3, 4, 16, 100} {
		q, err := New[int](capacity)
		if err != nil {
			t.Fatal(err)
		}
		c := q.Cap()
		rng := rand.New(rand.NewPCG(uint64(capacity), 42))
		var model []int
		next := 1 // 0 is the zero value, which free slots hold
		buf := make([]int, 2*c+2)
		for step := range 20000 {
			switch rng.IntN(4) {
			case 0:
				ok := q.Push(next)
				if want := len(model) < c; ok != want {
					t.Fatalf("cap %d step %d: Push = %v, want %v", c, step, ok, want)
				}
				if ok {
					model = append(model, next)
					next++
				}
			case 1:
				k := rng.IntN(len(buf) + 1)
				for i := range k {
					buf[i] = next + i
				}
				got := q.PushN(buf[:k])
				if want := min(k, c-len(model)); got != want {
					t.Fatalf("cap %d step %d: PushN(%d) = %d, want %d", c, step, k, got, want)
				}
				model = append(model, buf[:got]...)
				next += got
			case 2:
				v, ok := q.Pop()
				if len(model) == 0 {
					if ok || v != 0 {
						t.Fatalf("cap %d step %d: Pop on empty = (%d, %v)", c, step, v, ok)
					}
					break
				}
				if !ok || v != model[0] {
					t.Fatalf("cap %d step %d: Pop = (%d, %v), want (%d, true)", c, step, v, ok, model[0])
				}
				model = model[1:]
			case 3:
				k := rng.IntN(len(buf) + 1)
				for i := range buf {
					buf[i] = -1
				}
				got := q.PopN(buf[:k])
				want := min(k, len(model))
				if got != want {
					t.Fatalf("cap %d step %d: PopN(%d) = %d, want %d", c, step, k, got, want)
				}
				for i := range buf {
					w := -1
					if i < got {
						w = model[i]
					}
					if buf[i] != w {
						t.Fatalf("cap %d step %d: PopN buf[%d] = %d, want %d", c, step, i, buf[i], w)
					}
				}
				model = model[got:]
			}
			if got := q.Len(); got != len(model) {
				t.Fatalf("cap %d step %d: Len = %d, want %d", c, step, got, len(model))
			}
			assertFreeSlotsZero(t, q)
		}
	}
}

func TestLayout(t *testing.T) {
	const line = cacheLinePad
	var q Queue[int]
	head := unsafe.Offsetof(q.head)
	tail := unsafe.Offsetof(q.tail)
	headCache := unsafe.Offsetof(q.headCache)
	tailCache := unsafe.Offsetof(q.tailCache)
	slotsLo := unsafe.Offsetof(q.slots)
	slotsHi := slotsLo + unsafe.Sizeof(q.slots) - 1
	maskLo := unsafe.Offsetof(q.mask)
	maskHi := maskLo + unsafe.Sizeof(q.mask) - 1
	t.Logf("slots@%d mask@%d head@%d tailCache@%d tail@%d headCache@%d size=%d",
		slotsLo, maskLo, head, tailCache, tail, headCache, unsafe.Sizeof(q))

	dist := tail - head
	if head > tail {
		dist = head - tail
	}
	if dist < line {
		t.Errorf("head@%d and tail@%d are %d bytes apart, want >= %d", head, tail, dist, line)
	}
	readOnly := map[uintptr]bool{
		slotsLo / line: true, slotsHi / line: true,
		maskLo / line: true, maskHi / line: true,
	}
	if readOnly[head/line] {
		t.Errorf("head@%d shares a %d-byte line with slots/mask", head, line)
	}
	if readOnly[tail/line] {
		t.Errorf("tail@%d shares a %d-byte line with slots/mask", tail, line)
	}
	// Each side's cache of the other cursor lives on its own line.
	if tailCache/line != head/line {
		t.Errorf("tailCache@%d is not on the consumer's line (head@%d)", tailCache, head)
	}
	if headCache/line != tail/line {
		t.Errorf("headCache@%d is not on the producer's line (tail@%d)", headCache, tail)
	}
	size := unsafe.Sizeof(q)
	if size%line != 0 {
		t.Errorf("sizeof(Queue) = %d, not a multiple of %d", size, line)
	}
	if last := max(head, tail) / line; last != (size-1)/line {
		t.Errorf("the last cursor line (%d) is not the final line of the struct (%d): trailing padding missing", last, (size-1)/line)
	}
	// The offsets above only separate lines if the Queue itself starts
	// on a 128-byte boundary. Its size is a runtime size class whose
	// objects are laid out at multiples of the size from a page-aligned
	// span; check that this holds for queues of a few element types.
	for i := range 16 {
		var addrs [3]uintptr
		q1, _ := New[int](4)
		q2, _ := New[*byte](4)
		q3, _ := New[[3]uint64](4)
		addrs[0] = uintptr(unsafe.Pointer(q1))
		addrs[1] = uintptr(unsafe.Pointer(q2))
		addrs[2] = uintptr(unsafe.Pointer(q3))
		for _, a := range addrs {
			if a%line != 0 {
				t.Fatalf("allocation %d: Queue at %#x is not %d-byte aligned", i, a, line)
			}
		}
	}
}

func assertInts(t *testing.T, got, want []int) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}

// assertAllZero checks that every slot of an empty queue holds the
// zero value, for element types the queue clears (those with pointers).
func assertAllZero[T comparable](t *testing.T, q *Queue[T]) {
	t.Helper()
	if !q.clears {
		return
	}
	var zero T
	for i, v := range q.slots {
		if v != zero {
			t.Fatalf("slot %d holds %v after pop, want zero value", i, v)
		}
	}
}

// assertFreeSlotsZero checks that every slot outside [head, tail) holds
// the zero value.
func assertFreeSlotsZero[T comparable](t *testing.T, q *Queue[T]) {
	t.Helper()
	if !q.clears {
		return
	}
	var zero T
	head, tail := q.head.Load(), q.tail.Load()
	for c := tail; c != head+uint64(len(q.slots)); c++ {
		if v := q.slots[c&q.mask]; v != zero {
			t.Fatalf("free slot %d (cursor %d) holds %v, want zero value", c&q.mask, c, v)
		}
	}
}

func TestClearsOnlyPointerTypes(t *testing.T) {
	type plain struct {
		a [4]int32
		b float64
	}
	type withPtr struct {
		a int
		p *int
	}
	cases := []struct {
		name  string
		clear bool
		got   bool
	}{
		{"uint64", false, mustNew[uint64](t).clears},
		{"plain struct", false, mustNew[plain](t).clears},
		{"*int", true, mustNew[*int](t).clears},
		{"string", true, mustNew[string](t).clears},
		{"struct with pointer", true, mustNew[withPtr](t).clears},
		{"[]byte", true, mustNew[[]byte](t).clears},
		{"[2]*int", true, mustNew[[2]*int](t).clears},
		{"[0]*int", false, mustNew[[0]*int](t).clears},
	}
	for _, c := range cases {
		if c.got != c.clear {
			t.Errorf("%s: clears = %v, want %v", c.name, c.got, c.clear)
		}
	}
	// A pointer queue really drops its references.
	q := mustNew[*int](t)
	x := 7
	q.Push(&x)
	q.Pop()
	for i, v := range q.slots {
		if v != nil {
			t.Fatalf("slot %d still holds a pointer after Pop", i)
		}
	}
}

func mustNew[T any](t *testing.T) *Queue[T] {
	t.Helper()
	q, err := New[T](4)
	if err != nil {
		t.Fatal(err)
	}
	return q
}
