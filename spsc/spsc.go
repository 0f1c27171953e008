// Package spsc provides a bounded, lock-free, single-producer /
// single-consumer ring queue.
//
// Invariants of Queue (cap = len(slots), a power of two):
//
//   - head and tail are absolute counts of items ever popped and pushed.
//     They only grow, and they are never reduced modulo cap: a slot's
//     index is cursor&mask. Unsigned subtraction keeps tail-head correct
//     even if a cursor ever wrapped 2^64.
//   - 0 <= tail-head <= cap at every instant.
//   - Slots with index in [head, tail) hold items and are owned by the
//     consumer. Slots in [tail, head+cap) are free and owned by the
//     producer. A free slot holds the zero value of T (except while
//     the producer is filling it), so the queue never keeps a popped
//     value reachable.
//   - Only the producer writes tail and headCache; only the consumer
//     writes head and tailCache. Ownership of a slot changes hands only
//     through an atomic store of tail (producer to consumer) or of head
//     (consumer to producer).
//   - headCache <= head and tailCache <= tail: a cached copy of the
//     other side's cursor is stale but never ahead, so a decision made
//     on it ("there is room", "there is an item") is always safe; only
//     "full" and "empty" have to be confirmed against the shared cursor.
package spsc

import (
	"errors"
	"fmt"
	"math/bits"
	"reflect"
	"sync/atomic"
	"unsafe"
)

// MaxCapacity is the largest capacity New accepts. It keeps every slot
// index and every count of items representable in an int on 32-bit
// platforms.
const MaxCapacity = 1 << 30

// minCapacity is the smallest ring New builds; smaller requests are
// rounded up to it.
const minCapacity = 2

// cacheLinePad is the stride that separates data written by different
// goroutines. It is two 64-byte lines because x86 adjacent-line
// prefetch pulls lines in pairs, so 64 bytes of padding alone still
// lets the producer and the consumer disturb each other.
const cacheLinePad = 128

// ErrInvalidCapacity is returned (wrapped, with the offending value) by
// New when the requested capacity is below 1 or above MaxCapacity.
var ErrInvalidCapacity = errors.New("spsc: invalid capacity")

// Queue is a bounded single-producer / single-consumer FIFO of T.
//
// Push and PushN may be called by only one goroutine at a time (the
// producer); Pop and PopN may be called by only one goroutine at a time
// (the consumer). Cap and Len may be called from any goroutine. The
// producer and the consumer may run concurrently with each other
// without any further synchronisation.
//
// A Queue must be created with New and must not be copied.
//
// Layout: three 128-byte groups, so that what the producer writes,
// what the consumer writes and what both only read never share a line.
// The struct is 384 bytes, which is one of the runtime's size classes;
// objects of that class start at multiples of 384 from a page-aligned
// span, so every group lands on its own 128-byte-aligned block (the
// layout test checks both the offsets and the alignment).
type Queue[T any] struct {
	// --- group 0 (bytes 0..127): read-only after New ---

	// slots is the ring storage, len(slots) == mask+1, a power of two.
	// Written once by New; read by producer and consumer. The slice
	// header never changes; the elements are handed back and forth
	// under the ownership rule in the file comment.
	slots []T

	// mask is len(slots)-1. Written once by New; read by both sides.
	mask uint64

	// clears is whether popped slots must be reset to the zero value: only
	// when T holds pointers, which the queue must not keep reachable. For
	// other types the store would only pull the slot's cache line back
	// to the consumer's core. Written once by New.
	clears bool

	_ [cacheLinePad - unsafe.Sizeof([]byte(nil)) - 16]byte

	// --- group 1 (bytes 128..255): written only by the consumer ---

	// head is the number of items ever popped; slot head&mask is the
	// next one to pop. Written only by the consumer (atomic Store);
	// read atomically by the producer when its headCache says full,
	// and by Len from any goroutine.
	head atomic.Uint64

	// tailCache is the consumer's last observed value of tail. Read
	// and written only by the consumer, without atomics. It is
	// refreshed from tail only when it makes the queue look empty.
	tailCache uint64

	_ [cacheLinePad - 16]byte

	// --- group 2 (bytes 256..383): written only by the producer ---

	// tail is the number of items ever pushed; slot tail&mask is the
	// next one to fill. Written only by the producer (atomic Store);
	// read atomically by the consumer when its tailCache says empty,
	// and by Len from any goroutine.
	tail atomic.Uint64

	// headCache is the producer's last observed value of head. Read
	// and written only by the producer, without atomics. It is
	// refreshed from head only when it makes the queue look full.
	headCache uint64

	// Trailing padding keeps the next heap object off the producer's
	// line.
	_ [cacheLinePad - 16]byte
}

// New returns an empty queue that holds up to capacity items, with
// capacity rounded up to a power of two (and to at least 2). It returns
// an error wrapping ErrInvalidCapacity if capacity < 1 or
// capacity > MaxCapacity.
func New[T any](capacity int) (*Queue[T], error) {
	if capacity < 1 || capacity > MaxCapacity {
		return nil, fmt.Errorf("%w: %d (want 1..%d)", ErrInvalidCapacity, capacity, MaxCapacity)
	}
	n := max(minCapacity, int(1)<<bits.Len(uint(capacity-1)))
	return &Queue[T]{
		slots:  make([]T, n),
		mask:   uint64(n - 1),
		clears: hasPointers(reflect.TypeFor[T]()),
	}, nil
}

// hasPointers reports whether values of t contain pointers the garbage
// collector follows.
func hasPointers(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return false
	case reflect.Array:
		return t.Len() > 0 && hasPointers(t.Elem())
	case reflect.Struct:
		for i := range t.NumField() {
			if hasPointers(t.Field(i).Type) {
				return true
			}
		}
		return false
	}
	return true
}

// Cap returns the number of items the queue can hold. It may be called
// from any goroutine.
func (q *Queue[T]) Cap() int {
	return len(q.slots)
}

// Len returns the number of items in the queue. It may be called from
// any goroutine. While the producer or the consumer is active the
// result is a snapshot that may already be stale, but it is always in
// [0, Cap()].
func (q *Queue[T]) Len() int {
	// head is loaded before tail. Both only grow and head never passes
	// tail, so the tail we read is at least the head we read: the
	// difference cannot be negative. It can exceed Cap if both moved
	// between the two loads, so it is clamped.
	head := q.head.Load()
	tail := q.tail.Load()
	return int(min(tail-head, uint64(len(q.slots))))
}

// Memory ordering.
//
// Go's sync/atomic operations are sequentially consistent, so an atomic
// store acts as a release and an atomic load as an acquire for the
// plain memory accesses around them.
//
// Producer: it writes the slot(s) with plain stores, then stores tail.
// That store publishes the slots to the consumer. The consumer loads
// tail (into tailCache) before it reads any slot below that value, so
// it observes the producer's writes.
//
// Consumer: it reads and then clears the slot(s) with plain accesses,
// then stores head. That store passes the slots back to the producer.
// The producer loads head (into headCache) before it writes any slot
// below headCache+cap, so its new writes cannot overtake the
// consumer's read or its clearing store.
//
// A cached cursor is only ever older than the shared one, and every
// slot it makes look available was already handed over by an earlier
// load of the shared cursor, so acting on the cache needs no fresh
// atomic operation. PushN and PopN move a whole batch and make one
// store of their own cursor, so one publish covers every slot in it.

// Push appends v to the queue. It returns false, and leaves the queue
// unchanged, if the queue is full.
//
// Push must only be called by the single producer: at most one
// goroutine may be in Push or PushN at any time.
func (q *Queue[T]) Push(v T) bool {
	// Only the producer writes tail, so this load just reads back our
	// own last store.
	tail := q.tail.Load()
	if tail-q.headCache >= uint64(len(q.slots)) {
		// Looks full from the cache: reload head. This load acquires
		// the slots the consumer has released since the last reload.
		q.headCache = q.head.Load()
		if tail-q.headCache >= uint64(len(q.slots)) {
			return false
		}
	}
	q.slots[tail&q.mask] = v
	// Publish the slot: after this store the consumer may read it, and
	// the producer must not touch it again until head passes it.
	q.tail.Store(tail + 1)
	return true
}

// PushN appends the longest prefix of vs that fits in the queue and
// returns its length: 0 if the queue is full or vs is empty. The whole
// batch is published with a single atomic store.
//
// PushN must only be called by the single producer: at most one
// goroutine may be in Push or PushN at any time.
func (q *Queue[T]) PushN(vs []T) int {
	if len(vs) == 0 {
		return 0
	}
	// Only the producer writes tail: this reads back our own store.
	tail := q.tail.Load()
	size := uint64(len(q.slots))
	free := size - (tail - q.headCache)
	if free < uint64(len(vs)) {
		// The cache cannot fit the whole batch: reload head to learn
		// about, and acquire, every slot released since the last
		// reload.
		q.headCache = q.head.Load()
		free = size - (tail - q.headCache)
		if free == 0 {
			return 0
		}
	}
	n := int(min(free, uint64(len(vs))))
	// The free run [tail, tail+n) may wrap past the end of slots: copy
	// what fits before the end, then the rest from the start.
	start := int(tail & q.mask)
	first := copy(q.slots[start:], vs[:n])
	copy(q.slots, vs[first:n])
	// Publish all n slots to the consumer at once.
	q.tail.Store(tail + uint64(n))
	return n
}

// Pop removes and returns the oldest item. It returns the zero value
// and false if the queue is empty. The vacated slot is reset to the
// zero value so the queue does not keep the item reachable.
//
// Pop must only be called by the single consumer: at most one
// goroutine may be in Pop or PopN at any time.
func (q *Queue[T]) Pop() (T, bool) {
	var zero T
	// Only the consumer writes head: this reads back our own store.
	head := q.head.Load()
	if head == q.tailCache {
		// Looks empty from the cache: reload tail. This load acquires
		// every slot the producer has published since the last reload.
		q.tailCache = q.tail.Load()
		if head == q.tailCache {
			return zero, false
		}
	}
	slot := &q.slots[head&q.mask]
	v := *slot
	if q.clears {
		*slot = zero
	}
	// Hand the (now cleared) slot back to the producer. The read and
	// the clear above happen before this store, so the producer's next
	// write to the slot cannot race with them.
	q.head.Store(head + 1)
	return v, true
}

// PopN removes up to len(dst) of the oldest items, stores them in
// dst[:n] in FIFO order and returns n: 0 if the queue is empty or dst
// is empty. Elements of dst beyond n are left untouched. The vacated
// slots are reset to the zero value and handed back to the producer
// with a single atomic store.
//
// PopN must only be called by the single consumer: at most one
// goroutine may be in Pop or PopN at any time.
func (q *Queue[T]) PopN(dst []T) int {
	if len(dst) == 0 {
		return 0
	}
	// Only the consumer writes head: this reads back our own store.
	head := q.head.Load()
	avail := q.tailCache - head
	if avail < uint64(len(dst)) {
		// The cache cannot fill dst: reload tail, acquiring every slot
		// the producer has published since the last reload.
		q.tailCache = q.tail.Load()
		avail = q.tailCache - head
		if avail == 0 {
			return 0
		}
	}
	n := int(min(avail, uint64(len(dst))))
	// The filled run [head, head+n) may wrap past the end of slots.
	start := int(head & q.mask)
	first := copy(dst[:n], q.slots[start:])
	copy(dst[first:n], q.slots)
	if q.clears {
		clear(q.slots[start : start+first])
		clear(q.slots[:n-first])
	}
	// Hand all n cleared slots back to the producer at once.
	q.head.Store(head + uint64(n))
	return n
}
