package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/bench"
)

// The latency section: a learner in one process and an actor in another,
// as users deploy them (bench/xlatency.go has the method). Each learner
// runs in a child process: this program again, with --latency-child, or
// echo's own server (tools/interop/latency_server.py).

// LatencyRow is one cell: a learner at one rate.
type LatencyRow struct {
	Learner string  `json:"learner"` // "reference", "echo-go park", ..., "echo (id-echo)"
	Batch   int     `json:"batch"`
	Rate    string  `json:"rate"` // "idle", "1000/s", ..., "saturated"
	Sent    float64 `json:"samples_per_s"`
	P50     float64 `json:"p50_us"`
	P99     float64 `json:"p99_us"`
	P999    float64 `json:"p999_us"`
	CPU     float64 `json:"cpu_cores"` // the learner process's CPU, in cores
	// Stalled: the learner stopped acknowledging for 5 s in a window.
	Stalled bool `json:"stalled,omitempty"`
	// Windows is the number of windows the figures are the medians of.
	Windows int `json:"windows"`
	// InProcess: a Producer in the learner's process; CPU is then the
	// whole process's.
	InProcess bool `json:"in_process,omitempty"`
}

// latencyRates are the fixed rates, then saturation (0).
var latencyRates = []float64{1000, 10000, 50000, 0}

// latencyStrategies are the Go learner's wait strategies measured.
var latencyStrategies = []echo.WaitStrategy{echo.Park(), echo.SpinThenPark(50 * time.Microsecond), echo.BusyPoll()}

// latencyChild is the body of a --latency-child process: "KIND:BATCH:WAIT".
func latencyChild(arg string) error {
	parts := strings.Split(arg, ":")
	if len(parts) != 3 {
		return fmt.Errorf("--latency-child %q: want KIND:BATCH:WAIT", arg)
	}
	batch, err := strconv.Atoi(parts[1])
	if err != nil {
		return err
	}
	var ws echo.WaitStrategy
	switch parts[2] {
	case "park", "":
		ws = echo.Park()
	case "busy":
		ws = echo.BusyPoll()
	default:
		d, err := time.ParseDuration(parts[2])
		if err != nil {
			return err
		}
		ws = echo.SpinThenPark(d)
	}
	return bench.ServeLatency(parts[0], batch, ws, os.Stdin, os.Stdout)
}

// rateLabel names a window's rate: idle (< 0), saturated (0), or n/s.
func rateLabel(rate float64) string {
	switch {
	case rate < 0:
		return "idle"
	case rate == 0:
		return "saturated"
	}
	return fmt.Sprintf("%.0f/s", rate)
}

// medianRow is the row of several windows: each figure's median. A
// learner that stalled in any window is marked stalled.
func medianRow(ws []LatencyRow) LatencyRow {
	out := ws[0]
	out.Windows = len(ws)
	med := func(f func(LatencyRow) float64) float64 {
		v := make([]float64, len(ws))
		for i, w := range ws {
			v[i] = f(w)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	for _, w := range ws {
		out.Stalled = out.Stalled || w.Stalled
	}
	out.Sent = med(func(r LatencyRow) float64 { return r.Sent })
	out.P50 = med(func(r LatencyRow) float64 { return r.P50 })
	out.P99 = med(func(r LatencyRow) float64 { return r.P99 })
	out.P999 = med(func(r LatencyRow) float64 { return r.P999 })
	out.CPU = med(func(r LatencyRow) float64 { return r.CPU })
	return out
}

// learnerProc is a learner child process and its control pipes.
type learnerProc struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	addr string
}

func startLearner(cmd *exec.Cmd) (*learnerProc, error) {
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &learnerProc{cmd: cmd, in: in, out: bufio.NewScanner(outPipe)}
	var hello struct{ Addr string }
	if err := p.read(&hello); err != nil {
		p.stop()
		return nil, fmt.Errorf("learner %v: %w", cmd.Args, err)
	}
	p.addr = hello.Addr
	return p, nil
}

func (p *learnerProc) read(v any) error {
	if !p.out.Scan() {
		return errors.Join(errors.New("no answer"), p.out.Err())
	}
	return json.Unmarshal(p.out.Bytes(), v)
}

func (p *learnerProc) command(c string, v any) error {
	if _, err := fmt.Fprintln(p.in, c); err != nil {
		return err
	}
	return p.read(v)
}

func (p *learnerProc) stop() error {
	p.in.Close()
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		return errors.New("learner did not exit on EOF")
	}
}

// latencySamples is how many samples a cell sends at rate (0: saturated):
// 3 s at 1,000/s, so that a window's p99 is the 30th-worst sample, else 2 s.
func latencySamples(rate float64, quick bool) int {
	secs := 2.0
	if rate == 1000 {
		secs = 3
	}
	if quick {
		secs = 0.25
	}
	if rate == 0 {
		rate = 100000
	}
	return max(200, int(rate*secs))
}

// measureRate runs one window: idle (rate < 0), a fixed rate, or
// saturation (0). A learner that stalls gives a row marked so.
func measureRate(start func() (*learnerProc, error), name string, batch int, rate float64, quick bool) (row LatencyRow, err error) {
	row = LatencyRow{Learner: name, Batch: batch, Rate: rateLabel(rate), Windows: 1}
	p, err := start()
	if err != nil {
		return row, err
	}
	defer func() {
		if serr := p.stop(); serr != nil && err == nil && !row.Stalled {
			err = serr
		}
	}()
	var ok struct{ OK bool }
	var rep bench.LatencyReport
	if rate < 0 {
		if err := p.command("reset", &ok); err != nil {
			return row, err
		}
		time.Sleep(map[bool]time.Duration{true: 200 * time.Millisecond, false: time.Second}[quick])
		if err := p.command("report", &rep); err != nil {
			return row, err
		}
		row.CPU = rep.CPU()
		return row, nil
	}
	actor, err := bench.DialLatency(p.addr)
	if err != nil {
		return row, err
	}
	defer actor.Close()
	if err := actor.Send(0, 4*batch); err != nil { // warm up
		return row, err
	}
	n := latencySamples(rate, quick)
	n -= n % batch
	if err := p.command("reset", &ok); err != nil {
		return row, err
	}
	t0 := time.Now()
	if err := actor.Send(rate, n); err != nil {
		if errors.Is(err, bench.ErrStalled) {
			row.Stalled = true
			p.cmd.Process.Kill()
			return row, nil
		}
		return row, fmt.Errorf("%s at %s: %w", name, row.Rate, err)
	}
	row.Sent = float64(n) / time.Since(t0).Seconds()
	if err := p.command("report", &rep); err != nil {
		return row, err
	}
	row.P50, row.P99, row.P999, row.CPU = rep.P50, rep.P99, rep.P999, rep.CPU()
	return row, nil
}

// runLatency measures the floors, the reference, this package's learner
// under each wait strategy and echo's own learner, for batch 1 and 32.
func runLatency(o options, bar interface{ Printf(string, ...any) }) (floor [2]float64, rows []LatencyRow, err error) {
	self, err := os.Executable()
	if err != nil {
		return floor, nil, err
	}
	child := func(kind string, batch int, wait string) *exec.Cmd {
		return exec.Command(self, "--latency-child", fmt.Sprintf("%s:%d:%s", kind, batch, wait))
	}
	// The ping-pong floor: a sink in its own process.
	sink, err := startLearner(child("sink", 1, ""))
	if err != nil {
		return floor, nil, err
	}
	actor, err := bench.DialLatency(sink.addr)
	if err == nil {
		floor[0], floor[1], err = actor.PingPong(map[bool]int{true: 500, false: 5000}[o.quick])
		actor.Close()
	}
	sink.stop()
	if err != nil {
		return floor, nil, fmt.Errorf("ping-pong floor: %w", err)
	}
	type learner struct {
		name string
		cmd  func(batch int) *exec.Cmd
	}
	learners := []learner{{"reference", func(b int) *exec.Cmd { return child("reference", b, "") }}}
	for _, ws := range latencyStrategies {
		arg := "park"
		switch ws.String() {
		case "park":
		case "busy-poll":
			arg = "busy"
		default:
			arg = "50us"
		}
		learners = append(learners, learner{"echo-go " + ws.String(), func(b int) *exec.Cmd { return child("echo", b, arg) }})
	}
	if _, err := echoVersion(o.python); err == nil {
		learners = append(learners, learner{"echo (id-echo)", func(b int) *exec.Cmd {
			return exec.Command(o.python, filepath.Join(o.interopDir, "latency_server.py"), "--batch", strconv.Itoa(b))
		}})
	}
	// Rates outer, learners inner, repeats interleaved: every learner
	// meets the same stretch of the machine's noise. Each window runs in a
	// fresh learner process; the rows hold the median of the repeats.
	for _, batch := range []int{1, 32} {
		for _, rate := range append([]float64{-1}, latencyRates...) {
			repeats := 1
			if !o.quick && (rate == 1000 || rate == 10000) {
				repeats = 5
			}
			windows := make([][]LatencyRow, len(learners))
			for range repeats {
				for i, l := range learners {
					bar.Printf("latency: batch %d, %s, %s", batch, rateLabel(rate), l.name)
					r, err := measureRate(func() (*learnerProc, error) { return startLearner(l.cmd(batch)) }, l.name, batch, rate, o.quick)
					if err != nil {
						return floor, rows, fmt.Errorf("%s batch %d: %w", l.name, batch, err)
					}
					windows[i] = append(windows[i], r)
				}
			}
			for _, w := range windows {
				rows = append(rows, medianRow(w))
			}
		}
	}
	// In process: Producer.Send → Sample, per strategy.
	for _, batch := range []int{1, 32} {
		for _, ws := range latencyStrategies {
			for _, rate := range latencyRates {
				bar.Printf("latency: in process, batch %d, %s, %s", batch, rateLabel(rate), ws)
				n := latencySamples(rate, o.quick)
				n -= n % batch
				t0 := time.Now()
				rep, err := bench.ProducerLatency(ws, batch, rate, n)
				if err != nil {
					return floor, rows, fmt.Errorf("in process, %s, batch %d, %s: %w", ws, batch, rateLabel(rate), err)
				}
				rows = append(rows, LatencyRow{
					Learner: "in process: Producer, " + ws.String(), Batch: batch, Rate: rateLabel(rate), Windows: 1,
					Sent: float64(n) / time.Since(t0).Seconds(), P50: rep.P50, P99: rep.P99, P999: rep.P999, CPU: rep.CPU(),
					InProcess: true,
				})
			}
		}
	}
	return floor, rows, nil
}

// writeLatency writes the latency table: each row beside the reference's
// row of the same batch and rate.
func writeLatency(w io.Writer, floor [2]float64, rows []LatencyRow) {
	heading(w, fmt.Sprintf("Latency across processes: actor timestamp → learner holds the batch, one TCP connection, 16-byte samples (ping-pong floor: p50 %.0f µs, p99 %.0f µs; 1,000 and 10,000/s: medians of 5 interleaved windows)", floor[0], floor[1]),
		"learner", "batch", "rate", "achieved/s", "p50 µs", "p99 µs", "p99.9 µs", "p50 / ref", "p99 / ref", "learner CPU (cores)")
	ref := map[string]LatencyRow{}
	for _, r := range rows {
		if r.Learner == "reference" {
			ref[fmt.Sprint(r.Batch, r.Rate)] = r
		}
	}
	for _, r := range rows {
		if r.InProcess {
			continue
		}
		if r.Rate == "idle" {
			fmt.Fprintf(w, "| %s | %d | idle | – | – | – | – | – | – | %.3f |\n", r.Learner, r.Batch, r.CPU)
			continue
		}
		if r.Stalled {
			fmt.Fprintf(w, "| %s | %d | %s | stalled: no ack for 5 s | – | – | – | – | – | – |\n", r.Learner, r.Batch, r.Rate)
			continue
		}
		x50, x99 := "–", "–"
		if f, ok := ref[fmt.Sprint(r.Batch, r.Rate)]; ok && r.Learner != "reference" && f.P50 > 0 {
			x50, x99 = fmt.Sprintf("%.2f", r.P50/f.P50), fmt.Sprintf("%.2f", r.P99/f.P99)
		}
		fmt.Fprintf(w, "| %s | %d | %s | %s | %.0f | %.0f | %.0f | %s | %s | %.2f |\n",
			r.Learner, r.Batch, r.Rate, rate(r.Sent), r.P50, r.P99, r.P999, x50, x99, r.CPU)
	}
	fmt.Fprintln(w)
	heading(w, "Latency in process: Producer.Send → Sample returns, 16-byte samples",
		"producer, learner's strategy", "batch", "rate", "achieved/s", "p50 µs", "p99 µs", "p99.9 µs", "process CPU (cores)")
	for _, r := range rows {
		if r.InProcess {
			fmt.Fprintf(w, "| %s | %d | %s | %s | %.1f | %.1f | %.1f | %.2f |\n",
				strings.TrimPrefix(r.Learner, "in process: Producer, "), r.Batch, r.Rate, rate(r.Sent), r.P50, r.P99, r.P999, r.CPU)
		}
	}
	fmt.Fprintln(w)
}
