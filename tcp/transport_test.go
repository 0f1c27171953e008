package tcp

import (
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestTransportValidate(t *testing.T) {
	for _, tc := range []struct {
		tr     Transport
		ok     bool
		String string
	}{
		{TCP("127.0.0.1:0", 0), true, "127.0.0.1:0"},
		{TCP(":7000", 0), true, ":7000"},
		{TCP("127.0.0.1", 0), false, "127.0.0.1"}, // no port
		{TCP("127.0.0.1:port", 0), false, "127.0.0.1:port"},
		{Unix("/tmp/echo.sock"), true, "unix:/tmp/echo.sock"},
		{Unix(""), false, "unix:"},
		{Unix("/" + strings.Repeat("x", 107)), false, "unix:/" + strings.Repeat("x", 107)},
		{Transport{}, false, ""},
	} {
		err := tc.tr.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("%q.Validate() = %v, want ok=%v", tc.tr, err, tc.ok)
		}
		if got := tc.tr.String(); got != tc.String {
			t.Errorf("String() = %q, want %q", got, tc.String)
		}
		if !tc.ok {
			if l, err := tc.tr.Listen(payload); err == nil {
				l.Close()
				t.Errorf("%q.Listen succeeded", tc.tr)
			}
		}
	}
}

// accepted listens on tr, connects to it and returns the accepted socket,
// the way the acceptor would see it.
func accepted(t *testing.T, tr Transport) (*Listener, int) {
	t.Helper()
	l, err := tr.Listen(payload)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	network := "tcp"
	if _, ok := l.Addr().(*net.UnixAddr); ok {
		network = "unix"
	}
	dial(t, network, l.Addr().String())
	fd, _, err := unix.Accept4(l.fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return l, fd
}

// TestGate checks the whole-sample gate of each transport: small samples
// wait whole in the kernel (with SO_RCVLOWAT on TCP), samples that would
// fill the receive window alone are staged. (Urgent data inline is set at
// accept; TestOutOfBandByteIsAStreamByte tests it through the acceptor.)
func TestGate(t *testing.T) {
	t.Run("tcp", func(t *testing.T) {
		l, fd := accepted(t, TCP("127.0.0.1:0", 0))
		if peerName(fd) == "unknown" || !strings.HasPrefix(peerName(fd), "127.0.0.1:") {
			t.Errorf("peer name %q", peerName(fd))
		}
		if gated, err := l.prepare(fd, payload); err != nil || !gated {
			t.Fatalf("prepare(%d) = %v, %v; want gated", payload, gated, err)
		}
		for opt, want := range map[[2]int]int{
			{unix.SOL_SOCKET, unix.SO_RCVLOWAT}:  payload,
			{unix.IPPROTO_TCP, unix.TCP_NODELAY}: 1,
		} {
			if v, err := unix.GetsockoptInt(fd, opt[0], opt[1]); err != nil || v != want {
				t.Errorf("option %v = %d (%v), want %d", opt, v, err, want)
			}
		}
		if gated, err := l.prepare(fd, MinReceiveBuffer); err != nil || gated {
			t.Fatalf("prepare(%d) = %v, %v; want staged", MinReceiveBuffer, gated, err)
		}
	})
	t.Run("tcp small buffer", func(t *testing.T) {
		l, fd := accepted(t, TCP("127.0.0.1:0", 8<<10))
		if gated, err := l.prepare(fd, 8<<10); err != nil || gated {
			t.Fatalf("prepare = %v, %v; want staged in an 8 KiB window", gated, err)
		}
	})
	t.Run("unix", func(t *testing.T) {
		l, fd := accepted(t, Unix(filepath.Join(t.TempDir(), "s")))
		if gated, err := l.prepare(fd, payload); err != nil || !gated {
			t.Fatalf("prepare(%d) = %v, %v; want gated", payload, gated, err)
		}
		if gated, err := l.prepare(fd, MaxReceiveBuffer); err != nil || gated {
			t.Fatalf("prepare(%d) = %v, %v; want staged", MaxReceiveBuffer, gated, err)
		}
		if !strings.HasPrefix(peerName(fd), "unix:") {
			t.Errorf("peer name %q", peerName(fd))
		}
	})
	if got := peerName(-1); got != "unknown" {
		t.Errorf("peerName(-1) = %q", got)
	}
}

// TestListenTCP binds the address forms TCP takes and checks the address
// reported, and that a bound port cannot be bound twice.
func TestListenTCP(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", ":0", "[::1]:0"} {
		l, err := TCP(addr, 0).Listen(payload)
		if err != nil {
			if addr == "[::1]:0" {
				t.Logf("no IPv6 loopback: %v", err)
				continue
			}
			t.Fatalf("Listen(%q): %v", addr, err)
		}
		a := l.Addr().(*net.TCPAddr)
		if a.Port == 0 {
			t.Errorf("Listen(%q) reports port 0", addr)
		}
		// Every form accepts on loopback: IPv4 through the dual-stack
		// socket for ":0".
		host := "127.0.0.1"
		if addr == "[::1]:0" {
			host = "::1"
		}
		bound := net.JoinHostPort(host, strconv.Itoa(a.Port))
		dial(t, "tcp", bound).Close()
		if l2, err := TCP(bound, 0).Listen(payload); err == nil {
			l2.Close()
			t.Errorf("bound %s twice", bound)
		}
		if err := l.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
}
