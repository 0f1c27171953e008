package ringbuf

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSharedRingMappedTwice maps a shared ring's memfd a second time,
// read-only, as a learner process would, and checks that the bytes writers
// commit through the ring's slots are there at the same offsets, and that
// the batch the consumer takes is there at SlabBytes·s + LeafOffset(j).
func TestSharedRingMappedTwice(t *testing.T) {
	const batch = 4
	r := mustNew(t, Layout{BatchSize: batch, NumSlabs: 3, LeafBytes: []int{8, 3, 100}, Shared: true})
	fd, size := r.FD(), r.Memory().Bytes
	if fd < 0 {
		t.Fatalf("FD() = %d for a shared ring", fd)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != int64(size) {
		t.Fatalf("memfd is %d bytes, the mapping %d", st.Size, size)
	}
	view, err := unix.Mmap(fd, 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(view)

	// pattern is the byte k of leaf j of the sample at pos: never zero,
	// so memory the writes missed cannot pass for it.
	pattern := func(pos uint64, j, k int) byte { return byte(pos*7+uint64(j*31+k))%251 + 1 }
	base := uintptr(addrOf(r.mem))
	// Two whole batches and one sample of the third, in reservations of up
	// to 3 that stop at batch ends.
	for written := 0; written < 2*batch+1; {
		res, _, ok := r.Reserve(min(3, 2*batch+1-written))
		if !ok {
			t.Fatalf("ring full after %d samples", written)
		}
		for pos := res.Start; pos < res.Start+uint64(res.N); pos++ {
			for j := range r.leafBytes {
				slot := r.Slot(pos, j)
				for k := range slot {
					slot[k] = pattern(pos, j, k)
				}
			}
		}
		r.Commit(res)
		for pos := res.Start; pos < res.Start+uint64(res.N); pos++ {
			for j := range r.leafBytes {
				slot := r.Slot(pos, j)
				off := int(uintptr(addrOf(slot)) - base)
				if !bytes.Equal(view[off:off+len(slot)], slot) {
					t.Fatalf("sample %d leaf %d: the second mapping holds %v at %d, the slot %v",
						pos, j, view[off:off+len(slot)], off, slot)
				}
			}
		}
		written += res.N
	}
	for b := range 2 {
		s, err := r.Next(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for j, n := range r.leafBytes {
			off := s*r.SlabBytes() + r.LeafOffset(j)
			got := view[off : off+batch*n]
			for i := range batch {
				for k := range n {
					if want := pattern(uint64(b*batch+i), j, k); got[i*n+k] != want {
						t.Fatalf("batch %d (slab %d) leaf %d: byte %d of sample %d is %d in the second mapping, want %d",
							b, s, j, k, i, got[i*n+k], want)
					}
				}
			}
			if !bytes.Equal(got, r.LeafBlock(s, j)) {
				t.Fatalf("batch %d leaf %d: LeafBlock differs from the second mapping", b, j)
			}
		}
	}
}

// TestSharedKindFollowsHost derives from the host's files, as the ring
// does, which pages a shared ring should get, and checks Memory.
func TestSharedKindFollowsHost(t *testing.T) {
	const size = 8 << 20 // 2 slabs of 4 MiB
	meminfo, _ := os.ReadFile(meminfoPath)
	top, _ := os.ReadFile(shmemEnabledPath)
	perSize, _ := os.ReadFile(shmemEnabled2MPath)
	policy := shmemHugePolicy(top, perSize)
	plan := planShared(meminfo, policy, size)
	want := KindMemfd
	switch {
	case plan.hugeTLB:
		want = KindMemfdHugeTLB
	case plan.thp:
		want = KindMemfdTHP
	}
	r := mustNew(t, Layout{BatchSize: 4, NumSlabs: 2, LeafBytes: []int{1 << 20}, Shared: true})
	m := r.Memory()
	t.Logf("shmem policy %q, plan %+v: %+v", policy, plan, m)
	if m.Kind != want || m.Bytes != size || m.Prefault == "" {
		t.Fatalf("memory %+v: want kind %q, %d bytes, a prefault method", m, want, size)
	}
	switch m.Kind {
	case KindMemfdHugeTLB:
		if m.HugePageBytes != m.Bytes || m.HugePageAdvice {
			t.Errorf("hugetlb ring: %d of %d bytes on huge pages, advice %v; want all, no advice", m.HugePageBytes, m.Bytes, m.HugePageAdvice)
		}
	case KindMemfdTHP:
		if plan.thpNeedsAdvice && !m.HugePageAdvice {
			t.Errorf("policy %q needs MADV_HUGEPAGE, and the kind says it succeeded, but HugePageAdvice is false", policy)
		}
	case KindMemfd:
		if m.HugePageBytes != 0 || m.HugePageAdvice {
			t.Errorf("base-page ring: %d bytes on huge pages, advice %v; want none", m.HugePageBytes, m.HugePageAdvice)
		}
	}
}

func TestAnonymousRingHasNoFD(t *testing.T) {
	r, err := New(Layout{BatchSize: 2, NumSlabs: 2, LeafBytes: []int{8}})
	if err != nil {
		t.Fatal(err)
	}
	if r.FD() != -1 || r.Memory().Kind != KindAnonymous {
		t.Errorf("anonymous ring: FD %d, kind %q; want -1, %q", r.FD(), r.Memory().Kind, KindAnonymous)
	}
	if err := r.Free(); err != nil {
		t.Fatal(err)
	}
	if r.FD() != -1 {
		t.Errorf("FD %d after Free", r.FD())
	}
}

// TestSharedFreeClosesAndUnmaps checks, in /proc/self/fd and
// /proc/self/maps, that Free closes the memfd and unmaps it.
func TestSharedFreeClosesAndUnmaps(t *testing.T) {
	r, err := New(Layout{BatchSize: 2, NumSlabs: 2, LeafBytes: []int{8}, Shared: true})
	if err != nil {
		t.Fatal(err)
	}
	fd := r.FD()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		r.Free()
		t.Fatal(err)
	}
	if !fdOpenOn(fd, st.Ino) || !mappedInode(t, st.Ino) {
		r.Free()
		t.Fatalf("before Free: fd %d open on the memfd %v, mapped %v; want both", fd, fdOpenOn(fd, st.Ino), mappedInode(t, st.Ino))
	}
	for i := range 2 {
		if err := r.Free(); err != nil {
			t.Fatalf("Free #%d: %v", i+1, err)
		}
	}
	if r.FD() != -1 {
		t.Errorf("FD() = %d after Free, want -1", r.FD())
	}
	if fdOpenOn(fd, st.Ino) {
		t.Errorf("fd %d still open on the memfd after Free", fd)
	}
	if mappedInode(t, st.Ino) {
		t.Error("the memfd is still mapped after Free")
	}
}

// fdOpenOn reports whether /proc/self/fd/fd is open on inode ino (fd
// numbers are reused: another file does not count).
func fdOpenOn(fd int, ino uint64) bool {
	var st unix.Stat_t
	return unix.Stat("/proc/self/fd/"+strconv.Itoa(fd), &st) == nil && st.Ino == ino
}

// mappedInode reports whether /proc/self/maps holds a mapping of a memfd
// of this package with inode ino.
func mappedInode(t *testing.T, ino uint64) bool {
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(maps)) {
		f := strings.Fields(line)
		if len(f) >= 6 && f[4] == strconv.FormatUint(ino, 10) && strings.HasPrefix(f[5], "/memfd:"+memfdName) {
			return true
		}
	}
	return false
}

// TestSharedRingSizeSealed: no holder of the fd can shrink or grow it.
func TestSharedRingSizeSealed(t *testing.T) {
	r := mustNew(t, Layout{BatchSize: 2, NumSlabs: 2, LeafBytes: []int{8}, Shared: true})
	for _, size := range []int64{0, int64(r.Memory().Bytes) * 2} {
		if err := unix.Ftruncate(r.FD(), size); !errors.Is(err, unix.EPERM) {
			t.Errorf("ftruncate to %d = %v, want EPERM", size, err)
		}
	}
}

func TestShmemHugePolicy(t *testing.T) {
	const all = "always within_size advise never deny force"
	selected := func(list, v string) string {
		return strings.Replace(" "+list+" ", " "+v+" ", " ["+v+"] ", 1)[1:] + "\n"
	}
	for _, v := range strings.Fields(all) {
		if got := shmemHugePolicy([]byte(selected(all, v)), nil); got != v {
			t.Errorf("shmem_enabled %q: policy %q, want %q", selected(all, v), got, v)
		}
	}
	const perSize = "always inherit within_size advise never"
	for _, tc := range []struct{ top, perSize, want string }{
		{selected(all, "never"), selected(perSize, "inherit"), "never"},
		{selected(all, "always"), selected(perSize, "inherit"), "always"},
		{selected(all, "never"), selected(perSize, "advise"), "advise"},
		{selected(all, "always"), selected(perSize, "never"), "never"},
		{selected(all, "advise"), "", "advise"},
		{all, "", ""},
		{"[never", "", ""},
		{"", "", ""},
	} {
		if got := shmemHugePolicy([]byte(tc.top), []byte(tc.perSize)); got != tc.want {
			t.Errorf("shmem_enabled %q, per size %q: policy %q, want %q", tc.top, tc.perSize, got, tc.want)
		}
	}
}

func TestPlanShared(t *testing.T) {
	for _, tc := range []struct {
		policy       string
		thp, mustAsk bool
	}{
		{"always", true, false},
		{"within_size", true, false},
		{"force", true, false},
		{"advise", true, true},
		{"never", false, false},
		{"deny", false, false},
		{"", false, false},
	} {
		p := planShared(nil, tc.policy, 8<<20)
		if p.thp != tc.thp || p.thpNeedsAdvice != tc.mustAsk || p.hugeTLB {
			t.Errorf("policy %q: plan %+v, want thp %v, needs advice %v, no hugetlb", tc.policy, p, tc.thp, tc.mustAsk)
		}
	}
	meminfo := func(total, free, rsvd, sizeKB int) []byte {
		return []byte("MemTotal:       131072000 kB\nAnonHugePages:    370688 kB\n" +
			"HugePages_Total:    " + strconv.Itoa(total) + "\nHugePages_Free:     " + strconv.Itoa(free) +
			"\nHugePages_Rsvd:     " + strconv.Itoa(rsvd) + "\nHugePages_Surp:        0\nHugepagesize:       " +
			strconv.Itoa(sizeKB) + " kB\nHugetlb:               0 kB\n")
	}
	for _, tc := range []struct {
		name    string
		meminfo []byte
		size    int
		want    bool
	}{
		{"none reserved", meminfo(0, 0, 0, 2048), 2 << 20, false},
		{"exactly enough", meminfo(8, 4, 0, 2048), 8 << 20, true},
		{"more than enough", meminfo(64, 64, 0, 2048), 8 << 20, true},
		{"one short", meminfo(8, 3, 0, 2048), 8 << 20, false},
		{"free but reserved by others", meminfo(8, 4, 1, 2048), 8 << 20, false},
		{"1 GiB default pages", meminfo(8, 8, 0, 1048576), 8 << 20, false},
		{"no huge page lines", []byte("MemTotal:       131072000 kB\n"), 8 << 20, false},
		{"unreadable", nil, 8 << 20, false},
	} {
		if got := planShared(tc.meminfo, "never", tc.size).hugeTLB; got != tc.want {
			t.Errorf("%s: hugetlb %v for %d bytes, want %v", tc.name, got, tc.size, tc.want)
		}
	}
}

func TestMeminfoValue(t *testing.T) {
	info := []byte("MemTotal:       131072000 kB\nMemAvailable:   1000 kB\nHugePages_Free:     12\nHugepagesize:       2048 kB\nBad:  x kB\nEmpty:\n")
	for _, tc := range []struct {
		key  string
		want uint64
		ok   bool
	}{
		{"MemAvailable:", 1000, true},
		{"HugePages_Free:", 12, true},
		{"Hugepagesize:", 2048, true},
		{"HugePages_Rsvd:", 0, false},
		{"Bad:", 0, false},
		{"Empty:", 0, false},
	} {
		if got, ok := meminfoValue(info, tc.key); got != tc.want || ok != tc.ok {
			t.Errorf("meminfoValue(%q) = %d, %v; want %d, %v", tc.key, got, ok, tc.want, tc.ok)
		}
	}
}

func TestSmapsBytes(t *testing.T) {
	smaps := []byte(`7f0000000000-7f0000400000 rw-s 00000000 00:01 1234                       /memfd:echo-ring (deleted)
Size:               4096 kB
AnonHugePages:         0 kB
ShmemPmdMapped:     2048 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
VmFlags: rd wr sh mr mw me ms sd
7f0000400000-7f0000800000 rw-p 00000000 00:00 0
Size:               4096 kB
AnonHugePages:      4096 kB
ShmemPmdMapped:        0 kB
Shared_Hugetlb:     2048 kB
Private_Hugetlb:    2048 kB
VmFlags: rd wr mr mw me ac sd hg
`)
	for _, tc := range []struct {
		addr   uint64
		fields []string
		want   int
	}{
		{0x7f0000000000, []string{"ShmemPmdMapped:"}, 2 << 20},
		{0x7f00003fffff, []string{"AnonHugePages:"}, 0},
		{0x7f0000400000, []string{"AnonHugePages:"}, 4 << 20},
		{0x7f0000400000, []string{"Shared_Hugetlb:", "Private_Hugetlb:"}, 4 << 20},
		{0x7f0000800000, []string{"AnonHugePages:"}, 0},
	} {
		if got := smapsBytes(smaps, tc.addr, tc.fields...); got != tc.want {
			t.Errorf("smapsBytes(%#x, %v) = %d, want %d", tc.addr, tc.fields, got, tc.want)
		}
	}
}

// TestAnonymousRingsAreMappedApart maps several anonymous rings at once and
// checks that each is its own mapping in /proc/self/maps, starts on a 2 MiB
// boundary, and reports no more huge pages than it has bytes: rings mapped
// back to back once merged into one mapping, and each reported the huge
// pages of all.
func TestAnonymousRingsAreMappedApart(t *testing.T) {
	var rings []*Ring
	for range 4 {
		rings = append(rings, mustNew(t, Layout{BatchSize: 256, NumSlabs: 3, LeafBytes: []int{32, 4, 1}}))
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	own := make([]string, len(rings))
	for i, r := range rings {
		m := r.Memory()
		if m.HugePageBytes > m.Bytes {
			t.Errorf("ring %d: %d bytes on huge pages of %d", i, m.HugePageBytes, m.Bytes)
		}
		lo := uint64(uintptr(addrOf(r.mem)))
		if lo%hugePageSize != 0 {
			t.Errorf("ring %d starts at %#x, not on a 2 MiB boundary", i, lo)
		}
		own[i] = fmt.Sprintf("%x-%x rw-p ", lo, lo+uint64(len(r.mem)))
		if !hasLine(maps, own[i]) {
			t.Errorf("ring %d: no mapping %q of its own in /proc/self/maps", i, own[i])
		}
	}
	for _, r := range rings {
		if err := r.Free(); err != nil {
			t.Fatal(err)
		}
	}
	maps, err = os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	for i := range rings {
		if hasLine(maps, own[i]) {
			t.Errorf("ring %d: %q still mapped after Free", i, own[i])
		}
	}
}

// hasLine reports whether a line of text starts with prefix.
func hasLine(text []byte, prefix string) bool {
	for line := range bytes.Lines(text) {
		if bytes.HasPrefix(line, []byte(prefix)) {
			return true
		}
	}
	return false
}
