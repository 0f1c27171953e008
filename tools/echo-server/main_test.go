package main

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/seed-a9ef92a1/echo/wire"
)

// TestMain runs the command itself when ECHO_SERVER_MAIN is set, so that
// the tests can start it as a process of its own.
func TestMain(m *testing.M) {
	if os.Getenv("ECHO_SERVER_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

const testSpec = `{"dict":[["obs",{"leaf":{"dtype":"float32","shape":[4]}}],["done",{"leaf":{"dtype":"bool","shape":[]}}]]}`

// start runs echo-server with args after a spec and a learner socket in
// dir, and returns the process and the socket once it has said it listens.
func start(t *testing.T, extra ...string) (*exec.Cmd, string) {
	t.Helper()
	dir := t.TempDir()
	spec := filepath.Join(dir, "spec.json")
	if err := os.WriteFile(spec, []byte(testSpec), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "learner.sock")
	args := append([]string{"--spec", spec, "--batch-size", "2", "--learner-socket", sock, "--tcp", "127.0.0.1:0"}, extra...)
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "ECHO_SERVER_MAIN=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line := bufio.NewScanner(out)
	var hello struct {
		LearnerSocket string `json:"learner_socket"`
		Port          int    `json:"port"`
	}
	if !line.Scan() || json.Unmarshal(line.Bytes(), &hello) != nil || hello.LearnerSocket != sock || hello.Port == 0 {
		t.Fatalf("echo-server said %q", line.Text())
	}
	return cmd, sock
}

// waitExit waits for the process to exit and returns its status.
func waitExit(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(10 * time.Second):
		t.Fatal("echo-server did not exit")
		return -1
	}
}

// TestSIGTERMExitsCleanly: the server serves a learner, and SIGTERM ends
// it with status 0, its socket removed.
func TestSIGTERMExitsCleanly(t *testing.T) {
	cmd, sock := start(t)
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(wire.AppendLearnerHello(nil)); err != nil {
		t.Fatal(err)
	}
	head := make([]byte, wire.FrameHeaderLen)
	if _, err := c.Read(head); err != nil || head[4] != wire.FrameWelcome {
		t.Fatalf("welcome header % x, %v", head, err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if code := waitExit(t, cmd); code != 0 {
		t.Fatalf("exit status %d after SIGTERM", code)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("the learner socket is still there: %v", err)
	}
}

// TestParentDeathEnds: with --parent-pid, the server exits once that
// process is gone (here: a pid it never had as parent, as after its
// parent's death).
func TestParentDeathEnds(t *testing.T) {
	cmd, _ := start(t, "--parent-pid", "1")
	if code := waitExit(t, cmd); code != 0 {
		t.Fatalf("exit status %d", code)
	}
}

// TestBadArguments: a missing spec or socket is an error, status 1.
func TestBadArguments(t *testing.T) {
	if err := run([]string{"--batch-size", "2"}); err == nil {
		t.Fatal("run without --spec and --learner-socket succeeded")
	}
	dir := t.TempDir()
	spec := filepath.Join(dir, "spec.json")
	os.WriteFile(spec, []byte(`{"leaf":{"dtype":"float128"}}`), 0o644)
	if err := run([]string{"--spec", spec, "--batch-size", "2", "--learner-socket", filepath.Join(dir, "s")}); err == nil {
		t.Fatal("run with a bad spec succeeded")
	}
}
