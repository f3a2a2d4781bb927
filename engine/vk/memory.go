package vk

import (
	"fmt"
	"sort"
	"unsafe"
)

// allocAlign is the alignment of every sub-allocation: a multiple of any
// minStorageBufferOffsetAlignment in practice (<= 256) and of vec4 loads.
const allocAlign = 256

// defaultBlockSize is the size of the VkDeviceMemory blocks tensors are
// sub-allocated from; bigger tensors get a block of their own.
const defaultBlockSize = 256 << 20

type span struct{ off, size int64 }

// block is one VkDeviceMemory with one VkBuffer spanning it.
type block struct {
	mem       vkMemory
	buf       vkBuffer
	size      int64
	ptr       unsafe.Pointer // persistent host mapping (C memory); nil when not host-visible
	free      []span         // sorted by offset, coalesced
	live      int            // allocations in this block
	dedicated bool
}

// allocation is a tensor's storage: a range of a block. Tensor.Storage holds
// a *allocation.
type allocation struct {
	owner *allocator
	blk   *block
	off   int64 // byte offset in the block
	size  int64 // accounted (aligned) bytes
	name  string
	freed bool
}

// allocator sub-allocates device memory and accounts every byte of it.
type allocator struct {
	vk        *api
	typeIndex uint32
	mapped    bool // tensor memory is host-visible and coherent (lavapipe, UMA)
	blockSize int64
	maxAlloc  int64
	blocks    []*block
	inUse     int64 // bytes of live allocations
	peak      int64
	budget    int64
	reserved  int64 // bytes held in VkDeviceMemory
}

// chooseMemoryType returns the first memory type a storage buffer may use
// that has all the flags of one of prefs, tried in order; -1 when none has.
func chooseMemoryType(a *api, ph physical, prefs ...uint32) (int, error) {
	// Which types a storage buffer may use: ask for a small probe buffer's
	// requirements.
	buf, err := a.createBuffer(allocAlign)
	if err != nil {
		return -1, err
	}
	_, bits := a.requirements(buf)
	a.destroyBuffer(buf)
	for _, want := range prefs {
		for i, flags := range ph.memTypes {
			if bits&(1<<i) != 0 && flags&want == want {
				return i, nil
			}
		}
	}
	return -1, nil
}

// newBlock allocates size bytes of memory of the given type, binds a buffer
// spanning it and maps it when host-visible.
func newBlock(a *api, typeIndex uint32, size int64, mapped bool) (*block, error) {
	buf, err := a.createBuffer(size)
	if err != nil {
		return nil, err
	}
	need, _ := a.requirements(buf)
	mem, err := a.allocateMemory(need, typeIndex)
	if err != nil {
		a.destroyBuffer(buf)
		return nil, err
	}
	b := &block{mem: mem, buf: buf, size: size, free: []span{{0, size}}}
	if err := a.bindBufferMemory(buf, mem); err != nil {
		b.destroy(a)
		return nil, err
	}
	if mapped {
		p, err := a.mapMemory(mem)
		if err != nil {
			b.destroy(a)
			return nil, err
		}
		b.ptr = p
	}
	return b, nil
}

func (b *block) destroy(a *api) {
	if b.ptr != nil {
		a.unmapMemory(b.mem)
		b.ptr = nil
	}
	a.destroyBuffer(b.buf)
	a.freeMemory(b.mem)
}

// take carves size bytes from the block's free list (first fit).
func (b *block) take(size int64) (int64, bool) {
	for i, s := range b.free {
		if s.size < size {
			continue
		}
		off := s.off
		if s.size == size {
			b.free = append(b.free[:i], b.free[i+1:]...)
		} else {
			b.free[i] = span{s.off + size, s.size - size}
		}
		b.live++
		return off, true
	}
	return 0, false
}

// give returns a range to the free list, merging neighbours.
func (b *block) give(off, size int64) {
	i := sort.Search(len(b.free), func(i int) bool { return b.free[i].off > off })
	b.free = append(b.free, span{})
	copy(b.free[i+1:], b.free[i:])
	b.free[i] = span{off, size}
	if i+1 < len(b.free) && b.free[i].off+b.free[i].size == b.free[i+1].off {
		b.free[i].size += b.free[i+1].size
		b.free = append(b.free[:i+1], b.free[i+2:]...)
	}
	if i > 0 && b.free[i-1].off+b.free[i-1].size == b.free[i].off {
		b.free[i-1].size += b.free[i].size
		b.free = append(b.free[:i], b.free[i+1:]...)
	}
	b.live--
}

func alignUp(n, a int64) int64 { return (n + a - 1) / a * a }

// alloc reserves bytes for the tensor name, enforcing the budget.
func (a *allocator) alloc(name string, bytes int64) (*allocation, error) {
	size := alignUp(max(bytes, 1), allocAlign)
	if a.budget > 0 && a.inUse+size > a.budget {
		return nil, &BudgetError{Tensor: name, Requested: size, InUse: a.inUse, Budget: a.budget}
	}
	if size > a.maxAlloc {
		return nil, &RangeError{Op: "alloc", Tensor: name, Bytes: size, Limit: a.maxAlloc, What: "maxMemoryAllocationSize"}
	}
	if err := a.vk.inject(FaultAlloc, "vkAllocateMemory "+name); err != nil {
		return nil, fmt.Errorf("vk: allocating %s (%d bytes, %d in use): %w", name, size, a.inUse, err)
	}
	var blk *block
	var off int64
	for _, b := range a.blocks {
		if o, ok := b.take(size); ok {
			blk, off = b, o
			break
		}
	}
	if blk == nil {
		bs := a.blockSize
		dedicated := size > bs/2
		if dedicated {
			bs = size
		}
		b, err := newBlock(a.vk, a.typeIndex, bs, a.mapped)
		if err != nil && !dedicated && bs > size {
			// A smaller, dedicated block may still fit.
			dedicated, bs = true, size
			b, err = newBlock(a.vk, a.typeIndex, bs, a.mapped)
		}
		if err != nil {
			return nil, fmt.Errorf("vk: allocating %s (%d bytes, %d in use): %w", name, size, a.inUse, err)
		}
		b.dedicated = dedicated
		a.blocks = append(a.blocks, b)
		a.reserved += bs
		blk = b
		off, _ = b.take(size)
	}
	a.inUse += size
	a.peak = max(a.peak, a.inUse)
	return &allocation{owner: a, blk: blk, off: off, size: size, name: name}, nil
}

// release returns an allocation's bytes. The block itself is only destroyed
// by trim, once no recorded work can still use it.
func (a *allocator) release(al *allocation) {
	if al.freed {
		return
	}
	al.freed = true
	al.blk.give(al.off, al.size)
	a.inUse -= al.size
}

// trim destroys empty blocks, keeping one empty shared block as a spare so
// that alloc/free cycles do not churn VkDeviceMemory. Call it only when no
// submitted work is pending.
func (a *allocator) trim() {
	kept := a.blocks[:0]
	spare := false
	for _, b := range a.blocks {
		if b.live == 0 && (b.dedicated || spare) {
			a.reserved -= b.size
			b.destroy(a.vk)
			continue
		}
		if b.live == 0 {
			spare = true
		}
		kept = append(kept, b)
	}
	clear(a.blocks[len(kept):])
	a.blocks = kept
}

func (a *allocator) destroyAll() {
	for _, b := range a.blocks {
		b.destroy(a.vk)
	}
	a.blocks = nil
	a.reserved = 0
}
