package loadgen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ip runs ip(8).
func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Host is a network namespace of actors, joined to the caller's by a veth
// pair on its own /24: 10.231.i.1 on the caller's side, 10.231.i.2 on its.
type Host struct {
	Name   string // the namespace, under /run/netns
	Server string // the caller's end of the pair: actors dial it
	Addr   string // the namespace's end: the server sees actors here
}

// MakeHosts makes n actor namespaces with ip(8) (root; iproute2). cleanup
// removes them, their pairs with them; call it even when err is not nil.
func MakeHosts(n int) (hosts []Host, cleanup func(), err error) {
	var made []string
	cleanup = func() {
		for _, name := range made {
			ip("netns", "del", name)
		}
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, cleanup, fmt.Errorf("no ip(8) (iproute2): %w", err)
	}
	pid := os.Getpid()
	for i := range n {
		h := Host{
			Name:   fmt.Sprintf("echo-actors-%d-%d", pid, i),
			Server: fmt.Sprintf("10.231.%d.1", i),
			Addr:   fmt.Sprintf("10.231.%d.2", i),
		}
		if err := ip("netns", "add", h.Name); err != nil {
			return nil, cleanup, err
		}
		made = append(made, h.Name)
		// Interface names: at most 15 bytes, unique per process.
		here, there := fmt.Sprintf("ev%dh%d", pid%100000, i), fmt.Sprintf("ev%dn%d", pid%100000, i)
		for _, cmd := range [][]string{
			{"link", "add", here, "type", "veth", "peer", "name", there, "netns", h.Name},
			{"addr", "add", h.Server + "/24", "dev", here},
			{"link", "set", here, "up"},
			{"-n", h.Name, "addr", "add", h.Addr + "/24", "dev", there},
			{"-n", h.Name, "link", "set", there, "up"},
			{"-n", h.Name, "link", "set", "lo", "up"},
		} {
			if err := ip(cmd...); err != nil {
				return nil, cleanup, err
			}
		}
		hosts = append(hosts, h)
	}
	return hosts, cleanup, nil
}

// Dial connects from inside h to the server's port on h.Server. The socket
// is made on a thread switched into h's namespace and keeps the namespace
// once the thread switches back.
func (h Host) Dial(ctx context.Context, port string) (net.Conn, error) {
	target, err := os.Open("/run/netns/" + h.Name)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	runtime.LockOSThread()
	home, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer home.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return nil, os.NewSyscallError("setns", err)
	}
	var d net.Dialer
	conn, dialErr := d.DialContext(ctx, "tcp", net.JoinHostPort(h.Server, port))
	if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread stays locked, and ends with its goroutine rather
		// than run another in the wrong namespace.
		if conn != nil {
			conn.Close()
		}
		return nil, errors.Join(os.NewSyscallError("setns back", err), dialErr)
	}
	runtime.UnlockOSThread()
	return conn, dialErr
}

// DialHosts returns a dialer that connects to port from each of hosts in
// turn.
func DialHosts(hosts []Host, port string) func(context.Context) (net.Conn, error) {
	var next atomic.Uint64
	return func(ctx context.Context) (net.Conn, error) {
		h := hosts[(next.Add(1)-1)%uint64(len(hosts))]
		return h.Dial(ctx, port)
	}
}
