package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/bench"
	"github.com/seed-a9ef92a1/echo/internal/cli"
)

// LearnerRow is one cell of the learner comparison: a learner loop on
// echo's Python API (echo's own Server, or echo_go's: this engine behind
// the same API), or a Go server process whose learner loop calls Sample in
// process (the ceiling: a hand-off that costs nothing), fed by the same Go
// load from this process.
type LearnerRow struct {
	Workload string  `json:"workload"`
	Clients  int     `json:"clients"`
	Learner  string  `json:"learner"` // "echo_go", "echo" or "go"
	Samples  int     `json:"samples"`
	Rate     float64 `json:"samples_per_s"`
	// CPUPerGB is the learner host's CPU seconds (the learner process and
	// its server, echo_go's being a child process) per GB ingested.
	CPUPerGB float64 `json:"cpu_s_per_gb"`
	// Handoff is the time from a request to the batch's views, p50 and
	// p99 in µs, over requests made when a whole batch already waited.
	Handoff  [2]float64 `json:"handoff_us"`
	Handoffs int        `json:"handoffs"` // requests timed: made with a whole batch waiting
	// Runs is how many runs of the cell there were (--learner-runs), each
	// kind's in turn; the row is the run of median samples/s, and
	// RateRange the lowest and highest samples/s over the runs.
	Runs      int        `json:"runs"`
	RateRange [2]float64 `json:"samples_per_s_range"`
}

// pythonHas reports whether python can import module.
func pythonHas(python, module string) bool {
	return exec.Command(python, "-c", "import "+module).Run() == nil
}

// runLearners measures the learner cells.
func runLearners(o options, bar *cli.Progress) ([]LearnerRow, error) {
	kinds := []string{"echo_go", "echo", "go"}
	if !pythonHas(o.python, "echo_go") {
		fmt.Printf("note: the learner section skipped: %s cannot import echo_go (pip install ./python)\n", o.python)
		return nil, nil
	}
	if !pythonHas(o.python, "echo") {
		kinds = []string{"echo_go", "go"}
	}
	clients := []int{16, 256}
	if o.quick {
		clients = []int{16}
	}
	dir, err := os.MkdirTemp("", "echo-bench-learners")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	var rows []LearnerRow
	runs := max(1, o.learnerRuns)
	total := len(o.workloads) * len(clients) * len(kinds) * runs
	i := 0
	for _, name := range o.workloads {
		w, err := bench.Get(strings.TrimSpace(name))
		if err != nil {
			return nil, err
		}
		for _, n := range clients {
			// The kinds take turns, run after run, so that each meets the
			// machine as the others do.
			byKind := make(map[string][]LearnerRow)
			for run := range runs {
				for _, kind := range kinds {
					bar.Printf("[%s] learners %d/%d  %s clients=%d learner=%s run %d", progress(i, total), i+1, total, w.Short, n, kind, run+1)
					i++
					per := (learnerSamples(w, o.quick) + n - 1) / n
					r, err := measureLearner(o, dir, w, n, per, kind)
					if err != nil {
						return nil, fmt.Errorf("%s clients=%d learner=%s: %w", w.Short, n, kind, err)
					}
					byKind[kind] = append(byKind[kind], r)
				}
			}
			for _, kind := range kinds {
				rows = append(rows, medianRun(byKind[kind]))
			}
		}
	}
	return rows, nil
}

// learnerSamples is how many samples a learner cell sends: twice a
// comparison cell's, for runs of a second or more.
func learnerSamples(w bench.Workload, quick bool) int {
	return 2 * cell{w: w}.samples(quick)
}

// medianRun is the run of median samples/s, with the range over all.
func medianRun(runs []LearnerRow) LearnerRow {
	sorted := slices.Clone(runs)
	slices.SortFunc(sorted, func(a, b LearnerRow) int { return cmp.Compare(a.Rate, b.Rate) })
	r := sorted[len(sorted)/2]
	r.Runs = len(runs)
	r.RateRange = [2]float64{sorted[0].Rate, sorted[len(sorted)-1].Rate}
	return r
}

func measureLearner(o options, dir string, w bench.Workload, clients, per int, kind string) (LearnerRow, error) {
	r := LearnerRow{Workload: w.Short, Clients: clients, Learner: kind, Samples: clients * per}
	gb := float64(r.Samples) * float64(w.PayloadBytes) / 1e9
	addr, stop, err := startLearnerProc(o, dir, w, kind)
	if err != nil {
		return r, err
	}
	var opts []echo.ClientOption
	if kind == "echo" {
		opts = append(opts, echo.WithWireVersion(1))
	}
	d, err := goLoad(addr, w, clients, per, o.group, opts...)
	st, serr := stop()
	if err = cmpErr(err, serr); err != nil {
		return r, err
	}
	r.Rate = float64(r.Samples) / d.Seconds()
	r.CPUPerGB = st.CPU / gb
	r.Handoff, r.Handoffs = st.Handoff, st.Handoffs
	return r, nil
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// learnerChild is the Go learner process (--learner-child): a server for
// workload whose learner loop calls Sample and touches one byte of each
// leaf, as bench_server.py's does on echo's Python API, in the same
// protocol: it prints {"port": P} once listening and, when stdin closes,
// its learnerStats (CPU from the first batch; Sample timed when a whole
// batch already waited).
func learnerChild(workload string) error {
	w, err := bench.Get(workload)
	if err != nil {
		return err
	}
	s, err := echo.NewServer(w.MustSample(0), w.BatchSize, echo.WithTCP("127.0.0.1:0"))
	if err != nil {
		return err
	}
	if err := s.Start(); err != nil {
		s.Close()
		return err
	}
	hello, err := json.Marshal(map[string]int{"port": s.Addr().(*net.TCPAddr).Port})
	if err != nil {
		return err
	}
	fmt.Println(string(hello))
	cpu := func() float64 {
		var ru unix.Rusage
		if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
			return 0
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	}
	var cpuEnd float64
	stopped := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cpuEnd = cpu()
		close(stopped)
		s.Close()
	}()
	var st learnerStats
	var handoffs []float64
	cpu0 := -1.0
	ready := false
	var sink byte
	for {
		t0 := time.Now()
		smp, err := s.Sample(context.Background())
		d := time.Since(t0)
		if err != nil {
			break
		}
		if ready {
			handoffs = append(handoffs, float64(d.Nanoseconds())/1e3)
		}
		for _, l := range smp.Leaves {
			if b := l.Bytes(); len(b) > 0 {
				sink ^= b[0]
			}
		}
		if cpu0 < 0 {
			cpu0 = cpu()
		}
		st.Batches++
		ready = smp.Info.StoreSize >= int64(w.BatchSize)
	}
	<-stopped
	if cpu0 >= 0 {
		st.CPU = max(0, cpuEnd-cpu0)
	}
	slices.Sort(handoffs)
	pct := func(q float64) float64 {
		if len(handoffs) == 0 {
			return 0
		}
		return handoffs[min(len(handoffs)-1, int(q*float64(len(handoffs))))]
	}
	st.Handoff, st.Handoffs = [2]float64{pct(0.5), pct(0.99)}, len(handoffs)
	out, err := json.Marshal(struct {
		learnerStats
		Sink byte `json:"sink"`
	}{st, sink})
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}

// handoff formats a hand-off's p50 / p99, or says none was timed: the
// learner always outran the load, and never found a whole batch waiting.
func handoff(h [2]float64, n int, digits int) string {
	if n == 0 {
		return "— (none waited)"
	}
	return fmt.Sprintf("%.*f / %.*f (%d)", digits, h[0], digits, h[1], n)
}

// writeLearners writes the learner table.
func writeLearners(w io.Writer, rows []LearnerRow) {
	fmt.Fprintln(w, "#### Python learners: echo's `Server` API on this engine (`echo_go`) and on echo's own, beside a Go learner process, fed by the same Go load")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| workload | clients | echo_go samples/s | echo samples/s | echo_go / echo | Go learner process samples/s (ceiling) | echo_go / ceiling | echo_go CPU-s/GB | echo CPU-s/GB | echo_go / echo | hand-off p50 / p99 µs: echo_go | echo | Go `Sample` |")
	fmt.Fprintln(w, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
	find := func(wl string, n int, kind string) *LearnerRow {
		for i := range rows {
			if rows[i].Workload == wl && rows[i].Clients == n && rows[i].Learner == kind {
				return &rows[i]
			}
		}
		return nil
	}
	for _, r := range rows {
		if r.Learner != "echo_go" {
			continue
		}
		e, g := find(r.Workload, r.Clients, "echo"), find(r.Workload, r.Clients, "go")
		ratio, cpuRatio, erate, ecpu, ehand := "—", "—", "—", "—", "—"
		if e != nil {
			erate, ecpu = rate(e.Rate), fmt.Sprintf("%.2f", e.CPUPerGB)
			ratio = fmt.Sprintf("**%.2f×**", r.Rate/e.Rate)
			if e.CPUPerGB > 0 {
				cpuRatio = fmt.Sprintf("**%.2f×**", r.CPUPerGB/e.CPUPerGB)
			}
			ehand = handoff(e.Handoff, e.Handoffs, 0)
		}
		grate, gratio, ghand := "—", "—", "—"
		if g != nil {
			grate, gratio = rate(g.Rate), fmt.Sprintf("%.2f", r.Rate/g.Rate)
			ghand = handoff(g.Handoff, g.Handoffs, 1)
		}
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %s | %s | %.2f | %s | %s | %s | %s | %s |\n",
			r.Workload, r.Clients, rate(r.Rate), erate, ratio, grate, gratio, r.CPUPerGB, ecpu, cpuRatio,
			handoff(r.Handoff, r.Handoffs, 0), ehand, ghand)
	}
	fmt.Fprintln(w)
	runs := 1
	if len(rows) > 0 {
		runs = rows[0].Runs
	}
	fmt.Fprintf(w, "Each cell ran %d time(s), echo_go, echo and the Go learner taking turns; each figure is from the run of median samples/s (every run's range is in --json's samples_per_s_range). ", runs)
	fmt.Fprintln(w, "samples/s as the load sees them (sent and acknowledged). The ceiling is a Go server process whose learner calls `Sample` in process: what any learner in another process could reach if its hand-off cost nothing. CPU-s/GB counts the learner process and, for echo_go, its server process, from the first batch; the hand-off is `sample()` (`Sample` in Go) from the request to the batch's views, timed when a whole batch already waited (how many such requests in brackets). The load runs in echo-bench's process; load, servers and learners share this machine's cores.")
	fmt.Fprintln(w)
}
