package loadgen

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/bench/integrity"
)

// expectOutcomes fails t unless every attempt of a came out as want.
func expectOutcomes(t *testing.T, a *Attack, want string) {
	t.Helper()
	t.Log(a)
	if a.Outcomes[want] != a.Tried {
		t.Errorf("%s: %v, want all %d %q", a.Kind, a.Outcomes, a.Tried, want)
	}
}

const body = 200

func target(srv *echo.Server, secret []byte, timeout time.Duration) Target {
	return Target{
		Dial: dialer(srv.Addr().String()), Example: integrity.Example(body),
		Payload: srv.Spec().PayloadBytes(), Secret: secret, AuthTimeout: timeout,
	}
}

// TestHostileAlongsideHonest attacks a server with junk, half handshakes
// and peers that never read their acks while honest actors, some killed,
// deliver: the honest streams must come out whole, and the junk must come
// out as exactly the samples the server acknowledged to the attackers.
func TestHostileAlongsideHonest(t *testing.T) {
	srv := startServer(t, body, 64)
	tg := target(srv, nil, 0)
	var attacks []*Attack
	cfg := Config{
		Actors: 64, Samples: 1000, Body: body, Kill: 0.1, Seed: 17, Dial: tg.Dial,
		During: func(ctx context.Context, check *integrity.Checker) error {
			var wg sync.WaitGroup
			var mu sync.Mutex
			add := func(a *Attack) { mu.Lock(); attacks = append(attacks, a); mu.Unlock() }
			wg.Go(func() { add(RandomBytes(ctx, tg, 200)) })
			wg.Go(func() { add(HalfOpening(ctx, tg, 100, time.Second)) })
			wg.Go(func() { add(NeverReadsAcks(ctx, tg, check, body, 4, 20000, 5*time.Second)) })
			wg.Wait()
			return nil
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, srv, cfg, nil)
	checkRun(t, res, err)
	var foreign uint64
	for _, a := range attacks {
		foreign += a.Foreign
		switch a.Kind {
		case "random bytes":
			expectOutcomes(t, a, OutAckedWhole)
		case "half handshake, then silence":
			expectOutcomes(t, a, OutHeld)
		case "never reads its acks":
			expectOutcomes(t, a, OutServedUnread)
		}
	}
	if len(attacks) != 3 {
		t.Fatalf("%d attacks ran", len(attacks))
	}
	if res.Foreign != foreign {
		t.Errorf("%d junk samples delivered, the attackers had %d acknowledged", res.Foreign, foreign)
	}
}

// TestHostileAuthenticated attacks a server with a shared secret: junk,
// wrong proofs and half answers are all refused, each logged once with its
// reason, while honest clients with the secret deliver.
func TestHostileAuthenticated(t *testing.T) {
	secret := []byte("a secret of thirty-two bytes....")
	// Long enough that no junk or wrong-proof peer, slowed by a loaded
	// machine or the race detector, is logged as timed out instead.
	const timeout = 2 * time.Second
	log := NewRefusals()
	srv := startServer(t, body, 64, echo.WithSharedSecret(secret), echo.WithAuthTimeout(timeout), echo.WithLogger(slog.New(log)))
	tg := target(srv, secret, timeout)
	var random, wrong, half *Attack
	cfg := Config{
		Actors: 32, Samples: 500, Body: body, Kill: 0.1, Client: true, Secret: secret, Seed: 19, Dial: tg.Dial,
		During: func(ctx context.Context, check *integrity.Checker) error {
			var wg sync.WaitGroup
			wg.Go(func() { random = RandomBytes(ctx, tg, 100) })
			wg.Go(func() { wrong = WrongSecret(ctx, tg, 100) })
			wg.Go(func() { half = HalfOpening(ctx, tg, 50, 5*time.Second) })
			wg.Wait()
			return nil
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, srv, cfg, nil)
	checkRun(t, res, err)
	expectOutcomes(t, random, OutAuthClosed)
	expectOutcomes(t, wrong, OutAuthClosed)
	expectOutcomes(t, half, OutAuthTimeout)
	if res.Foreign != 0 {
		t.Errorf("%d foreign samples reached the ring", res.Foreign)
	}
	if res.Info.AuthFailures != 250 {
		t.Errorf("AuthFailures %d, want 250", res.Info.AuthFailures)
	}
	// Random answers shorter than a response end in the peer's close.
	failed, left, timedOut := log.Count("authentication failed"), log.Count("left during authentication"), log.Count("authentication timed out")
	if failed+left != 200 || timedOut != 50 {
		t.Errorf("logged %d failed + %d left (want 200), %d timed out (want 50)", failed, left, timedOut)
	}
}

// TestConnectionFlood opens a thousand connections at once against a
// server capped at 64 while 32 honest actors deliver: every one past the
// cap is refused before its handshake, counted and logged once.
func TestConnectionFlood(t *testing.T) {
	log := NewRefusals()
	srv := startServer(t, body, 64, echo.WithMaxConnections(64), echo.WithLogger(slog.New(log)))
	tg := target(srv, nil, 0)
	var flood *Attack
	cfg := Config{
		Actors: 32, Samples: 2000, Body: body, Seed: 23, Dial: tg.Dial,
		During: func(ctx context.Context, _ *integrity.Checker) error {
			flood = Flood(ctx, tg, 1000)
			return nil
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, srv, cfg, nil)
	checkRun(t, res, err)
	t.Log(flood)
	refused, served := flood.Outcomes[OutRefused], flood.Outcomes[OutServed]
	if refused+served != 1000 || served < 32 || refused < 900 {
		t.Fatalf("flood outcomes %v", flood.Outcomes)
	}
	if res.Info.RefusedConnections != int64(refused) || log.Count("max connections") != refused {
		t.Errorf("%d refused, the server counted %d and logged %d", refused, res.Info.RefusedConnections, log.Count("max connections"))
	}
}

// Environment of the idle-connection holder, a copy of this test binary.
const (
	idleAddrEnv = "LOADGEN_IDLE_ADDR"
	idleNEnv    = "LOADGEN_IDLE_N"
)

func TestMain(m *testing.M) {
	if addr := os.Getenv(idleAddrEnv); addr != "" {
		n, err := strconv.Atoi(os.Getenv(idleNEnv))
		if err == nil {
			err = HoldIdle(addr, n, os.Stdout, os.Stdin)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestIdleConnections holds 10,000 idle connections open, from another
// process, while actors deliver, and logs the actors' rate beside the rate
// of the same run without them (a figure, not a pass mark: the machines
// are shared).
func TestIdleConnections(t *testing.T) {
	idle := 10000
	if testing.Short() {
		idle = 1000
	}
	srv := startServer(t, body, 64)
	tg := target(srv, nil, 0)
	cfg := Config{Actors: 32, Samples: 2000, Body: body, Kill: 0.05, Seed: 29, Dial: tg.Dial}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	base, err := Run(ctx, srv, cfg, nil)
	checkRun(t, base, err)

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = append(os.Environ(), idleAddrEnv+"="+srv.Addr().String(), idleNEnv+"="+strconv.Itoa(idle))
	stop, err := SpawnIdle(cmd)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := Run(ctx, srv, cfg, nil)
	if err := stop(); err != nil {
		t.Error(err)
	}
	checkRun(t, loaded, err)
	if got := loaded.Info.ActiveConnections; got < int64(idle) {
		t.Fatalf("%d connections open during the run, want at least the %d idle", got, idle)
	}
	t.Logf("actors' rate: %.0f samples/s alone, %.0f beside %d idle connections (%.2fx)",
		base.Rate(), loaded.Rate(), idle, loaded.Rate()/base.Rate())
}
