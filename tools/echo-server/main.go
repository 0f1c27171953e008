// Command echo-server runs a server whose batches go to learner processes
// over a Unix-domain socket (docs/learner.md): the engine behind the Python
// package in python/, and for learners in any other language.
//
//	echo-server --spec SPEC.json --batch-size N --learner-socket PATH
//	            [--tcp ADDR] [--unix PATH] [--num-buffers 3] [--num-drainers 8]
//	            [--producer-queue-size 8] [--parent-pid PID]
//
// SPEC.json describes the example tree (pytree.ExampleOf). Once listening
// it prints one line of JSON on stdout, {"learner_socket": PATH, "port": P},
// and serves until SIGTERM or SIGINT, a learner's CLOSE, or the end of the
// process --parent-pid names; then it closes the server and exits 0.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/pytree"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "echo-server:", err)
		os.Exit(1)
	}
}

// parentPoll is how often the server looks whether its parent still runs.
const parentPoll = 100 * time.Millisecond

func run(args []string) error {
	fs := flag.NewFlagSet("echo-server", flag.ContinueOnError)
	spec := fs.String("spec", "", "the example tree, as JSON (docs/learner.md)")
	batch := fs.Int("batch-size", 0, "samples per batch")
	socket := fs.String("learner-socket", "", "Unix socket path for learner processes")
	tcpAddr := fs.String("tcp", "", "TCP address for actors (\"127.0.0.1:0\"); none if empty")
	unixPath := fs.String("unix", "", "Unix socket path for actors; none if empty")
	buffers := fs.Int("num-buffers", echo.DefaultNumBuffers, "batch slabs in the ring")
	drainers := fs.Int("num-drainers", 8, "ingress workers, at most one per core (GOMAXPROCS): echo's threads, but workers past the cores only add wake-ups")
	queue := fs.Int("producer-queue-size", 8, "samples a producer may have queued")
	parent := fs.Int("parent-pid", 0, "exit when this process ends (0: never)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *spec == "" || *socket == "" || *batch < 1 {
		return errors.New("--spec, --learner-socket and --batch-size (at least 1) are required")
	}
	data, err := os.ReadFile(*spec)
	if err != nil {
		return err
	}
	example, err := pytree.ExampleOf(data)
	if err != nil {
		return err
	}
	opts := []echo.Option{
		echo.WithLearnerSocket(*socket), echo.WithNumBuffers(*buffers),
		echo.WithNumDrainers(min(*drainers, runtime.GOMAXPROCS(0))), echo.WithProducerQueueSize(*queue),
	}
	if *tcpAddr != "" {
		opts = append(opts, echo.WithTCP(*tcpAddr))
	}
	if *unixPath != "" {
		opts = append(opts, echo.WithUnix(*unixPath))
	}
	// Before the ready line: a SIGTERM sent once it is out must find the
	// handler, not the default action.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sig)
	srv, err := echo.NewServer(example, *batch, opts...)
	if err != nil {
		return err
	}
	defer srv.Close()
	if err := srv.Start(); err != nil {
		return err
	}
	port := 0
	if a, ok := srv.Addr().(*net.TCPAddr); ok {
		port = a.Port
	}
	line, err := json.Marshal(map[string]any{"learner_socket": *socket, "port": port})
	if err != nil {
		return err
	}
	if _, err := fmt.Println(string(line)); err != nil {
		return err
	}

	tick := time.NewTicker(parentPoll)
	defer tick.Stop()
	for {
		select {
		case <-sig:
			return srv.Close()
		case <-srv.Done():
			return nil
		case <-tick.C:
			// A process whose parent died is adopted: its parent changes.
			if *parent != 0 && os.Getppid() != *parent {
				return srv.Close()
			}
		}
	}
}
