package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/bench/integrity"
	"github.com/seed-a9ef92a1/echo/bench/loadgen"
)

// ingressAttacks runs the attacks on the ingress's reading of streams,
// each beside honest actors on the same server, and sets every row beside
// the honest actors' rate alone on that server (the mean of a run before
// the attacks and one after).
func (s *suite) ingressAttacks() {
	dir, err := os.MkdirTemp("", "echo-load-")
	if err != nil {
		s.fail("ingress attacks", err)
		return
	}
	defer os.RemoveAll(dir)
	const stall = time.Second

	// 200-byte samples, over TCP and a Unix socket.
	path := filepath.Join(dir, "small.sock")
	srv, done, err := s.server(64, echo.WithUnix(path), echo.WithStallTimeout(stall))
	if err != nil {
		s.fail("ingress attacks", err)
		return
	}
	tcpT := loadgen.Target{Dial: dialTCP(srv.Addr().String()), Example: integrity.Example(body), Payload: srv.Spec().PayloadBytes()}
	unixT := tcpT
	unixT.Dial = dialUnix(path)
	cfg := loadgen.Config{Actors: 16, Samples: s.scale(20000), Body: body, Seed: 11, Dial: tcpT.Dial}
	// Four attackers at 500 samples/s each, for as long as the actors run:
	// each attacker's sample costs the server a wake-up of its own, and
	// on 2 shared cores a heavier attack measures the cores, not the
	// server's isolation.
	const n, every = 4, 2 * time.Millisecond
	s.beside(srv, cfg, "200-byte samples", []attackRun{
		{"TCP", func(ctx context.Context, c *integrity.Checker) *loadgen.Attack {
			return loadgen.OutOfBand(ctx, tcpT, c, body, n, every, 0)
		}, loadgen.OutAckedIntact, ""},
		{"Unix", func(ctx context.Context, c *integrity.Checker) *loadgen.Attack {
			return loadgen.OutOfBand(ctx, unixT, c, body, n, every, 1000)
		}, loadgen.OutAckedIntact, ""},
		{"TCP", func(ctx context.Context, c *integrity.Checker) *loadgen.Attack {
			return loadgen.Slowloris(ctx, tcpT, c, body, 32, 10, stall, 2000)
		}, loadgen.OutStallClosed, "stalled"},
	})
	done(0)

	// 40 KiB samples: gated on Unix sockets, so tiny writes meet the gate.
	const mid = 40 << 10
	path = filepath.Join(dir, "mid.sock")
	srv, done, err = s.serverAt("127.0.0.1:0", mid, 16, echo.WithUnix(path))
	if err != nil {
		s.fail("ingress attacks", err)
		return
	}
	unixT = loadgen.Target{Dial: dialUnix(path), Example: integrity.Example(mid), Payload: srv.Spec().PayloadBytes()}
	cfg = loadgen.Config{Actors: 16, Samples: s.scale(3000), Body: mid, Seed: 12, Dial: dialTCP(srv.Addr().String())}
	s.beside(srv, cfg, "40 KiB samples", []attackRun{
		{"Unix", func(ctx context.Context, c *integrity.Checker) *loadgen.Attack {
			return loadgen.TinyWrites(ctx, unixT, c, mid, 1, 100*time.Millisecond, 3000)
		}, loadgen.OutAckedIntact, ""},
	})
	done(0)

	s.largeIdle()
}

// attackRun is one attack of a beside run: where it comes from, what it
// runs, the outcome every attempt must see, and what the server counts.
type attackRun struct {
	transport string
	run       func(ctx context.Context, check *integrity.Checker) *loadgen.Attack
	want      string
	counter   string // "stalled": the server must count every attempt in StalledConnections
}

// beside measures cfg's honest actors alone on srv, then beside each
// attack, then alone again, and adds a hostile row per attack.
func (s *suite) beside(srv *echo.Server, cfg loadgen.Config, samples string, attacks []attackRun) {
	var stalled int64 // the server's count after the previous run
	alone := func() float64 {
		res, err := runOn(srv, cfg, nil)
		s.record(fmt.Sprintf("honest actors alone (%s)", samples), res, err)
		stalled = res.Info.StalledConnections
		return res.ActorRate()
	}
	before := alone()
	type row struct {
		a      *loadgen.Attack
		rate   float64
		stalls int64
	}
	rows := make([]row, len(attacks))
	for i, at := range attacks {
		var a *loadgen.Attack
		c := cfg
		c.StopDuring = true
		c.During = func(ctx context.Context, check *integrity.Checker) error {
			a = at.run(ctx, check)
			return nil
		}
		res, err := runOn(srv, c, nil)
		if a == nil {
			s.fail("ingress attacks", fmt.Errorf("%s: attack did not run (%v)", samples, err))
			return
		}
		s.record(fmt.Sprintf("honest actors beside %s over %s (%s)", a.Kind, at.transport, samples), res, err)
		rows[i] = row{a, res.ActorRate(), res.Info.StalledConnections - stalled}
		stalled = res.Info.StalledConnections
	}
	after := alone()
	base := (before + after) / 2
	for i, at := range attacks {
		r := rows[i]
		ratio := r.rate / base
		server := fmt.Sprintf("honest actors' rate %.0f/s beside, %.0f/s alone: %.2f×", r.rate, base, ratio)
		if at.counter == "stalled" {
			server = fmt.Sprintf("%d counted in StalledConnections; ", r.stalls) + server
			if r.stalls < int64(r.a.Tried) {
				s.ok = false
			}
		}
		s.attackRow(r.a, "no", at.want, fmt.Sprintf("%s (over %s, %s)", server, at.transport, samples))
	}
}

// largeIdle holds 1,000 idle connections, then 1,000 that each sent a
// sample's first byte, to a server of 8 MiB samples, and reports the
// process's resident memory against the staging budget; honest actors run
// alone and beside the idle ones.
func (s *suite) largeIdle() {
	const large = 8 << 20
	const budget = 64 << 20
	n := 1000
	if s.o.quick {
		n = 200
	}
	srv, done, err := s.serverAt("127.0.0.1:0", large, 4, echo.WithStagingBudget(budget),
		echo.WithStallTimeout(time.Hour), echo.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		s.fail("large idle", err)
		return
	}
	defer func() { done(0) }()
	tg := loadgen.Target{Dial: dialTCP(srv.Addr().String()), Example: integrity.Example(large), Payload: srv.Spec().PayloadBytes()}
	cfg := loadgen.Config{Actors: 4, Samples: s.scale(64), Body: large, Seed: 13, Dial: tg.Dial}
	// Two runs alone and two beside, interleaved: single runs of a few
	// seconds swing by 15 % here.
	measure := func(name string) float64 {
		res, err := runOn(srv, cfg, nil)
		s.record(name, res, err)
		return res.ActorRate()
	}
	alone := measure("honest actors alone (8 MiB samples)") / 2

	ctx := context.Background()
	rss0, heap0 := rss(), heapInUse()
	closeIdle, err := loadgen.IdleConns(ctx, tg, n)
	if err != nil {
		s.fail("large idle", err)
		closeIdle()
		return
	}
	settle() // the handshakes are read: the hand-overs are under way
	idleGrew, idleHeap := rss()-rss0, heapInUse()-heap0
	beside := 0.0
	for range 2 {
		beside += measure(fmt.Sprintf("honest actors beside %d idle connections (8 MiB samples)", n)) / 2
	}
	closeIdle()
	settle()
	alone += measure("honest actors alone (8 MiB samples)") / 2

	rss0, heap0 = rss(), heapInUse()
	closePartial, err := loadgen.PartialConns(ctx, tg, n, 1)
	if err != nil {
		s.fail("large idle", err)
		closePartial()
		return
	}
	settle() // for the workers to take what buffers they can
	partialGrew, partialHeap := rss()-rss0, heapInUse()-heap0
	closePartial()
	settle()

	ok := max(idleGrew, idleHeap) < budget && max(partialGrew, partialHeap) < budget+budget/4
	if !ok {
		s.ok = false
	}
	s.hostile = append(s.hostile, hostileRow{
		kind: fmt.Sprintf("%d idle connections to a server of 8 MiB samples", n), secret: "no", tried: n, ok: ok,
		outcome: loadgen.OutHeld,
		server: fmt.Sprintf("resident memory and Go heap grew %d and %d MiB while they were idle; %d and %d MiB once each had sent a sample's first byte (%d MiB of staging asked for, budget %d MiB); honest actors' rate %.0f/s beside the idle ones, %.0f/s alone: %.2f× (means of 2 runs each, interleaved)",
			idleGrew>>20, idleHeap>>20, partialGrew>>20, partialHeap>>20, n*large>>20, budget>>20, beside, alone, beside/alone),
	})
}

// settle gives the server's goroutines time to take over what the
// attackers just did.
func settle() { time.Sleep(500 * time.Millisecond) }

// heapInUse returns the Go heap in use after a collection, in bytes.
func heapInUse() int {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int(m.HeapInuse)
}

// rss returns the process's resident memory in bytes (VmRSS), or 0.
func rss() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range bytes.Lines(b) {
		if rest, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			f := bytes.Fields(rest)
			if len(f) == 0 {
				return 0
			}
			kb, _ := strconv.Atoi(string(f[0]))
			return kb << 10
		}
	}
	return 0
}
