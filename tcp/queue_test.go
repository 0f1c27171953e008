package tcp

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// publish fills the next buffer of q with sample(src, seq) and publishes it.
func publish(t testing.TB, q *Queue, src, seq int) error {
	b, err := q.Acquire(context.Background())
	if err != nil {
		return err
	}
	if len(b.Data) != payload {
		t.Errorf("buffer of %d bytes, want %d", len(b.Data), payload)
	}
	copy(b.Data, sample(src, seq))
	q.Publish(b)
	return nil
}

// TestQueuesExactlyOnce runs producers on queues spread over the workers,
// against a ring small enough to wrap many times and to make producers
// wait for their buffers, and checks that every sample arrives exactly
// once, in its producer's order, intact.
func TestQueuesExactlyOnce(t *testing.T) {
	const producers, batch = 6, 16
	perProducer := 4000
	if testing.Short() {
		perProducer = 400
	}
	r := newRing(t, batch, 3)
	p := newPool(t, r, 2, nil)

	var wg sync.WaitGroup
	for src := range producers {
		q, err := p.NewQueue(1 + src%4) // depth 1 waits for every buffer
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer q.Close()
			for seq := range perProducer {
				if err := publish(t, q, src, seq); err != nil {
					t.Errorf("producer %d at %d: %v", src, seq, err)
					return
				}
			}
		})
	}
	if st := p.Stats(); st.Queues != producers {
		t.Errorf("%d queues registered, want %d", st.Queues, producers)
	}

	next := make([]int, producers)
	for got := 0; got < producers*perProducer; got += batch {
		for _, s := range nextBatch(t, r) {
			src, seq := decode(t, s)
			if src >= producers || seq != next[src] {
				t.Fatalf("after %d samples: producer %d seq %d, want seq %d", got, src, seq, next[src])
			}
			next[src]++
		}
	}
	wg.Wait()
	eventually(t, "every queue pruned", func() bool { return p.Stats().Queues == 0 })
	st := p.Stats()
	if st.QueueDepthSum != 0 {
		t.Errorf("stats %+v: samples left in queues", st)
	}
	if st.PushBlocked == 0 {
		// Depth-1 queues find their one buffer gone at least once per
		// sample the worker has not copied yet; none blocking means the
		// test did not exercise Acquire's wait.
		t.Logf("no producer found its queue full")
	}
	if rs := r.Stats(); rs.Inserted != uint64(producers*perProducer) {
		t.Errorf("ring inserted %d, want %d", rs.Inserted, producers*perProducer)
	}
}

// TestAcquireWaitsForRecycle holds a producer's only buffer in a worker
// stuck on a full ring, and checks that Acquire waits until the consumer
// frees space and the worker hands the buffer back; and that it returns
// ErrClosed once the pool closes under it.
func TestAcquireWaitsForRecycle(t *testing.T) {
	r := newRing(t, 1, 2)
	p := newPool(t, r, 1, nil)
	for range 2 {
		res, err := r.Claim(context.Background(), 1)
		if err != nil {
			t.Fatal(err)
		}
		r.Commit(res)
	}
	q, err := p.NewQueue(1)
	if err != nil {
		t.Fatal(err)
	}
	if err := publish(t, q, 1, 0); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the worker blocked", func() bool { return r.Stats().Blocked == 1 })

	// waitingAcquire publishes seq from a goroutine and returns once its
	// Acquire has found no buffer.
	acquired := make(chan error, 1)
	waitingAcquire := func(seq int) {
		blocked := p.Stats().PushBlocked
		go func() { acquired <- publish(t, q, 1, seq) }()
		eventually(t, "the producer blocked", func() bool { return p.Stats().PushBlocked > blocked })
	}
	waitingAcquire(1)
	select {
	case err := <-acquired:
		t.Fatalf("Acquire returned (%v) while its buffer was in use", err)
	default:
	}

	nextBatch(t, r) // the test's first sample, held
	nextBatch(t, r) // gives it back: the worker copies seq 0 and recycles its buffer
	if err := <-acquired; err != nil {
		t.Fatal(err)
	}
	for seq := range 2 {
		if _, s := decode(t, nextBatch(t, r)[0]); s != seq {
			t.Fatalf("got seq %d, want %d", s, seq)
		}
	}

	// Stuck again (one slot free, two samples), then closed.
	blocked := r.Stats().Blocked
	for seq := 2; seq < 4; seq++ {
		if err := publish(t, q, 1, seq); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the worker blocked again", func() bool { return r.Stats().Blocked > blocked })
	waitingAcquire(4)
	r.Close()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-acquired; !errors.Is(err, ErrClosed) {
		t.Fatalf("Acquire through Close = %v, want ErrClosed", err)
	}
	if _, err := q.Acquire(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Acquire after Close = %v, want ErrClosed", err)
	}
	q.Close() // after the pool: nothing to wake, no harm
}

// TestAcquireHonoursContext: a producer parked in Acquire, its only buffer
// held by a worker stuck on a full ring, returns ctx's error once ctx
// ends; the queue goes on as if that Acquire had never been, and delivers
// every sample published before and after it, once and in order.
func TestAcquireHonoursContext(t *testing.T) {
	r := newRing(t, 1, 2)
	p := newPool(t, r, 1, nil)
	for range 2 {
		res, err := r.Claim(context.Background(), 1)
		if err != nil {
			t.Fatal(err)
		}
		r.Commit(res)
	}
	q, err := p.NewQueue(1)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := publish(t, q, 1, 0); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the worker blocked", func() bool { return r.Stats().Blocked == 1 })

	ctx, cancel := context.WithCancel(context.Background())
	blocked := p.Stats().PushBlocked
	acquired := make(chan error, 1)
	go func() {
		b, err := q.Acquire(ctx)
		if err == nil {
			q.Publish(b) // not expected; keeps the buffer accounted for
		}
		acquired <- err
	}()
	eventually(t, "the producer blocked", func() bool { return p.Stats().PushBlocked > blocked })
	cancel()
	select {
	case err := <-acquired:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Acquire through cancel = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Acquire still parked 10s after its context was cancelled")
	}
	if _, err := q.Acquire(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Acquire with a cancelled context and no free buffer = %v, want context.Canceled", err)
	}

	// The consumer frees the ring: the worker recycles the buffer and the
	// next samples go through.
	go func() {
		for seq := 1; seq < 3; seq++ {
			if err := publish(t, q, 1, seq); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	nextBatch(t, r) // the test's two samples: the first, held...
	nextBatch(t, r) // ...then the second, as the first goes back
	for seq := range 3 {
		if _, s := decode(t, nextBatch(t, r)[0]); s != seq {
			t.Fatalf("got seq %d, want %d", s, seq)
		}
	}
}

// TestQueueCloseDeliversPublished closes a queue right after publishing:
// what was published is still delivered, then the queue is pruned.
func TestQueueCloseDeliversPublished(t *testing.T) {
	r := newRing(t, 4, 2)
	p := newPool(t, r, 1, nil)
	q, err := p.NewQueue(4)
	if err != nil {
		t.Fatal(err)
	}
	for seq := range 4 {
		if err := publish(t, q, 3, seq); err != nil {
			t.Fatal(err)
		}
	}
	q.Close()
	for i, s := range nextBatch(t, r) {
		if _, seq := decode(t, s); seq != i {
			t.Fatalf("slot %d holds seq %d", i, seq)
		}
	}
	eventually(t, "the queue pruned", func() bool { return p.Stats().Queues == 0 })
	// A pruned queue's worker takes new queues again.
	if _, err := p.NewQueue(1); err != nil {
		t.Fatal(err)
	}
}

// TestInsertRespectsBatchBoundaries has the worker insert more buffers in
// one round than a batch holds: they take one reservation per batch, in
// order.
func TestInsertRespectsBatchBoundaries(t *testing.T) {
	r := newRing(t, 4, 4)
	w := newBareWorker(t, r)
	q := &Queue{worker: w, pool: w.pool}
	var bufs []*Buffer
	for seq := range 10 {
		bufs = append(bufs, &Buffer{Data: sample(6, seq), owner: q})
	}
	if n, err := w.insert(bufs, false); err != nil || n != 10 {
		t.Fatalf("insert = %d, %v; want all 10", n, err)
	}
	if st := r.Stats(); st.CASSuccess != 3 || st.Inserted != 10 {
		t.Fatalf("ring stats %+v: want 10 samples in 3 reservations", st)
	}
	for pos := range uint64(10) {
		if _, seq := decode(t, slotSample(r, pos)); seq != int(pos) {
			t.Fatalf("slot %d holds seq %d", pos, seq)
		}
	}
	// The ring holds 16: six more fit, and the rest wait for the learner.
	if n, err := w.insert(bufs, false); err != errRingFull || n != 6 {
		t.Fatalf("insert into a ring with 6 free slots = %d, %v; want 6, errRingFull", n, err)
	}
}
