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
// (--fuzztime), prints the tables on stdout and can write them into the
// generated section of a Markdown document (--doc, e.g. docs/reliability.md,
// between <!-- echo-load:begin --> and <!-- echo-load:end -->); each run's
// verdict goes to stderr as it ends. It exits non-zero if anything was lost, duplicated,
// reordered, corrupted, invented or leaked, or a hostile peer met an
// outcome other than the expected one.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/bench/integrity"
	"github.com/seed-a9ef92a1/echo/bench/loadgen"
	"github.com/seed-a9ef92a1/echo/internal/cli"
	"github.com/seed-a9ef92a1/echo/internal/readme"
)

// docSection names the generated section that --doc rewrites.
const docSection = "echo-load"

func main() {
	var (
		cfg      loadgen.Config
		batch    int
		suite    bool
		quick    bool
		doc      string
		fuzztime time.Duration
		holdIdle string
	)
	cmd := cli.New("echo-load", "echo-load drives an echo server with actors that crash, reconnect and misbehave over loopback, and reports what arrived; --suite runs the reliability suite.")
	fs := cmd.Flags
	fs.IntVar(&cfg.Actors, "actors", 256, "concurrent actors")
	fs.IntVar(&cfg.Samples, "samples", 2000, "samples each actor sends, over all its connections")
	fs.IntVar(&cfg.Body, "body", 200, "sample body bytes (the stamp adds 24)")
	fs.Float64Var(&cfg.Kill, "kill", 0.3, "probability that a connection is killed at a random byte")
	fs.BoolVar(&cfg.Client, "client", false, "send through echo.Client (killed only between samples)")
	fs.IntVar(&batch, "batch", 64, "batch size")
	verify := fs.Bool("verify", false, "check every sample: exactly once, in order, intact, nothing acked lost")
	fs.BoolVar(&suite, "suite", false, "run the reliability suite instead of one run")
	fs.BoolVar(&quick, "quick", false, "with --suite: smaller runs (CI)")
	fs.StringVar(&doc, "doc", "", "with --suite: rewrite the generated section between the markers <!-- "+docSection+":begin --> and <!-- "+docSection+":end --> in `FILE` (e.g. docs/reliability.md) with the tables")
	fs.DurationVar(&fuzztime, "fuzztime", 0, "with --suite: also run each fuzz target this long (needs the go tool and the source tree)")
	fs.StringVar(&holdIdle, "hold-idle", "", "internal, for --suite: hold N idle connections to `ADDR,N`")
	cmd.Parse(os.Args[1:])

	if doc != "" {
		if !suite {
			fatal(errors.New("--doc needs --suite"))
		}
		// Before the suite, not after minutes of it.
		if err := readme.Check(doc, docSection); err != nil {
			fatal(fmt.Errorf("--doc: %w", err))
		}
	}
	if holdIdle != "" {
		if err := holdIdleMain(holdIdle); err != nil {
			fatal(err)
		}
		return
	}
	if suite {
		ok, err := runSuite(suiteOptions{quick: quick, doc: doc, fuzztime: fuzztime})
		if err != nil {
			fatal(err)
		}
		if !ok {
			fatal(errors.New("the suite found faults (above)"))
		}
		return
	}
	cfg.Unchecked = !*verify
	cfg.Seed = uint64(time.Now().UnixNano())
	res, err := oneRun(cfg, batch)
	if err != nil {
		fatal(err)
	}
	if *verify && !res.OK() {
		os.Exit(1)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "echo-load:", err)
	os.Exit(1)
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

func dialUnix(path string) func(context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
}
