// Package sockio is the project's one layer of system calls on raw,
// non-blocking stream sockets: the ingress workers, the acceptor and the
// client all read and write through it.
//
// Every call here has the same (n, err) contract, stated once:
//
//   - n > 0, err == nil: n bytes moved.
//   - n == 0, err == nil: the call would block (EAGAIN); wait for the
//     socket's readiness and call again.
//   - err != nil: the connection is finished and the caller closes it.
//     Reads return io.EOF when the peer closed its side in order; every
//     other error is an *os.SyscallError naming the call.
//
// EINTR is retried inside every call. Nothing here allocates: the vector
// calls go to the raw system call, since unix.Readv and unix.Writev build
// their iovecs on the heap.
package sockio

import (
	"io"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MaxIovecs is the most iovecs one readv or writev takes (IOV_MAX on
// Linux); callers pass at most this many.
const MaxIovecs = 1024

// Read is read(2).
func Read(fd int, b []byte) (int, error) {
	for {
		n, err := unix.Read(fd, b)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0, nil
		case err != nil:
			return 0, os.NewSyscallError("read", err)
		case n == 0 && len(b) > 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

// Peek is Read without taking the bytes: they stay queued for the next
// read (recv with MSG_PEEK).
func Peek(fd int, b []byte) (int, error) {
	for {
		n, _, err := unix.Recvfrom(fd, b, unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0, nil
		case err != nil:
			return 0, os.NewSyscallError("recv", err)
		case n == 0 && len(b) > 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

// Write is write(2).
func Write(fd int, b []byte) (int, error) {
	for {
		n, err := unix.Write(fd, b)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0, nil
		case err != nil:
			return 0, os.NewSyscallError("write", err)
		}
		return n, nil
	}
}

// Readv is readv(2) of at most MaxIovecs iovecs, each of more than zero
// bytes.
func Readv(fd int, iov []unix.Iovec) (int, error) {
	if len(iov) == 0 {
		return 0, nil
	}
	n, again, err := vector(unix.SYS_READV, fd, iov)
	switch {
	case err != nil:
		return 0, os.NewSyscallError("readv", err)
	case again:
		return 0, nil
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Writev is writev(2) of at most MaxIovecs iovecs.
func Writev(fd int, iov []unix.Iovec) (int, error) {
	if len(iov) == 0 {
		return 0, nil
	}
	n, _, err := vector(unix.SYS_WRITEV, fd, iov)
	if err != nil {
		return 0, os.NewSyscallError("writev", err)
	}
	return n, nil
}

// vector issues readv or writev on the first MaxIovecs iovecs, retrying
// EINTR; again reports EAGAIN.
func vector(trap uintptr, fd int, iov []unix.Iovec) (n int, again bool, err error) {
	iov = iov[:min(len(iov), MaxIovecs)]
	for {
		r, _, e := unix.Syscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
		switch e {
		case 0:
			return int(r), false, nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, true, nil
		default:
			return 0, false, e
		}
	}
}

// Advance drops the first n bytes from iov, moving the base of the first
// iovec it keeps, and returns what is left.
func Advance(iov []unix.Iovec, n int) []unix.Iovec {
	for n > 0 && len(iov) > 0 {
		if uint64(n) < iov[0].Len {
			iov[0].Base = (*byte)(unsafe.Add(unsafe.Pointer(iov[0].Base), n))
			iov[0].Len -= uint64(n)
			return iov
		}
		n -= int(iov[0].Len)
		iov = iov[1:]
	}
	return iov
}

// Queued returns the bytes waiting in fd's receive queue (FIONREAD, which
// Linux calls SIOCINQ). With SO_OOBINLINE off, TCP stops the count at an
// urgent mark; the acceptor turns it on for every socket it serves.
func Queued(fd int) (int, error) {
	// The ioctl writes a C int.
	var v int32
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCINQ, uintptr(unsafe.Pointer(&v)))
	if e != 0 {
		return 0, os.NewSyscallError("ioctl FIONREAD", e)
	}
	return int(v), nil
}

// Drain reads and throws away what fd's receive queue holds now, into
// scratch, and returns how many bytes that was. It stops at EAGAIN, at the
// end of the stream or at an error.
func Drain(fd int, scratch []byte) int {
	total := 0
	for {
		n, err := Read(fd, scratch)
		if n == 0 || err != nil {
			return total
		}
		total += n
	}
}
