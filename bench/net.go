package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/pytree"
	"github.com/seed-a9ef92a1/echo/ringbuf"
	"github.com/seed-a9ef92a1/echo/tcp"
	"github.com/seed-a9ef92a1/echo/wire"
)

// The network side of the suite: a load generator of echo Clients, and the
// two servers the epoll ingress is measured against. Both speak the wire
// protocol, so the same clients drive all three.
//
//   - Sink (the ceiling): one goroutine per connection reads the stream
//     into a large buffer and throws it away, acknowledging every whole
//     sample. It is what receiving the bytes costs over this loopback,
//     with nothing stored.
//   - NetConnServer (the baseline): one goroutine per connection, as a
//     straightforward Go server would be written: a bufio.Reader, a whole
//     sample peeked, one slot claimed and the leaves copied into the same
//     kind of ring, then acks written once nothing whole is buffered.

// handshakeFor encodes the handshake for samples shaped like example.
func handshakeFor(example any) ([]byte, []int, error) {
	spec, err := pytree.SpecOf(example)
	if err != nil {
		return nil, nil, err
	}
	h := wire.Handshake{Version: wire.Version1}
	var leafBytes []int
	for _, l := range spec.Leaves() {
		h.Arrays = append(h.Arrays, wire.ArraySpec{DTypeSize: l.DType.Size(), Shape: l.Shape})
		leafBytes = append(leafBytes, l.NumBytes())
	}
	b, err := wire.AppendHandshake(nil, h)
	return b, leafBytes, err
}

// netServer is what Sink and NetConnServer share: a listener, a goroutine
// per connection, and Close.
type netServer struct {
	ln        net.Listener
	handshake []byte
	payload   int
	wg        sync.WaitGroup
	mu        sync.Mutex
	conns     map[net.Conn]struct{}
	received  atomic.Int64 // whole samples
}

func newNetServer(example any, serve func(*netServer, net.Conn)) (*netServer, []int, error) {
	hs, leafBytes, err := handshakeFor(example)
	if err != nil {
		return nil, nil, err
	}
	payload := 0
	for _, n := range leafBytes {
		payload += n
	}
	// The same receive buffer the epoll ingress asks for.
	rcvbuf := min(max(2*payload, tcp.MinReceiveBuffer), tcp.MaxReceiveBuffer)
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf)
		})
		return errors.Join(err, serr)
	}}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	s := &netServer{ln: ln, handshake: hs, conns: map[net.Conn]struct{}{}, payload: payload}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = struct{}{}
			s.mu.Unlock()
			s.wg.Go(func() {
				defer func() {
					s.mu.Lock()
					delete(s.conns, c)
					s.mu.Unlock()
					c.Close()
				}()
				if _, err := c.Write(s.handshake); err != nil {
					return
				}
				serve(s, c)
			})
		}
	})
	return s, leafBytes, nil
}

// Addr returns the listening address.
func (s *netServer) Addr() string { return s.ln.Addr().String() }

// Received returns the number of whole samples received so far.
func (s *netServer) Received() int64 { return s.received.Load() }

// close stops accepting, closes every connection and waits for their
// goroutines.
func (s *netServer) close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Sink reads and discards samples: the ceiling of the network benchmarks.
type Sink struct{ *netServer }

// NewSink starts a sink for samples shaped like example on loopback.
func NewSink(example any) (*Sink, error) {
	s, _, err := newNetServer(example, serveSink)
	if err != nil {
		return nil, err
	}
	return &Sink{s}, nil
}

// Close stops the sink.
func (s *Sink) Close() { s.close() }

func serveSink(s *netServer, c net.Conn) {
	buf := make([]byte, 1<<20)
	acks := make([]byte, 0, 4096)
	pending := 0 // bytes of the current partial sample
	for {
		n, err := c.Read(buf)
		pending += n
		whole := pending / s.payload
		pending -= whole * s.payload
		if whole > 0 {
			s.received.Add(int64(whole))
			for whole > 0 {
				k := min(whole, cap(acks))
				if _, err := c.Write(wire.AppendAcks(acks[:0], k)); err != nil {
					return
				}
				whole -= k
			}
		}
		if err != nil {
			return
		}
	}
}

// NetConnServer is the goroutine-per-connection baseline: the same ring as
// the echo server, fed through net.Conn and bufio.
type NetConnServer struct {
	*netServer
	ring      *ringbuf.Ring
	leafBytes []int
	consumed  atomic.Int64 // batches taken by the consumer
	consumer  sync.WaitGroup
}

// NewNetConnServer starts the baseline for samples shaped like example, with
// a ring of numBuffers slabs of batch samples and a consumer goroutine that
// takes batches as fast as they complete.
func NewNetConnServer(example any, batch, numBuffers int) (*NetConnServer, error) {
	_, leafBytes, err := handshakeFor(example)
	if err != nil {
		return nil, err
	}
	ring, err := ringbuf.New(ringbuf.Layout{BatchSize: batch, NumSlabs: numBuffers, LeafBytes: leafBytes})
	if err != nil {
		return nil, err
	}
	n := &NetConnServer{ring: ring, leafBytes: leafBytes}
	n.netServer, _, err = newNetServer(example, n.serve)
	if err != nil {
		ring.Free()
		return nil, err
	}
	n.consumer.Go(func() {
		for {
			if _, err := ring.Next(context.Background()); err != nil {
				return
			}
			n.consumed.Add(1)
		}
	})
	return n, nil
}

// Close stops the baseline and frees its ring.
func (n *NetConnServer) Close() {
	n.ring.Close()
	n.close()
	n.consumer.Wait()
	n.ring.Free()
}

func (n *NetConnServer) serve(s *netServer, c net.Conn) {
	br := bufio.NewReaderSize(c, max(64<<10, s.payload))
	acks := make([]byte, 0, 4096)
	owed := 0
	for {
		sample, err := br.Peek(s.payload)
		if err != nil {
			return // EOF or error: a partial sample is dropped
		}
		res, ok := reserve(n.ring)
		if !ok {
			return
		}
		off := 0
		for j, size := range n.leafBytes {
			copy(n.ring.Slot(res.Start, j), sample[off:off+size])
			off += size
		}
		n.ring.Commit(res)
		br.Discard(s.payload)
		s.received.Add(1)
		owed++
		if br.Buffered() < s.payload || owed == cap(acks) {
			if _, err := c.Write(wire.AppendAcks(acks[:0], owed)); err != nil {
				return
			}
			owed = 0
		}
	}
}

// reserve claims one slot, waiting while the ring is full.
func reserve(r *ringbuf.Ring) (ringbuf.Reservation, bool) {
	for {
		res, _, ok := r.Reserve(1)
		if ok {
			return res, true
		}
		if r.WaitSpace(context.Background()) != nil { // until Close
			return res, false
		}
	}
}

// DialClients connects n echo clients to addr, with opts. Servers that
// speak version 1 alone (echo's, the sink, NetConnServer) take
// echo.WithWireVersion(1), so that no Dial waits out version 2's probe.
func DialClients(ctx context.Context, addr string, example any, n int, opts ...echo.ClientOption) ([]*echo.Client, error) {
	clients := make([]*echo.Client, 0, n)
	for range n {
		c, err := echo.Dial(ctx, addr, example, opts...)
		if err != nil {
			CloseClients(clients)
			return nil, err
		}
		clients = append(clients, c)
	}
	return clients, nil
}

// CloseClients closes every client.
func CloseClients(clients []*echo.Client) {
	for _, c := range clients {
		c.Close()
	}
}

// SendAll has every client send perClient copies of sample from its own
// goroutine and wait for their acks; it returns the first error. With
// group 1 each sample is one Client.Send (one writev), as an actor with one
// environment sends; with group g > 1 samples go g at a time through
// Client.SendBatch, as an actor stepping g environments does.
func SendAll(ctx context.Context, clients []*echo.Client, sample any, perClient, group int) error {
	var wg sync.WaitGroup
	errs := make([]error, len(clients))
	trees := make([]any, max(1, group))
	for i := range trees {
		trees[i] = sample
	}
	for i, c := range clients {
		wg.Go(func() {
			for k := 0; k < perClient; {
				var err error
				if g := min(len(trees), perClient-k); g == 1 {
					err = c.Send(ctx, sample)
					k++
				} else {
					err = c.SendBatch(ctx, trees[:g])
					k += g
				}
				if err != nil {
					errs[i] = fmt.Errorf("client %d, sample %d: %w", i, k, err)
					return
				}
			}
			errs[i] = c.Wait(ctx)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// SettleTCP waits (up to 5 s) until the kernel's TCP socket memory, the
// "mem" of /proc/net/sockstat in pages, is back under 4 MiB, so that one
// network measurement does not pay for the memory pressure the previous
// one left behind. Where the file cannot be read it returns at once.
func SettleTCP() {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		pages, ok := tcpMemPages()
		if !ok || pages*4096 < 4<<20 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tcpMemPages reads the TCP line of /proc/net/sockstat.
func tcpMemPages() (int, bool) {
	b, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "TCP:") {
			continue
		}
		f := strings.Fields(line)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "mem" {
				n, err := strconv.Atoi(f[i+1])
				return n, err == nil
			}
		}
	}
	return 0, false
}

// TCPTimeouts returns the kernel's count of TCP retransmission timeouts
// (TcpExt TCPTimeouts in /proc/net/netstat), -1 where it cannot be read.
// On loopback a timeout means a segment was dropped, almost always for
// socket memory, and costs at least 200 ms.
func TCPTimeouts() int64 {
	b, err := os.ReadFile("/proc/net/netstat")
	if err != nil {
		return -1
	}
	lines := strings.Split(string(b), "\n")
	for i := 0; i+1 < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "TcpExt:") || !strings.HasPrefix(lines[i+1], "TcpExt:") {
			continue
		}
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		for j, n := range names {
			if n == "TCPTimeouts" && j < len(values) {
				v, err := strconv.ParseInt(values[j], 10, 64)
				if err == nil {
					return v
				}
			}
		}
	}
	return -1
}

// dialRaw connects a plain net.Conn and reads past the handshake.
func dialRaw(addr string) (net.Conn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if _, err := wire.ReadHandshake(c, wire.Limits{}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}
