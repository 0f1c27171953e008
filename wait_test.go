//go:build linux

package echo_test

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo"
)

// strategies are the wait strategies every test of a waiting path and every
// zero-allocation test runs under.
var strategies = []echo.WaitStrategy{echo.Park(), echo.SpinThenPark(50 * time.Microsecond), echo.BusyPoll()}

// Every wait strategy delivers every sample exactly once, in order per
// actor, from TCP clients and queued producers at once.
func TestWaitStrategiesExactlyOnce(t *testing.T) {
	for _, ws := range strategies {
		t.Run(ws.String(), func(t *testing.T) {
			const batch, clients, producers = 16, 8, 4
			per := 400
			if testing.Short() {
				per = 96
			}
			s := startTCP(t, batch, echo.WithWaitStrategy(ws), echo.WithDirectProducerBytes(-1))
			errc := sendAll(t, s.Addr().String(), 0, clients, per)
			var wg sync.WaitGroup
			for p := range producers {
				wg.Go(func() {
					prod, err := s.NewProducer()
					if err != nil {
						t.Error(err)
						return
					}
					defer prod.Close()
					for seq := range per {
						if err := prod.Send(t.Context(), numbered(clients+p, seq)); err != nil {
							t.Error(err)
							return
						}
					}
				})
			}
			l := newLedger()
			sampleN(t, s, l, (clients+producers)*per, batch)
			wg.Wait()
			drainErrs(t, errc)
			all := make([]int, clients+producers)
			for i := range all {
				all[i] = i
			}
			l.expectAll(t, all, per)
		})
	}
}

// Close wakes every waiter under every strategy: a Sample waiting for a
// batch that never fills returns ErrClosed, and the workers, busy-polling
// ones included, exit.
func TestWaitStrategiesCloseWakesEveryone(t *testing.T) {
	for _, ws := range strategies {
		t.Run(ws.String(), func(t *testing.T) {
			before := runtime.NumGoroutine()
			s, err := echo.NewServer(numbered(0, 0), 4, echo.WithWaitStrategy(ws), echo.WithTCP("127.0.0.1:0"))
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Start(); err != nil {
				t.Fatal(err)
			}
			if err := s.Submit(t.Context(), numbered(0, 0)); err != nil { // a batch that never fills
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				_, err := s.Sample(context.Background())
				done <- err
			}()
			time.Sleep(20 * time.Millisecond) // into its wait
			start := time.Now()
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-done:
				if !errors.Is(err, echo.ErrClosed) {
					t.Fatalf("Sample = %v, want ErrClosed", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Close did not wake the waiting Sample")
			}
			t.Logf("Sample woken %v after Close", time.Since(start))
			deadline := time.Now().Add(5 * time.Second)
			for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if n := runtime.NumGoroutine(); n > before {
				t.Fatalf("%d goroutines after Close, %d before", n, before)
			}
		})
	}
}

// A Sample spinning on the commit counter still honours its context.
func TestSpinningSampleHonoursContext(t *testing.T) {
	for _, ws := range strategies[1:] {
		t.Run(ws.String(), func(t *testing.T) {
			s := newServer(t, 4, echo.WithWaitStrategy(ws))
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
			defer cancel()
			if _, err := s.Sample(ctx); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Sample = %v, want the context's deadline", err)
			}
		})
	}
}

func TestWaitStrategyString(t *testing.T) {
	for ws, want := range map[echo.WaitStrategy]string{
		echo.Park():                              "park",
		echo.BusyPoll():                          "busy-poll",
		echo.SpinThenPark(50 * time.Microsecond): "spin-then-park(50µs)",
	} {
		if got := ws.String(); got != want {
			t.Errorf("String() = %q, want %q", got, want)
		}
	}
}
