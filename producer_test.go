//go:build linux

package echo_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/pytree"
)

// runProducers has n producers send perProducer numbered samples each,
// closing their producer when done, and checks on the consumer side that
// every sample arrives exactly once, in each producer's order, intact.
func runProducers(t *testing.T, s *echo.Server, n, perProducer, batch int) echo.SampleInfo {
	t.Helper()
	var wg sync.WaitGroup
	for p := range n {
		prod, err := s.NewProducer()
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer prod.Close()
			for seq := range perProducer {
				if err := prod.Send(t.Context(), numbered(p, seq)); err != nil {
					t.Errorf("producer %d seq %d: %v", p, seq, err)
					return
				}
			}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	next := make([]int, n)
	var last echo.SampleInfo
	for range n * perProducer / batch {
		smp, err := s.Sample(ctx)
		if err != nil {
			t.Fatalf("Sample: %v", err)
		}
		for _, r := range checkBatch(t, smp, batch) {
			if r[0] < 0 || r[0] >= n || r[1] != next[r[0]] {
				t.Fatalf("got producer %d seq %d out of order", r[0], r[1])
			}
			next[r[0]]++
		}
		last = smp.Info
	}
	wg.Wait()
	for p, got := range next {
		if got != perProducer {
			t.Errorf("producer %d: %d samples delivered, want %d", p, got, perProducer)
		}
	}
	return last
}

// routes forces each producer route whatever the sample size.
var routes = []struct {
	name string
	opt  echo.Option
}{
	{"queued", echo.WithDirectProducerBytes(-1)},
	{"direct", echo.WithDirectProducerBytes(0)},
}

func TestProducersExactlyOnce(t *testing.T) {
	for _, route := range routes {
		for _, tc := range []struct{ producers, perProducer, batch, drainers int }{
			{1, 20_000, 16, 8},
			{8, 5_000, 16, 3},
			{512, 200, 64, 8},
		} {
			t.Run(fmt.Sprintf("%s/%d", route.name, tc.producers), func(t *testing.T) {
				per := tc.perProducer
				if testing.Short() {
					per /= 10
				}
				s := newServer(t, tc.batch, echo.WithNumBuffers(2), echo.WithNumDrainers(tc.drainers),
					echo.WithProducerQueueSize(4), echo.WithDetailedMetrics(true), route.opt)
				info := runProducers(t, s, tc.producers, per, tc.batch)
				total := int64(tc.producers * per)
				if info.SamplesInsertedTotal != total || info.QueueDepthSum != 0 {
					t.Errorf("info %+v: want %d inserted, nothing queued", info, total)
				}
				if info.CASSuccessTotal == 0 {
					t.Errorf("no CAS successes counted: %+v", info)
				}
				if route.name == "queued" && (info.Memcpy.Count == 0 || info.QueueDwell.Count != total || info.DrainRound.Count == 0) {
					t.Errorf("histograms not recorded: %+v", info)
				}
			})
		}
	}
}

func TestProducerRejectsMismatchAndQueuesNothing(t *testing.T) {
	s := newServer(t, 2)
	prod, err := s.NewProducer()
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	bad := numbered(1, 1)
	bad["payload"] = pytree.MustOf(make([]uint8, 14))
	if err := prod.Send(t.Context(), bad); !errors.Is(err, echo.ErrSpecMismatch) {
		t.Fatalf("Send = %v, want ErrSpecMismatch", err)
	}
	for seq := range 2 {
		if err := prod.Send(t.Context(), numbered(1, seq)); err != nil {
			t.Fatal(err)
		}
	}
	smp, err := s.Sample(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if rows := checkBatch(t, smp, 2); rows[0] != [2]int{1, 0} || rows[1] != [2]int{1, 1} {
		t.Fatalf("batch %v, want producer 1 seqs 0,1", rows)
	}
}

// TestProducerCloseMidStream closes producers at random points while
// others keep going: what each sent before Close is delivered, and Send
// after Close fails.
func TestProducerCloseMidStream(t *testing.T) {
	for _, route := range routes {
		t.Run(route.name, func(t *testing.T) { testProducerCloseMidStream(t, route.opt) })
	}
}

func testProducerCloseMidStream(t *testing.T, route echo.Option) {
	const batch = 4
	s := newServer(t, batch, echo.WithNumDrainers(2), route)
	// Samples each producer sends before closing: each run fits in the
	// free slots plus the producer's queue, as the consumer keeps up only
	// between producers.
	counts := []int{3, 9, 1, 6, 0}
	total := 0
	for p, n := range counts {
		prod, err := s.NewProducer()
		if err != nil {
			t.Fatal(err)
		}
		for seq := range n {
			if err := prod.Send(t.Context(), numbered(p, seq)); err != nil {
				t.Fatal(err)
			}
		}
		if err := prod.Close(); err != nil {
			t.Fatal(err)
		}
		if err := prod.Send(t.Context(), numbered(p, n)); !errors.Is(err, echo.ErrProducerClosed) {
			t.Fatalf("Send after Close = %v, want ErrProducerClosed", err)
		}
		total += n
		// Interleave with the consumer so the ring never fills up.
		for total >= batch {
			if _, err := s.Sample(context.Background()); err != nil {
				t.Fatal(err)
			}
			total -= batch
		}
	}
	// Pad the last batch with a fresh producer, then check it drains.
	prod, err := s.NewProducer()
	if err != nil {
		t.Fatal(err)
	}
	for seq := range batch - total {
		if err := prod.Send(t.Context(), numbered(9, seq)); err != nil {
			t.Fatal(err)
		}
	}
	smp, err := s.Sample(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(3 + 9 + 1 + 6 + batch - total); smp.Info.SamplesInsertedTotal != want {
		t.Errorf("%d inserted, want %d", smp.Info.SamplesInsertedTotal, want)
	}
	prod.Close()
}

// TestServerCloseWakesBlockedProducers fills the ring and every producer
// queue, then closes the server: each blocked Send returns ErrClosed.
func TestServerCloseWakesBlockedProducers(t *testing.T) {
	for _, route := range routes {
		t.Run(route.name, func(t *testing.T) { testServerCloseWakesBlockedProducers(t, route.opt) })
	}
}

func testServerCloseWakesBlockedProducers(t *testing.T, route echo.Option) {
	s, err := echo.NewServer(numbered(0, 0), 2, echo.WithNumBuffers(2), echo.WithProducerQueueSize(2), route)
	if err != nil {
		t.Fatal(err)
	}
	const producers = 16
	errs := make(chan error, producers)
	for p := range producers {
		prod, err := s.NewProducer()
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for seq := 0; ; seq++ {
				if err := prod.Send(t.Context(), numbered(p, seq)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	// Wait until producers are blocked: the ring holds 4, queues 32.
	deadline := time.Now().Add(10 * time.Second)
	for {
		smp, err := s.Sample(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if smp.Info.PushBlockedCount >= producers || time.Now().After(deadline) {
			break
		}
	}
	time.Sleep(20 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range producers {
		expectClosed(t, errs, "blocked Send")
	}
	if _, err := s.NewProducer(); !errors.Is(err, echo.ErrClosed) {
		t.Errorf("NewProducer after Close = %v, want ErrClosed", err)
	}
}

// TestParkedWorkerIsWoken lets the ingress worker park between every sample
// (a lost wake-up would hang Sample).
func TestParkedWorkerIsWoken(t *testing.T) {
	s := newServer(t, 1, echo.WithNumDrainers(1), echo.WithDirectProducerBytes(-1))
	prod, err := s.NewProducer()
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	rounds := 200
	if testing.Short() {
		rounds = 50
	}
	for seq := range rounds {
		time.Sleep(time.Millisecond) // the worker's spin ends and it parks
		if err := prod.Send(t.Context(), numbered(3, seq)); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		smp, err := s.Sample(ctx)
		cancel()
		if err != nil {
			t.Fatalf("sample %d: %v (lost wake-up?)", seq, err)
		}
		if rows := checkBatch(t, smp, 1); rows[0] != [2]int{3, seq} {
			t.Fatalf("got %v, want producer 3 seq %d", rows, seq)
		}
	}
}

// TestSendAfterServerCloseFails checks both routes refuse a Send after the
// server closed, even with free buffers in hand.
func TestSendAfterServerCloseFails(t *testing.T) {
	for _, route := range routes {
		t.Run(route.name, func(t *testing.T) {
			s, err := echo.NewServer(numbered(0, 0), 4, route.opt)
			if err != nil {
				t.Fatal(err)
			}
			prod, err := s.NewProducer()
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if err := prod.Send(t.Context(), numbered(0, 0)); !errors.Is(err, echo.ErrClosed) {
				t.Fatalf("Send after server Close = %v, want ErrClosed", err)
			}
		})
	}
}

// TestResetHistogramsClearsOnlyTheWindow checks that ResetHistograms empties
// the histograms while the counters keep running.
func TestResetHistogramsClearsOnlyTheWindow(t *testing.T) {
	const batch = 8
	s := newServer(t, batch, echo.WithDetailedMetrics(true), echo.WithDirectProducerBytes(-1))
	prod, err := s.NewProducer()
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	ctx := context.Background()
	send := func(from int) echo.SampleInfo {
		t.Helper()
		for seq := from; seq < from+batch; seq++ {
			if err := prod.Send(t.Context(), numbered(1, seq)); err != nil {
				t.Fatal(err)
			}
		}
		smp, err := s.Sample(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return smp.Info
	}
	first := send(0)
	if first.QueueDwell.Count != batch || first.CASSuccessTotal == 0 {
		t.Fatalf("first window: dwell count %d, CAS successes %d; want %d and > 0", first.QueueDwell.Count, first.CASSuccessTotal, batch)
	}
	s.ResetHistograms()
	second := send(batch)
	if second.QueueDwell.Count != batch {
		t.Errorf("after reset the dwell histogram holds %d samples, want %d", second.QueueDwell.Count, batch)
	}
	if second.CASSuccessTotal <= first.CASSuccessTotal || second.SamplesInsertedTotal != 2*batch {
		t.Errorf("counters reset with the histograms: CAS %d→%d, inserted %d", first.CASSuccessTotal, second.CASSuccessTotal, second.SamplesInsertedTotal)
	}
	if second.QueueDwell.Min > second.QueueDwell.P50 || second.QueueDwell.P50 > second.QueueDwell.Max {
		t.Errorf("dwell summary out of order: %+v", second.QueueDwell)
	}
}
