package relaybench

import (
	"fmt"
	"html"
	"math"
	"os"
	"strings"
)

// Plot geometry, in SVG user units.
const (
	plotW, plotH             = 860, 520
	marginL, marginR         = 80, 30
	marginT, marginB         = 70, 60
	maxNines                 = 4.0 // the y axis ends at the 99.99th percentile
	minPlotMS, plotDecadeMin = 0.01, 1
)

// WritePlot draws the latency distribution as an SVG file: percentile (on a
// "nines" scale, so the tail is readable) against latency (log scale), with
// p50, p99 and p99.9 marked.
func WritePlot(path string, rep *Report, h *Histogram) error {
	if err := os.WriteFile(path, []byte(PlotSVG(rep, h)), 0o644); err != nil {
		return fmt.Errorf("write plot: %w", err)
	}
	return nil
}

// PlotSVG returns the SVG document WritePlot writes.
func PlotSVG(rep *Report, h *Histogram) string {
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", plotW, plotH, plotW, plotH)
	b.WriteString(`<rect width="100%" height="100%" fill="white"/>` + "\n")
	title := fmt.Sprintf("commit→client latency: %v subscribers (%v), %v inserts/s, %v recipients each",
		rep.Config["subscribers"], rep.Config["transport"], rep.Config["rate"], rep.Config["audience"])
	text(&b, marginL, 24, "start", 15, title)
	text(&b, marginL, 44, "start", 11, fmt.Sprintf("%d CPUs %s, load %s → %s, %s, %s",
		rep.Machine.CPUs, rep.Machine.CPUModel, rep.Machine.LoadBefore, rep.Machine.LoadAfter, firstWords(rep.Machine.PostgreSQL, 2), rep.Machine.Started))
	cdf := h.CDF()
	if len(cdf) == 0 {
		text(&b, plotW/2, plotH/2, "middle", 14, "no deliveries measured")
		b.WriteString("</svg>\n")
		return b.String()
	}
	lo := math.Floor(math.Log10(max(ms(cdf[0].Upto), minPlotMS)))
	hi := math.Ceil(math.Log10(max(ms(h.Max()), minPlotMS)))
	hi = max(hi, lo+plotDecadeMin)
	x := func(msv float64) float64 {
		v := math.Log10(max(msv, minPlotMS))
		return marginL + (v-lo)/(hi-lo)*float64(plotW-marginL-marginR)
	}
	y := func(frac float64) float64 {
		nines := maxNines
		if frac < 1 {
			nines = min(-math.Log10(1-frac), maxNines)
		}
		return float64(plotH-marginB) - nines/maxNines*float64(plotH-marginT-marginB)
	}
	// Axes, grid and labels.
	for d := lo; d <= hi; d++ {
		px := x(math.Pow(10, d))
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>`+"\n", px, marginT, px, plotH-marginB)
		text(&b, px, float64(plotH-marginB+18), "middle", 12, formatMS(math.Pow(10, d)))
	}
	for _, t := range []struct {
		frac  float64
		label string
	}{{0, "0%"}, {0.5, "50%"}, {0.9, "90%"}, {0.99, "99%"}, {0.999, "99.9%"}, {0.9999, "99.99%"}} {
		py := y(t.frac)
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", marginL, py, plotW-marginR, py)
		text(&b, float64(marginL-8), py+4, "end", 12, t.label)
	}
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#444"/>`+"\n", marginL, marginT, plotW-marginL-marginR, plotH-marginT-marginB)
	text(&b, float64(plotW)/2, float64(plotH-18), "middle", 13, "latency, commit acknowledged → event parsed by the client (log scale)")
	fmt.Fprintf(&b, `<text x="18" y="%d" transform="rotate(-90 18 %d)" text-anchor="middle" font-size="13">percentile of deliveries</text>`+"\n", plotH/2, plotH/2)
	// The distribution as a step line.
	var path strings.Builder
	prevFrac := 0.0
	fmt.Fprintf(&path, "M%.1f %.1f", x(ms(cdf[0].Upto)), y(0))
	lastY := y(0)
	for i, p := range cdf {
		// Skip steps under half a pixel: the line looks the same, the file
		// stays small.
		if py := y(p.Fraction); lastY-py < 0.5 && i < len(cdf)-1 {
			continue
		}
		px := x(ms(p.Upto))
		fmt.Fprintf(&path, " L%.1f %.1f L%.1f %.1f", px, y(prevFrac), px, y(p.Fraction))
		prevFrac, lastY = p.Fraction, y(p.Fraction)
	}
	fmt.Fprintf(&b, `<path d="%s" fill="none" stroke="#1f5fbf" stroke-width="2"/>`+"\n", path.String())
	for _, m := range []struct {
		q     float64
		label string
	}{{0.5, "p50"}, {0.99, "p99"}, {0.999, "p99.9"}} {
		v := ms(h.Quantile(m.q))
		px, py := x(v), y(m.q)
		fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="4" fill="#c0392b"/>`+"\n", px, py)
		label := fmt.Sprintf("%s %s", m.label, formatMS(v))
		if px > plotW-marginR-140 {
			text(&b, px-8, py-6, "end", 12, label) // keep labels near the right edge inside
		} else {
			text(&b, px+8, py-6, "start", 12, label)
		}
	}
	text(&b, float64(marginL+8), float64(marginT+16), "start", 11,
		fmt.Sprintf("n=%d deliveries, max %s", h.Count(), formatMS(ms(h.Max()))))
	b.WriteString("</svg>\n")
	return b.String()
}

func text(b *strings.Builder, x, y float64, anchor string, size int, s string) {
	fmt.Fprintf(b, `<text x="%.1f" y="%.1f" text-anchor="%s" font-size="%d">%s</text>`+"\n", x, y, anchor, size, html.EscapeString(s))
}

func formatMS(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%.3gs", v/1000)
	case v >= 1:
		return fmt.Sprintf("%.3gms", v)
	default:
		return fmt.Sprintf("%.3gµs", v*1000)
	}
}
