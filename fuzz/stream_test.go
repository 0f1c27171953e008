package fuzz

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/seed-a9ef92a1/echo"
	"github.com/seed-a9ef92a1/echo/wire"
)

// streamServer is FuzzLiveStream's server: one per process, listening on
// TCP and on a Unix socket, shared by every input.
var streamServer = sync.OnceValues(func() (*echo.Server, error) {
	dir, err := os.MkdirTemp("", "echo-fuzz-")
	if err != nil {
		return nil, err
	}
	srv, err := echo.NewServer(liveExample(), 1, echo.WithNumBuffers(512),
		echo.WithTCP("127.0.0.1:0"), echo.WithUnix(filepath.Join(dir, "s")))
	if err == nil {
		err = srv.Start()
	}
	return srv, err
})

// FuzzLiveStream drives a live connection, over TCP or a Unix socket, the
// way an odd or hostile peer can: the stream goes out in writes of 1 to 64
// bytes as plan says, some of whose first bytes are sent out of band
// (MSG_OOB), and the connection is half-closed. Whatever the pattern, the
// server must ack exactly the whole samples the stream holds, deliver
// exactly those, byte for byte and in order, and drop the partial rest:
// out-of-band bytes are bytes of the stream, and no write pattern may
// wedge the reader.
func FuzzLiveStream(f *testing.F) {
	f.Add([]byte{}, []byte{}, false)
	f.Add(bytes.Repeat([]byte{0x5A}, 4*livePayload+3), []byte{0, 0x80, 63, 0x85, 1}, false)
	f.Add(bytes.Repeat([]byte{0xC3}, 4*livePayload+3), []byte{0, 0x80, 63, 0x85, 1}, true)
	f.Add(bytes.Repeat([]byte{1, 2, 3}, 40), []byte{0x80 | 17, 0x80, 0x80, 5}, true)
	f.Fuzz(streamOne)
}

func streamOne(t *testing.T, stream, plan []byte, overUnix bool) {
	if len(stream) > 64*livePayload {
		stream = stream[:64*livePayload]
	}
	stream = notProbe(stream)
	s, err := streamServer()
	if err != nil {
		t.Fatal(err)
	}
	network, addr := "tcp", s.Addrs()[0].String()
	if overUnix {
		network, addr = "unix", s.Addrs()[1].String()
	}
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := wire.ReadHandshake(c, wire.Limits{}); err != nil {
		t.Fatal(err)
	}
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	for off, k := 0, 0; off < len(stream); k++ {
		step := byte(0)
		if len(plan) > 0 {
			step = plan[k%len(plan)]
		}
		n := min(1+int(step&63), len(stream)-off)
		piece := stream[off : off+n]
		if step&0x80 != 0 {
			if err := sendOOB(raw, piece[:1]); err != nil {
				t.Fatalf("MSG_OOB at byte %d: %v", off, err)
			}
			piece = piece[1:]
		}
		if len(piece) > 0 {
			if _, err := c.Write(piece); err != nil {
				t.Fatalf("write at byte %d: %v", off, err)
			}
		}
		off += n
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	wantWholeSamples(t, s, c, stream)
}

// sendOOB sends b (one byte) as out-of-band data.
func sendOOB(raw syscall.RawConn, b []byte) error {
	var serr error
	err := raw.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, unix.MSG_OOB, nil)
		return serr != unix.EAGAIN
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("sendto: %w", serr)
	}
	return nil
}
