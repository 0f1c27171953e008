// Command echo-load drives an echo server with many actors that crash,
// reconnect and misbehave, over loopback, and reports what arrived.
//
// Alone, it runs one fault run as its flags describe and prints the rate
// and the integrity report:
//
//	go run ./tools/echo-load [--actors 256] [--samples 2000] [--kill 0.3] [--verify]
//
// With --verify every sample's stream, sequence number and go-metro hash
// is checked: exactly once, in its connection's order, intact, and nothing
// acknowledged missing. Without it the consumer only counts, which shows
// what the checks cost.
//
// With --suite it runs the reliability suite instead — fault runs with
// killed actors, a pausing learner, staged samples, network faults from
// toxiproxy, actors in network namespaces (root only), hostile peers
// beside honest ones, with and without a shared secret, a connection flood,
// 10,000 idle connections — then checks that closing every server left no
// goroutine, descriptor or mapping behind, optionally runs the fuzz targets
// (--fuzztime), prints the tables and can write them into the README
// (--readme). It exits non-zero if anything was lost, duplicated,
// reordered, corrupted, invented or leaked, or a hostile peer met an
// outcome other than the expected one.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/bench/integrity"
	"github.com/seed-a9ef92a1/echo/bench/loadgen"
)

func main() {
	var (
		cfg      loadgen.Config
		batch    int
		suite    bool
		quick    bool
		readme   string
		fuzztime time.Duration
		holdIdle string
	)
	flag.IntVar(&cfg.Actors, "actors", 256, "concurrent actors")
	flag.IntVar(&cfg.Samples, "samples", 2000, "samples each actor sends, over all its connections")
	flag.IntVar(&cfg.Body, "body", 200, "sample body bytes (the stamp adds 24)")
	flag.Float64Var(&cfg.Kill, "kill", 0.3, "probability that a connection is killed at a random byte")
	flag.BoolVar(&cfg.Client, "client", false, "send through echo.Client (killed only between samples)")
	flag.IntVar(&batch, "batch", 64, "batch size")
	verify := flag.Bool("verify", false, "check every sample: exactly once, in order, intact, nothing acked lost")
	flag.BoolVar(&suite, "suite", false, "run the reliability suite instead of one run")
	flag.BoolVar(&quick, "quick", false, "with --suite: smaller runs (CI)")
	flag.StringVar(&readme, "readme", "", "with --suite: rewrite this file's echo-load section with the tables")
	flag.DurationVar(&fuzztime, "fuzztime", 0, "with --suite: also run each fuzz target this long (needs the go tool and the source tree)")
	flag.StringVar(&holdIdle, "hold-idle", "", "internal: hold N idle connections to ADDR, given as ADDR,N")
	flag.Parse()

	if holdIdle != "" {
		if err := holdIdleMain(holdIdle); err != nil {
			fmt.Fprintln(os.Stderr, "echo-load:", err)
			os.Exit(1)
		}
		return
	}
	if suite {
		ok, err := runSuite(suiteOptions{quick: quick, readme: readme, fuzztime: fuzztime})
		if err != nil {
			fmt.Fprintln(os.Stderr, "echo-load:", err)
			os.Exit(1)
		}
		if !ok {
			fmt.Fprintln(os.Stderr, "echo-load: the suite found faults (above)")
			os.Exit(1)
		}
		return
	}
	cfg.Unchecked = !*verify
	cfg.Seed = uint64(time.Now().UnixNano())
	res, err := oneRun(cfg, batch)
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo-load:", err)
		os.Exit(1)
	}
	if *verify && !res.OK() {
		os.Exit(1)
	}
}

// oneRun is one fault run against a fresh loopback server.
func oneRun(cfg loadgen.Config, batch int) (loadgen.Result, error) {
	srv, err := echo.NewServer(integrity.Example(cfg.Body), batch, echo.WithTCP("127.0.0.1:0"))
	if err != nil {
		return loadgen.Result{}, err
	}
	defer srv.Close()
	if err := srv.Start(); err != nil {
		return loadgen.Result{}, err
	}
	cfg.Dial = dialTCP(srv.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	res, err := loadgen.Run(ctx, srv, cfg, nil)
	fmt.Printf("%d actors × %d samples of %d bytes, kill %.2f: %d connections, %d killed (%d in the handshake, %d between samples, %d inside one), %.0f samples/s\n",
		cfg.Actors, cfg.Samples, srv.Spec().PayloadBytes(), cfg.Kill, res.Connections, res.KilledTotal(),
		res.Killed[loadgen.KillHandshake], res.Killed[loadgen.KillBetween], res.Killed[loadgen.KillMidSample], res.Rate())
	if cfg.Unchecked {
		fmt.Printf("sent %d, acked %d (unchecked: run with --verify to check delivery)\n", res.Sent, res.Acked)
	} else {
		verdict := "OK"
		if !res.OK() {
			verdict = "FAULTS"
		}
		fmt.Printf("%s: %v\n", verdict, res.Report)
	}
	return res, err
}

func dialTCP(addr string) func(context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}

// holdIdleMain is the idle-connection holder the suite starts: "ADDR,N".
func holdIdleMain(arg string) error {
	i := len(arg) - 1
	for i >= 0 && arg[i] != ',' {
		i--
	}
	if i < 0 {
		return fmt.Errorf("--hold-idle %q: want ADDR,N", arg)
	}
	n, err := strconv.Atoi(arg[i+1:])
	if err != nil {
		return fmt.Errorf("--hold-idle %q: %w", arg, err)
	}
	return loadgen.HoldIdle(arg[:i], n, os.Stdout, io.Reader(os.Stdin))
}
