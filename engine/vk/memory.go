package vk

import (
	"fmt"
	"sort"
	"unsafe"

	"github.com/vulkan-go/vulkan"
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
	mem       vulkan.DeviceMemory
	buf       vulkan.Buffer
	size      int64
	ptr       unsafe.Pointer // persistent host mapping; nil when not host-visible
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
	dev       vulkan.Device
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

const bufferUsage = vulkan.BufferUsageFlags(vulkan.BufferUsageStorageBufferBit | vulkan.BufferUsageUniformTexelBufferBit |
	vulkan.BufferUsageTransferSrcBit | vulkan.BufferUsageTransferDstBit)

// memoryTypeBits probes which memory types a storage buffer may use.
func memoryTypeBits(dev vulkan.Device) (uint32, error) {
	buf, err := createBuffer(dev, allocAlign)
	if err != nil {
		return 0, err
	}
	defer vulkan.DestroyBuffer(dev, buf, nil)
	var req vulkan.MemoryRequirements
	vulkan.GetBufferMemoryRequirements(dev, buf, &req)
	req.Deref()
	return req.MemoryTypeBits, nil
}

func createBuffer(dev vulkan.Device, size int64) (vulkan.Buffer, error) {
	ci := vulkan.BufferCreateInfo{
		SType:       vulkan.StructureTypeBufferCreateInfo,
		Size:        vulkan.DeviceSize(size),
		Usage:       bufferUsage,
		SharingMode: vulkan.SharingModeExclusive,
	}
	var buf vulkan.Buffer
	if err := check("vkCreateBuffer", vulkan.CreateBuffer(dev, &ci, nil, &buf)); err != nil {
		return nil, err
	}
	return buf, nil
}

// chooseMemoryType returns pd's memory properties and the first memory type
// a storage buffer may use that has all the flags of one of prefs, tried in
// order; -1 when none has.
func chooseMemoryType(dev vulkan.Device, pd vulkan.PhysicalDevice, prefs ...vulkan.MemoryPropertyFlagBits) (*vulkan.PhysicalDeviceMemoryProperties, int, error) {
	bits, err := memoryTypeBits(dev)
	if err != nil {
		return nil, -1, err
	}
	var mp vulkan.PhysicalDeviceMemoryProperties
	vulkan.GetPhysicalDeviceMemoryProperties(pd, &mp)
	mp.Deref()
	for _, want := range prefs {
		if ti := pickMemoryType(&mp, bits, want); ti >= 0 {
			return &mp, ti, nil
		}
	}
	return &mp, -1, nil
}

// pickMemoryType returns the first type allowed by bits that has all of
// want, or -1.
func pickMemoryType(mp *vulkan.PhysicalDeviceMemoryProperties, bits uint32, want vulkan.MemoryPropertyFlagBits) int {
	for i := uint32(0); i < mp.MemoryTypeCount; i++ {
		t := mp.MemoryTypes[i]
		t.Deref()
		if bits&(1<<i) != 0 && vulkan.MemoryPropertyFlagBits(t.PropertyFlags)&want == want {
			return int(i)
		}
	}
	return -1
}

func memoryFlags(mp *vulkan.PhysicalDeviceMemoryProperties, i int) vulkan.MemoryPropertyFlagBits {
	t := mp.MemoryTypes[i]
	t.Deref()
	return vulkan.MemoryPropertyFlagBits(t.PropertyFlags)
}

// newBlock allocates size bytes of memory of the given type, binds a buffer
// spanning it and maps it when host-visible.
func newBlock(dev vulkan.Device, typeIndex uint32, size int64, mapped bool) (*block, error) {
	buf, err := createBuffer(dev, size)
	if err != nil {
		return nil, err
	}
	var req vulkan.MemoryRequirements
	vulkan.GetBufferMemoryRequirements(dev, buf, &req)
	req.Deref()
	ai := vulkan.MemoryAllocateInfo{
		SType:           vulkan.StructureTypeMemoryAllocateInfo,
		AllocationSize:  req.Size,
		MemoryTypeIndex: typeIndex,
	}
	var mem vulkan.DeviceMemory
	if err := check("vkAllocateMemory", vulkan.AllocateMemory(dev, &ai, nil, &mem)); err != nil {
		vulkan.DestroyBuffer(dev, buf, nil)
		return nil, err
	}
	if err := check("vkBindBufferMemory", vulkan.BindBufferMemory(dev, buf, mem, 0)); err != nil {
		vulkan.DestroyBuffer(dev, buf, nil)
		vulkan.FreeMemory(dev, mem, nil)
		return nil, err
	}
	b := &block{mem: mem, buf: buf, size: size, free: []span{{0, size}}}
	if mapped {
		var p unsafe.Pointer
		if err := check("vkMapMemory", vulkan.MapMemory(dev, mem, 0, vulkan.DeviceSize(vulkan.WholeSize), 0, &p)); err != nil {
			b.destroy(dev)
			return nil, err
		}
		b.ptr = p
	}
	return b, nil
}

func (b *block) destroy(dev vulkan.Device) {
	if b.ptr != nil {
		vulkan.UnmapMemory(dev, b.mem)
		b.ptr = nil
	}
	vulkan.DestroyBuffer(dev, b.buf, nil)
	vulkan.FreeMemory(dev, b.mem, nil)
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
		b, err := newBlock(a.dev, a.typeIndex, bs, a.mapped)
		if err != nil && !dedicated && bs > size {
			// A smaller, dedicated block may still fit.
			dedicated, bs = true, size
			b, err = newBlock(a.dev, a.typeIndex, bs, a.mapped)
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
			b.destroy(a.dev)
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
		b.destroy(a.dev)
	}
	a.blocks = nil
	a.reserved = 0
}
