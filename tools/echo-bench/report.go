package main

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// find returns the result of a cell, if measured.
func find(rep Report, workload string, clients int, server, load string) (Result, bool) {
	for _, r := range rep.Results {
		if r.Workload == workload && r.Clients == clients && r.Server == server && r.Load == load {
			return r, true
		}
	}
	return Result{}, false
}

// rows returns the (workload, clients) pairs in measurement order.
func rows(rep Report) [][2]any {
	var out [][2]any
	seen := map[string]bool{}
	for _, r := range rep.Results {
		k := fmt.Sprint(r.Workload, r.Clients)
		if !seen[k] {
			seen[k] = true
			out = append(out, [2]any{r.Workload, r.Clients})
		}
	}
	return out
}

// rate formats samples/s with a k or M suffix.
func rate(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2f M", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1f k", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

// printTable writes the side-by-side table as Markdown.
func printTable(w io.Writer, rep Report) {
	fmt.Fprintf(w, "samples/s over loopback; Go clients send %d sample(s) per call\n\n", rep.Group)
	fmt.Fprintln(w, "| workload | clients | Go load → Go server | Go load → echo | Go / echo | Python load → Go server | Python load → echo | Go / echo |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, row := range rows(rep) {
		wl, n := row[0].(string), row[1].(int)
		cols := []string{wl, fmt.Sprint(n)}
		for _, load := range []string{"go", "python"} {
			g, okG := find(rep, wl, n, "go", load)
			e, okE := find(rep, wl, n, "echo", load)
			cols = append(cols, cellText(g, okG), cellText(e, okE))
			if okG && okE {
				cols = append(cols, fmt.Sprintf("**%.2f×**", g.Rate/e.Rate))
			} else {
				cols = append(cols, "–")
			}
		}
		fmt.Fprintf(w, "| %s |\n", strings.Join(cols, " | "))
	}
	fmt.Fprintln(w)
}

func cellText(r Result, ok bool) string {
	if !ok {
		return "–"
	}
	if r.GBps >= 0.1 {
		return fmt.Sprintf("%s (%.2f GB/s)", rate(r.Rate), r.GBps)
	}
	return rate(r.Rate)
}

// chart draws the results as grouped horizontal bars on a log scale: one
// group per (workload, clients), one bar per (load, server).
func chart(rep Report) string {
	type series struct{ server, load, color, label string }
	all := []series{
		{"go", "go", "#1f77b4", "Go server, Go clients"},
		{"echo", "go", "#ff7f0e", "echo server, Go clients"},
		{"go", "python", "#6baed6", "Go server, echo's Python clients"},
		{"echo", "python", "#fdae6b", "echo server, echo's Python clients"},
	}
	const (
		left, barH, gap, width = 110, 12, 14, 760
		plotW                  = width - left - 90
	)
	rs := rows(rep)
	lo, hi := math.Inf(1), 0.0
	for _, r := range rep.Results {
		lo, hi = math.Min(lo, r.Rate), math.Max(hi, r.Rate)
	}
	if len(rep.Results) == 0 {
		lo, hi = 1, 10
	}
	lo = math.Pow(10, math.Floor(math.Log10(lo)))
	hi = math.Pow(10, math.Ceil(math.Log10(hi)))
	x := func(v float64) float64 {
		return left + plotW*(math.Log10(v)-math.Log10(lo))/(math.Log10(hi)-math.Log10(lo))
	}
	groupH := len(all)*barH + gap
	height := 70 + len(rs)*groupH + 24*len(all)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="10" y="18" font-size="13">samples/s over loopback (log scale): %s, %d cores, Linux %s, %s; id-echo %s</text>`+"\n",
		esc(rep.Machine.CPU), rep.Machine.Cores, esc(rep.Machine.Kernel), rep.Machine.Go, esc(rep.EchoVersion))
	top := 40
	for d := lo; d <= hi; d *= 10 {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>`+"\n", x(d), top, x(d), top+len(rs)*groupH)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#666">%s</text>`+"\n", x(d), top-4, rate(d))
	}
	for i, row := range rs {
		wl, n := row[0].(string), row[1].(int)
		y0 := top + i*groupH
		fmt.Fprintf(&b, `<text x="8" y="%d">%s, %d clients</text>`+"\n", y0+len(all)*barH/2+4, wl, n)
		for j, s := range all {
			r, ok := find(rep, wl, n, s.server, s.load)
			if !ok {
				continue
			}
			y := y0 + j*barH
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n", left, y, x(r.Rate)-left, barH-2, s.color)
			fmt.Fprintf(&b, `<text x="%.1f" y="%d" fill="#333">%s</text>`+"\n", x(r.Rate)+4, y+barH-3, rate(r.Rate))
		}
	}
	ly := top + len(rs)*groupH + 16
	for j, s := range all {
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n",
			left, ly+j*22, s.color, left+18, ly+j*22+10, s.label)
	}
	b.WriteString("</svg>\n")
	return b.String()
}

func esc(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
