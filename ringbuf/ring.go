// Package ringbuf is the ring of batch slabs that samples are written into
// and batches are read out of.
//
// The ring is one mapping of NumSlabs slabs: private and anonymous, or
// (Layout.Shared) a memfd mapped shared, which another process given FD
// can map to read the same slabs at the same offsets. A slab holds one
// batch: leaf j of the batch is one contiguous block of BatchSize·LeafBytes[j]
// bytes, aligned to 64 bytes, so slot i of leaf j lives at
// slab + blockOffset[j] + i·LeafBytes[j]. Handing a full slab to the consumer
// is therefore handing it one contiguous array per leaf: no copy.
//
// Slots are numbered by absolute uint64 positions that are never reduced
// except to address memory: position p lives in batch p/BatchSize, which
// lives in slab (p/BatchSize) % NumSlabs, at index p % BatchSize.
//
// Invariants:
//
//  1. released ≤ write ≤ released + Capacity. Positions in [released, write)
//     are claimed; positions in [write, released+Capacity) are free.
//  2. A reservation is a run of positions claimed by one CAS on write. It never
//     crosses a batch boundary, so it lives in one slab.
//  3. commit[s] counts the samples of the batch now in slab s that writers
//     have finished copying. It reaches BatchSize exactly once per batch, and
//     the writer whose add makes it so wakes the consumer: one wake per batch.
//  4. Only the consumer resets commit[s], and only before it advances
//     released past the slab's batch. Writers cannot claim slots of the slab's
//     next batch until that advance, so they never see a stale count.
//  5. A claimed slot is always filled or given back. A writer that cannot
//     fill slots it claimed (its peer sent less than promised) returns them
//     (Return); every later claim takes returned slots before new ones, so
//     the batch they belong to still completes and no hole stops the
//     batches behind it.
//
// Writers are any number of goroutines calling Reserve, copying into Slot
// memory and calling Commit. The consumer is one goroutine at a time calling
// Next.
package ringbuf

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// BlockAlign is the alignment of every leaf block inside a slab and of every
// slab inside the mapping.
const BlockAlign = 64

// maxRingBytes bounds the mapping so that size arithmetic cannot overflow.
const maxRingBytes = 1 << 46

var (
	// ErrClosed is returned by Next and WaitSpace once the ring is closed.
	ErrClosed = errors.New("ringbuf: closed")
	// ErrLayout wraps every error about a bad Layout.
	ErrLayout = errors.New("ringbuf: bad layout")
	// ErrTooLarge is returned when the ring does not fit in memory.
	ErrTooLarge = errors.New("ringbuf: ring too large for memory")
)

// Layout is the shape of a ring.
type Layout struct {
	// BatchSize is the number of samples per batch (per slab); at least 1.
	BatchSize int
	// NumSlabs is the number of batches the ring holds; at least 2, so that
	// writers can fill one slab while the consumer reads another.
	NumSlabs int
	// LeafBytes is the size in bytes of each leaf of one sample, in flatten
	// order. A leaf of zero bytes is allowed (an array with a zero dimension).
	LeafBytes []int
	// Detailed makes Claim count CAS successes, CAS failures and retries
	// after a full ring (Stats). Off, they cost one predictable branch.
	Detailed bool
	// Shared puts the ring in a memfd mapped MAP_SHARED instead of private
	// anonymous memory, so that another process given FD can map the same
	// slabs. It takes hugetlbfs pages where enough are reserved and free,
	// shmem transparent huge pages where the host allows them, base pages
	// otherwise; Memory().Kind says which. Off by default: the anonymous
	// ring gets transparent huge pages on more hosts (shmem's are off by
	// the kernel's default).
	Shared bool
}

// cursor is an absolute position on a cache line of its own: 8 bytes of value,
// 120 of padding, since adjacent-line prefetch pairs 64-byte lines on x86.
type cursor struct {
	v atomic.Uint64
	_ [120]byte
}

// slabState is the per-slab commit counter, padded like a cursor so writers
// of neighbouring slabs do not share a line.
type slabState struct {
	// commit is the number of samples of the slab's current batch that are
	// fully written. Writers add (Commit); the consumer loads it (Next) and
	// resets it to zero before releasing the slab.
	commit atomic.Uint64
	_      [120]byte
}

// Reservation is a run of N consecutive slots starting at absolute position
// Start, claimed by one writer. It never spans two slabs.
type Reservation struct {
	Start uint64
	N     int
}

// Ring is the slab ring. Its methods are safe for concurrent use by many
// writers and one consumer, as documented on each.
type Ring struct {
	// Read-only after New.
	mapping   []byte // what was mapped, guards included (unix.Munmap wants it whole)
	mem       []byte // the slabs, inside mapping
	batch     uint64 // BatchSize
	numSlabs  uint64 // NumSlabs
	capacity  uint64 // NumSlabs · BatchSize
	slabBytes int    // bytes per slab, a multiple of BlockAlign
	leafBytes []int  // bytes per sample, per leaf
	blockOff  []int  // offset of each leaf's block inside a slab
	slabs     []slabState
	memInfo   MemoryInfo
	fd        int // the memfd of a shared ring, -1 for an anonymous one; closed by Free
	detailed  bool
	ready     chan struct{} // capacity 1; a token means "some slab filled up"
	done      chan struct{} // closed by Close
	spaceMu   sync.Mutex    // guards spaceCond and wakers; see WaitSpace
	spaceCond sync.Cond
	wakers    []Waker // registered by NotifySpace, woken and cleared by Release
	// returnMu guards returned, the reservations given back by Return and
	// not yet claimed again; nReturned is their count, loaded lock-free
	// by every claim.
	returnMu  sync.Mutex
	returned  []Reservation
	nReturned atomic.Int32
	_         [128]byte

	// write is the next unclaimed position. Writers CAS it forward
	// (Reserve); the CAS is the claim and publishes nothing else.
	write cursor
	// released is the first position the consumer has not given back.
	// The consumer adds BatchSize to it (release) after resetting the slab's
	// commit count; writers load it to compute free space, and that load
	// acquires the reset.
	released cursor

	// spaceWaiters counts writers inside WaitSpace and wakers registered
	// by NotifySpace. Writers add under
	// spaceMu before their last check; the consumer loads it after advancing
	// released and broadcasts if non-zero, so no wake is lost.
	spaceWaiters atomic.Int32
	// notifies counts consumer wakes (one per completed batch). Written by
	// the completing writer, read by Stats.
	notifies atomic.Uint64
	// closed is set once by Close; read by everyone.
	closed atomic.Bool
	_      [128]byte

	// Writer counters, added by Claim, read by Stats. blocked counts claims
	// that found the ring full; the others are kept only when detailed.
	// Their own lines: a claim that adds to them must not disturb the
	// cursors, nor the consumer's fields below. As after a cursor, 120
	// bytes follow the last of them, so that no 128-byte block holds both
	// wherever the allocator places the Ring (32 + 96 bytes did only when
	// it was 128-aligned).
	blocked, casSuccess, casFailure, retries atomic.Uint64
	_                                        [120]byte

	// waiting is set by the consumer before it blocks in Next, after which
	// it looks at the counter once more; a writer completing a batch
	// loads it after its add and sends a token only when it is set.
	waiting atomic.Bool
	_       [124]byte

	// Consumer-only state: written and read by the goroutine calling Next.
	next    uint64        // number of batches handed out so far
	holding bool          // whether batch next-1 is still held by the consumer
	spin    time.Duration // SetSpin's
}

// New maps and pre-faults a ring of the given layout.
func New(l Layout) (*Ring, error) {
	if l.BatchSize < 1 {
		return nil, fmt.Errorf("%w: batch size %d, must be at least 1", ErrLayout, l.BatchSize)
	}
	if l.NumSlabs < 2 {
		return nil, fmt.Errorf("%w: %d slabs, must be at least 2", ErrLayout, l.NumSlabs)
	}
	if len(l.LeafBytes) == 0 {
		return nil, fmt.Errorf("%w: no leaves", ErrLayout)
	}
	r := &Ring{
		batch:     uint64(l.BatchSize),
		numSlabs:  uint64(l.NumSlabs),
		leafBytes: append([]int(nil), l.LeafBytes...),
		detailed:  l.Detailed,
		blockOff:  make([]int, len(l.LeafBytes)),
		ready:     make(chan struct{}, 1),
		done:      make(chan struct{}),
		fd:        -1,
	}
	r.spaceCond.L = &r.spaceMu

	// Slab layout, in uint64 with overflow checks: hostile sizes must fail
	// here, not wrap.
	var off uint64
	for j, n := range l.LeafBytes {
		if n < 0 {
			return nil, fmt.Errorf("%w: leaf %d has %d bytes", ErrLayout, j, n)
		}
		r.blockOff[j] = int(off)
		hi, block := bits.Mul64(uint64(n), r.batch)
		if hi != 0 || block > maxRingBytes {
			return nil, fmt.Errorf("%w: leaf %d block of %d×%d bytes", ErrTooLarge, j, l.BatchSize, n)
		}
		off = alignUp(off+block, BlockAlign)
		if off > maxRingBytes {
			return nil, fmt.Errorf("%w: slab over %d bytes", ErrTooLarge, uint64(maxRingBytes))
		}
	}
	if off == 0 {
		off = BlockAlign // all leaves empty: keep slabs distinct
	}
	hi, total := bits.Mul64(off, r.numSlabs)
	if hi != 0 || total > maxRingBytes || total > math.MaxInt {
		return nil, fmt.Errorf("%w: %d slabs of %d bytes", ErrTooLarge, l.NumSlabs, off)
	}
	hi, capacity := bits.Mul64(r.batch, r.numSlabs)
	if hi != 0 || capacity > math.MaxInt {
		return nil, fmt.Errorf("%w: %d slabs of %d samples", ErrTooLarge, l.NumSlabs, l.BatchSize)
	}
	r.slabBytes = int(off)
	r.slabs = make([]slabState, l.NumSlabs)
	r.capacity = capacity

	mapping, mem, fd, info, err := mapRing(int(alignUp(total, hugePageSize)), l.Shared)
	if err != nil {
		return nil, err
	}
	r.mapping, r.mem, r.fd, r.memInfo = mapping, mem, fd, info
	return r, nil
}

func alignUp(n, a uint64) uint64 { return (n + a - 1) &^ (a - 1) }

func addrOf(b []byte) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(b)) }

// BatchSize returns the number of samples per batch.
func (r *Ring) BatchSize() int { return int(r.batch) }

// NumSlabs returns the number of slabs.
func (r *Ring) NumSlabs() int { return int(r.numSlabs) }

// Capacity returns the number of slots: NumSlabs · BatchSize.
func (r *Ring) Capacity() int { return int(r.capacity) }

// Memory says how the ring's memory was mapped.
func (r *Ring) Memory() MemoryInfo { return r.memInfo }

// FD returns the memfd holding a shared ring (Layout.Shared), or -1 for an
// anonymous ring and after Free. The ring owns it and closes it in Free;
// a process it is sent to (SCM_RIGHTS) receives a descriptor of its own,
// which Free leaves open.
// Offsets into it are offsets into the mapping: LeafBlock(s, j) starts at
// byte s·SlabBytes() + LeafOffset(j). Its size is sealed (F_SEAL_SHRINK,
// F_SEAL_GROW), so that no holder of the fd can cut the mapping short.
func (r *Ring) FD() int { return r.fd }

// SlabBytes returns the bytes between the starts of consecutive slabs in
// the mapping, a multiple of BlockAlign.
func (r *Ring) SlabBytes() int { return r.slabBytes }

// LeafOffset returns the offset of leaf j's block inside every slab.
func (r *Ring) LeafOffset(j int) int { return r.blockOff[j] }

// LeafBlock returns leaf j's block of slab s: BatchSize·LeafBytes[j] bytes.
// The slice views ring memory, which stays mapped until Free.
func (r *Ring) LeafBlock(s, j int) []byte {
	base := s*r.slabBytes + r.blockOff[j]
	return r.mem[base : base+int(r.batch)*r.leafBytes[j] : base+int(r.batch)*r.leafBytes[j]]
}

// Slot returns the bytes of leaf j of the slot at absolute position pos.
// The caller must hold a reservation covering pos.
func (r *Ring) Slot(pos uint64, j int) []byte {
	slab := int((pos / r.batch) % r.numSlabs)
	off := slab*r.slabBytes + r.blockOff[j] + int(pos%r.batch)*r.leafBytes[j]
	return r.mem[off : off+r.leafBytes[j] : off+r.leafBytes[j]]
}

// Reserve claims up to want consecutive slots with one successful CAS,
// capped at the free space and at the end of the current batch. It returns
// ok == false when the ring is full (or closed). casFailures counts the CAS
// attempts lost to other writers, for the detailed metrics.
//
// Reserve may be called by any number of writers at once. Each successful
// reservation must be followed by Commit once its slots are written.
func (r *Ring) Reserve(want int) (res Reservation, casFailures int, ok bool) {
	if want < 1 || r.closed.Load() {
		return Reservation{}, 0, false
	}
	for {
		w := r.write.v.Load()
		// This load of released acquires the consumer's reset of the slab
		// counters for every slot up to released+capacity.
		free := r.released.v.Load() + r.capacity - w
		if free == 0 {
			return Reservation{}, casFailures, false
		}
		n := min(uint64(want), free, r.batch-w%r.batch)
		if r.write.v.CompareAndSwap(w, w+n) {
			return Reservation{Start: w, N: int(n)}, casFailures, true
		}
		casFailures++
	}
}

// Waker is what NotifySpace wakes: an event loop that does not block on a
// full ring (an ingress worker's poller).
type Waker interface{ Wake() }

// TryClaim reserves up to want slots without waiting: slots given back by
// Return first, then new ones (Reserve). It reports false when the ring is
// full or closed, and keeps the CAS counters of detailed layouts.
//
// TryClaim may be called by any number of writers at once.
func (r *Ring) TryClaim(want int) (Reservation, bool) {
	if want < 1 {
		return Reservation{}, false
	}
	// One atomic load per claim: returned slots are rare (a short read).
	if r.nReturned.Load() > 0 {
		if res, ok := r.takeReturned(want); ok {
			return res, true
		}
	}
	res, fails, ok := r.Reserve(want)
	if r.detailed {
		if fails > 0 {
			r.casFailure.Add(uint64(fails))
		}
		if ok {
			r.casSuccess.Add(1)
		}
	}
	return res, ok
}

// Return gives back the slots of res, claimed and not written; res must
// come from a claim and hold none of its writer's committed slots.
//
// If no slot was claimed after res, the write cursor simply moves back and
// the slots are claimed again in order. Otherwise they go on a list that
// every claim takes from first, lowest position first, so their batch still
// completes; a sample that fills one may then sit ahead, in the batch, of
// samples its own connection sent before it.
func (r *Ring) Return(res Reservation) {
	if res.N < 1 {
		return
	}
	end := res.Start + uint64(res.N)
	// Moving the cursor back is safe against a writer that loaded end
	// before this CAS: its own CAS from end fails, or (once the cursor is
	// back at end) claims from a value that is current again.
	if r.write.v.CompareAndSwap(end, res.Start) {
		return
	}
	r.returnMu.Lock()
	defer r.returnMu.Unlock()
	i := 0
	for i < len(r.returned) && r.returned[i].Start < res.Start {
		i++
	}
	r.returned = slices.Insert(r.returned, i, res)
	// Merge neighbours within one batch, so a claim takes them at once.
	merged := r.returned[:1]
	for _, x := range r.returned[1:] {
		last := &merged[len(merged)-1]
		if last.Start+uint64(last.N) == x.Start && x.Start%r.batch != 0 {
			last.N += x.N
			continue
		}
		merged = append(merged, x)
	}
	clear(r.returned[len(merged):])
	r.returned = merged
	r.nReturned.Store(int32(len(r.returned)))
}

// takeReturned hands out up to want returned slots, lowest first.
func (r *Ring) takeReturned(want int) (Reservation, bool) {
	r.returnMu.Lock()
	defer r.returnMu.Unlock()
	if len(r.returned) == 0 {
		return Reservation{}, false
	}
	head := &r.returned[0]
	res := Reservation{Start: head.Start, N: min(want, head.N)}
	head.Start += uint64(res.N)
	head.N -= res.N
	if head.N == 0 {
		r.returned = append(r.returned[:0], r.returned[1:]...)
		r.nReturned.Store(int32(len(r.returned)))
	}
	return res, true
}

// NotifySpace is WaitSpace for event loops: it registers w to be woken once,
// at the next Release (or Close), and counts the writer blocked. It
// registers nothing and returns false if a slot is free already, so the
// caller claims again instead of waiting. A registered waker is woken
// once; to wait again, register again.
func (r *Ring) NotifySpace(w Waker) bool {
	r.spaceMu.Lock()
	defer r.spaceMu.Unlock()
	// Registering before the check pairs with Release's advance-then-load,
	// as in WaitSpace.
	r.spaceWaiters.Add(1)
	if r.closed.Load() || r.write.v.Load() != r.released.v.Load()+r.capacity || r.nReturned.Load() > 0 {
		r.spaceWaiters.Add(-1)
		return false
	}
	r.wakers = append(r.wakers, w)
	r.blocked.Add(1)
	return true
}

// Claim is the one writer loop for writers that may block: it claims up to
// want slots (TryClaim), waiting while the ring is full (WaitSpace), and
// keeps the writer counters: a claim that waits counts once in Blocked.
// Claim returns ErrClosed once the ring is closed, and ctx's error if ctx
// is done before a slot is free; either way it holds no slot. Every
// reservation it returns must be committed.
//
// Claim may be called by any number of writers at once.
func (r *Ring) Claim(ctx context.Context, want int) (Reservation, error) {
	blocked := false
	for {
		if res, ok := r.TryClaim(want); ok {
			return res, nil
		}
		if r.closed.Load() {
			return Reservation{}, ErrClosed
		}
		if !blocked {
			blocked = true
			r.blocked.Add(1)
		}
		if r.detailed {
			r.retries.Add(1)
		}
		if err := r.WaitSpace(ctx); err != nil {
			return Reservation{}, err
		}
	}
}

// Commit marks the reservation's slots as written. The writer whose commit
// completes a batch wakes the consumer; Commit reports whether it did.
func (r *Ring) Commit(res Reservation) (completed bool) {
	completed, _ = r.commit(res)
	return completed
}

// CommitWake is Commit, reporting whether the commit completed a batch and
// woke the consumer waiting for it: a writer that then yields its
// processor lets the consumer run at once on it.
func (r *Ring) CommitWake(res Reservation) (woke bool) {
	_, woke = r.commit(res)
	return woke
}

func (r *Ring) commit(res Reservation) (completed, woke bool) {
	s := (res.Start / r.batch) % r.numSlabs
	// The add publishes this writer's copies into the slots to the consumer,
	// which loads the counter before reading the slab.
	if r.slabs[s].commit.Add(uint64(res.N)) != r.batch {
		return false, false
	}
	r.notifies.Add(1)
	// A consumer that is not waiting (it spins, or it is still reading the
	// last batch) looks at the counter before it waits: no token needed.
	if !r.waiting.Load() {
		return true, false
	}
	// One token is enough: the consumer re-checks the counter of the slab it
	// wants after every token, so a token already waiting covers this batch.
	select {
	case r.ready <- struct{}{}:
		return true, true
	default:
		return true, false
	}
}

// Next gives back the batch handed out by the previous call (its views die
// now) and waits until the next batch is complete. It returns the batch's
// slab index; the slab's memory is the consumer's until the next call of
// Next or Release. Only one goroutine at a time may call Next and Release.
//
// How it waits is SetSpin's: it parks at once (the default), or spins on
// the slab's commit counter first.
//
// Next returns ErrClosed once the ring is closed, and ctx's error if ctx is
// done first.
func (r *Ring) Next(ctx context.Context) (slab int, err error) {
	r.Release()
	slab, err = r.await(ctx, nil)
	r.holding = err == nil
	return slab, err
}

// await waits until batch r.next is complete and hands it out: Next's and
// Take's wait. One goroutine at a time. A receive from kick (nil: never)
// ends the wait with errKicked, handing nothing out.
func (r *Ring) await(ctx context.Context, kick <-chan struct{}) (slab int, err error) {
	s := r.next % r.numSlabs
	if r.spin != 0 && !r.ready1(s) {
		if err := r.spinFor(ctx, s, kick); err != nil {
			return 0, err
		}
	}
	for {
		if r.closed.Load() {
			return 0, ErrClosed
		}
		if r.ready1(s) {
			r.waiting.Store(false)
			r.next++
			return int(s), nil
		}
		// Announce the wait, then look again: either that look sees the
		// completing commit, or the committer sees waiting and sends.
		if !r.waiting.Load() {
			r.waiting.Store(true)
			continue
		}
		select {
		case <-r.ready:
		case <-r.done:
		case <-ctx.Done():
			r.waiting.Store(false)
			return 0, ctx.Err()
		case <-kick:
			r.waiting.Store(false)
			return 0, errKicked
		}
	}
}

// errKicked ends an await whose kick channel fired.
var errKicked = errors.New("ringbuf: wait kicked")

// ready1 reports whether slab s holds a complete batch. Its load acquires
// every writer's copy into the slab.
func (r *Ring) ready1(s uint64) bool { return r.slabs[s].commit.Load() == r.batch }

// spinCheck is how many spins pass between looks at the clock and at ctx.
const spinCheck = 64

// spinFor spins until slab s is complete, the ring closes, ctx is done, or
// the spin time has passed (never, for a negative spin). It yields the
// processor between looks, so that on a machine with fewer cores than
// busy goroutines the writers it waits for still run.
func (r *Ring) spinFor(ctx context.Context, s uint64, kick <-chan struct{}) error {
	var deadline time.Time
	if r.spin > 0 {
		deadline = time.Now().Add(r.spin)
	}
	for i := 1; ; i++ {
		if r.ready1(s) || r.closed.Load() {
			return nil
		}
		if i%spinCheck == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
			if len(kick) > 0 {
				<-kick
				return errKicked
			}
			if r.spin > 0 && time.Now().After(deadline) {
				return nil
			}
		}
		runtime.Gosched()
	}
}

// SetSpin sets how Next waits: 0 parks at once (the default, and the
// cheapest at idle); d > 0 spins on the commit counter for up to d, then
// parks; d < 0 spins until the batch is complete (for a learner with a
// core of its own). Call it before the consumer's first Next.
func (r *Ring) SetSpin(d time.Duration) { r.spin = d }

// HasSpace reports whether a claim now would find a slot: a free one, or
// one given back. Any goroutine may call it.
func (r *Ring) HasSpace() bool {
	return r.write.v.Load() != r.released.v.Load()+r.capacity || r.nReturned.Load() > 0
}

// Closed reports whether Close was called.
func (r *Ring) Closed() bool { return r.closed.Load() }

// Holding reports whether the consumer holds a batch. Consumer only.
func (r *Ring) Holding() bool { return r.holding }

// Release gives back the batch that Next handed out, if one is held.
// Consumer only.
func (r *Ring) Release() {
	if !r.holding {
		return
	}
	r.holding = false
	r.releaseSlab((r.next - 1) % r.numSlabs)
}

// releaseSlab hands slab s, the oldest not yet released, back to the
// writers.
func (r *Ring) releaseSlab(s uint64) {
	r.slabs[s].commit.Store(0)
	// This add hands the slab's slots to writers; it orders the reset above
	// before any writer's claim of them.
	r.released.v.Add(r.batch)
	if r.spaceWaiters.Load() > 0 {
		r.wakeSpace()
	}
}

// WaitSpace blocks until the ring has a free slot or is closed; it returns
// ErrClosed in the latter case, and ctx's error if ctx is done first.
// Writers call it after Reserve found the ring full.
//
// With a ctx that is never done (ctx.Done() == nil, as for
// context.Background()) it waits on a condition variable; otherwise on a
// pooled channel registered like a Waker, so that it can also watch ctx.
// Neither allocates once warm.
func (r *Ring) WaitSpace(ctx context.Context) error {
	if ctx.Done() != nil {
		return r.waitSpaceOrDone(ctx)
	}
	r.spaceMu.Lock()
	defer r.spaceMu.Unlock()
	// Registering before the check pairs with Release's advance-then-load:
	// either this check sees the advance, or Release sees the waiter.
	r.spaceWaiters.Add(1)
	defer r.spaceWaiters.Add(-1)
	for !r.closed.Load() && r.write.v.Load() == r.released.v.Load()+r.capacity {
		r.spaceCond.Wait()
	}
	if r.closed.Load() {
		return ErrClosed
	}
	return nil
}

// spaceWaiter is WaitSpace's Waker for a cancellable wait: wakeSpace sends
// one token, under spaceMu, and drops it from the wakers.
type spaceWaiter struct{ c chan struct{} } // capacity 1

func (w *spaceWaiter) Wake() {
	select {
	case w.c <- struct{}{}:
	default:
	}
}

// spaceWaiterPool holds idle *spaceWaiter, each with an empty channel.
var spaceWaiterPool = sync.Pool{New: func() any { return &spaceWaiter{c: make(chan struct{}, 1)} }}

// waitSpaceOrDone is WaitSpace for a ctx that may end. It registers a
// pooled waiter as NotifySpace registers a Waker (without counting a
// blocked writer: Claim does that), then waits for its token, Close or
// ctx. A waiter that leaves without its token takes itself off the list
// under spaceMu, where wakeSpace sends, so no token is left behind in a
// channel that goes back to the pool.
func (r *Ring) waitSpaceOrDone(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	w := spaceWaiterPool.Get().(*spaceWaiter)
	defer spaceWaiterPool.Put(w)
	r.spaceMu.Lock()
	// Registering before the check pairs with Release's advance-then-load,
	// as in WaitSpace.
	r.spaceWaiters.Add(1)
	if r.closed.Load() || r.write.v.Load() != r.released.v.Load()+r.capacity || r.nReturned.Load() > 0 {
		r.spaceWaiters.Add(-1)
		r.spaceMu.Unlock()
		if r.closed.Load() {
			return ErrClosed
		}
		return nil
	}
	r.wakers = append(r.wakers, w)
	r.spaceMu.Unlock()
	select {
	case <-w.c:
		return nil // wakeSpace took w off the list
	case <-r.done:
	case <-ctx.Done():
	}
	r.spaceMu.Lock()
	if i := slices.Index(r.wakers, Waker(w)); i >= 0 {
		r.wakers = slices.Delete(r.wakers, i, i+1)
		r.spaceWaiters.Add(-1)
	} else {
		<-w.c // woken meanwhile: the token was sent under spaceMu
	}
	r.spaceMu.Unlock()
	if r.closed.Load() {
		return ErrClosed
	}
	return ctx.Err()
}

// Stats is a snapshot of the ring's counters.
type Stats struct {
	// Inserted is the number of samples committed since New.
	Inserted uint64
	// Stored is the number committed and not yet handed out in a batch.
	Stored uint64
	// Notifies is the number of consumer wakes, one per completed batch.
	Notifies uint64
	// Batches is the number of batches handed out.
	Batches uint64
	// Blocked counts the claims that found the ring full and waited.
	Blocked uint64
	// CASSuccess, CASFailure and Retries count successful reservations,
	// reservation CASes lost to another writer, and reservations retried
	// after a full ring; zero unless the layout is Detailed.
	CASSuccess, CASFailure, Retries uint64
}

// Stats returns a snapshot of the counters. Consumer only (it reads the
// consumer's state), between calls of Next.
func (r *Ring) Stats() Stats {
	st := Stats{
		Notifies: r.notifies.Load(), Batches: r.next, Blocked: r.blocked.Load(),
		CASSuccess: r.casSuccess.Load(), CASFailure: r.casFailure.Load(), Retries: r.retries.Load(),
	}
	held := uint64(math.MaxUint64)
	if r.holding {
		held = (r.next - 1) % r.numSlabs
	}
	for s := range r.slabs {
		if uint64(s) != held {
			st.Stored += r.slabs[s].commit.Load()
		}
	}
	st.Inserted = r.next*r.batch + st.Stored
	return st
}

// Close wakes the consumer and every writer waiting for space; from now on
// Reserve fails and Next and WaitSpace return ErrClosed. It is idempotent.
// Close does not unmap the memory: see Free.
func (r *Ring) Close() {
	if r.closed.Swap(true) {
		return
	}
	close(r.done)
	r.wakeSpace()
}

// wakeSpace wakes every writer in WaitSpace and every registered waker.
// Wakers are woken under spaceMu, so the list is reused without
// allocating; a Waker must not call back into the ring.
func (r *Ring) wakeSpace() {
	r.spaceMu.Lock()
	defer r.spaceMu.Unlock()
	r.spaceCond.Broadcast()
	for i, w := range r.wakers {
		w.Wake()
		r.wakers[i] = nil
	}
	r.spaceWaiters.Add(-int32(len(r.wakers)))
	r.wakers = r.wakers[:0]
}

// Free unmaps the ring and closes its memfd, if shared. The caller must
// make sure that no writer is between Reserve and Commit and that no view
// of the memory is used again; any access after Free faults. Another
// process that mapped the memfd keeps its mapping, and with it the pages.
// Free closes the ring if needed and is idempotent.
func (r *Ring) Free() error {
	r.Close()
	var errs []error
	if r.mapping != nil {
		mapping := r.mapping
		r.mapping, r.mem = nil, nil
		if err := unix.Munmap(mapping); err != nil {
			errs = append(errs, os.NewSyscallError("munmap", err))
		}
	}
	if r.fd >= 0 {
		fd := r.fd
		r.fd = -1
		if err := unix.Close(fd); err != nil {
			errs = append(errs, os.NewSyscallError("close memfd", err))
		}
	}
	return errors.Join(errs...)
}
