package vk

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/zimage/zimage/kernels"
)

// KernelTime is the GPU time one kernel took over all its dispatches.
type KernelTime struct {
	Kernel     string
	Dispatches int
	Total      time.Duration
}

// profiler sums per-kernel GPU time from timestamps written after every
// dispatch: a dispatch's time is the gap to the previous timestamp, so it
// includes waiting at the barrier before it.
type profiler struct {
	period float64 // ns per tick
	mask   uint64  // valid timestamp bits
	totals map[*kernels.Kernel]*KernelTime
}

func newProfiler(period float64, validBits uint32) *profiler {
	mask := ^uint64(0)
	if validBits < 64 {
		mask = (uint64(1) << validBits) - 1
	}
	return &profiler{period: period, mask: mask, totals: map[*kernels.Kernel]*KernelTime{}}
}

func (p *profiler) collect(a *api, b *batch) error {
	n := len(b.timed) + 1
	ts := make([]uint64, n)
	if err := a.queryResults(b.queries, ts); err != nil {
		return err
	}
	for i, k := range b.timed {
		d := (ts[i+1] - ts[i]) & p.mask
		t := p.totals[k]
		if t == nil {
			t = &KernelTime{Kernel: k.Name}
			p.totals[k] = t
		}
		t.Dispatches++
		t.Total += time.Duration(float64(d) * p.period)
	}
	b.timed = b.timed[:0]
	return nil
}

func (p *profiler) table() []KernelTime {
	out := make([]KernelTime, 0, len(p.totals))
	for _, t := range p.totals {
		out = append(out, *t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Total > out[j].Total })
	return out
}

// Profile runs pending work and returns the per-kernel GPU time totals,
// slowest first; nil when profiling is off.
func (d *Device) Profile() ([]KernelTime, error) {
	if d.prof == nil {
		return nil, nil
	}
	if err := d.Flush(); err != nil {
		return nil, err
	}
	return d.prof.table(), nil
}

// ResetProfile clears the profile totals.
func (d *Device) ResetProfile() {
	if d.prof != nil {
		clear(d.prof.totals)
	}
}

// WriteProfile prints the profile as a table.
func (d *Device) WriteProfile(w io.Writer) error {
	rows, err := d.Profile()
	if err != nil || rows == nil {
		return err
	}
	var total time.Duration
	for _, r := range rows {
		total += r.Total
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "zimage vk profile (%s): %v GPU time\n", d.info.Name, total.Round(time.Microsecond))
	fmt.Fprintf(&sb, "%-22s %10s %12s %7s\n", "kernel", "dispatches", "total", "share")
	for _, r := range rows {
		share := 0.0
		if total > 0 {
			share = 100 * float64(r.Total) / float64(total)
		}
		fmt.Fprintf(&sb, "%-22s %10d %12v %6.1f%%\n", r.Kernel, r.Dispatches, r.Total.Round(time.Microsecond), share)
	}
	_, err = io.WriteString(w, sb.String())
	return err
}
