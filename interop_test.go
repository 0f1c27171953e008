//go:build linux

package echo_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/pytree"
)

// Interop tests run echo itself (the id-echo package: its Python TcpClient
// and its Rust server) against this package, through the scripts in
// tools/interop. They need a Python with id-echo, numpy and optree: the
// project's .venv (made by .ci/run), or the one named by ECHO_PYTHON.
// Without one they skip, unless ECHO_REQUIRE_INTEROP=1, when they fail.

// interopPython returns the Python that has echo installed.
func interopPython(t *testing.T) string {
	t.Helper()
	return venvPython(t, "import echo, numpy, optree; print(echo.__version__)", "ECHO_REQUIRE_INTEROP",
		"interop: no Python with id-echo at %s (run .ci/run, or set ECHO_PYTHON): %v", "id-echo")
}

// venvPython returns the absolute path of the project's Python (or
// ECHO_PYTHON's) once check, a line of Python that prints a version, runs
// there. Without it the test skips, unless the environment variable
// require is 1, when it fails; missing formats the message with the
// Python's path and the error.
func venvPython(t *testing.T, check, require, missing, what string) string {
	t.Helper()
	py := os.Getenv("ECHO_PYTHON")
	if py == "" {
		py = filepath.Join(".venv", "bin", "python")
	}
	out, err := exec.Command(py, "-c", check).CombinedOutput()
	if err != nil {
		msg := fmt.Sprintf(missing, py, err)
		if os.Getenv(require) == "1" {
			t.Fatalf("%s\n%s", msg, out)
		}
		t.Skip(msg)
	}
	t.Logf("%s %s", what, strings.TrimSpace(string(out)))
	abs, err := exec.LookPath(py)
	if err == nil {
		abs, err = filepath.Abs(abs)
	}
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// runPy runs a tools/interop script to completion and returns its stdout.
func runPy(t *testing.T, py string, args ...string) string {
	t.Helper()
	out, err := pyOutput(context.Background(), py, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// pyOutput runs a tools/interop script; any goroutine may call it.
func pyOutput(ctx context.Context, py string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, args...)
	cmd.Dir = filepath.Join("tools", "interop")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// interopCase builds the example tree of a case in tools/interop/cases.json.
func interopCase(t testing.TB, name string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("tools", "interop", "cases.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cases map[string]json.RawMessage
	if err := json.Unmarshal(data, &cases); err != nil {
		t.Fatal(err)
	}
	tree, err := buildCase(cases[name])
	if err != nil {
		t.Fatalf("case %s: %v", name, err)
	}
	return tree.(map[string]any)
}

func buildCase(raw json.RawMessage) (any, error) {
	var node struct {
		Dict  map[string]json.RawMessage `json:"dict"`
		List  []json.RawMessage          `json:"list"`
		Tuple []json.RawMessage          `json:"tuple"`
		Array *struct {
			DType string `json:"dtype"`
			Shape []int  `json:"shape"`
		} `json:"array"`
	}
	if err := json.Unmarshal(raw, &node); err != nil {
		return nil, err
	}
	switch {
	case node.Dict != nil:
		m := map[string]any{}
		for k, v := range node.Dict {
			c, err := buildCase(v)
			if err != nil {
				return nil, err
			}
			m[k] = c
		}
		return m, nil
	case node.List != nil || node.Tuple != nil:
		var out []any
		for _, v := range append(node.List, node.Tuple...) {
			c, err := buildCase(v)
			if err != nil {
				return nil, err
			}
			out = append(out, c)
		}
		if node.Tuple != nil {
			return pytree.Tuple(out), nil
		}
		return out, nil
	case node.Array != nil:
		dt, err := pytree.ParseDType(node.Array.DType)
		if err != nil {
			return nil, err
		}
		return pytree.Zeros(dt, node.Array.Shape...)
	}
	return nil, errors.New("empty node")
}

// interopLeaf is leaf i of sample (client, seq), by the rule of
// tools/interop/samples.py, as raw little-endian bytes.
func interopLeaf(client, seq, i int, dt pytree.DType, n int) []byte {
	out := make([]byte, 0, n*dt.Size())
	for k := range n {
		v := (client*7919 + seq*104729 + i*31 + k*17) % 251
		switch dt {
		case pytree.Bool:
			out = append(out, byte(v%2))
		case pytree.Int8, pytree.Int16, pytree.Int32, pytree.Int64:
			out = binary.LittleEndian.AppendUint64(out, uint64(int64(v-125)))[:len(out)+dt.Size()]
		case pytree.Uint8, pytree.Uint16, pytree.Uint32, pytree.Uint64:
			out = binary.LittleEndian.AppendUint64(out, uint64(v))[:len(out)+dt.Size()]
		case pytree.Float16:
			out = binary.LittleEndian.AppendUint16(out, uint16(pytree.F16From(float32(v)/4)))
		case pytree.Float32:
			out = binary.LittleEndian.AppendUint32(out, math.Float32bits(float32(v)/4))
		case pytree.Float64:
			out = binary.LittleEndian.AppendUint64(out, math.Float64bits(float64(v)/4))
		default:
			panic("interop: no rule for " + dt.String())
		}
	}
	return out
}

// interopSample is sample (client, seq) of example, as samples.py makes it.
func interopSample(t testing.TB, example any, client, seq int) any {
	t.Helper()
	spec, err := pytree.SpecOf(example)
	if err != nil {
		t.Fatal(err)
	}
	var leaves []pytree.Array
	for i, l := range spec.Leaves() {
		b := interopLeaf(client, seq, i, l.DType, max(1, l.NumBytes()/max(1, l.DType.Size())))
		if l.Path == "id" {
			b = binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, uint64(client)), uint64(seq))
		}
		a, err := pytree.NewArray(l.DType, l.Shape, b[:l.NumBytes()])
		if err != nil {
			t.Fatal(err)
		}
		leaves = append(leaves, a)
	}
	tree, err := spec.Unflatten(leaves)
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

// interopCheck verifies every row of a batch by value and returns the
// (client, seq) ids in row order.
func interopCheck(t testing.TB, spec *pytree.Spec, smp echo.Sample, batch int) [][2]int {
	t.Helper()
	idIdx := -1
	for i, l := range spec.Leaves() {
		if l.Path == "id" {
			idIdx = i
		}
	}
	ids, err := smp.Leaves[idIdx].Int64()
	if err != nil {
		t.Fatal(err)
	}
	rows := make([][2]int, batch)
	for r := range batch {
		client, seq := int(ids[2*r]), int(ids[2*r+1])
		for i, l := range spec.Leaves() {
			if i == idIdx {
				continue
			}
			n := l.NumBytes()
			got := smp.Leaves[i].Bytes()[r*n : (r+1)*n]
			want := interopLeaf(client, seq, i, l.DType, max(1, n/l.DType.Size()))[:n]
			if !bytes.Equal(got, want) {
				t.Fatalf("row %d (client %d seq %d) leaf %s: % x, want % x", r, client, seq, l.Path, got, want)
			}
		}
		rows[r] = [2]int{client, seq}
	}
	return rows
}

// TestInteropPythonClientsFeedGoServer: 32 of echo's TcpClients at once,
// every dtype, nested dicts written in unsorted order, lists, tuples and
// scalars; every sample checked by value, exactly once, in order per client.
func TestInteropPythonClientsFeedGoServer(t *testing.T) {
	py := interopPython(t)
	example := interopCase(t, "alltypes")
	const batch, clients, per = 16, 32, 20
	s := newServerFor(t, example, batch, echo.WithTCP("127.0.0.1:0"))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	port := s.Addr().(*net.TCPAddr).Port
	ctx, cancel := context.WithTimeoutCause(context.Background(), 2*time.Minute, errors.New("timed out"))
	defer cancel()
	var out string
	var pyErr error
	pyDone := make(chan struct{})
	go func() {
		defer close(pyDone)
		out, pyErr = pyOutput(ctx, py, "client.py", "send", "--port", fmt.Sprint(port),
			"--clients", fmt.Sprint(clients), "--samples", fmt.Sprint(per))
		if pyErr != nil {
			cancel() // stops the sampling below
		}
	}()
	seen := map[[2]int]bool{}
	last := map[int]int{}
	for range clients * per / batch {
		smp, err := s.Sample(ctx)
		if err != nil {
			<-pyDone
			t.Fatalf("after %d samples: %v (client.py: %v)", len(seen), err, pyErr)
		}
		for _, id := range interopCheck(t, s.Spec(), smp, batch) {
			if seen[id] {
				t.Fatalf("sample %v twice", id)
			}
			if l, ok := last[id[0]]; ok && id[1] <= l {
				t.Fatalf("client %d: seq %d after %d", id[0], id[1], l)
			}
			seen[id], last[id[0]] = true, id[1]
		}
	}
	<-pyDone
	if pyErr != nil {
		t.Fatal(pyErr)
	}
	if !strings.Contains(out, fmt.Sprintf(`"sent": %d`, clients*per)) {
		t.Fatalf("client.py said %q", out)
	}
	if len(seen) != clients*per {
		t.Fatalf("%d samples, want %d", len(seen), clients*per)
	}
}

func TestInteropPythonClientErrors(t *testing.T) {
	py := interopPython(t)
	example := interopCase(t, "alltypes")
	s := newServerFor(t, example, 1, echo.WithTCP("127.0.0.1:0"))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	port := fmt.Sprint(s.Addr().(*net.TCPAddr).Port)

	// echo's own spec check refuses a server with another tree.
	out := runPy(t, py, "client.py", "mismatch", "--port", port, "--case", "alltypes_wide")
	if !strings.Contains(out, "Server spec mismatch") {
		t.Fatalf("mismatch: client.py said %q", out)
	}
	// A short sample raises before a byte is sent: the one good sample
	// after it arrives intact.
	out = runPy(t, py, "client.py", "wrongsize", "--port", port, "--first", "77")
	if !strings.Contains(out, "Payload size") {
		t.Fatalf("wrongsize: client.py said %q", out)
	}
	smp, err := s.Sample(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if ids := interopCheck(t, s.Spec(), smp, 1); ids[0] != [2]int{77, 0} {
		t.Fatalf("got sample %v, want client 77 seq 0", ids[0])
	}
}

// TestInteropPythonClientMeetsSharedSecret: echo's client cannot answer a
// server's challenge; it must stop with an error, and the server must
// refuse it before it touches the ring.
func TestInteropPythonClientMeetsSharedSecret(t *testing.T) {
	py := interopPython(t)
	example := interopCase(t, "alltypes")
	s := newServerFor(t, example, 1, echo.WithTCP("127.0.0.1:0"),
		echo.WithSharedSecret([]byte("0123456789abcdef0123456789abcdef")), echo.WithAuthTimeout(time.Second))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	port := fmt.Sprint(s.Addr().(*net.TCPAddr).Port)
	out := runPy(t, py, "client.py", "refused", "--port", port)
	if !strings.Contains(out, `"error"`) {
		t.Fatalf("client.py said %q", out)
	}
	t.Logf("echo's client: %s", strings.TrimSpace(out))
	// Nothing of it reached the ring: the first sample is a Go client's.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := echo.Dial(ctx, s.Addr().String(), example, echo.WithClientSecret([]byte("0123456789abcdef0123456789abcdef")))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	first := interopSample(t, example, 5, 0)
	if err := c.Send(t.Context(), first); err != nil {
		t.Fatal(err)
	}
	smp, err := s.Sample(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ids := interopCheck(t, s.Spec(), smp, 1); ids[0] != [2]int{5, 0} {
		t.Fatalf("got sample %v, want the Go client's", ids[0])
	}
	if smp.Info.AuthFailures != 1 {
		t.Fatalf("AuthFailures %d, want 1", smp.Info.AuthFailures)
	}
}

// TestInteropGoServerClosesUnderPythonClient: echo's client, mid-stream,
// must see its ConnectionClosedError when the Go server closes.
func TestInteropGoServerClosesUnderPythonClient(t *testing.T) {
	py := interopPython(t)
	example := interopCase(t, "alltypes")
	s := newServerFor(t, example, 4, echo.WithTCP("127.0.0.1:0"))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	var consumer sync.WaitGroup
	var batches atomic.Int64
	consumer.Go(func() {
		for {
			if _, err := s.Sample(context.Background()); err != nil {
				return
			}
			batches.Add(1)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, "client.py", "serverclose", "--port", fmt.Sprint(s.Addr().(*net.TCPAddr).Port))
	cmd.Dir = filepath.Join("tools", "interop")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() {
		t.Fatalf("client.py printed nothing: %s", stderr.String())
	}
	// Let samples flow, then close under the sending client.
	for deadline := time.Now().Add(30 * time.Second); batches.Load() < 10; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d batches in 30 s", batches.Load())
		}
	}
	s.Close()
	consumer.Wait()
	if !lines.Scan() {
		t.Fatalf("client.py printed nothing after the close: %s", stderr.String())
	}
	if got := lines.Text(); !strings.Contains(got, `"closed"`) {
		t.Fatalf("client.py said %q", got)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("client.py: %v: %s", err, stderr.String())
	}
}

// TestInteropGoClientsFeedEchoServer is the reverse direction: echo's Rust
// server with its TcpTransport, checked in Python by value, fed by Go
// clients; the same errors are seen from the Go side.
func TestInteropGoClientsFeedEchoServer(t *testing.T) {
	py := interopPython(t)
	example := interopCase(t, "alltypes")
	const batch, clients, per = 16, 4, 40
	srv := startEchoServer(t, py, batch, clients*per/batch)
	addr := fmt.Sprintf("127.0.0.1:%d", srv.port)

	// Spec mismatch and a wrong payload, refused on the Go side.
	_, err := echo.Dial(context.Background(), addr, interopCase(t, "alltypes_wide"))
	if !errors.Is(err, echo.ErrSpecMismatch) || !strings.Contains(err.Error(), "zeta/f32") {
		t.Fatalf("Dial with a mismatching example: %v, want ErrSpecMismatch naming zeta/f32", err)
	}
	// The clients stay connected until echo's server has its batches:
	// echo 0.2.1 prunes a closed connection's queue after a round that
	// popped only the depth it saw, so samples it acked just before the
	// close can be dropped (src/ingress.rs, drainer_task). This package's
	// workers prune a queue only once it is empty.
	var wg sync.WaitGroup
	errc := make(chan error, clients)
	conns := make([]*echo.Client, clients)
	for i := range clients {
		// Dial probes for version 2, hears nothing from echo's server, and
		// speaks version 1 on a second connection: echo's server drops the
		// probe's bytes with the first, as the checks below show.
		c, err := echo.Dial(context.Background(), addr, example)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if c.Version() != 1 {
			t.Fatalf("client %d speaks version %d to echo's server, want 1", i, c.Version())
		}
		conns[i] = c
	}
	for i, c := range conns {
		wg.Go(func() {
			if i == 0 {
				short := interopSample(t, example, 0, 0).(map[string]any)
				short["alpha"].(map[string]any)["u8"] = pytree.MustOf(make([]uint8, 4))
				if err := c.Send(t.Context(), short); !errors.Is(err, echo.ErrSpecMismatch) {
					errc <- fmt.Errorf("short sample: %v, want ErrSpecMismatch", err)
				}
			}
			for seq := range per {
				if err := c.Send(t.Context(), interopSample(t, example, 100+i, seq)); err != nil {
					errc <- err
					return
				}
			}
			if err := c.Wait(context.Background()); err != nil {
				errc <- err
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	ids := srv.result(t)
	seen := map[[2]int]bool{}
	for _, id := range ids {
		if seen[id] {
			t.Fatalf("echo server got %v twice", id)
		}
		seen[id] = true
	}
	for i := range clients {
		for seq := range per {
			if !seen[[2]int{100 + i, seq}] {
				t.Fatalf("echo server never got client %d seq %d", 100+i, seq)
			}
		}
	}
}

// TestInteropEchoServerClosesUnderGoClient: the Go client sees
// ErrConnectionClosed when echo's server goes away mid-stream.
func TestInteropEchoServerClosesUnderGoClient(t *testing.T) {
	py := interopPython(t)
	example := interopCase(t, "alltypes")
	srv := startEchoServer(t, py, 4, 2)
	c, err := echo.Dial(context.Background(), fmt.Sprintf("127.0.0.1:%d", srv.port), example)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sendErr := make(chan error, 1)
	go func() {
		for seq := 0; ; seq++ {
			if err := c.Send(t.Context(), interopSample(t, example, 5, seq)); err != nil {
				sendErr <- err
				return
			}
		}
	}()
	srv.result(t) // the server took 2 batches and exited
	select {
	case err := <-sendErr:
		if !errors.Is(err, echo.ErrConnectionClosed) {
			t.Fatalf("Send after echo's server exited: %v, want ErrConnectionClosed", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Send still succeeding 30 s after echo's server exited")
	}
}

// echoServer is a running tools/interop/server.py.
type echoServer struct {
	port   int
	cmd    *exec.Cmd
	lines  *bufio.Scanner
	stderr *bytes.Buffer
}

func startEchoServer(t *testing.T, py string, batch, batches int) *echoServer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, py, "server.py", "--batch", fmt.Sprint(batch), "--batches", fmt.Sprint(batches))
	cmd.Dir = filepath.Join("tools", "interop")
	srv := &echoServer{cmd: cmd, stderr: &bytes.Buffer{}}
	cmd.Stderr = srv.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	srv.lines = bufio.NewScanner(stdout)
	srv.lines.Buffer(nil, 64<<20)
	if !srv.lines.Scan() {
		t.Fatalf("server.py printed no port: %s", srv.stderr.String())
	}
	var hello struct {
		Port    int    `json:"port"`
		Version string `json:"version"`
	}
	if err := json.Unmarshal(srv.lines.Bytes(), &hello); err != nil || hello.Port == 0 {
		t.Fatalf("server.py said %q: %v", srv.lines.Text(), err)
	}
	t.Logf("echo server %s on port %d", hello.Version, hello.Port)
	srv.port = hello.Port
	return srv
}

// result waits for server.py's batches and returns the ids it checked.
func (s *echoServer) result(t *testing.T) [][2]int {
	t.Helper()
	if !s.lines.Scan() {
		s.cmd.Wait()
		t.Fatalf("server.py ended without a result: %s", s.stderr.String())
	}
	var res struct {
		IDs [][2]int `json:"ids"`
	}
	if err := json.Unmarshal(s.lines.Bytes(), &res); err != nil {
		t.Fatalf("server.py said %q: %v", s.lines.Text(), err)
	}
	if err := s.cmd.Wait(); err != nil {
		t.Fatalf("server.py: %v: %s", err, s.stderr.String())
	}
	return res.IDs
}
