package sched

import (
	"context"
	"fmt"
	"testing"

	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/model"
)

// streamBlocks builds blocks of one [rows, 64] F16 weight each: rows*128
// bytes on the device.
func streamBlocks(rows ...int) []*model.Block {
	w := model.NewWeights(model.NewSyntheticSource("net", 1))
	for i, r := range rows {
		w.BeginBlock(fmt.Sprint("b", i))
		w.Param(fmt.Sprintf("b%d.weight", i), r, 64)
	}
	return w.Blocks()
}

// TestStreamerPrefetch: Need(block i) also uploads block i+1 when both fit
// the limit, never evicts block i for it, and the limit holds throughout.
func TestStreamerPrefetch(t *testing.T) {
	const kib = 1024
	// 8, 4, 8, 8 and 2 KiB under a 12 KiB limit: every neighbour pair fits
	// except blocks 2 and 3.
	blocks := streamBlocks(64, 32, 64, 64, 16)
	const limit = 12 * kib
	b := ref.New(ref.WithBudget(limit))
	s := NewStreamer(context.Background(), b, limit)
	s.SetOrder(blocks)
	for round := range 2 {
		for i, bl := range blocks {
			if err := s.Need(bl); err != nil {
				t.Fatal(err)
			}
			if !bl.Resident() {
				t.Fatalf("round %d: %s not resident after Need", round, bl.Name)
			}
			if i+1 < len(blocks) {
				next := blocks[i+1]
				fits := bl.Bytes()+next.Bytes() <= limit
				if next.Resident() != fits {
					t.Errorf("round %d: after Need(%s), %s resident = %v, want %v", round, bl.Name, next.Name, next.Resident(), fits)
				}
			}
			if in := b.MemStats().InUse; in > limit {
				t.Fatalf("round %d: %d bytes in use after Need(%s), over the %d limit", round, in, bl.Name, limit)
			}
		}
	}
	total := BlocksBytes(blocks)
	// Cycling through more than the limit holds re-uploads every block
	// each round, whether it came by prefetch or by Need.
	if s.Uploaded != 2*total {
		t.Errorf("uploaded %d bytes, want %d (every block twice)", s.Uploaded, 2*total)
	}
	if want := 2 * (total - blocks[0].Bytes() - blocks[3].Bytes()); s.Prefetched != want {
		t.Errorf("prefetched %d bytes, want %d (all but the first and the one that does not fit)", s.Prefetched, want)
	}
	if s.Dropped != 2*blocks[3].Bytes() {
		t.Errorf("dropped %d bytes of prefetches, want %d", s.Dropped, 2*blocks[3].Bytes())
	}
	if p := b.MemStats().Peak; p > limit {
		t.Errorf("peak %d bytes over the %d limit", p, limit)
	}
	s.Release()
	if in := b.MemStats().InUse; in != 0 {
		t.Errorf("%d bytes in use after Release", in)
	}
}

// TestStreamerNoOrder: without SetOrder, Need uploads only what it is asked.
func TestStreamerNoOrder(t *testing.T) {
	blocks := streamBlocks(8, 8, 8)
	b := ref.New()
	s := NewStreamer(context.Background(), b, 0)
	if err := s.Need(blocks[0]); err != nil {
		t.Fatal(err)
	}
	if blocks[1].Resident() || s.Prefetched != 0 {
		t.Error("a streamer without an order prefetched")
	}
	s.SetOrder(blocks)
	if err := s.Need(blocks[0]); err != nil {
		t.Fatal(err)
	}
	if !blocks[1].Resident() || blocks[2].Resident() {
		t.Error("Need(b0) with an order did not prefetch exactly b1")
	}
	s.Close()
}
