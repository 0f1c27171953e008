package main

import (
	"fmt"
	"runtime"
	"strings"
	"time"

	"github.com/klauspost/cpuid/v2"
	"golang.org/x/sys/unix"

	"github.com/seed-a9ef92a1/echo/bench/loadgen"
)

// machine names the machine the suite ran on.
func machine() string {
	var u unix.Utsname
	kernel := "Linux"
	if unix.Uname(&u) == nil {
		kernel = "Linux " + unix.ByteSliceToString(u.Release[:])
	}
	return fmt.Sprintf("%s, %d logical CPUs, %s, %s", cpuid.CPU.BrandName, runtime.NumCPU(), kernel, runtime.Version())
}

// markdown renders the suite's tables.
func (s *suite) markdown(took time.Duration) string {
	var b strings.Builder
	mode := ""
	if s.o.quick {
		mode = " --quick"
	}
	fmt.Fprintf(&b, "Measured by `go run ./tools/echo-load --suite%s` on %s, %s, in %v; actors and server share the machine over loopback (veth for the namespaces).\n\n",
		mode, machine(), time.Now().UTC().Format("2006-01-02"), took.Round(time.Second))

	b.WriteString("| Run | Connections | Killed (handshake / between / inside a sample) | Sent | Acked | Delivered | Lost | Duplicated | Reordered | Corrupted | Partial or invented |\n")
	b.WriteString("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	var tot loadgen.Result
	for _, r := range s.runs {
		res := r.res
		name := r.name
		if r.err != nil {
			name += " (error: " + r.err.Error() + ")"
		}
		fmt.Fprintf(&b, "| %s | %d | %d (%d / %d / %d) | %d | %d | %d | %d | %d | %d | %d | %d |\n",
			name, res.Connections, res.KilledTotal(), res.Killed[loadgen.KillHandshake], res.Killed[loadgen.KillBetween],
			res.Killed[loadgen.KillMidSample], res.Sent, res.Acked, res.Delivered, res.Lost, res.Duplicated,
			res.Reordered, res.Corrupted, res.Phantom)
		tot.Connections += res.Connections
		for i := range tot.Killed {
			tot.Killed[i] += res.Killed[i]
		}
		tot.Sent += res.Sent
		tot.Acked += res.Acked
		tot.Delivered += res.Delivered
		tot.Lost += res.Lost
		tot.Duplicated += res.Duplicated
		tot.Reordered += res.Reordered
		tot.Corrupted += res.Corrupted
		tot.Phantom += res.Phantom
	}
	fmt.Fprintf(&b, "| **all runs** | %d | %d (%d / %d / %d) | %d | %d | %d | **%d** | **%d** | **%d** | **%d** | **%d** |\n\n",
		tot.Connections, tot.KilledTotal(), tot.Killed[loadgen.KillHandshake], tot.Killed[loadgen.KillBetween],
		tot.Killed[loadgen.KillMidSample], tot.Sent, tot.Acked, tot.Delivered, tot.Lost, tot.Duplicated,
		tot.Reordered, tot.Corrupted, tot.Phantom)
	b.WriteString("Sent counts whole samples written; acked, those whose ack the actor read before it stopped; delivered, those handed out in batches. Samples sent but not acked may or may not arrive (a killed actor's last ones); every acked one must, once.\n\n")
	if r := s.reconnect; r.Sent > 0 {
		fmt.Fprintf(&b, "Reconnecting clients (wire version 2 sessions, `echo.WithReconnect`): %d connections cut (%d between two Sends, %d from another goroutine while Sends went on, %d with a reset), with %d samples sent and not yet acknowledged at the cuts; of the %d samples handed to Send, %d were delivered, %d lost, %d duplicated.\n\n",
			r.KilledTotal(), r.Killed[loadgen.KillBetween], r.Killed[loadgen.KillMidSample], r.Reset, r.UnackedAtKills, r.Sent, r.Delivered, r.Lost, r.Duplicated)
	}

	b.WriteString("| Hostile peers | Secret | Tried | What each saw | What the server did |\n|---|---|--:|---|---|\n")
	for _, h := range s.hostile {
		fmt.Fprintf(&b, "| %s | %s | %d | %s | %s |\n", h.kind, h.secret, h.tried, h.outcome, h.server)
	}
	b.WriteString("\n")

	fmt.Fprintf(&b, "Leaks after closing all %d servers: %d goroutines, %d file descriptors, %d ring mappings.\n\n",
		s.servers, s.leaks.goroutines, s.leaks.fds, s.leaks.mappings)
	if len(s.fuzz) > 0 {
		fmt.Fprintf(&b, "| Fuzz target (%v each) | Executions | Crashes |\n|---|--:|--:|\n", s.o.fuzztime)
		for _, f := range s.fuzz {
			fmt.Fprintf(&b, "| %s | %d | %d |\n", f.target, f.execs, f.crashes)
		}
		b.WriteString("\n")
	}
	for _, n := range s.notes {
		fmt.Fprintf(&b, "- %s\n", n)
	}
	return b.String()
}
