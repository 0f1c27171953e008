//go:build !race

package sockio

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestNoAllocs checks the calls of the ingress hot path allocate nothing,
// vector calls included.
func TestNoAllocs(t *testing.T) {
	a, b := socketPair(t)
	out := make([]byte, 64)
	in := make([]byte, 64)
	wiov := iovecs(out[:16], out[16:40], out[40:])
	riov := make([]unix.Iovec, 3)
	for name, f := range map[string]func(){
		"Write": func() {
			if n, err := Write(b, out); n != len(out) || err != nil {
				t.Fatalf("Write = %d, %v", n, err)
			}
			Read(a, in)
		},
		"Writev": func() {
			if n, err := Writev(b, wiov); n != len(out) || err != nil {
				t.Fatalf("Writev = %d, %v", n, err)
			}
			Read(a, in)
		},
		"Readv": func() {
			Write(b, out)
			copy(riov, iovecs(in[:10], in[10:50], in[50:]))
			if n, err := Readv(a, riov); n != len(in) || err != nil {
				t.Fatalf("Readv = %d, %v", n, err)
			}
		},
		"Queued": func() {
			if _, err := Queued(a); err != nil {
				t.Fatal(err)
			}
		},
	} {
		if n := testing.AllocsPerRun(100, f); n != 0 {
			t.Errorf("%s allocates %.1f times per call", name, n)
		}
	}
}
