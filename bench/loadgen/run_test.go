package loadgen

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/bench/integrity"
)

// startServer starts a loopback server for integrity samples with an
// n-byte body, closed at the end of the test.
func startServer(t testing.TB, body, batch int, opts ...echo.Option) *echo.Server {
	t.Helper()
	opts = append([]echo.Option{echo.WithTCP("127.0.0.1:0")}, opts...)
	srv, err := echo.NewServer(integrity.Example(body), batch, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		srv.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// dialer dials addr over TCP.
func dialer(addr string) func(context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}

// checkRun fails t unless res shows every acknowledged sample delivered
// once, in order and intact.
func checkRun(t *testing.T, res Result, err error) {
	t.Helper()
	t.Logf("%v; connections %d, killed %d (handshake %d, between %d, mid-sample %d; %d by reset), failed %d, %d batches in %v",
		res.Report, res.Connections, res.KilledTotal(), res.Killed[KillHandshake], res.Killed[KillBetween],
		res.Killed[KillMidSample], res.Reset, res.Failed, res.Batches, res.Elapsed.Round(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK() {
		t.Fatalf("integrity: %v", res.Report)
	}
	if res.Acked == 0 || res.Delivered < res.Acked {
		t.Fatalf("delivered %d of %d acked", res.Delivered, res.Acked)
	}
}

func TestRunClean(t *testing.T) {
	srv := startServer(t, 200, 64)
	cfg := Config{Actors: 16, Samples: 500, Body: 200, Dial: dialer(srv.Addr().String())}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := Run(ctx, srv, cfg, nil)
	checkRun(t, res, err)
	if want := uint64(16 * 500); res.Sent != want || res.Acked != want || res.Delivered != want {
		t.Fatalf("sent %d, acked %d, delivered %d; want %d each", res.Sent, res.Acked, res.Delivered, want)
	}
	if res.KilledTotal() != 0 || res.Failed != 0 || res.Connections != 16 {
		t.Fatalf("connections %d, killed %d, failed %d; want 16, 0, 0", res.Connections, res.KilledTotal(), res.Failed)
	}
	// Every sample was taken: no connection has any waiting.
	if res.Info.QueueDepthSum != 0 {
		t.Fatalf("QueueDepthSum %d after the run", res.Info.QueueDepthSum)
	}
}

// TestRunKilled is the fault run: 256 actors sending thousands of samples
// between them, a third of their connections killed at a random byte —
// in the handshake, between samples, inside one — and reconnecting.
func TestRunKilled(t *testing.T) {
	actors, samples := 256, 2000
	if testing.Short() {
		actors, samples = 64, 200
	}
	srv := startServer(t, 200, 64)
	cfg := Config{Actors: actors, Samples: samples, Body: 200, Kill: 0.3, Seed: 7, Dial: dialer(srv.Addr().String())}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, srv, cfg, nil)
	checkRun(t, res, err)
	for kind, n := range res.Killed {
		if n == 0 {
			t.Errorf("no connection killed at kind %d", kind)
		}
	}
	if res.Sent != uint64(actors*samples) {
		t.Errorf("sent %d, want %d", res.Sent, actors*samples)
	}
}

// TestRunConsumerPauses stops the learner for seconds at a time while the
// actors keep sending: the ring stays full, actors wait in TCP
// backpressure, and nothing is lost when the learner comes back.
func TestRunConsumerPauses(t *testing.T) {
	srv := startServer(t, 200, 64)
	cfg := Config{Actors: 64, Samples: 500, Body: 200, Kill: 0.1, Seed: 3, Dial: dialer(srv.Addr().String())}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var paused time.Duration
	res, err := Run(ctx, srv, cfg, func(batches int) {
		if batches == 10 || batches == 200 {
			start := time.Now()
			time.Sleep(1500 * time.Millisecond)
			paused += time.Since(start)
		}
	})
	checkRun(t, res, err)
	if paused < 3*time.Second {
		t.Fatalf("paused %v", paused)
	}
}

// TestRunClients is the fault run through echo.Client, killed between
// samples.
func TestRunClients(t *testing.T) {
	srv := startServer(t, 200, 64)
	cfg := Config{Actors: 64, Samples: 500, Body: 200, Kill: 0.3, Client: true, Seed: 5, Dial: dialer(srv.Addr().String())}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := Run(ctx, srv, cfg, nil)
	checkRun(t, res, err)
	if res.Killed[KillBetween] == 0 {
		t.Fatal("no client killed")
	}
}

// TestRunReconnecting: reconnecting version 2 clients whose connections
// are cut under them deliver every sample handed to Send exactly once.
func TestRunReconnecting(t *testing.T) {
	srv := startServer(t, 200, 64)
	cfg := Config{Actors: 32, Samples: 500, Body: 200, Reconnect: true, Kills: 4, Seed: 6, Dial: dialer(srv.Addr().String())}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := Run(ctx, srv, cfg, nil)
	checkRun(t, res, err)
	t.Logf("%d cuts, %d unacknowledged at them, %d connections", res.KilledTotal(), res.UnackedAtKills, res.Connections)
	if res.KilledTotal() != 32*4 || res.Sent != 32*500 || res.Acked != res.Sent || res.Delivered != res.Sent || res.Failed != 0 {
		t.Fatalf("%d cuts, %d sent, %d acked, %d delivered, %d failed: want 128 cuts and all 16000 delivered once",
			res.KilledTotal(), res.Sent, res.Acked, res.Delivered, res.Failed)
	}
}

// TestRunLargeSamples kills connections carrying samples too large for
// the socket's receive buffer, which the server stages before copying.
func TestRunLargeSamples(t *testing.T) {
	const body = 3 << 20
	srv := startServer(t, body, 4)
	cfg := Config{Actors: 8, Samples: 12, Body: body, Kill: 0.4, Seed: 11, MaxInflight: 4, Dial: dialer(srv.Addr().String())}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := Run(ctx, srv, cfg, nil)
	checkRun(t, res, err)
}
