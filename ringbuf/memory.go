package ringbuf

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// hugePageSize is the size of a transparent huge page on x86-64 and arm64
// with 4 KiB base pages, and of the hugetlbfs pages a shared ring asks for
// (MFD_HUGE_2MB). The mapping is rounded up to a multiple of it so the
// kernel can back every part of the ring with huge pages.
const hugePageSize = 2 << 20

// basePageSize is the smallest page the pre-fault loop touches.
const basePageSize = 4 << 10

// memfdName names a shared ring's memfd; /proc/PID/maps shows it as
// "/memfd:echo-ring (deleted)".
const memfdName = "echo-ring"

// Files the shared ring reads to choose its pages.
const (
	meminfoPath = "/proc/meminfo"
	// shmemEnabledPath is the transparent huge page policy of shmem, which
	// memfds are made of: the kernel's default is never.
	shmemEnabledPath = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"
	// shmemEnabled2MPath overrides it for 2 MiB pages on kernels with
	// multi-size THP for shmem (6.11 on), unless it says inherit.
	shmemEnabled2MPath = "/sys/kernel/mm/transparent_hugepage/hugepages-2048kB/shmem_enabled"
)

// The kinds of memory a ring lives in, as MemoryInfo.Kind names them.
const (
	// KindAnonymous is a private anonymous mapping, advised for
	// transparent huge pages (MADV_HUGEPAGE): the default, which no other
	// process can map.
	KindAnonymous = "anonymous"
	// KindMemfdHugeTLB is a memfd on 2 MiB hugetlbfs pages (MFD_HUGETLB),
	// taken from the pages the host reserved (vm.nr_hugepages). Chosen when
	// enough of them are free for the whole ring.
	KindMemfdHugeTLB = "memfd-hugetlb"
	// KindMemfdTHP is a memfd on shmem transparent huge pages, advised
	// (MADV_HUGEPAGE) where the host's shmem_enabled allows them: always,
	// within_size or force, or advise when the advice succeeded. The
	// kernel may still give base pages where it finds no free huge ones:
	// HugePageBytes says what it gave.
	KindMemfdTHP = "memfd-thp"
	// KindMemfd is a memfd on base pages: shmem_enabled is never (the
	// kernel's default) or deny, and no hugetlb pages are free.
	KindMemfd = "memfd"
)

// MemoryInfo says how the ring's memory was obtained.
type MemoryInfo struct {
	// Kind is the memory the ring lives in: KindAnonymous, or for a
	// shared ring KindMemfdHugeTLB, KindMemfdTHP or KindMemfd.
	Kind string
	// Bytes is the size of the mapping (the slabs, rounded up to 2 MiB).
	Bytes int
	// HugePageAdvice is true when madvise(MADV_HUGEPAGE) succeeded. A shared
	// ring asks only for KindMemfdTHP.
	HugePageAdvice bool
	// HugePageBytes is how much of the mapping the kernel backs with huge
	// pages right after pre-faulting, read from /proc/self/smaps:
	// AnonHugePages for an anonymous ring, ShmemPmdMapped for a memfd,
	// Shared_Hugetlb plus Private_Hugetlb for KindMemfdHugeTLB. Zero when
	// the kernel gave base pages.
	HugePageBytes int
	// Prefault names how the mapping was faulted in: "populate"
	// (MADV_POPULATE_WRITE) or "touch" (one write per base page).
	Prefault string
}

// HugePages reports whether any of the ring is backed by huge pages.
func (m MemoryInfo) HugePages() bool { return m.HugePageBytes > 0 }

// mapRing maps size bytes for the ring, a multiple of hugePageSize, and
// faults every page in, so that the hot path never takes a page fault: a
// private anonymous mapping, or when shared a memfd mapped shared (see
// mapShared). mapping is what Free unmaps, mem the ring inside it, and fd
// the memfd or -1.
func mapRing(size int, shared bool) (mapping, mem []byte, fd int, info MemoryInfo, err error) {
	if shared {
		mem, fd, info, err = mapShared(size)
		return mem, mem, fd, info, err
	}
	mapping, mem, info, err = mapAnonymous(size)
	return mapping, mem, -1, info, err
}

// mapAnonymous maps size bytes of private anonymous memory, advises huge
// pages and faults it in. The ring starts on a 2 MiB boundary, so that
// huge pages can back all of it, inside a larger reservation left
// PROT_NONE on both sides: without the guards the kernel merges the rings
// of one process into one mapping (same flags, adjacent), and smaps, which
// HugePageBytes is read from, counts the huge pages of all of them.
// mapping is the reservation, for Munmap.
func mapAnonymous(size int) (mapping, mem []byte, info MemoryInfo, err error) {
	info = MemoryInfo{Kind: KindAnonymous, Bytes: size}
	meminfo, _ := os.ReadFile(meminfoPath) // unreadable: no size check
	if err := checkAvailable(meminfo, size); err != nil {
		return nil, nil, info, err
	}
	mapping, err = unix.Mmap(-1, 0, size+2*hugePageSize, unix.PROT_NONE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		if errors.Is(err, unix.ENOMEM) {
			return nil, nil, info, fmt.Errorf("%w: mmap %d bytes: %v", ErrTooLarge, size, err)
		}
		return nil, nil, info, os.NewSyscallError("mmap", err)
	}
	fail := func(err error) ([]byte, []byte, MemoryInfo, error) {
		_ = unix.Munmap(mapping)
		return nil, nil, info, err
	}
	// At least one base page of guard below (base is page-aligned and the
	// start lies past it) and more than hugePageSize above.
	base := uint64(uintptr(addrOf(mapping)))
	off := int(alignUp(base+1, hugePageSize) - base)
	mem = mapping[off : off+size : off+size]
	if err := unix.Mprotect(mem, unix.PROT_READ|unix.PROT_WRITE); err != nil {
		return fail(tooLarge(os.NewSyscallError("mprotect", err), size))
	}
	// EINVAL (kernel without THP) and similar mean "no huge pages": the ring
	// works the same on base pages, so this is not an error.
	info.HugePageAdvice = unix.Madvise(mem, unix.MADV_HUGEPAGE) == nil
	if info.Prefault, err = prefault(mem); err != nil {
		return fail(tooLarge(err, size))
	}
	info.HugePageBytes = hugeBytes(mem, "AnonHugePages:")
	return mapping, mem, info, nil
}

// mapShared puts the ring in a memfd mapped MAP_SHARED, so that another
// process given the fd can map the same pages. It takes the best pages the
// host allows (planShared): hugetlbfs pages where enough are free, and if
// they fail for any reason shmem transparent huge pages where
// shmem_enabled allows them, else base pages.
func mapShared(size int) ([]byte, int, MemoryInfo, error) {
	meminfo, _ := os.ReadFile(meminfoPath) // unreadable: no hugetlb, no size check
	top, _ := os.ReadFile(shmemEnabledPath)
	perSize, _ := os.ReadFile(shmemEnabled2MPath)
	plan := planShared(meminfo, shmemHugePolicy(top, perSize), size)
	if plan.hugeTLB {
		// Pages taken by another process since meminfo was read, or a
		// kernel without hugetlb memfds: fall back to shmem, silently.
		if mem, fd, info, err := mapMemfd(size, true, false); err == nil {
			info.Kind = KindMemfdHugeTLB
			info.HugePageBytes = hugeBytes(mem, "Shared_Hugetlb:", "Private_Hugetlb:")
			return mem, fd, info, nil
		}
	}
	if err := checkAvailable(meminfo, size); err != nil {
		return nil, -1, MemoryInfo{Kind: KindMemfd, Bytes: size}, err
	}
	mem, fd, info, err := mapMemfd(size, false, plan.thp)
	if err != nil {
		return nil, -1, info, tooLarge(err, size)
	}
	info.Kind = KindMemfd
	if plan.thp && (info.HugePageAdvice || !plan.thpNeedsAdvice) {
		info.Kind = KindMemfdTHP
	}
	info.HugePageBytes = hugeBytes(mem, "ShmemPmdMapped:")
	return mem, fd, info, nil
}

// mapMemfd creates a memfd of size bytes, on 2 MiB hugetlbfs pages when
// hugeTLB, seals its size, maps it shared and read-write, advises huge
// pages when adviseTHP, and faults it in. On error it leaves nothing
// behind.
func mapMemfd(size int, hugeTLB, adviseTHP bool) (mem []byte, fd int, info MemoryInfo, err error) {
	info = MemoryInfo{Bytes: size}
	flags := unix.MFD_CLOEXEC | unix.MFD_ALLOW_SEALING
	if hugeTLB {
		flags |= unix.MFD_HUGETLB | unix.MFD_HUGE_2MB
	}
	fd, err = unix.MemfdCreate(memfdName, flags)
	if err != nil {
		return nil, -1, info, os.NewSyscallError("memfd_create", err)
	}
	fail := func(err error) ([]byte, int, MemoryInfo, error) {
		if mem != nil {
			_ = unix.Munmap(mem)
		}
		_ = unix.Close(fd)
		return nil, -1, info, err
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		return fail(os.NewSyscallError("ftruncate", err))
	}
	// A process handed the fd could otherwise shrink the file under the
	// mapping, and the ring's next write to a page cut off would kill this
	// process with SIGBUS.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
		return fail(os.NewSyscallError("fcntl F_ADD_SEALS", err))
	}
	// For hugetlbfs, mmap reserves the pages: ENOMEM here when too few
	// are left.
	mem, err = unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		mem = nil
		return fail(os.NewSyscallError("mmap", err))
	}
	if adviseTHP {
		info.HugePageAdvice = unix.Madvise(mem, unix.MADV_HUGEPAGE) == nil
	}
	if info.Prefault, err = prefault(mem); err != nil {
		return fail(err)
	}
	return mem, fd, info, nil
}

// prefault faults every page of mem in for writing, and returns how:
// "populate" (MADV_POPULATE_WRITE), or "touch" (one write per base page)
// on kernels before 5.14, which answer EINVAL. Any other answer is an
// error, which touching would turn into a SIGBUS: ENOMEM when the memory
// is not there, EFAULT when a page cannot be had (hugetlbfs out of pages).
func prefault(mem []byte) (string, error) {
	err := unix.Madvise(mem, unix.MADV_POPULATE_WRITE)
	if err == nil {
		return "populate", nil
	}
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) {
		return "", os.NewSyscallError("madvise MADV_POPULATE_WRITE", err)
	}
	for off := 0; off < len(mem); off += basePageSize {
		mem[off] = 0
	}
	return "touch", nil
}

// tooLarge wraps err in ErrTooLarge when it is the kernel's ENOMEM.
func tooLarge(err error, size int) error {
	if errors.Is(err, unix.ENOMEM) {
		return fmt.Errorf("%w: mapping and faulting in %d bytes: %v", ErrTooLarge, size, err)
	}
	return err
}

// checkAvailable fails with ErrTooLarge when size is more than meminfo's
// MemAvailable; it passes when that cannot be read.
func checkAvailable(meminfo []byte, size int) error {
	if kb, ok := meminfoValue(meminfo, "MemAvailable:"); ok && uint64(size) > kb<<10 {
		return fmt.Errorf("%w: ring needs %d bytes, %d available", ErrTooLarge, size, kb<<10)
	}
	return nil
}

// sharedPlan is what the host allows a shared ring of some size.
type sharedPlan struct {
	// hugeTLB: enough 2 MiB hugetlbfs pages are free, and not reserved by
	// another mapping, for the whole ring.
	hugeTLB bool
	// thp: shmem_enabled allows transparent huge pages for shmem;
	// thpNeedsAdvice: only where madvise(MADV_HUGEPAGE) asks (advise).
	thp, thpNeedsAdvice bool
}

// planShared decides from the contents of /proc/meminfo and the shmem
// huge page policy (shmemHugePolicy) which pages a shared ring of size
// bytes should ask for. The hugetlbfs pages counted are the default size's,
// which must be 2 MiB (Hugepagesize): on hosts whose default is 1 GiB the
// ring does not try hugetlbfs.
func planShared(meminfo []byte, policy string, size int) sharedPlan {
	var p sharedPlan
	pageKB, ok1 := meminfoValue(meminfo, "Hugepagesize:")
	free, ok2 := meminfoValue(meminfo, "HugePages_Free:")
	rsvd, ok3 := meminfoValue(meminfo, "HugePages_Rsvd:")
	if ok1 && ok2 && ok3 && pageKB<<10 == hugePageSize && free > rsvd {
		// HugePages_Free counts pages that mappings have reserved and not
		// yet faulted (HugePages_Rsvd): they are not there to be had.
		p.hugeTLB = (free-rsvd)*hugePageSize >= uint64(size)
	}
	switch policy {
	case "always", "within_size", "force":
		p.thp = true
	case "advise":
		p.thp, p.thpNeedsAdvice = true, true
	}
	return p
}

// shmemHugePolicy returns the transparent huge page policy for 2 MiB shmem
// pages, from the contents of shmemEnabledPath (top) and of
// shmemEnabled2MPath (perSize, empty on kernels without it): perSize's
// selected value, or top's where perSize says inherit or is empty. The
// selected value is the bracketed one ("always within_size advise [never]
// deny force"); "" when there is none.
func shmemHugePolicy(top, perSize []byte) string {
	if p := bracketed(perSize); p != "" && p != "inherit" {
		return p
	}
	return bracketed(top)
}

// bracketed returns the word in brackets of a sysfs choice list.
func bracketed(b []byte) string {
	_, rest, ok := bytes.Cut(b, []byte("["))
	if !ok {
		return ""
	}
	word, _, ok := bytes.Cut(rest, []byte("]"))
	if !ok {
		return ""
	}
	return string(word)
}

// meminfoValue returns the number after key in the contents of
// /proc/meminfo ("MemAvailable:", "HugePages_Free:"), in the file's unit
// (kB for sizes, pages for HugePages_ counts).
func meminfoValue(meminfo []byte, key string) (uint64, bool) {
	for line := range bytes.Lines(meminfo) {
		rest, ok := bytes.CutPrefix(line, []byte(key))
		if !ok {
			continue
		}
		fields := bytes.Fields(rest)
		if len(fields) == 0 {
			return 0, false
		}
		n, err := strconv.ParseUint(string(fields[0]), 10, 64)
		return n, err == nil
	}
	return 0, false
}

// hugeBytes returns how much of mem /proc/self/smaps says huge pages back:
// the sum of the given fields of mem's mapping, in bytes; 0 where smaps
// cannot be read.
func hugeBytes(mem []byte, fields ...string) int {
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return 0
	}
	return smapsBytes(smaps, uint64(uintptr(addrOf(mem))), fields...)
}

// smapsBytes sums the given fields ("AnonHugePages:") of the smaps entry
// whose range holds addr, in bytes.
func smapsBytes(smaps []byte, addr uint64, fields ...string) int {
	inRange, total := false, 0
	for line := range bytes.Lines(smaps) {
		if lo, hi, ok := parseRange(line); ok {
			if inRange {
				break // the entry after ours
			}
			inRange = lo <= addr && addr < hi
			continue
		}
		if !inRange {
			continue
		}
		for _, f := range fields {
			rest, ok := bytes.CutPrefix(line, []byte(f))
			if !ok {
				continue
			}
			if v := bytes.Fields(rest); len(v) > 0 {
				if kb, err := strconv.Atoi(string(v[0])); err == nil {
					total += kb << 10
				}
			}
		}
	}
	return total
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
