package ringbuf

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// hugePageSize is the size of a transparent huge page on x86-64 and arm64
// with 4 KiB base pages. The mapping is rounded up to a multiple of it so the
// kernel can back every part of the ring with huge pages.
const hugePageSize = 2 << 20

// basePageSize is the smallest page the pre-fault loop touches.
const basePageSize = 4 << 10

// MemoryInfo says how the ring's memory was obtained.
type MemoryInfo struct {
	// Bytes is the size of the mapping (the slabs, rounded up to 2 MiB).
	Bytes int
	// HugePageAdvice is true when madvise(MADV_HUGEPAGE) succeeded.
	HugePageAdvice bool
	// HugePageBytes is how much of the mapping the kernel backs with
	// transparent huge pages right after pre-faulting, read from
	// /proc/self/smaps (AnonHugePages). Zero when the kernel gave base pages.
	HugePageBytes int
	// Prefault names how the mapping was faulted in: "populate"
	// (MADV_POPULATE_WRITE) or "touch" (one write per base page).
	Prefault string
}

// HugePages reports whether any of the ring is backed by huge pages.
func (m MemoryInfo) HugePages() bool { return m.HugePageBytes > 0 }

// mapRing maps size bytes of anonymous memory, advises huge pages and faults
// every page in, so that the hot path never takes a page fault.
func mapRing(size int) ([]byte, MemoryInfo, error) {
	info := MemoryInfo{Bytes: size}
	if avail, ok := memAvailable(); ok && uint64(size) > avail {
		return nil, info, fmt.Errorf("%w: ring needs %d bytes, %d available", ErrTooLarge, size, avail)
	}
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		if errors.Is(err, unix.ENOMEM) {
			return nil, info, fmt.Errorf("%w: mmap %d bytes: %v", ErrTooLarge, size, err)
		}
		return nil, info, os.NewSyscallError("mmap", err)
	}
	// EINVAL (kernel without THP) and similar mean "no huge pages": the ring
	// works the same on base pages, so this is not an error.
	info.HugePageAdvice = unix.Madvise(mem, unix.MADV_HUGEPAGE) == nil

	if err := unix.Madvise(mem, unix.MADV_POPULATE_WRITE); err == nil {
		info.Prefault = "populate"
	} else if errors.Is(err, unix.ENOMEM) {
		_ = unix.Munmap(mem)
		return nil, info, fmt.Errorf("%w: faulting in %d bytes: %v", ErrTooLarge, size, err)
	} else {
		// Kernels before 5.14 lack MADV_POPULATE_WRITE (EINVAL).
		for off := 0; off < len(mem); off += basePageSize {
			mem[off] = 0
		}
		info.Prefault = "touch"
	}
	info.HugePageBytes = anonHugeBytes(mem)
	return mem, info, nil
}

// memAvailable reads MemAvailable from /proc/meminfo, in bytes.
func memAvailable() (uint64, bool) {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, false
	}
	for line := range bytes.Lines(data) {
		if rest, ok := bytes.CutPrefix(line, []byte("MemAvailable:")); ok {
			kb, err := strconv.ParseUint(string(bytes.Fields(rest)[0]), 10, 64)
			if err != nil {
				return 0, false
			}
			return kb << 10, true
		}
	}
	return 0, false
}

// anonHugeBytes finds mem's mapping in /proc/self/smaps and returns its
// AnonHugePages in bytes, or 0 where that cannot be read.
func anonHugeBytes(mem []byte) int {
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return 0
	}
	defer f.Close()
	start := uint64(uintptr(addrOf(mem)))
	sc := bufio.NewScanner(f)
	inRange := false
	for sc.Scan() {
		line := sc.Bytes()
		if lo, hi, ok := parseRange(line); ok {
			inRange = lo <= start && start < hi
			continue
		}
		if !inRange {
			continue
		}
		if rest, ok := bytes.CutPrefix(line, []byte("AnonHugePages:")); ok {
			fields := bytes.Fields(rest)
			if len(fields) == 0 {
				return 0
			}
			kb, err := strconv.Atoi(string(fields[0]))
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

// parseRange parses the "lo-hi perms ..." header line of an smaps entry.
func parseRange(line []byte) (lo, hi uint64, ok bool) {
	span, _, found := bytes.Cut(line, []byte(" "))
	if !found {
		return 0, 0, false
	}
	a, b, found := bytes.Cut(span, []byte("-"))
	if !found {
		return 0, 0, false
	}
	lo, err1 := strconv.ParseUint(string(a), 16, 64)
	hi, err2 := strconv.ParseUint(string(b), 16, 64)
	return lo, hi, err1 == nil && err2 == nil
}
