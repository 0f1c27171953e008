//go:build linux

package echo_test

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/bench/integrity"
	"github.com/seed-a9ef92a1/echo/pytree"
)

// pythonLearner is tools/interop/learner.py attached to a server.
type pythonLearner struct {
	cmd   *exec.Cmd
	out   string      // the file of its batches
	lines chan string // what it prints, line by line
	done  chan error
}

func startPythonLearner(t *testing.T, py, socket string, hold bool) *pythonLearner {
	t.Helper()
	out := filepath.Join(t.TempDir(), "batches")
	args := []string{"tools/interop/learner.py", "--socket", socket, "--out", out}
	if hold {
		args = append(args, "--hold")
	}
	cmd := exec.Command(py, args...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	l := &pythonLearner{cmd: cmd, out: out, lines: make(chan string, 16), done: make(chan error, 1)}
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-l.done
	})
	go func() {
		say := bufio.NewScanner(stdout)
		for say.Scan() {
			l.lines <- say.Text()
		}
		close(l.lines)
		l.done <- cmd.Wait()
	}()
	l.expect(t, `{"attached": true}`)
	return l
}

// expect waits for the learner to print line.
func (l *pythonLearner) expect(t *testing.T, line string) {
	t.Helper()
	select {
	case got, ok := <-l.lines:
		if !ok || got != line {
			t.Fatalf("the learner printed %q (open %v), want %q", got, ok, line)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the learner did not print %q", line)
	}
}

// waitWritten waits until the learners' files hold n bytes in all.
func waitWritten(t *testing.T, ls []*pythonLearner, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		total := 0
		for _, l := range ls {
			if fi, err := os.Stat(l.out); err == nil {
				total += int(fi.Size())
			}
		}
		if total == n {
			return
		}
		if total > n || time.Now().After(deadline) {
			t.Fatalf("the learners wrote %d bytes, want %d", total, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rows reads the learner's batches back: each sample's body and stamp.
func (l *pythonLearner) rows(t *testing.T, batch, body int) [][2][]byte {
	t.Helper()
	data, err := os.ReadFile(l.out)
	if err != nil {
		t.Fatal(err)
	}
	per := batch * (body + integrity.StampBytes)
	if len(data)%per != 0 {
		t.Fatalf("%d bytes of batches, not a multiple of %d", len(data), per)
	}
	var rows [][2][]byte
	for b := 0; b < len(data); b += per {
		// Leaves in flatten order: the body's block, then the stamps'.
		bodies, stamps := data[b:b+batch*body], data[b+batch*body:b+per]
		for r := range batch {
			rows = append(rows, [2][]byte{bodies[r*body : (r+1)*body], stamps[r*integrity.StampBytes : (r+1)*integrity.StampBytes]})
		}
	}
	return rows
}

// checkRows feeds rows to the checker in each stream's order: batches went
// to several learners, so their order across learners is not the ring's.
func checkRows(t *testing.T, check *integrity.Checker, spec *pytree.Spec, rows [][2][]byte) {
	t.Helper()
	key := func(r [2][]byte) (uint64, uint64) {
		return binary.LittleEndian.Uint64(r[1]), binary.LittleEndian.Uint64(r[1][8:])
	}
	slices.SortFunc(rows, func(a, b [2][]byte) int {
		ia, sa := key(a)
		ib, sb := key(b)
		return cmp.Or(cmp.Compare(ia, ib), cmp.Compare(sa, sb))
	})
	var bodies, stamps bytes.Buffer
	for _, r := range rows {
		bodies.Write(r[0])
		stamps.Write(r[1])
	}
	leaves := make([]pytree.Array, 2)
	for j, b := range [][]byte{bodies.Bytes(), stamps.Bytes()} {
		leaf := spec.Leaves()[j]
		a, err := pytree.NewArray(leaf.DType, append([]int{len(rows)}, leaf.Shape...), b)
		if err != nil {
			t.Fatal(err)
		}
		leaves[j] = a
	}
	check.Batch(leaves)
}

// sendIntegrity has n actors send per integrity samples each over TCP and
// waits for every ack.
func sendIntegrity(t *testing.T, check *integrity.Checker, addr string, body, n, per int) {
	t.Helper()
	var actors sync.WaitGroup
	for i := range n {
		actors.Go(func() {
			c, err := echo.Dial(t.Context(), addr, integrity.Example(body))
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			id := check.StreamID(uint32(i + 1))
			s := integrity.NewSample(body)
			for seq := range per {
				s.Fill(id, uint64(seq))
				if err := c.Send(t.Context(), s.Tree); err != nil {
					t.Error(err)
					return
				}
			}
			if err := c.Wait(t.Context()); err != nil {
				t.Error(err)
			}
			check.Sent(id, uint64(per), uint64(per))
		})
	}
	actors.Wait()
}

// TestFourPythonLearners: four Python learner processes attached to one
// server, 64 actors, the integrity checker: every acknowledged sample
// reaches exactly one learner, once, intact.
func TestFourPythonLearners(t *testing.T) {
	py := packagePython(t)
	const body, batch, actors, per = 64, 16, 64, 100
	socket := filepath.Join(t.TempDir(), "learner.sock")
	s := newServerFor(t, integrity.Example(body), batch, echo.WithLearnerSocket(socket), echo.WithTCP("127.0.0.1:0"))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	var learners []*pythonLearner
	for range 4 {
		learners = append(learners, startPythonLearner(t, py, socket, false))
	}
	check := integrity.NewChecker(body)
	sendIntegrity(t, check, s.Addr().String(), body, actors, per)
	// Every sample is acked, so in the ring; the batches drain to the
	// learners, which end when the server closes.
	waitWritten(t, learners, actors*per*(body+integrity.StampBytes))
	s.Close()
	var rows [][2][]byte
	for i, l := range learners {
		select {
		case err := <-l.done:
			l.done <- err
			if err != nil {
				t.Fatalf("learner %d: %v", i, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("learner %d did not end after Close", i)
		}
		got := l.rows(t, batch, body)
		if len(got) == 0 {
			t.Errorf("learner %d took no batch", i)
		}
		rows = append(rows, got...)
	}
	checkRows(t, check, s.Spec(), rows)
	r := check.Report()
	t.Log(r)
	if !r.OK() || r.Delivered != actors*per || r.Acked != actors*per {
		t.Fatalf("report %v: want every one of %d samples delivered once", r, actors*per)
	}
}

// TestPythonLearnerKilledMidBatch: a learner killed with SIGKILL while it
// holds a batch leaves the server and the actors going; a new learner
// attaches and takes the rest. The held batch is lost (not redelivered).
func TestPythonLearnerKilledMidBatch(t *testing.T) {
	py := packagePython(t)
	const body, batch, actors, per = 64, 8, 8, 40
	socket := filepath.Join(t.TempDir(), "learner.sock")
	s := newServerFor(t, integrity.Example(body), batch, echo.WithLearnerSocket(socket), echo.WithTCP("127.0.0.1:0"), echo.WithNumBuffers(2))
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	holder := startPythonLearner(t, py, socket, true)
	check := integrity.NewChecker(body)
	sent := make(chan struct{})
	go func() {
		sendIntegrity(t, check, s.Addr().String(), body, actors, per)
		close(sent)
	}()
	holder.expect(t, `{"holding": true}`)
	holder.cmd.Process.Signal(syscall.SIGKILL)
	<-holder.done
	holder.done <- nil
	next := startPythonLearner(t, py, socket, false)
	select {
	case <-sent:
	case <-time.After(30 * time.Second):
		t.Fatal("the actors stopped: the dead learner's batch was not released")
	}
	waitWritten(t, []*pythonLearner{holder, next}, actors*per*(body+integrity.StampBytes))
	s.Close()
	<-next.done
	next.done <- nil
	lost := holder.rows(t, batch, body)
	rows := next.rows(t, batch, body)
	if len(lost) != batch || len(rows) != actors*per-batch {
		t.Fatalf("the dead learner wrote %d rows, the next %d: want %d and %d", len(lost), len(rows), batch, actors*per-batch)
	}
	checkRows(t, check, s.Spec(), append(rows, lost...))
	if r := check.Report(); !r.OK() || r.Delivered != actors*per {
		t.Fatalf("report %v", r)
	}
}
