package tcp

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo/pytree"
	"github.com/seed-a9ef92a1/echo/ringbuf"
	"github.com/seed-a9ef92a1/echo/wire"
)

var testSecret = []byte("0123456789abcdef-the-test-secret")

// serve starts the acceptor of p on a loopback TCP listener and returns its
// address.
func serve(t testing.TB, p *Pool, cfg ServeConfig) string {
	t.Helper()
	l, err := TCP("127.0.0.1:0", 0).Listen(payload)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Serve([]*Listener{l}, cfg); err != nil {
		t.Fatal(err)
	}
	return l.Addr().String()
}

// dial connects to addr with a deadline, closed at the end of the test.
func dial(t testing.TB, network, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

// readHandshake reads the handshake from c and checks it describes
// testSpec's samples.
func readHandshake(t testing.TB, c net.Conn) {
	t.Helper()
	h, err := wire.ReadHandshake(c, wire.Limits{})
	if err != nil {
		t.Fatalf("reading the handshake: %v", err)
	}
	want, err := wire.HandshakeOf(testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	if !h.Equal(want) {
		t.Fatalf("handshake %+v, want %+v", h, want)
	}
}

// challenged connects to an authenticating acceptor and reads its
// challenge.
func challenged(t testing.TB, addr string) (net.Conn, wire.Nonce) {
	t.Helper()
	c := dial(t, "tcp", addr)
	buf := make([]byte, wire.ChallengeLen)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("reading the challenge: %v", err)
	}
	nonce, err := wire.DecodeChallenge(buf)
	if err != nil {
		t.Fatal(err)
	}
	return c, nonce
}

// expectRefused checks that the acceptor closes c without a byte more. A
// peer that sent more than the acceptor read sees a reset instead of the
// end of the stream.
func expectRefused(t testing.TB, c net.Conn) {
	t.Helper()
	b, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a refused peer read %v", err)
	}
	if len(b) != 0 {
		t.Fatalf("a refused peer read %x", b)
	}
}

func TestMaxConnsRefusesAtAccept(t *testing.T) {
	var logs lockedBuffer
	r := newRing(t, 2, 2)
	p := newPool(t, r, 2, testLogger(&logs))
	addr := serve(t, p, ServeConfig{MaxConns: 1})

	first := dial(t, "tcp", addr)
	readHandshake(t, first)
	eventually(t, "1 connection", func() bool { return p.ActiveConnections() == 1 })

	// Over the cap: closed before the handshake, counted before the close.
	expectRefused(t, dial(t, "tcp", addr))
	if st := p.Stats(); st.Refused != 1 || st.AuthFailures != 0 || st.Connections != 1 {
		t.Fatalf("stats %+v: want 1 refused, no auth failure, 1 connection", st)
	}
	if !strings.Contains(logs.String(), `reason="max connections"`) {
		t.Errorf("refusal not logged:\n%s", logs.String())
	}

	// The first one is served: its samples arrive and are acked.
	if _, err := first.Write(samples(1, 0, 2)); err != nil {
		t.Fatal(err)
	}
	readAcks(t, first, 2)
	for i, s := range nextBatch(t, r) {
		if !bytes.Equal(s, sample(1, i)) {
			t.Fatalf("slot %d: %x", i, s)
		}
	}

	// Once it leaves, there is room again.
	first.Close()
	eventually(t, "no connection", func() bool { return p.ActiveConnections() == 0 })
	readHandshake(t, dial(t, "tcp", addr))
}

func TestAuthentication(t *testing.T) {
	var logs lockedBuffer
	r := newRing(t, 2, 2)
	p := newPool(t, r, 1, testLogger(&logs))
	addr := serve(t, p, ServeConfig{Secret: testSecret})
	var mine wire.Nonce
	rand.Read(mine[:])

	// A wrong proof, followed by samples' worth of bytes: refused, and
	// none of them reach the ring.
	c, nonce := challenged(t, addr)
	c.Write(append(wire.AppendResponse(nil, []byte("not-the-secret-at-all"), &nonce, &mine), samples(9, 0, 2)...))
	expectRefused(t, c)
	if st := p.Stats(); st.Refused != 1 || st.AuthFailures != 1 {
		t.Fatalf("stats %+v: want 1 refused in authentication", st)
	}

	// Leaving in the middle of the response.
	c, nonce = challenged(t, addr)
	c.Write(wire.AppendResponse(nil, testSecret, &nonce, &mine)[:10])
	c.Close()
	eventually(t, "the leaver refused", func() bool { return p.Stats().AuthFailures == 2 })

	// The right response, with the first samples in the same write: the
	// bytes after the response are the worker's.
	c, nonce = challenged(t, addr)
	if _, err := c.Write(append(wire.AppendResponse(nil, testSecret, &nonce, &mine), samples(1, 0, 2)...)); err != nil {
		t.Fatal(err)
	}
	proof := make([]byte, wire.ProofLen)
	if _, err := io.ReadFull(c, proof); err != nil {
		t.Fatal(err)
	}
	if err := wire.VerifyServerProof(proof, testSecret, &nonce, &mine); err != nil {
		t.Fatal(err)
	}
	readHandshake(t, c)
	readAcks(t, c, 2)
	for i, s := range nextBatch(t, r) {
		if !bytes.Equal(s, sample(1, i)) {
			t.Fatalf("slot %d: %x", i, s)
		}
	}
	if st := p.Stats(); st.Refused != 2 || st.AuthFailures != 2 || st.Connections != 1 {
		t.Errorf("stats %+v: want 2 refused in authentication and 1 connection", st)
	}
	got := logs.String()
	for _, reason := range []string{`reason="authentication failed"`, `reason="left during authentication"`} {
		if strings.Count(got, reason) != 1 {
			t.Errorf("want %s logged once:\n%s", reason, got)
		}
	}
}

// TestPrologueTimeout has a peer take the challenge and never answer: it
// is refused once its time is up, and not before.
func TestPrologueTimeout(t *testing.T) {
	const timeout = 100 * time.Millisecond
	var logs lockedBuffer
	r := newRing(t, 2, 2)
	p := newPool(t, r, 1, testLogger(&logs))
	addr := serve(t, p, ServeConfig{Secret: testSecret, PrologueTimeout: timeout})
	start := time.Now()
	c, _ := challenged(t, addr)
	expectRefused(t, c)
	if waited := time.Since(start); waited < timeout*9/10 {
		t.Fatalf("refused after %v, before the %v timeout", waited, timeout)
	}
	if st := p.Stats(); st.Refused != 1 || st.AuthFailures != 1 {
		t.Fatalf("stats %+v: want 1 refused in authentication", st)
	}
	if !strings.Contains(logs.String(), `reason="authentication timed out"`) {
		t.Errorf("timeout not logged:\n%s", logs.String())
	}
}

// listenerClosed reports whether nothing accepts on addr any more.
func listenerClosed(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return true
	}
	c.Close()
	return false
}

func TestServeRefusals(t *testing.T) {
	listen := func(t *testing.T) (*Listener, string) {
		l, err := TCP("127.0.0.1:0", 0).Listen(payload)
		if err != nil {
			t.Fatal(err)
		}
		return l, l.Addr().String()
	}
	t.Run("after Close", func(t *testing.T) {
		r := newRing(t, 2, 2)
		p := newPool(t, r, 1, nil)
		r.Close()
		p.Close()
		l, addr := listen(t)
		if err := p.Serve([]*Listener{l}, ServeConfig{}); !errors.Is(err, ErrClosed) {
			t.Fatalf("Serve after Close = %v, want ErrClosed", err)
		}
		if !listenerClosed(addr) {
			t.Error("the refused listener still accepts")
		}
	})
	t.Run("twice", func(t *testing.T) {
		r := newRing(t, 2, 2)
		p := newPool(t, r, 1, nil)
		addr := serve(t, p, ServeConfig{})
		l, addr2 := listen(t)
		if err := p.Serve([]*Listener{l}, ServeConfig{}); err == nil || errors.Is(err, ErrClosed) {
			t.Fatalf("second Serve = %v, want it refused", err)
		}
		if !listenerClosed(addr2) {
			t.Error("the refused listener still accepts")
		}
		readHandshake(t, dial(t, "tcp", addr)) // the first still serves
	})
	t.Run("empty samples", func(t *testing.T) {
		// A worker serving samples of 0 bytes would divide by zero at the
		// first byte a peer sent.
		spec, err := pytree.SpecOf(map[string]any{"a": pytree.MustOf([]float32{}, 0)})
		if err != nil {
			t.Fatal(err)
		}
		r, err := ringbuf.New(ringbuf.Layout{BatchSize: 2, NumSlabs: 2, LeafBytes: []int{0}})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Free()
		p, err := NewPool(Config{Ring: r, Spec: spec, Workers: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			r.Close()
			p.Close()
		}()
		l, addr := listen(t)
		if err := p.Serve([]*Listener{l}, ServeConfig{}); err == nil {
			c := dial(t, "tcp", addr)
			c.Write([]byte{0})
			time.Sleep(100 * time.Millisecond) // room for a worker to fail
			t.Fatal("Serve accepted samples of 0 bytes")
		}
		if !listenerClosed(addr) {
			t.Error("the refused listener still accepts")
		}
	})
	t.Run("short secret", func(t *testing.T) {
		r := newRing(t, 2, 2)
		p := newPool(t, r, 1, nil)
		l, addr := listen(t)
		if err := p.Serve([]*Listener{l}, ServeConfig{Secret: []byte("short")}); !errors.Is(err, wire.ErrSecret) {
			t.Fatalf("Serve with a short secret = %v, want ErrSecret", err)
		}
		if !listenerClosed(addr) {
			t.Error("the refused listener still accepts")
		}
	})
}

// TestServeUnix serves a Unix-domain listener end to end and checks that
// Close removes its socket file.
func TestServeUnix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "echo.sock")
	r := newRing(t, 2, 2)
	p := newPool(t, r, 1, nil)
	l, err := Unix(path).Listen(payload)
	if err != nil {
		t.Fatal(err)
	}
	if l.Addr().String() != path {
		t.Errorf("Addr() = %v, want %s", l.Addr(), path)
	}
	if _, err := Unix(path).Listen(payload); err == nil {
		t.Error("listened twice on one path")
	}
	if err := p.Serve([]*Listener{l}, ServeConfig{}); err != nil {
		t.Fatal(err)
	}
	c := dial(t, "unix", path)
	readHandshake(t, c)
	if _, err := c.Write(samples(1, 0, 2)); err != nil {
		t.Fatal(err)
	}
	readAcks(t, c, 2)
	for i, s := range nextBatch(t, r) {
		if !bytes.Equal(s, sample(1, i)) {
			t.Fatalf("slot %d: %x", i, s)
		}
	}
	r.Close()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := net.Dial("unix", path); err == nil {
		t.Error("the socket still accepts after Close")
	}
	if m, _ := filepath.Glob(path); len(m) != 0 {
		t.Errorf("socket file %s left after Close", path)
	}
}
