// Command echo-demo runs a learner fed by actors (echo.Clients sending over
// TCP on loopback, and optionally in-process echo.Producers) for a few
// seconds and prints its throughput and what the server's metrics said at
// the last batch, each figure with its unit and meaning. While it runs it
// shows the rate so far on stderr, when stderr is a terminal.
//
//	go run ./tools/echo-demo                     # W2 (Atari frames), 8 TCP actors, 3 s
//	go run ./tools/echo-demo --workload W3 --clients 4 --producers 4 --duration 10s
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/cpuid/v2"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/bench"
	"github.com/seed-a9ef92a1/echo/internal/cli"
)

func main() {
	cmd := cli.New("echo-demo", "echo-demo runs a learner fed by actors over TCP on loopback for a few seconds and prints its throughput.")
	fs := cmd.Flags
	workload := fs.String("workload", "W2", "workload: W1 (37-byte samples), W2 (28 KB Atari frames) or W3 (1 MB, 44 arrays)")
	clients := fs.Int("clients", 8, "actors sending over TCP on loopback")
	producers := fs.Int("producers", 0, "in-process producer goroutines")
	duration := fs.Duration("duration", 3*time.Second, "how long to run")
	batch := fs.Int("batch", 0, "samples per batch (0: the workload's)")
	cmd.Parse(os.Args[1:])
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
	from := fmt.Sprintf("%d actors over TCP (%s)", clients, srv.Addr())
	switch {
	case clients == 0:
		from = fmt.Sprintf("%d in-process producers", producers)
	case producers > 0:
		from += fmt.Sprintf(" and %d in-process producers", producers)
	}
	fmt.Printf("A learner takes batches of %d %s samples (%d B each) from %s for %s.\n",
		batch, w.Name, w.PayloadBytes, from, duration)
	fmt.Printf("Machine: %s, %d cores, %d-byte cache lines; ring: %d MiB, %d MiB of it in huge pages.\n",
		cpuid.CPU.BrandName, runtime.NumCPU(), cpuid.CPU.CacheLine, mem.Bytes>>20, mem.HugePageBytes>>20)

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
				if err := prod.Send(context.Background(), sample); err != nil {
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
				if err := client.Send(context.Background(), sample); err != nil {
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
	live := cli.NewProgress()
	start := time.Now()
	lastPrint := start
	var batches int
	var last echo.SampleInfo
	for smp, err := range srv.Batches(ctx) {
		if err != nil {
			// The run ends when ctx's duration is up.
			if !errors.Is(err, context.DeadlineExceeded) {
				live.Clear()
				return err
			}
			break
		}
		batches++
		last = smp.Info
		if now := time.Now(); now.Sub(lastPrint) >= 250*time.Millisecond {
			lastPrint = now
			rate := float64(batches*batch) / now.Sub(start).Seconds()
			live.Printf("%4.1f s  %8.0f samples/s  %5.2f GB/s  %d waiting in ring  %d sender waits",
				now.Sub(start).Seconds(), rate, rate*float64(w.PayloadBytes)/1e9, last.StoreSize, last.PushBlockedCount)
		}
	}
	elapsed := time.Since(start)
	live.Clear()
	if err := srv.Close(); err != nil {
		return err
	}
	wg.Wait()
	if e := submitErr.Load(); e != nil {
		return *e
	}
	samples := float64(batches * batch)
	fmt.Printf("\nThe learner took %d batches, %.0f samples, in %.2f s: %.0f samples/s, %.2f GB/s.\n",
		batches, samples, elapsed.Seconds(), samples/elapsed.Seconds(), samples*float64(w.PayloadBytes)/elapsed.Seconds()/1e9)
	fmt.Printf("The server's metrics at the last batch:\n")
	for _, m := range []struct {
		v    any
		what string
	}{
		{last.SamplesInsertedTotal, "samples written to the ring since the start"},
		{last.NotifyCount, "batches completed (learner wake-ups)"},
		{last.StoreSize, "samples waiting in the ring, written but not yet taken"},
		{last.QueueDepthSum, fmt.Sprintf("samples waiting before the ring, in senders' queues and sockets (deepest queue since the previous batch: %d)", last.QueueDepthMax)},
		{last.PushBlockedCount, "times a sender waited for space (ring full, or its buffers all queued)"},
		{last.ActiveConnections, "actors connected over TCP"},
	} {
		fmt.Printf("  %10d  %s\n", m.v, m.what)
	}
	return nil
}
