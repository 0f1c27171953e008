package tcp

import (
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo/pytree"
	"github.com/seed-a9ef92a1/echo/wire"
)

// hello2 runs version 2's exchange on a fresh connection to addr, with
// leaves (testSpec's when nil) and session, and returns the connection and
// the server's reply.
func hello2(t testing.TB, addr string, leaves []wire.Leaf, session wire.SessionID) (net.Conn, wire.Reply) {
	t.Helper()
	c := dial(t, "tcp", addr)
	readHandshake(t, c)
	if _, err := c.Write([]byte(wire.Probe)); err != nil {
		t.Fatal(err)
	}
	offer := make([]byte, wire.ProbeLen)
	if _, err := io.ReadFull(c, offer); err != nil || string(offer) != wire.Offer {
		t.Fatalf("offer % x, %v", offer, err)
	}
	if leaves == nil {
		leaves = wire.LeavesOf(testSpec(t))
	}
	h, err := wire.AppendHello(nil, wire.Hello{Session: session, Leaves: leaves})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(h); err != nil {
		t.Fatal(err)
	}
	var buf []byte
	one := make([]byte, 1)
	for {
		r, _, err := wire.DecodeReply(buf)
		if err == nil {
			return c, r
		}
		if err != wire.ErrShort {
			t.Fatalf("reply % x: %v", buf, err)
		}
		if _, err := io.ReadFull(c, one); err != nil {
			t.Fatalf("reading the reply after % x: %v", buf, err)
		}
		buf = append(buf, one[0])
	}
}

// TestSessionResumesWhereCommitsStopped: a client that loses its
// connection mid-sample, with acks unread, resumes at the server's count
// and resends the rest; the ring holds every sample once, in order.
func TestSessionResumesWhereCommitsStopped(t *testing.T) {
	r := newRing(t, 10, 2)
	p := newPool(t, r, 2, nil)
	addr := serve(t, p, ServeConfig{})

	c, rep := hello2(t, addr, nil, wire.SessionID{})
	if rep.Status != wire.StatusNew || rep.Session.IsZero() || rep.Committed != 0 {
		t.Fatalf("first reply %+v", rep)
	}
	// Seven whole samples and half of the eighth; the acks stay unread.
	c.Write(append(samples(1, 0, 7), sample(1, 7)[:9]...))
	eventually(t, "7 samples in the ring", func() bool { return r.Stats().Inserted >= 7 })
	c.Close()

	c2, rep2 := hello2(t, addr, nil, rep.Session)
	if rep2.Status != wire.StatusResumed || rep2.Session != rep.Session || rep2.Committed != 7 {
		t.Fatalf("resume reply %+v, want resumed at 7", rep2)
	}
	c2.Write(samples(1, int(rep2.Committed), 10))
	readAcks(t, c2, 3)
	for i, s := range nextBatch(t, r) {
		if src, seq := decode(t, s); src != 1 || seq != i {
			t.Fatalf("slot %d holds sample %d of %d", i, seq, src)
		}
	}
}

// TestSessionTakesOverAnOpenConnection: a client that reconnects before
// the server saw its old connection end gets the session anyway; the old
// connection is shut down first, so its commits are final when the reply
// gives the count.
func TestSessionTakesOverAnOpenConnection(t *testing.T) {
	r := newRing(t, 4, 2)
	p := newPool(t, r, 1, nil)
	addr := serve(t, p, ServeConfig{})
	old, rep := hello2(t, addr, nil, wire.SessionID{})
	old.Write(samples(2, 0, 2))
	readAcks(t, old, 2)

	c, rep2 := hello2(t, addr, nil, rep.Session)
	if rep2.Status != wire.StatusResumed || rep2.Committed != 2 {
		t.Fatalf("resume reply %+v, want resumed at 2", rep2)
	}
	if b := expectEOF(t, old); len(b) != 0 {
		t.Fatalf("old connection read % x before its end", b)
	}
	c.Write(samples(2, 2, 4))
	readAcks(t, c, 2)
	for i, s := range nextBatch(t, r) {
		if _, seq := decode(t, s); seq != i {
			t.Fatalf("slot %d holds seq %d", i, seq)
		}
	}
}

// TestSessionRefusals: another tree is refused with the leaf named to the
// client and in the server's log at Warn; an unknown or expired session
// is refused as unknown.
func TestSessionRefusals(t *testing.T) {
	var logs lockedBuffer
	r := newRing(t, 4, 2)
	p := newPool(t, r, 1, testLogger(&logs))
	addr := serve(t, p, ServeConfig{SessionTTL: 50 * time.Millisecond})

	leaves := func(tree any) []wire.Leaf {
		s, err := pytree.SpecOf(tree)
		if err != nil {
			t.Fatal(err)
		}
		return wire.LeavesOf(s)
	}
	cases := []struct {
		name   string
		leaves []wire.Leaf
		want   string
	}{
		{"dtype", leaves(map[string]any{"a": pytree.MustOf(make([]int32, 4)), "b": pytree.Scalar(uint8(0))}),
			"a: dtype int32, expected float32"},
		{"renamed", leaves(map[string]any{"a": pytree.MustOf(make([]float32, 4)), "c": pytree.Scalar(uint8(0))}),
			"leaf 1 is c, expected b"},
		{"swapped", leaves(map[string]any{"a": pytree.Scalar(uint8(0)), "b": pytree.MustOf(make([]float32, 4))}),
			"a: dtype uint8, expected float32"},
	}
	for _, tc := range cases {
		c, rep := hello2(t, addr, tc.leaves, wire.SessionID{})
		if rep.Status != wire.StatusRefused || rep.Message != tc.want {
			t.Errorf("%s: reply %+v, want refusal %q", tc.name, rep, tc.want)
		}
		if b := expectEOF(t, c); len(b) != 0 {
			t.Errorf("%s: read % x after the refusal", tc.name, b)
		}
		eventually(t, "the refusal logged", func() bool {
			return strings.Contains(logs.String(), "level=WARN msg=\"echo: connection refused\"") &&
				strings.Contains(logs.String(), "spec mismatch: "+tc.want)
		})
	}
	_, rep := hello2(t, addr, nil, wire.SessionID{9, 9, 9})
	if rep.Status != wire.StatusUnknownSession {
		t.Errorf("unknown session: reply %+v", rep)
	}
	c, rep := hello2(t, addr, nil, wire.SessionID{})
	c.Close()
	time.Sleep(100 * time.Millisecond) // past the TTL
	if _, rep2 := hello2(t, addr, nil, rep.Session); rep2.Status != wire.StatusUnknownSession {
		t.Errorf("expired session: reply %+v", rep2)
	}
	if st := p.Stats(); st.Refused != 5 {
		t.Errorf("refused %d, want 5", st.Refused)
	}
}

// TestVersion1StreamsAreNotProbes: version 1 samples that begin like the
// probe, sent a byte at a time, are samples; an idle version 1
// connection counts as served; and a sample that carries the probe whole
// is refused, never delivered.
func TestVersion1StreamsAreNotProbes(t *testing.T) {
	r := newRing(t, 2, 2)
	p := newPool(t, r, 1, nil)
	addr := serve(t, p, ServeConfig{PrologueTimeout: time.Second})

	idle := dial(t, "tcp", addr)
	readHandshake(t, idle)
	eventually(t, "the idle connection counted", func() bool { return p.ActiveConnections() == 1 })

	c := dial(t, "tcp", addr)
	readHandshake(t, c)
	first := append([]byte(wire.Probe[:5]), make([]byte, payload-5)...)
	for i := range first {
		c.Write(first[i : i+1])
		time.Sleep(time.Millisecond)
	}
	second := sample(3, 1)
	c.Write(second)
	readAcks(t, c, 2)
	got := nextBatch(t, r)
	if !bytes.Equal(got[0], first) || !bytes.Equal(got[1], second) {
		t.Fatalf("batch % x, want the two samples as sent", got)
	}

	// A first sample that is the probe and then garbage: refused, as a
	// bad hello, with nothing in the ring.
	bad := dial(t, "tcp", addr)
	readHandshake(t, bad)
	bad.Write(append([]byte(wire.Probe), bytes.Repeat([]byte{7}, payload-wire.ProbeLen)...))
	rest := expectEOF(t, bad)
	if string(rest) != wire.Offer {
		t.Fatalf("read % x, want the offer and the end", rest)
	}
	if st := r.Stats(); st.Inserted != 2 {
		t.Fatalf("%d samples committed, want 2", st.Inserted)
	}
}

// TestV1OnlyServesAtOnce: with version 2 off, the acceptor takes no look
// at the first bytes, and a probe is a sample's start like any other.
func TestV1OnlyServesAtOnce(t *testing.T) {
	r := newRing(t, 1, 2)
	p := newPool(t, r, 1, nil)
	addr := serve(t, p, ServeConfig{V1Only: true})
	c := dial(t, "tcp", addr)
	readHandshake(t, c)
	s := append([]byte(wire.Probe), make([]byte, payload-wire.ProbeLen)...)
	c.Write(s)
	readAcks(t, c, 1)
	if got := nextBatch(t, r); !bytes.Equal(got[0], s) {
		t.Fatalf("got % x", got[0])
	}
}
