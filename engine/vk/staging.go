package vk

import (
	"fmt"
)

// stagingChunk bounds one staged transfer; bigger transfers go in chunks,
// and a batch whose copies hold this much staging memory is submitted.
const stagingChunk = 64 << 20

// stagingMin is the smallest staging block: small uploads share one.
const stagingMin = 4 << 20

// stagingSpare is how many idle staging blocks the pool keeps.
const stagingSpare = 4

// stager is a pool of host-visible blocks for staged uploads and downloads.
// An upload's block belongs to the batch that copies from it until that batch
// completes (see recorder.stage), so uploads never wait for the device.
type stager struct {
	vk        *api
	typeIndex uint32
	blocks    []*block // every staging block alive
	idle      []*block // blocks no batch holds
}

func newStager(a *api, ph physical) (*stager, error) {
	host := uint32(memHostVisible | memHostCoherent)
	ti, err := chooseMemoryType(a, ph, host|memHostCached, host)
	if err != nil {
		return nil, err
	}
	if ti < 0 {
		return nil, fmt.Errorf("vk: no host-visible coherent memory for staging")
	}
	return &stager{vk: a, typeIndex: uint32(ti)}, nil
}

// stager returns the device's staging pool. Devices whose tensor memory is
// host-visible create it on first use (an upload into bytes that pending work
// still uses is staged rather than waited for), from that same memory type.
func (d *Device) stager() *stager {
	if d.staging == nil {
		d.staging = &stager{vk: d.vk, typeIndex: d.mem.typeIndex}
	}
	return d.staging
}

// get returns an idle block of at least size bytes (size <= stagingChunk).
func (s *stager) get(size int64) (*block, error) {
	size = alignUp(size, allocAlign)
	best := -1
	for i, b := range s.idle {
		if b.size >= size && (best < 0 || b.size < s.idle[best].size) {
			best = i
		}
	}
	if best >= 0 {
		b := s.idle[best]
		s.idle = append(s.idle[:best], s.idle[best+1:]...)
		return b, nil
	}
	b, err := newBlock(s.vk, s.typeIndex, max(size, stagingMin), true)
	if err != nil {
		return nil, fmt.Errorf("vk: staging buffer of %d bytes: %w", max(size, stagingMin), err)
	}
	s.blocks = append(s.blocks, b)
	return b, nil
}

// put returns a block whose users have completed to the pool, destroying the
// smallest idle block when more than stagingSpare are idle.
func (s *stager) put(b *block) {
	s.idle = append(s.idle, b)
	if len(s.idle) <= stagingSpare {
		return
	}
	small := 0
	for i, x := range s.idle {
		if x.size < s.idle[small].size {
			small = i
		}
	}
	victim := s.idle[small]
	s.idle = append(s.idle[:small], s.idle[small+1:]...)
	for i, x := range s.blocks {
		if x == victim {
			s.blocks = append(s.blocks[:i], s.blocks[i+1:]...)
			break
		}
	}
	victim.destroy(s.vk)
}

// destroy frees every staging block; the device must be idle.
func (s *stager) destroy() {
	for _, b := range s.blocks {
		b.destroy(s.vk)
	}
	s.blocks, s.idle = nil, nil
}
