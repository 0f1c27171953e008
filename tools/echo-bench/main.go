// Command echo-bench runs the benchmark suite, every layer beside its
// ceiling (in process, producers, TCP against a raw sink and a
// goroutine-per-connection baseline, latency, ring, client, accumulator),
// and then this package's TCP server side by side with echo's own (the
// id-echo Python package, a Rust core) over loopback: the same Go load
// generator against both servers, and echo's own Python TcpClient against
// both, for W1/W2/W3 at several client counts. It prints the tables with
// their ratios on stdout, with the machine it ran on, and shows its
// progress on stderr when stderr is a terminal. It writes files only when
// asked: the results as JSON (--json), the comparison as an SVG chart
// (--svg), the tables as Markdown (--markdown), or the tables into the
// generated section of a Markdown document (--doc, e.g.
// docs/performance.md, between <!-- echo-bench:begin --> and
// <!-- echo-bench:end -->).
//
//	go run ./tools/echo-bench [--quick] [--doc docs/performance.md] [--json out.json] [--svg out.svg]
//
// echo's side needs a Python with id-echo (the project's .venv, made by
// .ci/run, or --python); without one, echo-bench measures the Go server
// alone and says so.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/cpuid/v2"
	"golang.org/x/sys/unix"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/bench"
	"github.com/seed-a9ef92a1/echo/internal/cli"
	"github.com/seed-a9ef92a1/echo/internal/readme"
)

type options struct {
	quick      bool
	jsonPath   string
	svgPath    string
	python     string
	interopDir string
	cpuprofile string
	doc        string
	markdown   string
	suite      bool
	interop    bool
	latency    bool
	learners   bool
	clients    []int
	workloads  []string
	group      int
	// learnerRuns is how many runs each learner cell gets.
	learnerRuns int
}

// docSection names the generated section that --doc rewrites.
const docSection = "echo-bench"

func main() {
	var o options
	var clients, workloads string
	var benchtime time.Duration
	cmd := cli.New("echo-bench", "echo-bench runs echo's benchmark suite and compares its TCP server with echo's own (id-echo), printing the tables.")
	fs := cmd.Flags
	fs.BoolVar(&o.quick, "quick", false, "a fraction of the samples per cell, to finish within a minute (CI)")
	fs.StringVar(&o.jsonPath, "json", "", "write the results as JSON to `FILE` (default: not written)")
	fs.StringVar(&o.svgPath, "svg", "", "write the comparison chart as SVG to `FILE` (default: not written)")
	fs.StringVar(&o.markdown, "markdown", "", "write the tables as Markdown to `FILE` (default: not written)")
	fs.StringVar(&o.doc, "doc", "", "rewrite the generated section between the markers <!-- "+docSection+":begin --> and <!-- "+docSection+":end --> in `FILE` (e.g. docs/performance.md) with the tables")
	fs.StringVar(&o.python, "python", filepath.Join(".venv", "bin", "python"), "Python with id-echo installed")
	fs.StringVar(&o.interopDir, "interop-dir", filepath.Join("tools", "interop"), "where bench_server.py and bench_client.py are")
	fs.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of this process (Go servers and Go clients) to `FILE`, and print where the time went")
	fs.StringVar(&clients, "clients", "1,16,256", "client counts, comma-separated")
	fs.StringVar(&workloads, "workloads", "W1,W2,W3", "workloads, comma-separated")
	fs.IntVar(&o.group, "group", 1, "samples per Go client call: 1 is Client.Send, more is Client.SendBatch")
	fs.BoolVar(&o.suite, "suite", true, "run the benchmark suite, layer by layer")
	fs.BoolVar(&o.interop, "interop", true, "run the comparison with echo's own server and client")
	fs.IntVar(&o.learnerRuns, "learner-runs", 3, "runs of each learner cell, the learners taking turns; the tables give the median run (--quick: 1)")
	fs.BoolVar(&o.learners, "learners", true, "run the learner section: echo's Python API on this engine (echo_go) beside echo's own, and Go's Sample")
	fs.BoolVar(&o.latency, "latency", true, "run the latency section: learner and actor in separate processes, at fixed rates, beside the reference and echo's own server")
	var latencyChildArg, learnerChildArg string
	fs.StringVar(&latencyChildArg, "latency-child", "", "internal, for --latency: serve as a learner process of `KIND:BATCH:WAIT`")
	fs.StringVar(&learnerChildArg, "learner-child", "", "internal, for --learners: serve as the Go learner process of `WORKLOAD`")
	fs.DurationVar(&benchtime, "benchtime", time.Second, "time per suite benchmark (--quick: 100ms)")
	cmd.Parse(os.Args[1:])
	if learnerChildArg != "" {
		if err := learnerChild(learnerChildArg); err != nil {
			fatal(err)
		}
		return
	}
	if latencyChildArg != "" {
		if err := latencyChild(latencyChildArg); err != nil {
			fatal(err)
		}
		return
	}
	if o.quick && o.learnerRuns == 3 {
		o.learnerRuns = 1
	}
	if o.quick && benchtime == time.Second {
		benchtime = 100 * time.Millisecond
	}
	// testing.Benchmark reads -test.benchtime from flag.CommandLine, where
	// testing.Init registers the test flags; echo-bench's own flags live in
	// their own set, so none of them shows in its help. Parsing the one
	// setting also marks flag.CommandLine parsed, as the testing package
	// expects of a test binary.
	testing.Init()
	if err := flag.CommandLine.Parse([]string{"-test.benchtime=" + benchtime.String()}); err != nil {
		fatal(err)
	}
	for _, c := range strings.Split(clients, ",") {
		var n int
		if _, err := fmt.Sscan(c, &n); err != nil || n < 1 {
			fatal(fmt.Errorf("bad --clients %q", clients))
		}
		o.clients = append(o.clients, n)
	}
	o.workloads = strings.Split(workloads, ",")
	if o.doc != "" {
		// Before the run, not after minutes of it.
		if err := readme.Check(o.doc, docSection); err != nil {
			fatal(fmt.Errorf("--doc: %w", err))
		}
	}
	if err := run(o); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "echo-bench:", err)
	os.Exit(1)
}

// Result is one cell: a load generator against a server.
type Result struct {
	Workload string  `json:"workload"`
	Clients  int     `json:"clients"`
	Server   string  `json:"server"` // "go" or "echo"
	Load     string  `json:"load"`   // "go" or "python"
	Samples  int     `json:"samples"`
	Seconds  float64 `json:"seconds"`
	Rate     float64 `json:"samples_per_s"`
	GBps     float64 `json:"gb_per_s"`
}

// Report is what echo-bench writes as JSON.
type Report struct {
	Machine     Machine      `json:"machine"`
	EchoVersion string       `json:"echo_version,omitempty"`
	Group       int          `json:"go_client_group"`
	Quick       bool         `json:"quick"`
	Suite       []Row        `json:"suite,omitempty"`
	Results     []Result     `json:"results"`
	Latency     []LatencyRow `json:"latency,omitempty"`
	Learners    []LearnerRow `json:"learners,omitempty"`
	// PingPong is the floor of the latency section: p50 and p99 round
	// trips to a sink in another process, µs.
	PingPong [2]float64 `json:"ping_pong_us,omitempty"`
}

// Machine describes where the figures come from.
type Machine struct {
	CPU       string   `json:"cpu"`
	Cores     int      `json:"cores"`
	CacheLine int      `json:"cache_line_bytes"`
	Features  []string `json:"features"`
	Kernel    string   `json:"kernel"`
	Go        string   `json:"go"`
	HugePages string   `json:"transparent_hugepages"`
	// RingHugePages says how much of a W3 server's ring the kernel backs
	// with huge pages: whether the ring gets them here, not just the mode.
	RingHugePages string `json:"ring_huge_pages"`
}

func machine() Machine {
	m := Machine{
		CPU: cpuid.CPU.BrandName, Cores: runtime.NumCPU(), CacheLine: cpuid.CPU.CacheLine,
		Go: runtime.Version(),
	}
	for _, f := range []cpuid.FeatureID{cpuid.AVX2, cpuid.AVX512F, cpuid.ERMS, cpuid.FSRM} {
		if cpuid.CPU.Supports(f) {
			m.Features = append(m.Features, f.String())
		}
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	if b, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled"); err == nil {
		m.HugePages = strings.TrimSpace(string(b))
	}
	if w, err := bench.Get("W3"); err == nil {
		if s, err := echo.NewServer(w.MustSample(0), w.BatchSize); err == nil {
			mem := s.Memory()
			m.RingHugePages = fmt.Sprintf("%d of %d MiB", mem.HugePageBytes>>20, mem.Bytes>>20)
			s.Close()
		}
	}
	return m
}

func run(o options) error {
	if o.cpuprofile != "" {
		f, err := os.Create(o.cpuprofile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return err
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
			if err := summarizeProfile(os.Stdout, o.cpuprofile); err != nil {
				fmt.Fprintln(os.Stderr, "echo-bench: profile summary:", err)
			}
		}()
	}
	rep := Report{Machine: machine(), Group: o.group, Quick: o.quick}
	fmt.Printf("%s, %d cores, %d-byte cache lines, %v; Linux %s, %s, THP %s, ring in huge pages: %s\n",
		rep.Machine.CPU, rep.Machine.Cores, rep.Machine.CacheLine, rep.Machine.Features,
		rep.Machine.Kernel, rep.Machine.Go, rep.Machine.HugePages, rep.Machine.RingHugePages)
	if rep.Machine.Cores < 8 {
		fmt.Printf("note: clients and servers share %d cores; many clients measure contention, not scaling\n", rep.Machine.Cores)
	}
	if o.suite {
		rep.Suite = runSuite(o.quick)
	}
	version, pyErr := echoVersion(o.python)
	if pyErr != nil {
		fmt.Printf("note: echo's side skipped: %v\n", pyErr)
	} else {
		rep.EchoVersion = version
		fmt.Printf("echo (id-echo) %s via %s\n", version, o.python)
	}

	var cells []cell
	for _, name := range o.workloads {
		if !o.interop {
			break
		}
		w, err := bench.Get(strings.TrimSpace(name))
		if err != nil {
			return err
		}
		for _, n := range o.clients {
			for _, server := range []string{"go", "echo"} {
				for _, load := range []string{"go", "python"} {
					if pyErr != nil && (server == "echo" || load == "python") {
						continue
					}
					cells = append(cells, cell{w: w, clients: n, server: server, load: load})
				}
			}
		}
	}
	dir, err := os.MkdirTemp("", "echo-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bar := cli.NewProgress()
	for i, c := range cells {
		bar.Printf("[%s] %d/%d  %s clients=%d server=%s load=%s",
			progress(i, len(cells)), i+1, len(cells), c.w.Short, c.clients, c.server, c.load)
		r, err := c.measure(o, dir)
		if err != nil {
			bar.Clear()
			return fmt.Errorf("%s clients=%d server=%s load=%s: %w", c.w.Short, c.clients, c.server, c.load, err)
		}
		rep.Results = append(rep.Results, r)
	}
	if o.learners {
		rep.Learners, err = runLearners(o, bar)
		if err != nil {
			bar.Clear()
			return fmt.Errorf("learners: %w", err)
		}
	}
	if o.latency {
		rep.PingPong, rep.Latency, err = runLatency(o, bar)
		if err != nil {
			bar.Clear()
			return fmt.Errorf("latency: %w", err)
		}
	}
	bar.Clear()
	fmt.Println()
	var md strings.Builder
	echoSide := "echo's side not measured (no id-echo)"
	if rep.EchoVersion != "" {
		echoSide = "id-echo " + rep.EchoVersion
	}
	fmt.Fprintf(&md, "Produced by `go run ./tools/echo-bench%s` on %s, %d cores, %d-byte cache lines, %v, Linux %s, %s, transparent huge pages `%s` (a W3 ring: %s in huge pages); %s.\n\n",
		map[bool]string{true: " --quick", false: ""}[o.quick], rep.Machine.CPU, rep.Machine.Cores, rep.Machine.CacheLine,
		rep.Machine.Features, rep.Machine.Kernel, rep.Machine.Go, rep.Machine.HugePages, rep.Machine.RingHugePages, echoSide)
	if len(rep.Suite) > 0 {
		writeSuite(&md, rep.Suite)
	}
	if len(rep.Latency) > 0 {
		writeLatency(&md, rep.PingPong, rep.Latency)
	}
	if len(rep.Learners) > 0 {
		writeLearners(&md, rep.Learners)
	}
	if len(rep.Results) > 0 {
		fmt.Fprintln(&md, "#### Beside echo: the same load generators against this server and echo's")
		fmt.Fprintln(&md)
		printTable(&md, rep)
	}
	fmt.Print(md.String())
	if o.markdown != "" {
		if err := os.WriteFile(o.markdown, []byte(md.String()), 0o644); err != nil {
			return err
		}
	}
	if o.doc != "" {
		if err := readme.Rewrite(o.doc, docSection, md.String()); err != nil {
			return fmt.Errorf("--doc: %w", err)
		}
	}
	if o.jsonPath != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(o.jsonPath, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	if o.svgPath != "" {
		if err := os.WriteFile(o.svgPath, []byte(chart(rep)), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func progress(i, n int) string {
	const width = 24
	done := width * i / max(1, n)
	return strings.Repeat("#", done) + strings.Repeat(".", width-done)
}

// cell is one measurement to make.
type cell struct {
	w       bench.Workload
	clients int
	server  string
	load    string
}

// samples is how many samples a cell sends in all: about a second's worth
// for the Go load generator here, fewer for Python's.
func (c cell) samples(quick bool) int {
	n := map[string]int{"W1": 200000, "W2": 40000, "W3": 2000}[c.w.Short]
	if c.load == "python" {
		n /= 8
	}
	if quick {
		n /= 20
	}
	return max(n, c.clients)
}

func (c cell) measure(o options, dir string) (Result, error) {
	per := (c.samples(o.quick) + c.clients - 1) / c.clients
	r := Result{Workload: c.w.Short, Clients: c.clients, Server: c.server, Load: c.load, Samples: per * c.clients}
	var addr string
	var stop func() error
	var err error
	if c.server == "go" {
		addr, stop, err = startGoServer(c.w)
	} else {
		addr, stop, err = startEchoServer(o, dir, c.w)
	}
	if err != nil {
		return r, err
	}
	var d time.Duration
	if c.load == "go" {
		var opts []echo.ClientOption
		if c.server != "go" {
			opts = append(opts, echo.WithWireVersion(1)) // echo's server: no probe to wait out
		}
		d, err = goLoad(addr, c.w, c.clients, per, o.group, opts...)
	} else {
		d, err = pythonLoad(o, dir, addr, c.w, c.clients, per)
	}
	err = errors.Join(err, stop())
	r.Seconds = d.Seconds()
	r.Rate = float64(r.Samples) / r.Seconds
	r.GBps = r.Rate * float64(c.w.PayloadBytes) / 1e9
	return r, err
}

// startGoServer runs this package's server with a consumer taking batches
// as fast as they complete.
func startGoServer(w bench.Workload) (string, func() error, error) {
	s, err := echo.NewServer(w.MustSample(0), w.BatchSize, echo.WithTCP("127.0.0.1:0"))
	if err != nil {
		return "", nil, err
	}
	if err := s.Start(); err != nil {
		s.Close()
		return "", nil, err
	}
	var consumer sync.WaitGroup
	consumer.Go(func() {
		for {
			if _, err := s.Sample(context.Background()); err != nil {
				return
			}
		}
	})
	return s.Addr().String(), func() error {
		err := s.Close()
		consumer.Wait()
		return err
	}, nil
}

// workloadFile writes w as JSON for the Python scripts.
func workloadFile(dir string, w bench.Workload) (string, error) {
	path := filepath.Join(dir, w.Short+".json")
	b, err := json.Marshal(w)
	if err != nil {
		return "", err
	}
	return path, os.WriteFile(path, b, 0o644)
}

// startEchoServer runs echo's server (bench_server.py) until stop closes
// its stdin.
func startEchoServer(o options, dir string, w bench.Workload) (string, func() error, error) {
	addr, stop, err := startLearnerProc(o, dir, w, "echo")
	if err != nil {
		return "", nil, err
	}
	return addr, func() error { _, err := stop(); return err }, nil
}

// learnerStats is what a learner process (bench_server.py, or echo-bench's
// --learner-child) says when it stops.
type learnerStats struct {
	Batches  int        `json:"batches"`
	CPU      float64    `json:"cpu_s"`
	Handoff  [2]float64 `json:"handoff_us"`
	Handoffs int        `json:"handoffs"`
}

// startLearnerProc runs a learner process until stop closes its stdin; stop
// returns what it measured. kind "go" is this program as --learner-child;
// any other is bench_server.py, a learner on echo's Python API from that
// module (echo, or echo_go: the Go engine behind it).
func startLearnerProc(o options, dir string, w bench.Workload, kind string) (string, func() (learnerStats, error), error) {
	var cmd *exec.Cmd
	name := "bench_server.py (" + kind + ")"
	if kind == "go" {
		self, err := os.Executable()
		if err != nil {
			return "", nil, err
		}
		cmd, name = exec.Command(self, "--learner-child", w.Short), "echo-bench --learner-child"
	} else {
		wf, err := workloadFile(dir, w)
		if err != nil {
			return "", nil, err
		}
		cmd = exec.Command(o.python, filepath.Join(o.interopDir, "bench_server.py"), "--workload", wf, "--module", kind)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return "", nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	lines := bufio.NewScanner(stdout)
	var hello struct{ Port int }
	if !lines.Scan() || json.Unmarshal(lines.Bytes(), &hello) != nil || hello.Port == 0 {
		cmd.Process.Kill()
		cmd.Wait()
		return "", nil, fmt.Errorf("%s did not start: %s", name, stderr.String())
	}
	return fmt.Sprintf("127.0.0.1:%d", hello.Port), func() (learnerStats, error) {
		var st learnerStats
		stdin.Close()
		done := make(chan error, 1)
		go func() {
			if lines.Scan() {
				json.Unmarshal(lines.Bytes(), &st)
			}
			done <- cmd.Wait()
		}()
		select {
		case err := <-done:
			if err != nil {
				return st, fmt.Errorf("%s: %w: %s", name, err, stderr.String())
			}
			return st, nil
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			return st, fmt.Errorf("%s did not stop: %s", name, stderr.String())
		}
	}, nil
}

// goLoad is the Go load generator: clients connect, then each sends per
// samples and waits for the acks; the clock covers the sending.
func goLoad(addr string, w bench.Workload, clients, per, group int, opts ...echo.ClientOption) (time.Duration, error) {
	ctx := context.Background()
	sample := w.MustSample(1)
	cl, err := bench.DialClients(ctx, addr, sample, clients, opts...)
	if err != nil {
		return 0, err
	}
	defer bench.CloseClients(cl)
	t0 := time.Now()
	err = bench.SendAll(ctx, cl, sample, per, group)
	return time.Since(t0), err
}

// pythonLoad runs echo's own TcpClient (bench_client.py); it times itself.
func pythonLoad(o options, dir, addr string, w bench.Workload, clients, per int) (time.Duration, error) {
	wf, err := workloadFile(dir, w)
	if err != nil {
		return 0, err
	}
	port := addr[strings.LastIndexByte(addr, ':')+1:]
	out, err := exec.Command(o.python, filepath.Join(o.interopDir, "bench_client.py"),
		"--port", port, "--workload", wf, "--clients", fmt.Sprint(clients), "--samples", fmt.Sprint(per)).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, ee.Stderr)
		}
		return 0, fmt.Errorf("bench_client.py: %w", err)
	}
	var res struct{ Seconds float64 }
	if err := json.Unmarshal(out, &res); err != nil || res.Seconds <= 0 {
		return 0, fmt.Errorf("bench_client.py said %q", out)
	}
	return time.Duration(res.Seconds * float64(time.Second)), nil
}

// echoVersion checks that python has echo.
func echoVersion(python string) (string, error) {
	out, err := exec.Command(python, "-c", "import echo; print(echo.__version__)").Output()
	if err != nil {
		return "", fmt.Errorf("no Python with id-echo at %s (run .ci/run or pass --python): %v", python, err)
	}
	return strings.TrimSpace(string(out)), nil
}
