package main

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/google/pprof/profile"
)

// profileCategories are where CPU time can go, in the order a leaf
// function is matched against them; the first match wins.
var profileCategories = []struct {
	name     string
	prefixes []string
}{
	{"system calls", []string{"internal/runtime/syscall", "syscall.", "golang.org/x/sys/unix.", "runtime/internal/syscall"}},
	{"copying", []string{"runtime.memmove", "runtime.memclrNoHeapPointers", "runtime.memequal"}},
	{"this library", []string{"github.com/seed-a9ef92a1/echo"}},
	{"Go runtime (scheduler, GC, netpoll)", []string{"runtime.", "internal/runtime/", "sync."}},
}

// summarizeProfile reads a CPU profile and prints where its time went,
// by the category of the function each sample was taken in, and the
// library's own functions that took the most time, counting their callees.
func summarizeProfile(w io.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	p, err := profile.Parse(f)
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	vi := len(p.SampleType) - 1 // cpu nanoseconds
	for i, st := range p.SampleType {
		if st.Type == "cpu" {
			vi = i
		}
	}
	var total int64
	byCat := map[string]int64{}
	libCum := map[string]int64{}
	for _, s := range p.Sample {
		v := s.Value[vi]
		total += v
		byCat[category(leafName(s))] += v
		seen := map[string]bool{}
		for _, loc := range s.Location {
			for _, ln := range loc.Line {
				if ln.Function == nil {
					continue
				}
				name := ln.Function.Name
				if strings.HasPrefix(name, "github.com/seed-a9ef92a1/echo") && !seen[name] {
					seen[name] = true
					libCum[name] += v
				}
			}
		}
	}
	if total == 0 {
		return fmt.Errorf("%s has no samples", path)
	}
	fmt.Fprintf(w, "\nwhere the CPU time went (%s, %.2f s of samples):\n", path, float64(total)/1e9)
	for _, c := range append(profileCategories, struct {
		name     string
		prefixes []string
	}{"other", nil}) {
		fmt.Fprintf(w, "  %5.1f %%  %s\n", 100*float64(byCat[c.name])/float64(total), c.name)
	}
	type fn struct {
		name string
		v    int64
	}
	var fns []fn
	for n, v := range libCum {
		fns = append(fns, fn{n, v})
	}
	sort.Slice(fns, func(i, j int) bool { return fns[i].v > fns[j].v })
	fmt.Fprintln(w, "  the library's functions, with what they call:")
	for _, f := range fns[:min(8, len(fns))] {
		fmt.Fprintf(w, "  %5.1f %%  %s\n", 100*float64(f.v)/float64(total), strings.TrimPrefix(f.name, "github.com/seed-a9ef92a1/"))
	}
	return nil
}

// leafName is the function a sample was taken in.
func leafName(s *profile.Sample) string {
	if len(s.Location) == 0 || len(s.Location[0].Line) == 0 || s.Location[0].Line[0].Function == nil {
		return ""
	}
	return s.Location[0].Line[0].Function.Name
}

func category(fn string) string {
	for _, c := range profileCategories {
		for _, p := range c.prefixes {
			if strings.HasPrefix(fn, p) {
				return c.name
			}
		}
	}
	return "other"
}
