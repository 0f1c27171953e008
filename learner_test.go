//go:build linux

package echo_test

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/wire"
)

// goLearner is a learner process's side of docs/learner.md, in Go: what a
// Python learner does, for the tests of the server's side.
type goLearner struct {
	t       testing.TB
	c       *net.UnixConn
	welcome wire.Welcome
	mem     []byte // the ring, mapped read-only from the memfd
	offers  []byte // the offer page, mapped read-only
}

func attachLearner(t testing.TB, path string) *goLearner {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write(wire.AppendLearnerHello(nil)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<16)
	oob := make([]byte, unix.CmsgSpace(8))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		t.Fatalf("control messages %v, %v", msgs, err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 2 {
		t.Fatalf("rights %v, %v", fds, err)
	}
	defer unix.Close(fds[0]) // the mappings keep the memory
	defer unix.Close(fds[1])
	total, err := wire.FrameLen(buf[:n], wire.MaxFrame)
	if err != nil {
		t.Fatal(err)
	}
	if n < total {
		if _, err := io.ReadFull(c, buf[n:total]); err != nil {
			t.Fatal(err)
		}
	}
	typ, body, _, err := wire.DecodeFrame(buf[:total], wire.MaxFrame)
	if err != nil || typ != wire.FrameWelcome {
		t.Fatalf("first frame type %d, %v", typ, err)
	}
	l := &goLearner{t: t, c: c}
	if err := json.Unmarshal(body, &l.welcome); err != nil {
		t.Fatal(err)
	}
	l.mem, err = unix.Mmap(fds[0], 0, l.welcome.MappingBytes, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	l.offers, err = unix.Mmap(fds[1], 0, l.welcome.OfferBytes, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		unix.Munmap(l.mem)
		unix.Munmap(l.offers)
	})
	return l
}

// offered returns the record of ticket in the offer page once the server
// has written it, within a few seconds; ok is false if it never does.
func (l *goLearner) offered(ticket uint64) (wire.BatchInfo, bool) {
	off := wire.OfferOffset(ticket)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if atomic.LoadUint64((*uint64)(unsafe.Pointer(&l.offers[off]))) == ticket {
			b, err := wire.DecodeBatch(l.offers[off : off+wire.BatchBodyLen])
			if err != nil {
				l.t.Fatal(err)
			}
			return b, true
		}
	}
	return wire.BatchInfo{}, false
}

// rowsOf returns the (producer, seq) of the rows of the batch in slab.
func (l *goLearner) rowsOf(slab int) (rows [][2]int) {
	w := l.welcome
	leaf := w.Leaves[len(w.Leaves)-1] // z_id: int64[2], last in sorted order
	if leaf.Path != "z_id" {
		l.t.Fatalf("last leaf %s", leaf.Path)
	}
	base := slab*w.SlabBytes + leaf.Offset
	for r := range w.BatchSize {
		row := l.mem[base+16*r : base+16*r+16]
		rows = append(rows, [2]int{int(binary.LittleEndian.Uint64(row)), int(binary.LittleEndian.Uint64(row[8:]))})
	}
	return rows
}

// request sends a frame and reads the answer.
func (l *goLearner) request(typ uint8, body []byte) (uint8, []byte, error) {
	if _, err := l.c.Write(wire.AppendFrame(nil, typ, body)); err != nil {
		return 0, nil, err
	}
	var head [wire.FrameHeaderLen]byte
	if _, err := io.ReadFull(l.c, head[:]); err != nil {
		return 0, nil, err
	}
	n, err := wire.FrameLen(head[:], wire.MaxFrame)
	if err != nil {
		return 0, nil, err
	}
	out := make([]byte, n-wire.FrameHeaderLen)
	_, err = io.ReadFull(l.c, out)
	return head[4], out, err
}

// next takes a batch and returns the (producer, seq) of its rows, read
// from the learner's own mapping of the ring; ok is false once closed.
func (l *goLearner) next() (rows [][2]int, slab int, ok bool) {
	typ, body, err := l.request(wire.FrameNext, nil)
	if err != nil {
		l.t.Fatalf("NEXT: %v", err)
	}
	if typ == wire.FrameClosed {
		return nil, 0, false
	}
	b, err := wire.DecodeBatch(body)
	if typ != wire.FrameBatch || err != nil {
		l.t.Fatalf("NEXT answered with type %d: %v", typ, err)
	}
	return l.rowsOf(int(b.Slab)), int(b.Slab), true
}

func learnerServer(t *testing.T, batch int, opts ...echo.Option) (*echo.Server, string) {
	path := filepath.Join(t.TempDir(), "learner.sock")
	s := newServerFor(t, numbered(0, 0), batch, append([]echo.Option{echo.WithLearnerSocket(path), echo.WithTCP("127.0.0.1:0")}, opts...)...)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	return s, path
}

// TestLearnersTakeEveryBatchOnce: four learners attached to one server, fed
// by 16 TCP clients, read in their own mappings every sample exactly once
// between them; the server's own memory is never copied for them.
func TestLearnersTakeEveryBatchOnce(t *testing.T) {
	const batch, clients, per = 8, 16, 200
	s, path := learnerServer(t, batch)
	var mu sync.Mutex
	seen := make(map[[2]int]int)
	var learners sync.WaitGroup
	got := make(chan struct{}, clients*per/batch)
	for range 4 {
		l := attachLearner(t, path)
		if l.welcome.Memory.Kind != s.Memory().Kind || l.welcome.Port == 0 {
			t.Fatalf("welcome %+v", l.welcome)
		}
		learners.Go(func() {
			for {
				rows, _, ok := l.next()
				if !ok {
					return
				}
				mu.Lock()
				for _, r := range rows {
					seen[r]++
				}
				mu.Unlock()
				got <- struct{}{}
			}
		})
	}
	var actors sync.WaitGroup
	for p := range clients {
		actors.Go(func() {
			c, err := echo.Dial(t.Context(), s.Addr().String(), numbered(0, 0))
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			for seq := range per {
				if err := c.Send(t.Context(), numbered(p+1, seq)); err != nil {
					t.Error(err)
					return
				}
			}
			if err := c.Wait(t.Context()); err != nil {
				t.Error(err)
			}
		})
	}
	actors.Wait()
	for range clients * per / batch {
		select {
		case <-got:
		case <-time.After(20 * time.Second):
			t.Fatal("batches stopped coming")
		}
	}
	s.Close()
	learners.Wait()
	if len(seen) != clients*per {
		t.Fatalf("%d distinct samples, want %d", len(seen), clients*per)
	}
	for k, n := range seen {
		if n != 1 || k[0] < 1 || k[0] > clients || k[1] >= per {
			t.Fatalf("sample %v seen %d times", k, n)
		}
	}
}

// TestLearnerDeathReleasesItsBatch: a learner that leaves holding a batch
// gives it back (not redelivered), and the next learner goes on.
func TestLearnerDeathReleasesItsBatch(t *testing.T) {
	const batch = 4
	s, path := learnerServer(t, batch, echo.WithNumBuffers(2))
	dead := attachLearner(t, path)
	for seq := range 3 * batch {
		if seq == 2*batch {
			// Two slabs full: the first goes to the learner that dies.
			rows, _, ok := dead.next()
			if !ok || rows[0] != [2]int{1, 0} {
				t.Fatalf("first batch %v", rows)
			}
			dead.c.Close()
		}
		if err := s.Submit(t.Context(), numbered(1, seq)); err != nil {
			t.Fatal(err)
		}
	}
	next := attachLearner(t, path)
	for _, first := range []int{batch, 2 * batch} {
		rows, _, ok := next.next()
		if !ok || rows[0] != [2]int{1, first} {
			t.Fatalf("batch %v, want the one from seq %d", rows, first)
		}
	}
}

// TestLearnerRequests: SUBMIT, RELEASE, a bad frame, and CLOSE, which
// answers another learner's waiting NEXT with CLOSED and ends the server.
func TestLearnerRequests(t *testing.T) {
	s, path := learnerServer(t, 1)
	a, b := attachLearner(t, path), attachLearner(t, path)
	if typ, _, err := a.request(wire.FrameSubmit, wireBytes(3, 4)); err != nil || typ != wire.FrameOK {
		t.Fatalf("SUBMIT: type %d, %v", typ, err)
	}
	if typ, msg, _ := a.request(wire.FrameSubmit, []byte{1, 2}); typ != wire.FrameError || len(msg) == 0 {
		t.Fatalf("short SUBMIT: type %d %q", typ, msg)
	}
	if rows, _, ok := a.next(); !ok || rows[0] != [2]int{3, 4} {
		t.Fatalf("batch %v", rows)
	}
	if typ, _, _ := a.request(wire.FrameRelease, nil); typ != wire.FrameOK {
		t.Fatalf("RELEASE: type %d", typ)
	}
	if typ, _, _ := a.request(99, nil); typ != wire.FrameError {
		t.Fatalf("frame 99: type %d", typ)
	}
	if _, err := s.Sample(t.Context()); !errors.Is(err, echo.ErrBadConfig) {
		t.Fatalf("Sample on a server with learners: %v", err)
	}
	waiting := make(chan bool)
	go func() {
		_, _, ok := b.next()
		waiting <- ok
	}()
	time.Sleep(20 * time.Millisecond)
	if typ, _, _ := a.request(wire.FrameClose, nil); typ != wire.FrameOK {
		t.Fatalf("CLOSE: type %d", typ)
	}
	select {
	case ok := <-waiting:
		if ok {
			t.Fatal("a waiting NEXT got a batch after CLOSE")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a waiting NEXT was not answered after CLOSE")
	}
	select {
	case <-s.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("CLOSE did not close the server")
	}
}

// TestLearnerOffers: a learner alone finds its next two batches set aside
// in its offer page and takes them with TAKE, no answer awaited; NEXT
// hands out the oldest offer it did not take; a TAKE of any other ticket ends the connection;
// and with a second learner taking batches, nothing more is set aside.
func TestLearnerOffers(t *testing.T) {
	const batch = 2
	s, path := learnerServer(t, batch, echo.WithNumBuffers(4))
	submitRun(t, s, 0, 4*batch)
	a := attachLearner(t, path)
	if a.welcome.OfferBytes != wire.OfferPageBytes || a.welcome.Protocol != int(wire.LearnerVersion) {
		t.Fatalf("welcome %+v", a.welcome)
	}
	if rows, _, ok := a.next(); !ok || rows[0] != [2]int{1, 0} {
		t.Fatalf("first batch %v", rows)
	}
	// Ticket 1 went out with NEXT; tickets 2 and 3, the next batches, are
	// set aside at once, one per record.
	b2, ok := a.offered(2)
	if !ok {
		t.Fatal("no offer of ticket 2")
	}
	if rows := a.rowsOf(int(b2.Slab)); rows[0] != [2]int{1, batch} || b2.Ticket != 2 {
		t.Fatalf("offer %+v holds %v", b2, rows)
	}
	b3, ok := a.offered(3)
	if !ok || a.rowsOf(int(b3.Slab))[0] != [2]int{1, 2 * batch} {
		t.Fatalf("offer of ticket 3: %+v, %v", b3, ok)
	}
	// Ticket 4's record is ticket 2's: it stays ticket 2's until its TAKE,
	// though batch 4 is complete.
	time.Sleep(20 * time.Millisecond)
	if b, _ := a.offered(2); b != b2 {
		t.Fatalf("ticket 2's record changed before its TAKE: %+v, was %+v", b, b2)
	}
	if _, err := a.c.Write(wire.AppendTake(nil, 2)); err != nil {
		t.Fatal(err)
	}
	// NEXT hands out the offer the learner did not take.
	typ, body, err := a.request(wire.FrameNext, nil)
	if err != nil || typ != wire.FrameBatch {
		t.Fatalf("NEXT: type %d, %v", typ, err)
	}
	if got, err := wire.DecodeBatch(body); err != nil || got.Ticket != 3 || got.Slab != b3.Slab {
		t.Fatalf("NEXT answered %+v (%v), want the offer of ticket 3 %+v", got, err, b3)
	}
	if _, ok := a.offered(4); !ok {
		t.Fatal("no offer of ticket 4")
	}

	// A second learner takes batches. The Take the server started for a's
	// next offer before then still ends in an offer (ticket 5); after
	// that, nothing more is set aside for either.
	if _, err := a.c.Write(wire.AppendTake(nil, 4)); err != nil {
		t.Fatal(err)
	}
	// Requests are served in order: once RELEASE is answered, the server
	// has read the TAKE, and started taking a's next batch.
	if typ, _, err := a.request(wire.FrameRelease, nil); err != nil || typ != wire.FrameOK {
		t.Fatalf("RELEASE: type %d, %v", typ, err)
	}
	b := attachLearner(t, path)
	bRows := make(chan [][2]int, 1)
	go func() {
		rows, _, _ := b.next()
		bRows <- rows
	}()
	time.Sleep(20 * time.Millisecond)
	submitRun(t, s, 4*batch, 2*batch)
	b5, ok := a.offered(5)
	if !ok || a.rowsOf(int(b5.Slab))[0] != [2]int{1, 4 * batch} {
		t.Fatalf("offer of ticket 5: %+v, %v", b5, ok)
	}
	if rows := <-bRows; len(rows) == 0 || rows[0] != [2]int{1, 5 * batch} {
		t.Fatalf("second learner's batch %v", rows)
	}
	if _, err := a.c.Write(wire.AppendTake(nil, 5)); err != nil {
		t.Fatal(err)
	}
	submitRun(t, s, 6*batch, batch)
	time.Sleep(50 * time.Millisecond)
	if got := atomic.LoadUint64((*uint64)(unsafe.Pointer(&a.offers[wire.OfferOffset(6)]))); got == 6 {
		t.Fatal("a batch was set aside for one of two learners")
	}
	if rows, _, ok := a.next(); !ok || rows[0] != [2]int{1, 6 * batch} {
		t.Fatalf("first learner's batch %v", rows)
	}

	// A TAKE of a ticket not offered is an error, and ends the connection.
	typ, msg, err := a.request(wire.FrameTake, binary.LittleEndian.AppendUint64(nil, 9))
	if err != nil || typ != wire.FrameError || string(msg) != "TAKE of ticket 9, the offer is 0" {
		t.Fatalf("TAKE of ticket 9: type %d %q, %v", typ, msg, err)
	}
	if _, _, err := a.request(wire.FrameNext, nil); err == nil {
		t.Fatal("the connection went on after a bad TAKE")
	}
	// The batch a held goes back with it; b takes the one after.
	submitRun(t, s, 7*batch, batch)
	if rows, _, ok := b.next(); !ok || rows[0] != [2]int{1, 7 * batch} {
		t.Fatalf("batch after the bad TAKE %v", rows)
	}
}

// TestLearnerOfferGoesToTheNextLearner: a learner that leaves with batches
// set aside for it, not taken, leaves them to the next learner, oldest
// first, so that no sample is lost but the one batch it held.
func TestLearnerOfferGoesToTheNextLearner(t *testing.T) {
	const batch = 2
	s, path := learnerServer(t, batch, echo.WithNumBuffers(3))
	submitRun(t, s, 0, 3*batch)
	dead := attachLearner(t, path)
	if rows, _, ok := dead.next(); !ok || rows[0] != [2]int{1, 0} {
		t.Fatalf("first batch %v", rows)
	}
	for ticket := uint64(2); ticket <= 3; ticket++ {
		if _, ok := dead.offered(ticket); !ok {
			t.Fatalf("no offer of ticket %d", ticket)
		}
	}
	dead.c.Close()
	// Every slab is out (one held, two offered), so no newer batch can
	// complete: the next learner's NEXTs wait until the server has seen
	// the first one leave, and get its offers in order.
	next := attachLearner(t, path)
	for _, seq := range []int{batch, 2 * batch} {
		if rows, _, ok := next.next(); !ok || rows[0] != [2]int{1, seq} {
			t.Fatalf("batch %v, want the offer left behind (seq %d)", rows, seq)
		}
	}
	submitRun(t, s, 3*batch, batch)
	if rows, _, ok := next.next(); !ok || rows[0] != [2]int{1, 3 * batch} {
		t.Fatalf("batch %v, want the one from seq %d", rows, 3*batch)
	}
}

// submitRun submits producer 1's samples from seq from on, n of them.
func submitRun(t *testing.T, s *echo.Server, from, n int) {
	t.Helper()
	for seq := from; seq < from+n; seq++ {
		if err := s.Submit(t.Context(), numbered(1, seq)); err != nil {
			t.Fatal(err)
		}
	}
}
