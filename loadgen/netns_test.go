package loadgen

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/integrity"
)

// requireNetnsEnv, set (as .ci/run sets it), turns the namespace test's
// skips into failures.
const requireNetnsEnv = "ECHO_REQUIRE_NETNS"

// skipNetns skips the test for why, or fails it where namespaces are
// required.
func skipNetns(t *testing.T, why string, args ...any) {
	t.Helper()
	if os.Getenv(requireNetnsEnv) != "" {
		t.Fatalf("network namespaces required ("+requireNetnsEnv+"): "+why, args...)
	}
	t.Skipf("network namespaces unavailable: "+why, args...)
}

// ip runs ip(8).
func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// actorHost is one network namespace joined to the test's by a veth pair.
type actorHost struct {
	name   string // the namespace, under /run/netns
	server string // the test's end of the pair, which actors dial
	addr   string // the namespace's end
}

// makeHosts makes n namespaces, each wired to this one over its own veth
// pair on its own /24, removed when the test ends.
func makeHosts(t *testing.T, n int) []actorHost {
	t.Helper()
	if os.Geteuid() != 0 {
		skipNetns(t, "needs root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		skipNetns(t, "no ip(8) (iproute2): %v", err)
	}
	var hosts []actorHost
	for i := range n {
		h := actorHost{
			name:   fmt.Sprintf("echo-test-%d-%d", os.Getpid(), i),
			server: fmt.Sprintf("10.231.%d.1", i),
			addr:   fmt.Sprintf("10.231.%d.2", i),
		}
		if err := ip("netns", "add", h.name); err != nil {
			skipNetns(t, "%v", err)
		}
		t.Cleanup(func() { ip("netns", "del", h.name) }) // takes the pair with it
		// Interface names: at most 15 bytes, unique per test process.
		here, there := fmt.Sprintf("ev%dh%d", os.Getpid()%100000, i), fmt.Sprintf("ev%dn%d", os.Getpid()%100000, i)
		for _, cmd := range [][]string{
			{"link", "add", here, "type", "veth", "peer", "name", there, "netns", h.name},
			{"addr", "add", h.server + "/24", "dev", here},
			{"link", "set", here, "up"},
			{"-n", h.name, "addr", "add", h.addr + "/24", "dev", there},
			{"-n", h.name, "link", "set", there, "up"},
			{"-n", h.name, "link", "set", "lo", "up"},
		} {
			if err := ip(cmd...); err != nil {
				skipNetns(t, "%v", err)
			}
		}
		hosts = append(hosts, h)
	}
	return hosts
}

// dialFrom dials addr from inside namespace ns: the socket is made on a
// thread switched into ns, and keeps the namespace once the thread
// switches back.
func dialFrom(ctx context.Context, ns, addr string) (net.Conn, error) {
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	runtime.LockOSThread()
	home, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer home.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return nil, os.NewSyscallError("setns", err)
	}
	var d net.Dialer
	conn, dialErr := d.DialContext(ctx, "tcp", addr)
	if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread stays locked, and dies with its goroutine rather
		// than serve another in the wrong namespace.
		if conn != nil {
			conn.Close()
		}
		return nil, os.NewSyscallError("setns back", err)
	}
	runtime.UnlockOSThread()
	return conn, dialErr
}

// peers records the peers of the connections a server opened.
type peers struct {
	mu   sync.Mutex
	seen map[string]int // by host
}

func (p *peers) Enabled(context.Context, slog.Level) bool { return true }
func (p *peers) WithAttrs([]slog.Attr) slog.Handler       { return p }
func (p *peers) WithGroup(string) slog.Handler            { return p }
func (p *peers) Handle(_ context.Context, rec slog.Record) error {
	if rec.Message != "echo: connection opened" {
		return nil
	}
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key == "peer" {
			if host, _, err := net.SplitHostPort(a.Value.String()); err == nil {
				p.mu.Lock()
				p.seen[host]++
				p.mu.Unlock()
			}
		}
		return true
	})
	return nil
}

// TestActorsInNamespaces runs the fault run with actors in four network
// namespaces of their own, each reaching the server over a veth pair: real
// IP routing between hosts, not loopback.
func TestActorsInNamespaces(t *testing.T) {
	hosts := makeHosts(t, 4)
	log := &peers{seen: map[string]int{}}
	srv, err := echo.NewServer(integrity.Example(body), 64, echo.WithTCP("0.0.0.0:0"), echo.WithLogger(slog.New(log)))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(srv.Addr().String())
	var next int
	var mu sync.Mutex
	cfg := Config{
		Actors: 32, Samples: 1000, Body: body, Kill: 0.2, Seed: 31,
		Dial: func(ctx context.Context) (net.Conn, error) {
			mu.Lock()
			h := hosts[next%len(hosts)]
			next++
			mu.Unlock()
			return dialFrom(ctx, h.name, net.JoinHostPort(h.server, port))
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, srv, cfg, nil)
	checkRun(t, res, err)
	log.mu.Lock()
	defer log.mu.Unlock()
	t.Logf("connections by actor host: %v", log.seen)
	for _, h := range hosts {
		if log.seen[h.addr] == 0 {
			t.Errorf("no connection from %s (namespace %s)", h.addr, h.name)
		}
	}
	for host := range log.seen {
		if !strings.HasPrefix(host, "10.231.") {
			t.Errorf("a connection from %s, outside the namespaces", host)
		}
	}
}
