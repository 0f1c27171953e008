//go:build !race

package poller

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestNoAllocs checks the loop's calls allocate nothing: Poll with a
// socket ready and a wake pending, Park returning for an event, and Wake
// of a loop that is running or parked.
func TestNoAllocs(t *testing.T) {
	p := newPoller(t)
	a, b := socketPair(t)
	if err := p.Add(a, unix.EPOLLIN, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(b, []byte("x")); err != nil { // stays unread: level-triggered
		t.Fatal(err)
	}
	one := [8]byte{1}
	for name, f := range map[string]func(){
		"Poll": func() {
			if _, err := unix.Write(p.efd, one[:]); err != nil { // a wake pending
				t.Fatal(err)
			}
			if events, err := p.Poll(); err != nil || len(events) != 1 {
				t.Fatalf("Poll = %v, %v", events, err)
			}
		},
		"Park": func() {
			if events, err := p.Park(noWork, time.Time{}); err != nil || len(events) != 1 {
				t.Fatalf("Park = %v, %v", events, err)
			}
		},
		"Wake, running": func() { p.Wake() },
		// The waker that finds the loop parked writes the eventfd: every
		// Publish to a parked worker does.
		"Wake, parked": func() {
			p.parked.Store(true)
			p.Wake()
			if err := p.drainWake(); err != nil {
				t.Fatal(err)
			}
		},
	} {
		if n := testing.AllocsPerRun(100, f); n != 0 {
			t.Errorf("%s allocates %.1f times per call", name, n)
		}
	}
}
