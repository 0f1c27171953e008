package tcp

import (
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// The SO_RCVBUF set on TCP listening sockets, which accepted sockets
// inherit before the TCP window is negotiated: twice the sample, at least
// MinReceiveBuffer and at most MaxReceiveBuffer, unless TCP is given a size.
// With the kernel's autotuning instead (128 KiB to start), a sample of ~128
// KiB or more never fits whole in the window, and a reader that waits for
// whole samples deadlocks; set after accept, it comes too late. Linux caps
// it at net.core.rmem_max.
//
// Bigger is not better: every connection may fill its buffer, and the
// kernel charges about twice SO_RCVBUF per socket against net.ipv4.tcp_mem.
// Measured here with 256 clients of 1 MB samples, 4 MiB buffers pushed the
// kernel into memory pressure (hundreds of dropped segments and 200 ms
// retransmission timeouts per run); 2 MiB buffers had none.
const (
	MinReceiveBuffer = 1 << 20
	MaxReceiveBuffer = 4 << 20
)

// AckSendBuffer is the SO_SNDBUF of accepted TCP sockets. The server sends
// only the handshake and one byte per sample, so a small buffer suffices,
// and it bounds the kernel memory a peer that never reads its acks can pin.
const AckSendBuffer = 64 << 10

// listenBacklog is the accept queue length asked of listen(2); the kernel
// caps it at net.core.somaxconn.
const listenBacklog = 4096

// gateFactor: a connection reads whole samples straight from the kernel
// only while this many of them fit in its receive window, so that the
// sender can stream the next sample while the worker reads one. Samples
// that fill the window alone stall the gate (measured: 4 MiB samples in a
// 4 MiB buffer collapse to 0.16 GB/s) and are staged instead.
const gateFactor = 2

// Transport says where a server listens for actors: a TCP address or a
// Unix-domain socket path. Make one with TCP or Unix.
type Transport struct {
	network string // "tcp" or "unix"
	addr    string
	rcvbuf  int
}

// String returns the transport as Dial addresses it: "host:port", or
// "unix:" and the path.
func (t Transport) String() string {
	if t.network == "unix" {
		return "unix:" + t.addr
	}
	return t.addr
}

// Validate checks the address without binding it: a TCP address must
// resolve, with a port; a Unix path must be non-empty and fit in a socket
// address.
func (t Transport) Validate() error {
	switch t.network {
	case "tcp":
		if _, err := net.ResolveTCPAddr("tcp", t.addr); err != nil {
			return fmt.Errorf("tcp: address %q: %w", t.addr, err)
		}
	case "unix":
		// sun_path holds 108 bytes with the terminating NUL.
		if t.addr == "" || len(t.addr) > 107 {
			return fmt.Errorf("tcp: unix socket path %q: must be 1 to 107 bytes", t.addr)
		}
	default:
		return fmt.Errorf("tcp: no transport (use TCP or Unix)")
	}
	return nil
}

// Listen binds and listens for connections that will send samples of
// payload bytes, returning a non-blocking, close-on-exec listening socket.
func (t Transport) Listen(payload int) (*Listener, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	if t.network == "unix" {
		return listenUnix(t.addr)
	}
	return listenTCP(t.addr, t.rcvbuf, payload)
}

// Listener is a listening socket of some transport.
type Listener struct {
	fd      int
	addr    net.Addr
	prepare func(fd, payload int) (gated bool, err error)
	cleanup func() error
	// stagePartials: a gated connection stages a partial sample as soon
	// as it arrives (Unix sockets; see conn.go).
	stagePartials bool
}

// Addr returns the address the listener is bound to (with the port the
// kernel chose, for port 0).
func (l *Listener) Addr() net.Addr { return l.addr }

// Close closes the socket and removes what the transport left behind.
// Serve's listeners are the pool's to close.
func (l *Listener) Close() error {
	err := wrap("close listener", unix.Close(l.fd))
	if l.cleanup != nil {
		err = errors.Join(err, l.cleanup())
	}
	return err
}

// TCP returns a transport listening on addr, in Go's convention: "host:port",
// where an empty host listens on every interface (IPv4 and IPv6) and port 0
// lets the kernel choose. Listen on "127.0.0.1:port" to accept only local
// actors. receiveBuffer is the SO_RCVBUF asked for each connection; zero
// sizes it to the samples (see MinReceiveBuffer).
func TCP(addr string, receiveBuffer int) Transport {
	return Transport{network: "tcp", addr: addr, rcvbuf: receiveBuffer}
}

func listenTCP(address string, rcvbuf, payload int) (*Listener, error) {
	if rcvbuf <= 0 {
		rcvbuf = min(max(2*payload, MinReceiveBuffer), MaxReceiveBuffer)
	}
	ta, err := net.ResolveTCPAddr("tcp", address)
	if err != nil {
		return nil, fmt.Errorf("tcp: listen %q: %w", address, err)
	}
	var fd int
	var sa unix.Sockaddr
	if ip4 := ta.IP.To4(); ip4 != nil {
		fd, err = socket(unix.AF_INET)
		sa = &unix.SockaddrInet4{Port: ta.Port, Addr: [4]byte(ip4)}
	} else {
		// No host or an IPv6 one. With no host, one dual-stack socket
		// takes IPv4 too (echo's Python client dials IPv4 only), and a
		// kernel without IPv6 falls back to IPv4.
		fd, err = socket(unix.AF_INET6)
		if err != nil && len(ta.IP) == 0 && errors.Is(err, unix.EAFNOSUPPORT) {
			fd, err = socket(unix.AF_INET)
			sa = &unix.SockaddrInet4{Port: ta.Port}
		} else {
			s6 := &unix.SockaddrInet6{Port: ta.Port}
			copy(s6.Addr[:], ta.IP.To16())
			if ta.Zone != "" {
				if ifi, e := net.InterfaceByName(ta.Zone); e == nil {
					s6.ZoneId = uint32(ifi.Index)
				}
			}
			sa = s6
			if err == nil && len(ta.IP) == 0 {
				err = wrap("setsockopt IPV6_V6ONLY", unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0))
			}
		}
	}
	if err != nil {
		if fd > 0 {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("tcp: listen %q: %w", address, err)
	}
	err = errors.Join(
		wrap("setsockopt SO_REUSEADDR", unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)),
		wrap("setsockopt SO_RCVBUF", unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf)))
	if err == nil {
		err = wrap("bind", unix.Bind(fd, sa))
	}
	if err == nil {
		err = wrap("listen", unix.Listen(fd, listenBacklog))
	}
	var bound unix.Sockaddr
	if err == nil {
		bound, err = unix.Getsockname(fd)
		err = wrap("getsockname", err)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("tcp: listen %q: %w", address, err)
	}
	var addr *net.TCPAddr
	switch b := bound.(type) {
	case *unix.SockaddrInet4:
		addr = &net.TCPAddr{IP: net.IP(b.Addr[:]).To16(), Port: b.Port}
	case *unix.SockaddrInet6:
		addr = &net.TCPAddr{IP: net.IP(b.Addr[:]), Port: b.Port, Zone: ta.Zone}
	}
	return &Listener{fd: fd, addr: addr, prepare: prepareTCP}, nil
}

// prepareTCP configures an accepted TCP socket: no Nagle delay on acks,
// and the whole-sample gate when the inherited receive buffer holds
// gateFactor samples. (Urgent data was made inline at accept.)
func prepareTCP(fd, payload int) (bool, error) {
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
		return false, wrap("setsockopt TCP_NODELAY", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, AckSendBuffer); err != nil {
		return false, wrap("setsockopt SO_SNDBUF", err)
	}
	// The kernel reports twice the size asked for; half of that is what
	// the window can use.
	buf, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
	if err != nil {
		return false, wrap("getsockopt SO_RCVBUF", err)
	}
	if gateFactor*payload > buf/2 {
		return false, nil
	}
	// Readable only once a whole sample is queued: no wake-up per segment.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, payload); err != nil {
		return false, wrap("setsockopt SO_RCVLOWAT", err)
	}
	return true, nil
}

// Unix returns a transport listening on a Unix-domain stream socket at
// path. Listen fails if path exists; closing the listener removes it.
func Unix(path string) Transport { return Transport{network: "unix", addr: path} }

func listenUnix(path string) (*Listener, error) {
	fd, err := socket(unix.AF_UNIX)
	if err == nil {
		err = wrap("bind", unix.Bind(fd, &unix.SockaddrUnix{Name: path}))
		if err == nil {
			if err = wrap("listen", unix.Listen(fd, listenBacklog)); err != nil {
				os.Remove(path)
			}
		}
		if err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("tcp: listen unix %q: %w", path, err)
	}
	return &Listener{
		fd:            fd,
		addr:          &net.UnixAddr{Name: path, Net: "unix"},
		prepare:       prepareUnix,
		cleanup:       func() error { return os.Remove(path) },
		stagePartials: true,
	}, nil
}

// prepareUnix decides the gate of an accepted Unix socket. A Unix stream
// charges queued bytes to the sender's send buffer, so the gate assumes the
// peer's is the default, the same size as this end's.
func prepareUnix(fd, payload int) (bool, error) {
	buf, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF)
	if err != nil {
		return false, wrap("getsockopt SO_SNDBUF", err)
	}
	return gateFactor*payload <= buf/2, nil
}

// oobInline keeps out-of-band bytes in the stream; the acceptor sets it on
// every socket it accepts, before the socket's first write: with SO_OOBINLINE off,
// TCP's urgent byte stops FIONREAD at its mark and an AF_UNIX MSG_OOB byte
// is counted by FIONREAD but skipped by readv. Peers are untrusted.
func oobInline(fd int) error {
	return wrap("setsockopt SO_OOBINLINE", unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_OOBINLINE, 1))
}

// socket makes a non-blocking, close-on-exec stream socket.
func socket(family int) (int, error) {
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	return fd, nil
}

// wrap names a syscall error, passing nil through.
func wrap(name string, err error) error {
	if err == nil {
		return nil
	}
	return os.NewSyscallError(name, err)
}
