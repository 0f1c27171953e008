//go:build linux

package echo_test

import (
	"context"
	"encoding/json"
	"errors"
	"expvar"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/pytree"
	"github.com/seed-a9ef92a1/echo/ringbuf"
)

func newServer(t testing.TB, batch int, opts ...echo.Option) *echo.Server {
	t.Helper()
	return newServerFor(t, numbered(0, 0), batch, opts...)
}

// checkBatch verifies every row of a batch against numbered and returns the
// (producer, seq) pairs in row order.
func checkBatch(t testing.TB, smp echo.Sample, batch int) [][2]int {
	t.Helper()
	tree := smp.Batch.(map[string]any)
	ids, err := tree["z_id"].(pytree.Array).Int64()
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := tree["payload"].(pytree.Array).Uint8()
	nested := tree["nested"].(map[string]any)
	b, _ := nested["b"].(pytree.Array).Float32()
	a, _ := nested["a"].(pytree.Array).Int32()
	pair, _ := tree["pair"].(pytree.Tuple)[0].(pytree.Array).Uint16()
	if len(ids) != 2*batch || len(payload) != 13*batch || len(b) != 3*batch || len(a) != batch || len(pair) != batch {
		t.Fatalf("batch leaves have lengths %d %d %d %d %d for batch %d", len(ids), len(payload), len(b), len(a), len(pair), batch)
	}
	rows := make([][2]int, batch)
	for i := range batch {
		p, seq := int(ids[2*i]), int(ids[2*i+1])
		want := numbered(p, seq)
		wantPayload, _ := want["payload"].(pytree.Array).Uint8()
		for k := range 13 {
			if payload[13*i+k] != wantPayload[k] {
				t.Fatalf("row %d (producer %d seq %d): payload byte %d is %d, want %d", i, p, seq, k, payload[13*i+k], wantPayload[k])
			}
		}
		if b[3*i] != float32(seq) || b[3*i+1] != float32(p) || b[3*i+2] != -1 || a[i] != int32(seq^p) || pair[i] != uint16(seq) {
			t.Fatalf("row %d (producer %d seq %d): nested leaves corrupted", i, p, seq)
		}
		rows[i] = [2]int{p, seq}
	}
	return rows
}

// TestConcurrentSubmitExactlyOnce has many goroutines submitting while one
// samples, on a ring small enough to wrap thousands of times.
func TestConcurrentSubmitExactlyOnce(t *testing.T) {
	const producers, batch = 8, 8
	perProducer := 4000
	if testing.Short() {
		perProducer = 500
	}
	s := newServer(t, batch, echo.WithNumBuffers(2))
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			for seq := range perProducer {
				if err := s.Submit(t.Context(), numbered(p, seq)); err != nil {
					t.Errorf("producer %d seq %d: %v", p, seq, err)
					return
				}
			}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	next := make([]int, producers)
	batches := producers * perProducer / batch
	var last echo.SampleInfo
	for range batches {
		smp, err := s.Sample(ctx)
		if err != nil {
			t.Fatalf("Sample: %v (next seqs %v)", err, next)
		}
		for _, r := range checkBatch(t, smp, batch) {
			if r[0] < 0 || r[0] >= producers || r[1] != next[r[0]] {
				t.Fatalf("got producer %d seq %d, want seq %d next", r[0], r[1], next[min(max(r[0], 0), producers-1)])
			}
			next[r[0]]++
		}
		last = smp.Info
	}
	wg.Wait()
	for p, n := range next {
		if n != perProducer {
			t.Errorf("producer %d: %d samples delivered, want %d", p, n, perProducer)
		}
	}
	if last.SamplesInsertedTotal != int64(producers*perProducer) || last.NotifyCount != int64(batches) || last.StoreSize != 0 {
		t.Errorf("final info %+v: want %d inserted, %d notifies, 0 stored", last, producers*perProducer, batches)
	}
}

func TestBatchShapesViewRing(t *testing.T) {
	s := newServer(t, 4)
	for seq := range 4 {
		if err := s.Submit(t.Context(), numbered(1, seq)); err != nil {
			t.Fatal(err)
		}
	}
	smp, err := s.Sample(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]int{"nested/a": {4}, "nested/b": {4, 3}, "pair/0": {4}, "payload": {4, 13}, "z_id": {4, 2}}
	leaves, paths, err := pytree.Flatten(smp.Batch)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range paths {
		if fmt.Sprint(leaves[i].Shape()) != fmt.Sprint(want[p]) {
			t.Errorf("leaf %s has shape %v, want %v", p, leaves[i].Shape(), want[p])
		}
		if &leaves[i].Bytes()[0] != &smp.Leaves[i].Bytes()[0] {
			t.Errorf("leaf %s: Batch and Leaves view different memory", p)
		}
	}
	if got := checkBatch(t, smp, 4); got[3] != [2]int{1, 3} {
		t.Errorf("last row %v, want producer 1 seq 3", got[3])
	}
	if smp.Info.SamplesInsertedTotal != 4 || smp.Info.NotifyCount != 1 {
		t.Errorf("info %+v: want 4 inserted, 1 notify", smp.Info)
	}
}

// TestSharedMemoryServer: a server whose ring is shared takes samples and
// hands out batches as the default one does, and says so in Memory.
func TestSharedMemoryServer(t *testing.T) {
	if kind := newServer(t, 4).Memory().Kind; kind != ringbuf.KindAnonymous {
		t.Errorf("default server: ring kind %q, want %q", kind, ringbuf.KindAnonymous)
	}
	s := newServer(t, 4, echo.WithSharedMemory())
	m := s.Memory()
	if !slices.Contains([]string{ringbuf.KindMemfdHugeTLB, ringbuf.KindMemfdTHP, ringbuf.KindMemfd}, m.Kind) || m.Bytes == 0 {
		t.Fatalf("shared server: memory %+v, want a memfd kind", m)
	}
	t.Logf("shared ring: %+v", m)
	for round := range 3 { // wraps the ring of 3 slabs
		for seq := range 4 {
			if err := s.Submit(t.Context(), numbered(round, seq)); err != nil {
				t.Fatal(err)
			}
		}
		smp, err := s.Sample(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range checkBatch(t, smp, 4) {
			if r != [2]int{round, i} {
				t.Fatalf("round %d row %d: producer %d seq %d", round, i, r[0], r[1])
			}
		}
	}
}

func TestCopyOutlivesNextSample(t *testing.T) {
	// One-sample batches in two slabs: every batch overwrites the slab of
	// the batch before the last.
	s := newServer(t, 1, echo.WithNumBuffers(2))
	if err := s.Submit(t.Context(), numbered(2, 0)); err != nil {
		t.Fatal(err)
	}
	var kept []echo.Sample
	for smp, err := range s.Batches(context.Background(), echo.Copied()) {
		if err != nil {
			t.Fatal(err)
		}
		kept = append(kept, smp)
		if len(kept) == 6 {
			break
		}
		if err := s.Submit(t.Context(), numbered(2, len(kept))); err != nil {
			t.Fatal(err)
		}
	}
	for i, k := range kept {
		if rows := checkBatch(t, k, 1); rows[0] != [2]int{2, i} {
			t.Errorf("copied batch %d holds %v, want producer 2 seq %d", i, rows, i)
		}
		if &k.Leaves[0].Bytes()[0] == &kept[(i+2)%6].Leaves[0].Bytes()[0] {
			t.Errorf("copies %d and %d share memory", i, (i+2)%6)
		}
	}
}

func TestRefillRestoresEditedBatch(t *testing.T) {
	s := newServer(t, 1, echo.WithNumBuffers(2))
	for round := range 4 {
		if err := s.Submit(t.Context(), numbered(3, round)); err != nil {
			t.Fatal(err)
		}
		smp, err := s.Sample(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if rows := checkBatch(t, smp, 1); rows[0] != [2]int{3, round} {
			t.Fatalf("round %d got %v", round, rows)
		}
		// A careless learner edits the tree it was handed.
		tree := smp.Batch.(map[string]any)
		delete(tree, "payload")
		tree["extra"] = 1
		smp.Leaves[0] = pytree.Array{}
	}
}

// TestSingleArrayExample: an example may be one array, not a container;
// every batch is then one Array of shape (batchSize, *example.shape).
func TestSingleArrayExample(t *testing.T) {
	s := newServerFor(t, pytree.MustOf(make([]int32, 3)), 2, echo.WithNumBuffers(2))
	for round := range 4 { // every slab twice
		for i := range 2 {
			if err := s.Submit(t.Context(), pytree.MustOf([]int32{int32(round), int32(i), 7})); err != nil {
				t.Fatal(err)
			}
		}
		smp, err := s.Sample(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		a, ok := smp.Batch.(pytree.Array)
		if !ok || a.String() != "int32[2 3]" || len(smp.Leaves) != 1 {
			t.Fatalf("round %d: batch %#v with %d leaves, want one int32[2 3]", round, smp.Batch, len(smp.Leaves))
		}
		got, _ := a.Int32()
		if want := []int32{int32(round), 0, 7, int32(round), 1, 7}; !slices.Equal(got, want) {
			t.Fatalf("round %d: batch %v, want %v", round, got, want)
		}
		if c := smp.Copy(); c.Batch.(pytree.Array).String() != "int32[2 3]" {
			t.Fatalf("copy of a single-array batch is %v", c.Batch)
		}
	}
}

func TestSpecMismatchWritesNothing(t *testing.T) {
	s := newServer(t, 2)
	bad := []struct {
		name string
		edit func(map[string]any)
		msg  string
	}{
		{"shape", func(m map[string]any) { m["payload"] = pytree.MustOf(make([]uint8, 12)) }, "payload: shape [12], expected [13]"},
		{"dtype", func(m map[string]any) { m["z_id"] = pytree.MustOf([]float64{1, 2}) }, "z_id: dtype float64, expected int64"},
		{"nested shape", func(m map[string]any) { m["nested"].(map[string]any)["b"] = pytree.MustOf(make([]float32, 8), 2, 4) }, "nested/b: shape [2 4], expected [3]"},
		{"missing key", func(m map[string]any) { delete(m, "pair") }, "pair: missing key, expected tuple of 2"},
		{"extra key", func(m map[string]any) { m["zz"] = pytree.Scalar(int8(1)) }, "zz: unexpected key"},
		{"not an array", func(m map[string]any) { m["payload"] = make([]uint8, 13) }, "payload: Go []uint8 (not an Array), expected uint8[13]"},
		{"tuple as list", func(m map[string]any) { m["pair"] = []any{pytree.Scalar(uint16(1)), nil} }, "pair: list of 2, expected tuple of 2"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			m := numbered(7, 7)
			tc.edit(m)
			err := s.Submit(t.Context(), m)
			if !errors.Is(err, echo.ErrSpecMismatch) {
				t.Fatalf("Submit = %v, want ErrSpecMismatch", err)
			}
			if want := "echo: spec mismatch: " + tc.msg; err.Error() != want {
				t.Errorf("error %q, want %q", err, want)
			}
		})
	}
	if err := s.Submit(t.Context(), nil); !errors.Is(err, echo.ErrSpecMismatch) {
		t.Errorf("Submit(nil) = %v, want ErrSpecMismatch", err)
	}
	// Nothing of the bad samples reached the ring: the first batch holds
	// exactly the next two good ones.
	for seq := range 2 {
		if err := s.Submit(t.Context(), numbered(4, seq)); err != nil {
			t.Fatal(err)
		}
	}
	smp, err := s.Sample(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if rows := checkBatch(t, smp, 2); rows[0] != [2]int{4, 0} || rows[1] != [2]int{4, 1} {
		t.Errorf("first batch %v, want producer 4 seqs 0,1", rows)
	}
	if smp.Info.SamplesInsertedTotal != 2 {
		t.Errorf("%d samples inserted, want 2", smp.Info.SamplesInsertedTotal)
	}
}

func TestMismatchMessageNamesPathAndValues(t *testing.T) {
	example := map[string]any{"obs": map[string]any{"radars": pytree.MustOf(make([]float32, 40), 8, 5)}}
	s, err := echo.NewServer(example, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	err = s.Submit(t.Context(), map[string]any{"obs": map[string]any{"radars": pytree.MustOf(make([]float32, 48), 8, 6)}})
	want := "echo: spec mismatch: obs/radars: shape [8 6], expected [8 5]"
	if err == nil || err.Error() != want {
		t.Fatalf("Submit error %q, want %q", err, want)
	}
}

func TestNewServerBadInput(t *testing.T) {
	good := numbered(0, 0)
	for _, tc := range []struct {
		name    string
		example any
		batch   int
		opts    []echo.Option
		want    error
	}{
		{"batch 0", good, 0, nil, echo.ErrBadConfig},
		{"batch -3", good, -3, nil, echo.ErrBadConfig},
		{"one buffer", good, 4, []echo.Option{echo.WithNumBuffers(1)}, echo.ErrBadConfig},
		{"no drainers", good, 4, []echo.Option{echo.WithNumDrainers(0)}, echo.ErrBadConfig},
		{"no queue", good, 4, []echo.Option{echo.WithProducerQueueSize(0)}, echo.ErrBadConfig},
		{"no leaves", map[string]any{"a": nil, "b": []any{}}, 4, nil, echo.ErrBadExample},
		{"nil example", nil, 4, nil, echo.ErrBadExample},
		{"non-array leaf", map[string]any{"a": []float32{1}}, 4, nil, echo.ErrBadExample},
		{"int leaf", map[string]any{"a": 3}, 4, nil, echo.ErrBadExample},
		{"ring too large", map[string]any{"a": pytree.MustOf(make([]uint8, 1<<20))}, 1 << 20, nil, echo.ErrRingTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := echo.NewServer(tc.example, tc.batch, tc.opts...)
			if s != nil {
				s.Close()
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("NewServer = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestCloseWakesBlockedSample(t *testing.T) {
	s := newServer(t, 4)
	errc := make(chan error)
	go func() {
		_, err := s.Sample(context.Background())
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, errc, "blocked Sample")
	if err := s.Submit(t.Context(), numbered(0, 0)); !errors.Is(err, echo.ErrClosed) {
		t.Errorf("Submit after Close = %v, want ErrClosed", err)
	}
	if err := s.Start(); !errors.Is(err, echo.ErrClosed) {
		t.Errorf("Start after Close = %v, want ErrClosed", err)
	}
}

func TestCloseWakesSubmitOnFullRing(t *testing.T) {
	s := newServer(t, 2, echo.WithNumBuffers(2))
	for seq := range 4 {
		if err := s.Submit(t.Context(), numbered(0, seq)); err != nil {
			t.Fatal(err)
		}
	}
	errc := make(chan error)
	go func() { errc <- s.Submit(t.Context(), numbered(0, 4)) }()
	time.Sleep(20 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, errc, "blocked Submit")
}

func TestFullRingBlocksThenResumes(t *testing.T) {
	s := newServer(t, 2, echo.WithNumBuffers(2))
	for seq := range 4 {
		if err := s.Submit(t.Context(), numbered(0, seq)); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error)
	go func() { done <- s.Submit(t.Context(), numbered(0, 4)) }()
	select {
	case err := <-done:
		t.Fatalf("Submit into a full ring returned %v without waiting", err)
	case <-time.After(20 * time.Millisecond):
	}
	ctx := context.Background()
	if _, err := s.Sample(ctx); err != nil { // takes batch 0
		t.Fatal(err)
	}
	smp, err := s.Sample(ctx) // releases batch 0: the blocked Submit proceeds
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if smp.Info.PushBlockedCount != 1 {
		t.Errorf("PushBlockedCount %d, want 1", smp.Info.PushBlockedCount)
	}
}

func TestCloseWhileHoldingBatchDefersUnmap(t *testing.T) {
	s, err := echo.NewServer(numbered(0, 0), 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Submit(t.Context(), numbered(5, 5)); err != nil {
		t.Fatal(err)
	}
	smp, err := s.Sample(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The learner may still finish reading its batch after Close.
	if rows := checkBatch(t, smp, 1); rows[0] != [2]int{5, 5} {
		t.Fatalf("batch after Close holds %v", rows)
	}
	if _, err := s.Sample(context.Background()); !errors.Is(err, echo.ErrClosed) {
		t.Fatalf("Sample after Close = %v, want ErrClosed", err)
	}
}

func TestSampleHonoursContext(t *testing.T) {
	s := newServer(t, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := s.Sample(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Sample = %v, want DeadlineExceeded", err)
	}
}

func TestStartTwice(t *testing.T) {
	s := newServer(t, 4)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); !errors.Is(err, echo.ErrStarted) {
		t.Fatalf("second Start = %v, want ErrStarted", err)
	}
}

func TestBatchesEndsOnClose(t *testing.T) {
	s := newServer(t, 1)
	for seq := range 3 {
		if err := s.Submit(t.Context(), numbered(6, seq)); err != nil {
			t.Fatal(err)
		}
	}
	n, errs := 0, 0
	for smp, err := range s.Batches(context.Background()) {
		if err != nil {
			errs++
			if !errors.Is(err, echo.ErrClosed) {
				t.Fatalf("Batches ended with %v, want ErrClosed", err)
			}
			if smp.Batch != nil || smp.Leaves != nil {
				t.Errorf("the error step carries a batch: %+v", smp)
			}
			continue // the iteration must end by itself after the error
		}
		if rows := checkBatch(t, smp, 1); rows[0] != [2]int{6, n} {
			t.Fatalf("batch %d is %v", n, rows)
		}
		n++
		if n == 3 {
			go s.Close()
		}
	}
	if n != 3 || errs != 1 {
		t.Fatalf("iterated %d batches and %d errors, want 3 and 1", n, errs)
	}
}

func TestBatchesEndsWithContext(t *testing.T) {
	s := newServer(t, 1)
	if err := s.Submit(t.Context(), numbered(7, 0)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := 0
	var last error
	for smp, err := range s.Batches(ctx, echo.Copied()) {
		if err != nil {
			last = err
			continue
		}
		if rows := checkBatch(t, smp, 1); rows[0] != [2]int{7, 0} {
			t.Fatalf("batch %d is %v", n, rows)
		}
		n++
		cancel() // the next Sample finds the ring empty and ctx done
	}
	if n != 1 || !errors.Is(last, context.Canceled) {
		t.Fatalf("iterated %d batches, ended with %v; want 1 and context.Canceled", n, last)
	}
}

// TestCloseDropsWhatIsNotTaken: batches are whole, and Close ends
// delivery at once. The samples of a complete batch not yet taken and of
// an unfinished one are counted in StoreSize and dropped.
func TestCloseDropsWhatIsNotTaken(t *testing.T) {
	s := newServer(t, 2)
	for seq := range 5 {
		if err := s.Submit(t.Context(), numbered(8, seq)); err != nil {
			t.Fatal(err)
		}
	}
	var got []echo.Sample
	var end error
	for smp, err := range s.Batches(context.Background()) {
		if err != nil {
			end = err
			break
		}
		got = append(got, smp)
		if smp.Info.StoreSize != 3 {
			t.Errorf("StoreSize %d after the first batch, want 3: a whole batch and 1 sample", smp.Info.StoreSize)
		}
		s.Close()
	}
	if len(got) != 1 || !errors.Is(end, echo.ErrClosed) {
		t.Fatalf("%d batches, ended with %v; want 1 and ErrClosed", len(got), end)
	}
}

func newServerFor(t testing.TB, example any, batch int, opts ...echo.Option) *echo.Server {
	t.Helper()
	s, err := echo.NewServer(example, batch, opts...)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// expectClosed waits for a call blocked before Close to return, and checks
// that it returned ErrClosed.
func expectClosed(t *testing.T, errc <-chan error, what string) {
	t.Helper()
	select {
	case err := <-errc:
		if !errors.Is(err, echo.ErrClosed) {
			t.Fatalf("%s = %v, want ErrClosed", what, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s still blocked 10s after Close", what)
	}
}

func TestPublishExpvar(t *testing.T) {
	s := newServer(t, 2)
	name := fmt.Sprintf("echo-test-%p", s)
	if err := s.PublishExpvar(name); err != nil {
		t.Fatal(err)
	}
	if err := s.PublishExpvar(name); err == nil {
		t.Fatal("publishing the same name twice succeeded")
	}
	for seq := range 4 {
		if err := s.Submit(t.Context(), numbered(0, seq)); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if _, err := s.Sample(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	var got struct {
		Batches uint64
		Last    echo.SampleInfo
	}
	if err := json.Unmarshal([]byte(expvar.Get(name).String()), &got); err != nil {
		t.Fatal(err)
	}
	if got.Batches != 2 || got.Last.SamplesInsertedTotal != 4 || got.Last.NotifyCount != 2 {
		t.Fatalf("expvar says %+v, want 2 batches, 4 samples inserted, 2 notifies", got)
	}
}

// TestTrajectoryFeedsServer sends built trajectories through a server.
func TestTrajectoryFeedsServer(t *testing.T) {
	ex := trajectoryExample(t)
	s := newServerFor(t, ex, 2)
	acc, err := echo.NewTrajectoryAccumulator(ex)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		for k := range 3 {
			acc.Add("steps", map[string]any{"obs": pytree.MustOf(make([]float32, 4)), "reward": pytree.Scalar(float32(i*3 + k))})
		}
		acc.Add("episode", map[string]any{"return": pytree.Scalar(float64(i)), "seed": pytree.MustOf([]int64{0, 0})})
		if err := s.Submit(t.Context(), acc.Build()); err != nil {
			t.Fatal(err)
		}
	}
	smp, err := s.Sample(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	rew, _ := smp.Batch.(map[string]any)["steps"].(map[string]any)["reward"].(pytree.Array).Float32()
	if !slices.Equal(rew, []float32{0, 1, 2, 3, 4, 5}) {
		t.Fatalf("rewards in the batch: %v", rew)
	}
}
