package main

import (
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/seed-a9ef92a1/echo/bench"
	"github.com/seed-a9ef92a1/echo/internal/cli"
)

// The suite runs the bench package's benchmarks, layer by layer, through
// testing.Benchmark, and writes each layer's table beside its ceiling.

// Row is one benchmark's result.
type Row struct {
	Section string             `json:"section"`
	Name    string             `json:"name"`
	NsPerOp float64            `json:"ns_per_op"`
	Allocs  int64              `json:"allocs_per_op"`
	MBps    float64            `json:"mb_per_s,omitempty"`
	Metrics map[string]float64 `json:"metrics"`
}

type suiteCase struct {
	section, name string
	run           func(b *testing.B)
}

func suiteCases(quick bool) []suiteCase {
	var cs []suiteCase
	ws := bench.Workloads()
	for _, w := range ws {
		cs = append(cs, suiteCase{"inprocess", w.Short, func(b *testing.B) { bench.SubmitSample(b, w) }})
	}
	for _, w := range ws[:2] {
		for _, n := range []int{1, 64, 1024} {
			cs = append(cs, suiteCase{"producers", fmt.Sprintf("%s/%d", w.Short, n), func(b *testing.B) { bench.Producers(b, w, n) }})
		}
	}
	clients := []int{1, 16, 256}
	if quick {
		clients = []int{1, 16}
	}
	for _, w := range ws {
		for _, n := range clients {
			cs = append(cs, suiteCase{"tcp", fmt.Sprintf("%s/%d", w.Short, n), func(b *testing.B) { bench.TCP(b, w, n, 1) }})
		}
	}
	for _, batch := range []int{1, 32} {
		for _, load := range []float64{0.5, 0.9, 0} {
			cs = append(cs, suiteCase{"latency", fmt.Sprintf("%d/%v", batch, load), func(b *testing.B) { bench.Latency(b, batch, load) }})
		}
	}
	cs = append(cs, suiteCase{"layers", "SPSC queue, one at a time", func(b *testing.B) { bench.SPSCQueue(b, 1) }})
	cs = append(cs, suiteCase{"layers", "SPSC queue, 64 at a time", func(b *testing.B) { bench.SPSCQueue(b, 64) }})
	cs = append(cs, suiteCase{"layers", "ring claims, batch 256", func(b *testing.B) { bench.RingClaims(b, 256) }})
	for _, w := range ws {
		cs = append(cs, suiteCase{"layers", "Client.Send " + w.Short, func(b *testing.B) { bench.ClientSend(b, w) }})
	}
	cs = append(cs, suiteCase{"layers", "TrajectoryAdd, 32 W2 steps", func(b *testing.B) { bench.TrajectoryAdd(b, 32) }})
	for _, w := range ws {
		cs = append(cs, suiteCase{"versions", w.Short + "/16", func(b *testing.B) { bench.WireVersions(b, w, 16) }})
	}
	for _, w := range ws {
		cs = append(cs, suiteCase{"shared", w.Short + "/16", func(b *testing.B) { bench.SharedRing(b, w, 16) }})
	}
	return cs
}

// runSuite runs every case, showing progress, and returns the rows.
func runSuite(quick bool) []Row {
	cs := suiteCases(quick)
	var rows []Row
	bar := cli.NewProgress()
	defer bar.Clear()
	for i, c := range cs {
		bar.Printf("[%s] %d/%d  %s %s", progress(i, len(cs)), i+1, len(cs), c.section, c.name)
		r := testing.Benchmark(c.run)
		row := Row{Section: c.section, Name: c.name, NsPerOp: float64(r.T.Nanoseconds()) / float64(max(1, r.N)),
			Allocs: r.AllocsPerOp(), Metrics: r.Extra}
		if r.Bytes > 0 && r.T > 0 {
			row.MBps = float64(r.Bytes) * float64(r.N) / r.T.Seconds() / 1e6
		}
		rows = append(rows, row)
	}
	return rows
}

func section(rows []Row, s string) []Row {
	var out []Row
	for _, r := range rows {
		if r.Section == s {
			out = append(out, r)
		}
	}
	return out
}

// writeSuite writes the suite's tables as Markdown.
func writeSuite(w io.Writer, rows []Row) {
	payload := map[string]int{}
	for _, wl := range bench.Workloads() {
		payload[wl.Short] = wl.PayloadBytes
	}
	gb := func(name string, rate float64) string {
		wl, _, _ := strings.Cut(name, "/")
		if payload[wl] < 1000 {
			return "–"
		}
		return fmt.Sprintf("%.2f", rate*float64(payload[wl])/1e9)
	}
	copyRows := func(title, first, sec string) {
		heading(w, title, first, "samples/s", "GB/s", "× copy ceiling", "allocs/op")
		for _, r := range section(rows, sec) {
			fmt.Fprintf(w, "| %s | %s | %s | %.2f | %d |\n", r.Name, rate(r.Metrics["samples/s"]), gb(r.Name, r.Metrics["samples/s"]), r.Metrics["x_copy"], r.Allocs)
		}
		fmt.Fprintln(w)
	}
	copyRows("In process: `Submit` + `Sample` (ceiling: `copy()` into ring-shaped memory)", "workload", "inprocess")
	copyRows("Producers (ceiling: the same `copy()`; more producers than cores measures contention)", "workload / producers", "producers")
	heading(w, "TCP over loopback, one sample per `Send` (ceiling: raw sink; baseline: goroutine per `net.Conn`)",
		"workload / clients", "samples/s", "GB/s", "sink", "× sink", "net.Conn baseline", "× baseline", "RTOs (epoll / others)")
	for _, r := range section(rows, "tcp") {
		m := r.Metrics
		fmt.Fprintf(w, "| %s | %s | %s | %s | %.2f | %s | %.2f | %.0f / %.0f |\n", r.Name, rate(m["samples/s"]), gb(r.Name, m["samples/s"]),
			rate(m["sink_samples/s"]), m["x_sink"], rate(m["netconn_samples/s"]), m["x_netconn"], m["rto_epoll"], m["rto_others"])
	}
	fmt.Fprintln(w)
	heading(w, "Latency, send to `Sample`, one TCP client, W1-sized samples with a timestamp leaf",
		"batch / load (of saturated rate)", "samples/s", "p50 µs", "p99 µs", "p99.9 µs", "floor µs (sink round trip)", "p50 / floor")
	for _, r := range section(rows, "latency") {
		name := r.Name
		if strings.HasSuffix(name, "/0") {
			name = strings.TrimSuffix(name, "/0") + "/saturated"
		}
		m := r.Metrics
		fmt.Fprintf(w, "| %s | %s | %.0f | %.0f | %.0f | %.0f | %.1f |\n", name, rate(m["samples/s"]), m["p50_µs"], m["p99_µs"], m["p99.9_µs"], m["floor_µs"], m["x_floor"])
	}
	fmt.Fprintln(w)
	heading(w, "Wire version 2 against version 1 (16 Go clients, one server, same run)", "workload", "version 1", "version 2", "ratio", "version 2 with reconnection", "ratio", "allocs/op")
	for _, r := range section(rows, "versions") {
		m := r.Metrics
		fmt.Fprintf(w, "| %s | %s | %s | %.2f | %s | %.2f | %d |\n", r.Name, rate(m["v1_samples/s"]), rate(m["samples/s"]), m["x_v1"],
			rate(m["v2_reconnect_samples/s"]), m["x_v1_reconnect"], r.Allocs)
	}
	fmt.Fprintln(w)
	heading(w, "Shared ring against the anonymous ring (16 Go clients, one server each, same run)",
		"workload", "anonymous ring", "shared ring", "ratio", "anonymous ring's pages", "shared ring's pages", "allocs/op")
	for _, r := range section(rows, "shared") {
		m := r.Metrics
		fmt.Fprintf(w, "| %s | %s | %s | %.2f | %s | %s | %d |\n", r.Name, rate(m["anon_samples/s"]), rate(m["samples/s"]), m["x_anon"],
			ringPages(m, "anon"), ringPages(m, "shared"), r.Allocs)
	}
	fmt.Fprintln(w)
	heading(w, "Layers, each against its own ceiling", "layer", "rate", "ceiling", "ratio", "allocs/op")
	for _, r := range section(rows, "layers") {
		m := r.Metrics
		switch {
		case strings.HasPrefix(r.Name, "SPSC"):
			fmt.Fprintf(w, "| %s | %s items/s | buffered `chan` of the same capacity | %.2f | %d |\n", r.Name, rate(m["items/s"]), m["x_chan"], r.Allocs)
		case strings.HasPrefix(r.Name, "ring"):
			fmt.Fprintf(w, "| %s | %s slots/s | one uncontended CAS | %.2f | %d |\n", r.Name, rate(m["slots/s"]), m["x_cas"], r.Allocs)
		case strings.HasPrefix(r.Name, "Client.Send"):
			fmt.Fprintf(w, "| %s | %s samples/s | `net.Conn.Write` of the joined bytes, no in-flight bound | %.2f | %d |\n", r.Name, rate(m["samples/s"]), m["x_write"], r.Allocs)
		default:
			fmt.Fprintf(w, "| %s | %.1f GB/s | `copy()` of the same bytes | %.2f | %d |\n", r.Name, r.MBps/1e3, m["x_copy"], r.Allocs)
		}
	}
	fmt.Fprintln(w)
}

// ringPages names the pages a ring of bench.SharedRing got, from its
// metrics with the given prefix ("shared", "anon").
func ringPages(m map[string]float64, prefix string) string {
	huge := m[prefix+"_hugepages"]
	switch {
	case m[prefix+"_hugetlb"] == 1:
		return fmt.Sprintf("hugetlbfs 2 MiB (%.0f%%)", 100*huge)
	case huge > 0:
		return fmt.Sprintf("THP, %.0f%% huge", 100*huge)
	case m[prefix+"_thp"] == 1:
		return "THP advised, 4 KiB given"
	default:
		return "4 KiB"
	}
}

// heading starts a Markdown table: its title, then the header row.
func heading(w io.Writer, title string, cols ...string) {
	fmt.Fprintf(w, "#### %s\n\n| %s |\n|%s\n", title, strings.Join(cols, " | "), strings.Repeat("---|", len(cols)))
}
