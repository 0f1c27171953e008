package poller

import (
	"errors"
	"os"
	"sync"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func noWork() bool { return false }

func newPoller(t testing.TB) *Poller {
	t.Helper()
	p, err := New(8)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// socketPair returns a connected pair of non-blocking Unix stream sockets,
// closed at the end of the test.
func socketPair(t testing.TB) (int, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Close(fds[0])
		unix.Close(fds[1])
	})
	return fds[0], fds[1]
}

// parkFor runs Park(noWork, deadline) and returns its events and how long
// it took.
func parkFor(t testing.TB, p *Poller, deadline time.Time) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	events, err := p.Park(noWork, deadline)
	if err != nil {
		t.Fatalf("Park: %v", err)
	}
	return len(events), time.Since(start)
}

func TestNewRejectsNoEvents(t *testing.T) {
	if _, err := New(0); err == nil {
		t.Fatal("New(0) succeeded")
	}
}

// TestPollReturnsTaggedEvents registers a socket and checks that Poll
// reports it ready with its tag, level-triggered, until it is deleted.
func TestPollReturnsTaggedEvents(t *testing.T) {
	p := newPoller(t)
	a, b := socketPair(t)
	if err := p.Add(a, unix.EPOLLIN, 7); err != nil {
		t.Fatal(err)
	}
	if events, err := p.Poll(); err != nil || len(events) != 0 {
		t.Fatalf("Poll on an idle socket = %v, %v", events, err)
	}
	if _, err := unix.Write(b, []byte("x")); err != nil {
		t.Fatal(err)
	}
	for range 2 { // level-triggered: reported until read
		events, err := p.Poll()
		if err != nil || len(events) != 1 {
			t.Fatalf("Poll = %v, %v; want one event", events, err)
		}
		if ev := events[0]; ev.Pad != 7 || ev.Fd != int32(a) || ev.Events&unix.EPOLLIN == 0 {
			t.Fatalf("event %+v, want EPOLLIN on fd %d with tag 7", ev, a)
		}
	}
	if err := p.Delete(a); err != nil {
		t.Fatal(err)
	}
	if events, err := p.Poll(); err != nil || len(events) != 0 {
		t.Fatalf("Poll after Delete = %v, %v", events, err)
	}
	var se *os.SyscallError
	if err := p.Delete(a); !errors.As(err, &se) {
		t.Errorf("Delete of an unregistered fd = %v, want a *os.SyscallError", err)
	}
	if err := p.Add(-1, unix.EPOLLIN, 1); !errors.As(err, &se) {
		t.Errorf("Add(-1) = %v, want a *os.SyscallError", err)
	}
	if err := p.Add(a, unix.EPOLLIN, 0); !errors.Is(err, ErrTag) {
		t.Errorf("Add with tag 0 = %v, want ErrTag", err)
	}
}

// TestParkReturnsEvents checks that Park returns at once with the events
// of a ready socket.
func TestParkReturnsEvents(t *testing.T) {
	p := newPoller(t)
	a, b := socketPair(t)
	if err := p.Add(a, unix.EPOLLIN, 3); err != nil {
		t.Fatal(err)
	}
	done := make(chan []unix.EpollEvent)
	go func() {
		events, err := p.Park(noWork, time.Time{})
		if err != nil {
			t.Error(err)
		}
		done <- events
	}()
	if _, err := unix.Write(b, []byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case events := <-done:
		if len(events) != 1 || events[0].Pad != 3 {
			t.Fatalf("Park = %+v, want one event tagged 3", events)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Park still waiting 10s after its socket became readable")
	}
}

// TestParkDeadline checks that Park returns no events at its deadline, and
// that a later Park without one is not cut short by the old deadline.
func TestParkDeadline(t *testing.T) {
	p := newPoller(t)
	const d = 30 * time.Millisecond
	if n, took := parkFor(t, p, time.Now().Add(d)); n != 0 || took < d*9/10 {
		t.Fatalf("Park returned %d events after %v, want none after %v", n, took, d)
	}
	if n, took := parkFor(t, p, time.Now().Add(-time.Second)); n != 0 || took > 5*time.Second {
		t.Fatalf("Park past its deadline returned %d events after %v", n, took)
	}
	// Without a deadline, after those: it waits for the wake, however
	// long, where a stale deadline would end it at once.
	done := make(chan int)
	go func() {
		n, _ := parkFor(t, p, time.Time{})
		done <- n
	}()
	waitParked(t, p)
	time.Sleep(2 * d)
	select {
	case <-done:
		t.Fatal("Park without a deadline returned before the wake")
	default:
	}
	p.Wake()
	select {
	case n := <-done:
		if n != 0 {
			t.Fatalf("a woken Park returned %d events", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Park still waiting 10s after Wake")
	}
}

// waitParked waits until the loop has announced itself parked.
func waitParked(t testing.TB, p *Poller) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !p.parked.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the loop never parked")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestWakeWakesParked parks the loop and wakes it from another goroutine.
func TestWakeWakesParked(t *testing.T) {
	p := newPoller(t)
	done := make(chan int)
	go func() {
		n, _ := parkFor(t, p, time.Time{})
		done <- n
	}()
	waitParked(t, p)
	p.Wake()
	select {
	case n := <-done:
		if n != 0 {
			t.Fatalf("a woken Park returned %d events, want none", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Park still waiting 10s after Wake")
	}
}

// wakeBurst calls Wake from several goroutines at once.
func wakeBurst(p *Poller) {
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				p.Wake()
			}
		})
	}
	wg.Wait()
}

// TestWakeBurstOneWrite checks that a burst of wakes on a parked loop
// writes the eventfd once, and that a running loop costs its wakers
// nothing.
func TestWakeBurstOneWrite(t *testing.T) {
	p := newPoller(t)
	var buf [8]byte

	// Running: no write at all.
	wakeBurst(p)
	if _, err := unix.Read(p.efd, buf[:]); err != unix.EAGAIN {
		t.Fatalf("eventfd read after wakes of a running loop = %v, want EAGAIN", err)
	}

	// Parked: one write, a counter of 1.
	p.parked.Store(true)
	wakeBurst(p)
	if _, err := unix.Read(p.efd, buf[:]); err != nil {
		t.Fatal(err)
	}
	if n := *(*uint64)(unsafe.Pointer(&buf)); n != 1 {
		t.Fatalf("800 wakes of a parked loop wrote the eventfd %d times, want once", n)
	}

	// Seen from the loop: the burst ends one Park, not the next.
	p.parked.Store(true)
	wakeBurst(p)
	if n, took := parkFor(t, p, time.Now().Add(10*time.Second)); n != 0 || took > 5*time.Second {
		t.Fatalf("Park after a burst returned %d events after %v", n, took)
	}
	const d = 30 * time.Millisecond
	if n, took := parkFor(t, p, time.Now().Add(d)); n != 0 || took < d*9/10 {
		t.Fatalf("the second Park returned %d events after %v, before its deadline: a wake was left over", n, took)
	}
}

// TestWakeDuringLastLook has a waker strike between the loop's announce
// and its last look: Park returns for the work, and consumes the waker's
// write so that the next Park does not return for nothing.
func TestWakeDuringLastLook(t *testing.T) {
	p := newPoller(t)
	events, err := p.Park(func() bool { p.Wake(); return true }, time.Time{})
	if err != nil || len(events) != 0 {
		t.Fatalf("Park with work = %v, %v", events, err)
	}
	const d = 30 * time.Millisecond
	if n, took := parkFor(t, p, time.Now().Add(d)); n != 0 || took < d*9/10 {
		t.Fatalf("the next Park returned %d events after %v: the wake was not consumed", n, took)
	}
}

// TestClose checks that Close is idempotent and that a Wake after it
// writes to no descriptor.
func TestClose(t *testing.T) {
	p, err := New(1)
	if err != nil {
		t.Fatal(err)
	}
	efd := p.efd
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := unix.FcntlInt(uintptr(efd), unix.F_GETFD, 0); err != unix.EBADF {
		t.Errorf("eventfd %d still open after Close (%v)", efd, err)
	}
	p.parked.Store(true)
	p.Wake() // must neither panic nor write
	if e := p.failed.Load(); e != nil {
		t.Fatalf("Wake after Close failed: %v", *e)
	}
}

// apart reports whether a field group ending at end (exclusive) and one
// starting at start never share an aligned 128-byte block, wherever an
// 8-aligned allocator places the struct.
func apart(end, start uintptr) bool {
	for base := uintptr(0); base < 128; base += 8 {
		if (base+end-1)/128 == (base+start)/128 {
			return false
		}
	}
	return true
}

// TestParkedOnItsOwnLines checks the layout comment: parked, which wakers
// write, is 128 bytes away from the loop's fields and from fdMu.
func TestParkedOnItsOwnLines(t *testing.T) {
	var p Poller
	loopEnd := unsafe.Offsetof(p.deadline) + unsafe.Sizeof(p.deadline)
	for _, f := range []uintptr{unsafe.Offsetof(p.epfd), unsafe.Offsetof(p.efd), unsafe.Offsetof(p.events), unsafe.Offsetof(p.tryFn), unsafe.Offsetof(p.waitErr)} {
		if f >= loopEnd {
			t.Errorf("a loop field at %d lies after the group's end at %d", f, loopEnd)
		}
	}
	parked, parkedEnd := unsafe.Offsetof(p.parked), unsafe.Offsetof(p.parked)+unsafe.Sizeof(p.parked)
	fdMu := unsafe.Offsetof(p.fdMu)
	if parked-loopEnd < 128 || !apart(loopEnd, parked) {
		t.Errorf("the loop's fields end at %d, parked is at %d: want 128 bytes between", loopEnd, parked)
	}
	if fdMu-parked < 128 || !apart(parkedEnd, fdMu) {
		t.Errorf("parked at %d and fdMu at %d can share a 128-byte block", parked, fdMu)
	}
}

// TestWakeFailureReported has the eventfd write fail (the descriptor
// swapped for a read-only one) and checks that the loop's next Poll
// reports it.
func TestWakeFailureReported(t *testing.T) {
	p := newPoller(t)
	ro, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skip(err)
	}
	defer unix.Close(ro)
	efd := p.efd
	p.efd = ro
	p.parked.Store(true)
	p.Wake()
	p.efd = efd
	_, err = p.Poll()
	var se *os.SyscallError
	if !errors.As(err, &se) || se.Syscall != "eventfd write" {
		t.Fatalf("Poll after a failed wake = %v, want the eventfd write's error", err)
	}
}
