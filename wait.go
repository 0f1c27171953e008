//go:build linux

package echo

import (
	"fmt"
	"time"
)

// WaitStrategy says how the server's two waiting places wait: the ingress
// workers waiting for sockets and producers, and Sample waiting for a
// batch. Choose one with WithWaitStrategy; the default is Park.
//
// The choice trades CPU for wake-up latency. Parking costs nothing at idle,
// and each wake-up costs the scheduler's (and, on a virtual machine, the
// hypervisor's) time to wake an idle core. Spinning skips that wake-up
// while it lasts, and burns the core it spins on. On a host with cores to
// spare, spinning cuts the latency a sample waits; on a host where actors,
// workers and learner share few cores, spinners take the cores from the
// actors they wait for, and every sample waits longer. The performance
// document's latency table measures each on this project's machine.
type WaitStrategy struct {
	spin time.Duration // 0 park; > 0 spin, then park; < 0 spin for ever
}

// Park parks at once: workers wait in Go's network poller, Sample on a
// channel. It burns no CPU at idle. The default.
func Park() WaitStrategy { return WaitStrategy{} }

// SpinThenPark polls for up to d before parking: workers poll their
// sockets and producer queues, Sample watches the batch's commit counter.
// A sample that arrives within d of the last one skips the wake-up; a
// quiet server burns d of CPU per worker (and per learner) after each
// burst, then none. d must be positive; tens of microseconds are typical.
func SpinThenPark(d time.Duration) WaitStrategy {
	if d <= 0 {
		d = time.Nanosecond
	}
	return WaitStrategy{spin: d}
}

// BusyPoll never parks: each worker owns an OS thread and polls its sockets
// (epoll with a zero timeout) and queues without end, and Sample spins on
// the batch's commit counter. It burns a core per worker and one for the
// learner all the time, idle or not: for hosts that dedicate cores to the
// pipeline, with WithNumDrainers sized to them.
func BusyPoll() WaitStrategy { return WaitStrategy{spin: -1} }

// String names the strategy: "park", "spin-then-park(50µs)", "busy-poll".
func (w WaitStrategy) String() string {
	switch {
	case w.spin == 0:
		return "park"
	case w.spin < 0:
		return "busy-poll"
	}
	return fmt.Sprintf("spin-then-park(%v)", w.spin)
}

// WithWaitStrategy sets how the ingress workers and Sample wait (default
// Park()).
func WithWaitStrategy(w WaitStrategy) Option { return func(c *config) { c.wait = w } }
