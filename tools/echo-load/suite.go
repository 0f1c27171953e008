package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/goleak"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/bench/integrity"
	"github.com/seed-a9ef92a1/echo/bench/loadgen"
	"github.com/seed-a9ef92a1/echo/internal/readme"
	"github.com/seed-a9ef92a1/echo/wire"
)

type suiteOptions struct {
	quick    bool
	doc      string // rewrite this file's generated section
	fuzztime time.Duration
}

// suite is the state of one reliability suite: its tables and whether
// anything failed.
type suite struct {
	o         suiteOptions
	ok        bool
	runs      []runRow
	reconnect loadgen.Result // the reconnect storm's run
	hostile   []hostileRow
	notes     []string
	servers   int // servers closed
	leaks     leakRow
	fuzz      []fuzzRow
}

type runRow struct {
	name string
	res  loadgen.Result
	err  error
}

type hostileRow struct {
	kind, secret string
	tried        int
	outcome      string // what the attackers saw, all of them
	server       string // what the server counted
	ok           bool
}

type leakRow struct {
	goroutines, fds, mappings int
	detail                    string
}

type fuzzRow struct {
	target  string
	execs   int64
	crashes int
	err     string
}

const body = 200

func runSuite(o suiteOptions) (bool, error) {
	s := &suite{o: o, ok: true}
	ignore := goleak.IgnoreCurrent()
	fds := loadgen.OpenFDs()
	started := time.Now()

	s.faultRuns()
	s.networkFaults()
	s.namespaces()
	s.hostileRuns()
	s.ingressAttacks()
	s.checkLeaks(ignore, fds)
	if o.fuzztime > 0 {
		s.fuzzAll()
	}
	md := s.markdown(time.Since(started))
	fmt.Print(md)
	if o.doc != "" {
		if err := readme.Rewrite(o.doc, docSection, md); err != nil {
			return s.ok, fmt.Errorf("--doc: %w", err)
		}
	}
	return s.ok, nil
}

// scale shrinks n for --quick.
func (s *suite) scale(n int) int {
	if s.o.quick {
		return max(1, n/8)
	}
	return n
}

// server starts a loopback server for integrity samples; done closes it
// and releases the batch the consumer held, as a learner's next Sample
// would.
func (s *suite) server(batch int, opts ...echo.Option) (srv *echo.Server, done func(ring uintptr), err error) {
	return s.serverAt("127.0.0.1:0", body, batch, opts...)
}

// serverAt is server listening on addr, for samples with an n-byte body.
func (s *suite) serverAt(addr string, n, batch int, opts ...echo.Option) (srv *echo.Server, done func(ring uintptr), err error) {
	opts = append([]echo.Option{echo.WithTCP(addr)}, opts...)
	srv, err = echo.NewServer(integrity.Example(n), batch, opts...)
	if err != nil {
		return nil, nil, err
	}
	if err := srv.Start(); err != nil {
		srv.Close()
		return nil, nil, err
	}
	return srv, func(ring uintptr) {
		srv.Close()
		srv.Sample(context.Background()) // ErrClosed; unmaps the ring
		s.servers++
		// Looked for at once: later, another mapping may take the
		// address.
		if m, err := loadgen.MappingAt(ring); ring != 0 && (m != "" || err != nil) {
			s.leaks.mappings++
			s.leaks.detail += fmt.Sprintf("\nstill mapped: %s (%v)", m, err)
		}
	}, nil
}

// run is one fault run on a fresh server; it records the row.
func (s *suite) run(name string, batch int, cfg loadgen.Config, pause func(int), opts ...echo.Option) loadgen.Result {
	srv, done, err := s.server(batch, opts...)
	if err != nil {
		s.fail(name, err)
		return loadgen.Result{}
	}
	if cfg.Dial == nil {
		cfg.Dial = dialTCP(srv.Addr().String())
	}
	res, err := runOn(srv, cfg, pause)
	done(res.Ring)
	s.record(name, res, err)
	return res
}

func runOn(srv *echo.Server, cfg loadgen.Config, pause func(int)) (loadgen.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	return loadgen.Run(ctx, srv, cfg, pause)
}

func (s *suite) record(name string, res loadgen.Result, err error) {
	s.runs = append(s.runs, runRow{name: name, res: res, err: err})
	status := "ok"
	if err != nil || !res.OK() || res.Delivered < res.Acked {
		s.ok = false
		status = "FAULT"
	}
	fmt.Fprintf(os.Stderr, "%-55s %s: %v (err %v)\n", name, status, res.Report, err)
}

func (s *suite) fail(name string, err error) {
	s.ok = false
	s.notes = append(s.notes, fmt.Sprintf("%s: %v", name, err))
	fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
}

func (s *suite) faultRuns() {
	s.run("256 actors, 30% of connections killed", 64,
		loadgen.Config{Actors: 256, Samples: s.scale(2000), Body: body, Kill: 0.3, Seed: 1}, nil)
	s.run("learner paused twice for 1.5 s", 64,
		loadgen.Config{Actors: 64, Samples: s.scale(1000), Body: body, Kill: 0.1, Seed: 2},
		func(b int) {
			if b == 10 || b == 200 {
				time.Sleep(1500 * time.Millisecond)
			}
		})
	const large = 3 << 20
	if srv, done, err := s.serverAt("127.0.0.1:0", large, 4); err != nil {
		s.fail("3 MiB samples", err)
	} else {
		res, err := runOn(srv, loadgen.Config{
			Actors: 8, Samples: 12, Body: large, Kill: 0.4, Seed: 3, MaxInflight: 4,
			Dial: dialTCP(srv.Addr().String()),
		}, nil)
		done(res.Ring)
		s.record("3 MiB samples (staged), 40% killed", res, err)
	}
	s.run("echo.Client actors, 30% closed mid-run", 64,
		loadgen.Config{Actors: 64, Samples: s.scale(1000), Body: body, Kill: 0.3, Client: true, Seed: 4}, nil)
	s.reconnectStorm()
}

// reconnectStorm is the kill storm under reconnecting version 2 clients:
// each actor's connection is cut five times under one echo.Client, and
// every sample handed to Send must arrive once, the ones unacknowledged
// at the cuts included. Its row fails unless every sample sent was
// acknowledged and delivered, over at least 100 cuts.
func (s *suite) reconnectStorm() {
	const name = "64 reconnecting version 2 clients, each connection cut 5 times"
	res := s.run(name, 64, loadgen.Config{Actors: 64, Samples: s.scale(1000), Body: body, Reconnect: true, Kills: 5, Seed: 9}, nil)
	s.reconnect = res
	if res.Sent != uint64(res.ActorSamples) || res.Acked != res.Sent || res.Delivered != res.Sent || res.KilledTotal() < 100 || res.Failed > 0 {
		s.fail(name, fmt.Errorf("%d of %d samples handed to Send, %d acked, %d delivered, over %d cuts (%d clients failed): every one must arrive once, over at least 100 cuts",
			res.Sent, res.ActorSamples, res.Acked, res.Delivered, res.KilledTotal(), res.Failed))
	}
}

func (s *suite) networkFaults() {
	srv, done, err := s.server(64)
	if err != nil {
		s.fail("toxiproxy", err)
		return
	}
	proxy, err := loadgen.StartProxy(srv.Addr().String())
	if err != nil {
		done(0)
		s.fail("toxiproxy", err)
		return
	}
	var ring uintptr
	for _, f := range loadgen.Faults(srv.Spec().PayloadBytes()) {
		remove, err := proxy.Apply(f)
		if err != nil {
			s.fail(f.Name, err)
			continue
		}
		res, err := runOn(srv, loadgen.Config{
			Actors: 16, Samples: s.scale(600), Body: body, Client: f.Client, Seed: 5,
			Stall: 2 * time.Second, Dial: dialTCP(proxy.Addr()),
		}, nil)
		remove()
		ring = max(ring, res.Ring)
		s.record("toxiproxy: "+f.Name, res, err)
	}
	proxy.Close()
	done(ring)
}

func (s *suite) namespaces() {
	const name = "actors in 4 network namespaces over veth"
	if os.Geteuid() != 0 {
		s.notes = append(s.notes, name+": skipped, needs root")
		return
	}
	hosts, cleanup, err := loadgen.MakeHosts(4)
	defer cleanup()
	if err != nil {
		s.notes = append(s.notes, fmt.Sprintf("%s: skipped: %v", name, err))
		return
	}
	srv, done, err := s.serverAt("0.0.0.0:0", body, 64)
	if err != nil {
		s.fail(name, err)
		return
	}
	_, port, err := net.SplitHostPort(srv.Addr().String())
	if err != nil {
		done(0)
		s.fail(name, err)
		return
	}
	res, err := runOn(srv, loadgen.Config{
		Actors: 32, Samples: s.scale(1000), Body: body, Kill: 0.2, Seed: 6,
		Dial: loadgen.DialHosts(hosts, port),
	}, nil)
	done(res.Ring)
	s.record(name, res, err)
}

// attackRow records what an attack met, expecting want for every try.
func (s *suite) attackRow(a *loadgen.Attack, secret, want, server string) {
	ok := a != nil && a.Outcomes[want] == a.Tried
	row := hostileRow{kind: a.Kind, secret: secret, tried: a.Tried, server: server, ok: ok}
	if ok {
		row.outcome = want
	} else {
		row.outcome = "UNEXPECTED: " + a.String()
		s.ok = false
	}
	s.hostile = append(s.hostile, row)
	fmt.Fprintf(os.Stderr, "%v\n", a)
}

func (s *suite) hostileRuns() {
	// Junk, half handshakes and unread acks beside honest actors.
	srv, done, err := s.server(64)
	if err != nil {
		s.fail("hostile", err)
		return
	}
	tg := loadgen.Target{Dial: dialTCP(srv.Addr().String()), Example: integrity.Example(body), Payload: srv.Spec().PayloadBytes()}
	var random, half, unread *loadgen.Attack
	res, err := runOn(srv, loadgen.Config{
		Actors: 64, Samples: s.scale(1000), Body: body, Kill: 0.1, Seed: 7, Dial: tg.Dial,
		During: func(ctx context.Context, check *integrity.Checker) error {
			var wg sync.WaitGroup
			wg.Go(func() { random = loadgen.RandomBytes(ctx, tg, 200) })
			wg.Go(func() { half = loadgen.HalfOpening(ctx, tg, 100, time.Second) })
			wg.Go(func() { unread = loadgen.NeverReadsAcks(ctx, tg, check, body, 4, s.scale(20000), 5*time.Second) })
			wg.Wait()
			return nil
		},
	}, nil)
	done(res.Ring)
	s.record("honest actors beside hostile peers", res, err)
	if random == nil || half == nil || unread == nil {
		s.fail("hostile", fmt.Errorf("attacks did not run"))
		return
	}
	s.attackRow(random, "no", loadgen.OutAckedWhole,
		fmt.Sprintf("%d junk samples delivered as the attackers' own; %d acked to them", res.Foreign, random.Foreign))
	if res.Foreign != random.Foreign {
		s.ok = false
	}
	s.attackRow(half, "no", loadgen.OutHeld, "an idle connection each")
	s.attackRow(unread, "no", loadgen.OutServedUnread, fmt.Sprintf("%d samples taken, 0 acks read", unread.Tried*s.scale(20000)))

	// The same with a shared secret: refused before any slot.
	secret := []byte("echo-load reliability suite secret")
	const timeout = 500 * time.Millisecond
	log := loadgen.NewRefusals()
	srv, done, err = s.server(64, echo.WithSharedSecret(secret), echo.WithAuthTimeout(timeout), echo.WithLogger(slog.New(log)))
	if err != nil {
		s.fail("authenticated", err)
		return
	}
	tg = loadgen.Target{Dial: dialTCP(srv.Addr().String()), Example: integrity.Example(body), Payload: srv.Spec().PayloadBytes(), Secret: secret, AuthTimeout: timeout}
	var wrong *loadgen.Attack
	res, err = runOn(srv, loadgen.Config{
		Actors: 32, Samples: s.scale(1000), Body: body, Kill: 0.1, Client: true, Secret: secret, Seed: 8, Dial: tg.Dial,
		During: func(ctx context.Context, check *integrity.Checker) error {
			var wg sync.WaitGroup
			wg.Go(func() { random = loadgen.RandomBytes(ctx, tg, 100) })
			wg.Go(func() { wrong = loadgen.WrongSecret(ctx, tg, 100) })
			wg.Go(func() { half = loadgen.HalfOpening(ctx, tg, 50, 5*time.Second) })
			wg.Wait()
			return nil
		},
	}, nil)
	done(res.Ring)
	s.record("honest actors with the secret beside peers without", res, err)
	authServer := fmt.Sprintf("%d refused in authentication, %d samples of theirs in the ring; logged: %v", res.Info.AuthFailures, res.Foreign, log)
	if res.Foreign != 0 || res.Info.AuthFailures != 250 {
		s.ok = false
	}
	s.attackRow(random, "yes", loadgen.OutAuthClosed, authServer)
	s.attackRow(wrong, "yes", loadgen.OutAuthClosed, "(same server)")
	s.attackRow(half, "yes", loadgen.OutAuthTimeout, "(same server)")

	// A flood past MaxConnections.
	log = loadgen.NewRefusals()
	srv, done, err = s.server(64, echo.WithMaxConnections(64), echo.WithLogger(slog.New(log)))
	if err != nil {
		s.fail("flood", err)
		return
	}
	tg = loadgen.Target{Dial: dialTCP(srv.Addr().String()), Example: integrity.Example(body), Payload: srv.Spec().PayloadBytes()}
	var flood *loadgen.Attack
	res, err = runOn(srv, loadgen.Config{
		Actors: 32, Samples: s.scale(2000), Body: body, Seed: 9, Dial: tg.Dial,
		During: func(ctx context.Context, _ *integrity.Checker) error {
			flood = loadgen.Flood(ctx, tg, 1000)
			return nil
		},
	}, nil)
	done(res.Ring)
	s.record("honest actors beside a connection flood", res, err)
	refused := flood.Outcomes[loadgen.OutRefused]
	row := hostileRow{
		kind: flood.Kind, secret: "no", tried: flood.Tried, ok: refused+flood.Outcomes[loadgen.OutServed] == flood.Tried,
		outcome: fmt.Sprintf("%d %s; %d served while under the cap of 64", refused, loadgen.OutRefused, flood.Outcomes[loadgen.OutServed]),
		server:  fmt.Sprintf("%d refused; logged: %v", res.Info.RefusedConnections, log),
	}
	if !row.ok || res.Info.RefusedConnections != int64(refused) {
		row.ok, s.ok = false, false
	}
	s.hostile = append(s.hostile, row)

	s.idle()
	s.hostileShapes()
}

// hostileShapes points Go clients at a fake server that declares shapes
// whose size overflows or passes the client's limit, and builds a server
// for samples past WithMaxPayloadBytes.
func (s *suite) hostileShapes() {
	shapes := [][]byte{
		loadgen.Declare(8, math.MaxUint32, math.MaxUint32, math.MaxUint32), // overflows int64
		loadgen.Declare(8, 1<<28),                 // 2 GiB, past the default 1 GiB limit
		loadgen.Declare(1, make([]uint32, 65)...), // rank 65
	}
	refused := 0
	for _, hs := range shapes {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			s.fail("hostile shapes", err)
			return
		}
		go func() {
			c, err := ln.Accept()
			if err == nil {
				c.Write(hs)
				defer c.Close()
				io.Copy(io.Discard, c)
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := echo.Dial(ctx, ln.Addr().String(), integrity.Example(body), echo.WithWireVersion(1))
		cancel()
		ln.Close()
		if err == nil {
			c.Close()
		} else if errors.Is(err, wire.ErrLimit) {
			refused++
		}
	}
	row := hostileRow{
		kind: "a server declaring a shape that overflows or passes the limits", secret: "no", tried: len(shapes),
		ok: refused == len(shapes), outcome: fmt.Sprintf("%d refused by Dial with wire.ErrLimit", refused),
	}
	_, err := echo.NewServer(integrity.Example(1<<20), 4, echo.WithMaxPayloadBytes(1<<20))
	row.server = fmt.Sprintf("(the hostile side; a learner's NewServer for samples past WithMaxPayloadBytes fails: %v)", err)
	if !errors.Is(err, echo.ErrBadExample) {
		row.ok = false
	}
	if !row.ok {
		s.ok = false
	}
	s.hostile = append(s.hostile, row)
}

// idle measures honest actors alone and beside idle connections held by a
// second process, three runs each, alternating.
func (s *suite) idle() {
	n := 10000
	if s.o.quick {
		n = 1000
	}
	srv, done, err := s.server(64)
	if err != nil {
		s.fail("idle", err)
		return
	}
	defer func() { done(0) }()
	cfg := loadgen.Config{Actors: 32, Samples: s.scale(5000), Body: body, Seed: 10, Dial: dialTCP(srv.Addr().String())}
	var alone, beside []float64
	measure := func(into *[]float64, name string) bool {
		res, err := runOn(srv, cfg, nil)
		s.record(name, res, err)
		*into = append(*into, res.Rate())
		return err == nil
	}
	if !measure(&alone, "honest actors alone") {
		return
	}
	self, err := os.Executable()
	if err != nil {
		s.fail("idle", err)
		return
	}
	stop, err := loadgen.SpawnIdle(exec.Command(self, "--hold-idle", srv.Addr().String()+","+strconv.Itoa(n)))
	if err != nil {
		s.fail("idle", err)
		return
	}
	for range 3 {
		measure(&beside, fmt.Sprintf("honest actors beside %d idle connections", n))
	}
	if err := stop(); err != nil {
		s.fail("idle", err)
	}
	measure(&alone, "honest actors alone")
	measure(&alone, "honest actors alone")
	slices.Sort(alone)
	slices.Sort(beside)
	a, b := alone[len(alone)/2], beside[len(beside)/2]
	s.hostile = append(s.hostile, hostileRow{
		kind: fmt.Sprintf("%d idle connections (from a second process)", n), secret: "no", tried: n, ok: true,
		outcome: loadgen.OutHeld,
		server:  fmt.Sprintf("honest actors' rate %.0f/s beside them, %.0f/s alone: %.2f× (medians of 3)", b, a, b/a),
	})
}

// checkLeaks looks, after every server was closed, for goroutines,
// descriptors and ring mappings left behind.
func (s *suite) checkLeaks(ignore goleak.Option, fds int) {
	// toxiproxy's own link goroutines outlive its Stop when a toxic
	// stalled them: not this package's to count.
	if err := goleak.Find(ignore,
		goleak.IgnoreAnyFunction("github.com/Shopify/toxiproxy/v2/toxics.(*ToxicStub).Run"),
		goleak.IgnoreAnyFunction("github.com/Shopify/toxiproxy/v2.(*ToxicLink).read"),
		goleak.IgnoreAnyFunction("github.com/Shopify/toxiproxy/v2.(*ToxicLink).write"),
	); err != nil {
		s.leaks.goroutines = strings.Count(err.Error(), "Goroutine ")
		s.leaks.detail += err.Error()
	}
	deadline := time.Now().Add(5 * time.Second)
	for loadgen.OpenFDs() > fds && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	s.leaks.fds = max(0, loadgen.OpenFDs()-fds)
	if s.leaks.goroutines+s.leaks.fds+s.leaks.mappings > 0 {
		s.ok = false
		fmt.Fprintln(os.Stderr, "leaks:", s.leaks.detail)
	}
}

var execsRe = regexp.MustCompile(`execs: (\d+)`)

// fuzzAll runs every fuzz target of ./fuzz for the fuzz time.
func (s *suite) fuzzAll() {
	out, err := exec.Command("go", "test", "./fuzz", "-list", "^Fuzz").Output()
	if err != nil {
		s.fail("fuzz", fmt.Errorf("listing targets: %w", err))
		return
	}
	for _, target := range strings.Fields(string(out)) {
		if !strings.HasPrefix(target, "Fuzz") {
			continue
		}
		cmd := exec.Command("go", "test", "./fuzz", "-run", "^$", "-fuzz", "^"+target+"$",
			"-fuzztime", s.o.fuzztime.String(), "-parallel", strconv.Itoa(runtime.GOMAXPROCS(0)))
		out, err := cmd.CombinedOutput()
		row := fuzzRow{target: target}
		if m := execsRe.FindAllSubmatch(out, -1); len(m) > 0 {
			row.execs, _ = strconv.ParseInt(string(m[len(m)-1][1]), 10, 64)
		}
		if err != nil {
			row.crashes = 1
			row.err = lastLine(out)
			s.ok = false
		}
		s.fuzz = append(s.fuzz, row)
		fmt.Fprintf(os.Stderr, "%s: %d execs, err %v\n", target, row.execs, err)
	}
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}
