package loadgen

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// OpenFDs returns the number of file descriptors the process has open, or
// -1 if /proc/self/fd cannot be read.
func OpenFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents) - 1 // ReadDir's own
}

// MappingAt returns the line of /proc/self/maps whose mapping holds addr,
// or "" if none does: after a server's Close, its ring's address must be in
// none.
func MappingAt(addr uintptr) (string, error) {
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lo, hi, ok := strings.Cut(strings.Fields(sc.Text())[0], "-")
		if !ok {
			continue
		}
		l, err1 := strconv.ParseUint(lo, 16, 64)
		h, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 == nil && err2 == nil && uint64(addr) >= l && uint64(addr) < h {
			return sc.Text(), nil
		}
	}
	return "", sc.Err()
}
