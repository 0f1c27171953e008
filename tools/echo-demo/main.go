// Command echo-demo runs a learner fed by producer goroutines (each with its
// own echo.Producer) for a few seconds and prints its throughput and the
// last batch's metrics.
//
//	go run ./tools/echo-demo                     # W2 (Atari frames), 4 producers, 3 s
//	go run ./tools/echo-demo -workload W3 -producers 8 -duration 10s
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/cpuid/v2"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/bench"
)

func main() {
	workload := flag.String("workload", "W2", "workload: W1, W2 or W3")
	clients := flag.Int("clients", 8, "actors sending over TCP on loopback")
	producers := flag.Int("producers", 0, "in-process producer goroutines")
	duration := flag.Duration("duration", 3*time.Second, "how long to run")
	batch := flag.Int("batch", 0, "batch size (0: the workload's)")
	flag.Parse()
	if err := run(*workload, *clients, *producers, *duration, *batch); err != nil {
		fmt.Fprintln(os.Stderr, "echo-demo:", err)
		os.Exit(1)
	}
}

func run(name string, clients, producers int, duration time.Duration, batch int) error {
	w, err := bench.Get(name)
	if err != nil {
		return err
	}
	if batch == 0 {
		batch = w.BatchSize
	}
	if clients < 0 || producers < 0 || clients+producers < 1 {
		return fmt.Errorf("need at least one client or producer, got %d and %d", clients, producers)
	}
	example, err := w.NewSample(0)
	if err != nil {
		return err
	}
	srv, err := echo.NewServer(example, batch, echo.WithTCP("127.0.0.1:0"))
	if err != nil {
		return err
	}
	defer srv.Close()
	if err := srv.Start(); err != nil {
		return err
	}
	mem := srv.Memory()
	fmt.Printf("%s, %d cores, %d-byte cache lines\n", cpuid.CPU.BrandName, runtime.NumCPU(), cpuid.CPU.CacheLine)
	fmt.Printf("%s: %d B/sample, batch %d, %d TCP clients to %s, %d producers, %s; ring %d MiB, huge pages %d MiB\n",
		w.Name, w.PayloadBytes, batch, clients, srv.Addr(), producers, duration, mem.Bytes>>20, mem.HugePageBytes>>20)

	var wg sync.WaitGroup
	var submitErr atomic.Pointer[error]
	for p := range producers {
		sample, err := w.NewSample(byte(p))
		if err != nil {
			return err
		}
		prod, err := srv.NewProducer()
		if err != nil {
			return err
		}
		wg.Go(func() {
			defer prod.Close()
			for {
				if err := prod.Send(sample); err != nil {
					if !errors.Is(err, echo.ErrClosed) {
						submitErr.Store(&err)
					}
					return
				}
			}
		})
	}

	for c := range clients {
		sample, err := w.NewSample(byte(100 + c))
		if err != nil {
			return err
		}
		client, err := echo.Dial(context.Background(), srv.Addr().String(), sample)
		if err != nil {
			return err
		}
		wg.Go(func() {
			defer client.Close()
			for {
				if err := client.Send(sample); err != nil {
					if !errors.Is(err, echo.ErrConnectionClosed) {
						submitErr.Store(&err)
					}
					return
				}
			}
		})
	}

	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	start := time.Now()
	lastPrint := start
	var batches int
	var last echo.SampleInfo
	for smp, err := range srv.Batches(ctx) {
		if err != nil {
			// The run ends when ctx's duration is up.
			if !errors.Is(err, context.DeadlineExceeded) {
				return err
			}
			break
		}
		batches++
		last = smp.Info
		if now := time.Now(); now.Sub(lastPrint) >= 250*time.Millisecond {
			lastPrint = now
			rate := float64(batches*batch) / now.Sub(start).Seconds()
			fmt.Printf("\r%5.1fs  %12.0f samples/s  %7.2f GB/s  store %4d  blocked %d",
				now.Sub(start).Seconds(), rate, rate*float64(w.PayloadBytes)/1e9, last.StoreSize, last.PushBlockedCount)
		}
	}
	elapsed := time.Since(start)
	if err := srv.Close(); err != nil {
		return err
	}
	wg.Wait()
	if e := submitErr.Load(); e != nil {
		return *e
	}
	samples := float64(batches * batch)
	fmt.Printf("\n%d batches, %.0f samples in %.2fs: %.0f samples/s, %.2f GB/s\n",
		batches, samples, elapsed.Seconds(), samples/elapsed.Seconds(), samples*float64(w.PayloadBytes)/elapsed.Seconds()/1e9)
	fmt.Printf("last SampleInfo:\n  store %d, inserted %d, notifies %d, connections %d, push blocked %d, queued %d (deepest %d)\n",
		last.StoreSize, last.SamplesInsertedTotal, last.NotifyCount, last.ActiveConnections, last.PushBlockedCount,
		last.QueueDepthSum, last.QueueDepthMax)
	return nil
}
