package sockio

import (
	"bytes"
	"errors"
	"io"
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// socketPair returns a connected pair of non-blocking Unix stream sockets,
// closed at the end of the test (unless the test closes one first).
func socketPair(t testing.TB) (int, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Close(fds[0])
		unix.Close(fds[1])
	})
	return fds[0], fds[1]
}

// iovecs returns one iovec per buffer.
func iovecs(bufs ...[]byte) []unix.Iovec {
	iov := make([]unix.Iovec, len(bufs))
	for i, b := range bufs {
		iov[i] = unix.Iovec{Base: &b[0], Len: uint64(len(b))}
	}
	return iov
}

// wantSyscallError checks err is an *os.SyscallError naming call.
func wantSyscallError(t *testing.T, err error, call string) {
	t.Helper()
	var se *os.SyscallError
	if !errors.As(err, &se) || se.Syscall != call {
		t.Errorf("error %v, want an *os.SyscallError of %s", err, call)
	}
}

// fillUp writes to fd until the socket takes no more and returns how much
// it took.
func fillUp(t *testing.T, fd int) int {
	t.Helper()
	chunk := make([]byte, 64<<10)
	total := 0
	for {
		n, err := Write(fd, chunk)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return total
		}
		total += n
	}
}

// TestReadWriteContract walks Read and Write through every outcome of
// the (n, err) contract.
func TestReadWriteContract(t *testing.T) {
	a, b := socketPair(t)
	buf := make([]byte, 16)
	if n, err := Read(a, buf); n != 0 || err != nil {
		t.Errorf("Read with nothing queued = %d, %v; want 0, nil (EAGAIN)", n, err)
	}
	if n, err := Write(b, []byte("hello")); n != 5 || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if n, err := Read(a, buf); n != 5 || err != nil || string(buf[:5]) != "hello" {
		t.Errorf("Read = %d %q, %v; want hello", n, buf[:n], err)
	}
	if n, err := Read(a, nil); n != 0 || err != nil {
		t.Errorf("Read into nothing = %d, %v; want 0, nil", n, err)
	}

	total := fillUp(t, b)
	if total == 0 {
		t.Fatal("a fresh socket took no bytes")
	}
	if n, err := Write(b, []byte("x")); n != 0 || err != nil {
		t.Errorf("Write to a full socket = %d, %v; want 0, nil (EAGAIN)", n, err)
	}
	if got := Drain(a, make([]byte, 4096)); got != total {
		t.Errorf("Drain = %d, want the %d bytes written", got, total)
	}
	if n, _ := Queued(a); n != 0 {
		t.Errorf("%d bytes queued after Drain", n)
	}

	unix.Close(b)
	if n, err := Read(a, buf); n != 0 || err != io.EOF {
		t.Errorf("Read after the peer closed = %d, %v; want 0, io.EOF", n, err)
	}
	_, err := Write(a, []byte("x"))
	wantSyscallError(t, err, "write") // EPIPE
	_, err = Read(-1, buf)
	wantSyscallError(t, err, "read")
	_, err = Write(-1, buf)
	wantSyscallError(t, err, "write")
}

// TestVectorContract does the same for Readv and Writev, and checks that
// they scatter and gather in order and take at most MaxIovecs iovecs.
func TestVectorContract(t *testing.T) {
	a, b := socketPair(t)
	x, y := make([]byte, 3), make([]byte, 4)
	if n, err := Readv(a, iovecs(x, y)); n != 0 || err != nil {
		t.Errorf("Readv with nothing queued = %d, %v; want 0, nil (EAGAIN)", n, err)
	}
	if n, err := Readv(a, nil); n != 0 || err != nil {
		t.Errorf("Readv of no iovecs = %d, %v", n, err)
	}
	if n, err := Writev(b, nil); n != 0 || err != nil {
		t.Errorf("Writev of no iovecs = %d, %v", n, err)
	}
	if n, err := Writev(b, iovecs([]byte("abc"), []byte("defg"))); n != 7 || err != nil {
		t.Fatalf("Writev = %d, %v", n, err)
	}
	if n, err := Readv(a, iovecs(x, y)); n != 7 || err != nil || string(x)+string(y) != "abcdefg" {
		t.Errorf("Readv = %d, %v: %q %q", n, err, x, y)
	}

	// More than MaxIovecs: the first MaxIovecs go.
	bytes1 := bytes.Repeat([]byte{1}, MaxIovecs+500)
	many := make([]unix.Iovec, len(bytes1))
	for i := range many {
		many[i] = unix.Iovec{Base: &bytes1[i], Len: 1}
	}
	if n, err := Writev(b, many); n != MaxIovecs || err != nil {
		t.Errorf("Writev of %d iovecs = %d, %v; want %d", len(many), n, err, MaxIovecs)
	}
	if n, _ := Queued(a); n != MaxIovecs {
		t.Errorf("Queued = %d, want %d", n, MaxIovecs)
	}
	Drain(a, make([]byte, 4096))

	fillUp(t, b)
	if n, err := Writev(b, iovecs([]byte("x"))); n != 0 || err != nil {
		t.Errorf("Writev to a full socket = %d, %v; want 0, nil (EAGAIN)", n, err)
	}
	Drain(a, make([]byte, 4096))
	unix.Close(b)
	if n, err := Readv(a, iovecs(x, y)); n != 0 || err != io.EOF {
		t.Errorf("Readv after the peer closed = %d, %v; want 0, io.EOF", n, err)
	}
	_, err := Readv(-1, iovecs(x))
	wantSyscallError(t, err, "readv")
	_, err = Writev(-1, iovecs(x))
	wantSyscallError(t, err, "writev")
	_, err = Queued(-1)
	wantSyscallError(t, err, "ioctl FIONREAD")
	if n := Drain(-1, x); n != 0 {
		t.Errorf("Drain of a bad fd = %d", n)
	}
}

func TestAdvance(t *testing.T) {
	mem := make([]byte, 12)
	base := func(iov unix.Iovec) int {
		return int(uintptr(unsafe.Pointer(iov.Base)) - uintptr(unsafe.Pointer(&mem[0])))
	}
	for _, tc := range []struct {
		n    int
		want [][2]int // base offset and length of each iovec left
	}{
		{0, [][2]int{{0, 3}, {3, 4}, {7, 5}}},
		{2, [][2]int{{2, 1}, {3, 4}, {7, 5}}},
		{3, [][2]int{{3, 4}, {7, 5}}},
		{8, [][2]int{{8, 4}}},
		{12, nil},
		{100, nil},
	} {
		got := Advance(iovecs(mem[0:3], mem[3:7], mem[7:12]), tc.n)
		var left [][2]int
		for _, v := range got {
			left = append(left, [2]int{base(v), int(v.Len)})
		}
		if len(left) != len(tc.want) {
			t.Errorf("Advance(%d) left %v, want %v", tc.n, left, tc.want)
			continue
		}
		for i := range left {
			if left[i] != tc.want[i] {
				t.Errorf("Advance(%d) left %v, want %v", tc.n, left, tc.want)
				break
			}
		}
	}
}

// TestDrainStopsAtEnd checks that Drain counts what was queued before the
// peer's close and stops there.
func TestDrainStopsAtEnd(t *testing.T) {
	a, b := socketPair(t)
	if _, err := Write(b, make([]byte, 10000)); err != nil {
		t.Fatal(err)
	}
	unix.Close(b)
	if got := Drain(a, make([]byte, 4096)); got != 10000 {
		t.Errorf("Drain = %d, want 10000", got)
	}
}
