package sched

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/model"
)

// Offload says how weights reach the device.
type Offload uint8

const (
	// OffloadAuto keeps a network resident when it fits the budget and
	// streams it block by block otherwise.
	OffloadAuto Offload = iota
	// OffloadNone uploads every network once and keeps it.
	OffloadNone
	// OffloadLayer streams every network block by block.
	OffloadLayer
)

// ParseOffload reads "auto", "none" or "layer".
func ParseOffload(s string) (Offload, error) {
	switch s {
	case "", "auto":
		return OffloadAuto, nil
	case "none":
		return OffloadNone, nil
	case "layer":
		return OffloadLayer, nil
	}
	return 0, fmt.Errorf("sched: offload %q: want auto, none or layer", s)
}

func (o Offload) String() string {
	switch o {
	case OffloadNone:
		return "none"
	case OffloadLayer:
		return "layer"
	}
	return "auto"
}

// Streamer is the model.Residency of layer-wise offload: weights stay
// memory-mapped on the host, and each block is uploaded before it runs
// (and its host pages released, see load). When
// an upload would not fit the weights' share of the budget, the blocks used
// longest ago are evicted first.
//
// Given the order blocks are needed in (SetOrder), Need(block i) also
// uploads block i+1. Uploads do not wait for the device (the Vulkan backend
// submits the recorded work and copies meanwhile), so the copy of block i+1
// overlaps the device running the blocks recorded before. Everything runs on
// the caller's goroutine: the overlap is the device's.
type Streamer struct {
	ctx      context.Context
	b        engine.Backend
	limit    int64 // bytes of weights allowed on the device at once
	resident []*model.Block
	inUse    int64
	order    map[*model.Block]*model.Block // block -> the one needed after it
	Uploaded int64                         // bytes uploaded so far (re-uploads counted again)
	// Prefetched counts the uploaded bytes that were prefetches, and
	// Dropped the prefetches skipped because the next block did not fit
	// beside the current one.
	Prefetched, Dropped int64
}

// NewStreamer streams blocks with at most limit bytes of weights resident
// (0 = no limit: blocks stay once uploaded). ctx is checked before every
// block, so a cancelled run stops between blocks.
func NewStreamer(ctx context.Context, b engine.Backend, limit int64) *Streamer {
	return &Streamer{ctx: ctx, b: b, limit: limit}
}

// SetOrder tells the streamer the order its network needs blocks in (the
// network's Blocks()), so that Need prefetches the next one; nil turns
// prefetching off. A block Need is called for that is not in the list
// prefetches nothing.
func (s *Streamer) SetOrder(blocks []*model.Block) {
	s.order = nil
	if len(blocks) > 1 {
		s.order = make(map[*model.Block]*model.Block, len(blocks)-1)
		for i, bl := range blocks[:len(blocks)-1] {
			s.order[bl] = blocks[i+1]
		}
	}
}

// Need makes bl resident, evicting least recently used blocks as needed,
// then prefetches the block after it (see SetOrder).
func (s *Streamer) Need(bl *model.Block) error {
	if err := s.ctx.Err(); err != nil {
		return err
	}
	if err := s.load(bl); err != nil {
		return err
	}
	if next := s.order[bl]; next != nil {
		return s.Prefetch(next)
	}
	return nil
}

// Prefetch uploads bl ahead of its Need, counted against the limit like any
// resident block. It never evicts the most recently needed block: when both
// do not fit it does nothing and bl is uploaded by its own Need. A failed
// upload is undone and not reported here, since it is only an early try:
// Need retries it and reports the error.
func (s *Streamer) Prefetch(bl *model.Block) error {
	need := bl.Bytes()
	if s.index(bl) < 0 && s.limit > 0 && len(s.resident) > 0 {
		if cur := s.resident[len(s.resident)-1]; cur != bl && need+cur.Bytes() > s.limit {
			s.Dropped += need
			return nil
		}
	}
	up := s.Uploaded
	if err := s.load(bl); err != nil {
		return nil
	}
	s.Prefetched += s.Uploaded - up
	return nil
}

// load makes bl resident and most recently used.
func (s *Streamer) load(bl *model.Block) error {
	if i := s.index(bl); i >= 0 {
		// Move to the most recently used end.
		s.resident = append(append(s.resident[:i:i], s.resident[i+1:]...), bl)
		return nil
	}
	need := bl.Bytes()
	if s.limit > 0 && need > s.limit {
		return fmt.Errorf("sched: block %s needs %s of weights, more than the %s the budget leaves for weights",
			bl.Name, model.FormatBytes(need), model.FormatBytes(s.limit))
	}
	for s.limit > 0 && s.inUse+need > s.limit && len(s.resident) > 0 {
		old := s.resident[0]
		s.resident = s.resident[1:]
		s.inUse -= old.Bytes()
		old.Evict(s.b)
	}
	// Weights kept resident by an earlier run cost no upload.
	fresh := !bl.ResidentOn(s.b)
	if err := bl.Upload(s.b); err != nil {
		bl.Evict(s.b)
		return err
	}
	// Count what the upload made resident: a parameter whose values do
	// not fit F16 is widened to F32 on its first upload (model.Param), so
	// the block can be larger than need.
	got := bl.Bytes()
	s.resident = append(s.resident, bl)
	s.inUse += got
	if fresh {
		s.Uploaded += got
		// Hold each weight once: the device copy replaces the host's
		// (on unified memory both are host memory). A block that stays
		// for good drops every host copy; a streamed one only its file
		// pages, which fault back in from the page cache when it is
		// uploaded again, and keeps copies computed at load (quantized
		// at load, transposed), which would cost more to redo.
		if s.limit == 0 {
			bl.ReleaseHost()
		} else {
			bl.ReleasePages()
		}
	}
	return nil
}

func (s *Streamer) index(bl *model.Block) int {
	for i, r := range s.resident {
		if r == bl {
			return i
		}
	}
	return -1
}

// Release evicts every block this streamer uploaded.
func (s *Streamer) Release() {
	for _, bl := range s.resident {
		bl.Evict(s.b)
	}
	s.resident, s.inUse = nil, 0
}

// Close releases the device copies; the Streamer must not be used after.
func (s *Streamer) Close() error {
	s.Release()
	return nil
}

// BlocksBytes sums the device size of blocks.
func BlocksBytes(blocks []*model.Block) int64 {
	var n int64
	for _, b := range blocks {
		n += b.Bytes()
	}
	return n
}

// LargestBlock returns the biggest block's size.
func LargestBlock(blocks []*model.Block) int64 {
	var n int64
	for _, b := range blocks {
		n = max(n, b.Bytes())
	}
	return n
}

// PeakRSS is the process's resident-set high-water mark in bytes (Linux
// VmHWM), or 0 where /proc is unavailable.
func PeakRSS() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return kb * 1024
		}
	}
	return 0
}
