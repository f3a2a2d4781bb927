package vk

import (
	"fmt"
	"math"
	"unsafe"

	"github.com/vulkan-go/vulkan"
	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/kernels"
)

// setsPerPool is the descriptor sets one pool holds; batches add pools as
// they need them and reset them all once their work completes.
const setsPerPool = 256

// maxBindings bounds the storage buffers of one kernel.
const maxBindings = 8

// binding is one storage-buffer range a dispatch reads or writes.
type binding struct {
	buf   vulkan.Buffer
	off   int64
	size  int64
	write bool
	// dtype and name describe the tensor bound, for texel-buffer views and
	// their errors.
	dtype engine.DType
	name  string
}

// batch is one command buffer being recorded or executed, with what it
// needs until it completes.
type batch struct {
	cmd      vulkan.CommandBuffer
	fence    vulkan.Fence
	pools    []vulkan.DescriptorPool
	pool     int // pool sets are allocated from
	left     int // sets left in pools[pool]
	queries  vulkan.QueryPool
	timed    []*kernels.Kernel // kernel of each timestamped dispatch
	n        int               // commands recorded
	ops      int               // dispatches recorded (n also counts copies)
	open     bool              // recording
	inFlight bool              // submitted, fence not yet waited on
	// touched lists every range its commands use, until it completes: a
	// host write may go straight to memory only where no unfinished batch
	// touches it.
	touched []rng
	// staging holds the staging blocks its copies read, filled up to
	// stageOff in the last one; they return to the pool when it completes.
	staging  []*block
	stageOff int64
	staged   int64 // staging bytes used
	// views are the texel-buffer views its descriptor sets point to,
	// destroyed once it completes.
	views []vulkan.BufferView
}

// destroyViews destroys b's texel-buffer views; b's work must be complete.
func (b *batch) destroyViews(dev vulkan.Device) {
	for _, v := range b.views {
		vulkan.DestroyBufferView(dev, v, nil)
	}
	clear(b.views)
	b.views = b.views[:0]
}

// rng is a byte range of a buffer touched since the last barrier.
type rng struct {
	buf    vulkan.Buffer
	lo, hi int64
}

// recorder owns the batches of a device and records dispatches into them.
type recorder struct {
	d        *Device
	batches  [2]*batch
	cur      int
	maxBatch int
	writes   []rng // written since the last barrier
	reads    []rng // read since the last barrier
	lastPipe vulkan.Pipeline
	barriers int // barriers recorded (for tests and profiling)
	// stagedWrites counts host writes that went through a staging copy
	// because pending work used their bytes (or memory is not host-visible).
	stagedWrites int
	waits        int // fence waits that blocked the host (retire's are not)
}

func newRecorder(d *Device, maxBatch int) (*recorder, error) {
	r := &recorder{d: d, maxBatch: maxBatch}
	ai := vulkan.CommandBufferAllocateInfo{
		SType:              vulkan.StructureTypeCommandBufferAllocateInfo,
		CommandPool:        d.cmdPool,
		Level:              vulkan.CommandBufferLevelPrimary,
		CommandBufferCount: 2,
	}
	cmds := make([]vulkan.CommandBuffer, 2)
	if err := check("vkAllocateCommandBuffers", vulkan.AllocateCommandBuffers(d.dev, &ai, cmds)); err != nil {
		return nil, err
	}
	for i := range r.batches {
		b := &batch{cmd: cmds[i]}
		r.batches[i] = b
		fi := vulkan.FenceCreateInfo{SType: vulkan.StructureTypeFenceCreateInfo}
		var fence vulkan.Fence
		if err := check("vkCreateFence", vulkan.CreateFence(d.dev, &fi, nil, &fence)); err != nil {
			return r, err
		}
		b.fence = fence
		if d.prof != nil {
			qi := vulkan.QueryPoolCreateInfo{
				SType:      vulkan.StructureTypeQueryPoolCreateInfo,
				QueryType:  vulkan.QueryTypeTimestamp,
				QueryCount: uint32(maxBatch + 1),
			}
			var qp vulkan.QueryPool
			if err := check("vkCreateQueryPool", vulkan.CreateQueryPool(d.dev, &qi, nil, &qp)); err != nil {
				return r, err
			}
			b.queries = qp
		}
	}
	return r, nil
}

func (r *recorder) destroy() {
	dev := r.d.dev
	for _, b := range r.batches {
		if b == nil {
			continue
		}
		b.destroyViews(dev)
		for _, p := range b.pools {
			vulkan.DestroyDescriptorPool(dev, p, nil)
		}
		if b.fence != nil {
			vulkan.DestroyFence(dev, b.fence, nil)
		}
		if b.queries != nil {
			vulkan.DestroyQueryPool(dev, b.queries, nil)
		}
	}
}

func fullBarrier(cmd vulkan.CommandBuffer) {
	stages := vulkan.PipelineStageFlags(vulkan.PipelineStageComputeShaderBit | vulkan.PipelineStageTransferBit)
	vulkan.CmdPipelineBarrier(cmd, stages, stages, 0, 1, []vulkan.MemoryBarrier{{
		SType:         vulkan.StructureTypeMemoryBarrier,
		SrcAccessMask: vulkan.AccessFlags(vulkan.AccessShaderWriteBit | vulkan.AccessTransferWriteBit),
		DstAccessMask: vulkan.AccessFlags(vulkan.AccessShaderReadBit | vulkan.AccessShaderWriteBit |
			vulkan.AccessTransferReadBit | vulkan.AccessTransferWriteBit),
	}}, 0, nil, 0, nil)
}

// begin returns the batch being recorded, opening one when needed (and
// first waiting for the previous use of its command buffer to finish).
func (r *recorder) begin() (*batch, error) {
	b := r.batches[r.cur]
	if b.open {
		return b, nil
	}
	if err := r.wait(b); err != nil {
		return nil, err
	}
	bi := vulkan.CommandBufferBeginInfo{
		SType: vulkan.StructureTypeCommandBufferBeginInfo,
		Flags: vulkan.CommandBufferUsageFlags(vulkan.CommandBufferUsageOneTimeSubmitBit),
	}
	if err := check("vkBeginCommandBuffer", vulkan.BeginCommandBuffer(b.cmd, &bi)); err != nil {
		return nil, err
	}
	b.open = true
	b.n, b.ops = 0, 0
	b.timed = b.timed[:0]
	r.lastPipe = nil
	// Submission order alone does not order work between command buffers:
	// this barrier orders everything below after every earlier submission.
	fullBarrier(b.cmd)
	r.writes, r.reads = r.writes[:0], r.reads[:0]
	if b.queries != nil {
		vulkan.CmdResetQueryPool(b.cmd, b.queries, 0, uint32(r.maxBatch+1))
		vulkan.CmdWriteTimestamp(b.cmd, vulkan.PipelineStageBottomOfPipeBit, b.queries, 0)
	}
	return b, nil
}

// submit ends and submits the open batch without waiting, then moves on to
// the other batch.
func (r *recorder) submit() error {
	b := r.batches[r.cur]
	if !b.open {
		return nil
	}
	b.open = false
	if err := check("vkEndCommandBuffer", vulkan.EndCommandBuffer(b.cmd)); err != nil {
		return err
	}
	si := []vulkan.SubmitInfo{{
		SType:              vulkan.StructureTypeSubmitInfo,
		CommandBufferCount: 1,
		PCommandBuffers:    []vulkan.CommandBuffer{b.cmd},
	}}
	if err := check("vkQueueSubmit", withoutGC(func() vulkan.Result { return vulkan.QueueSubmit(r.d.queue, 1, si, b.fence) })); err != nil {
		return err
	}
	b.inFlight = true
	r.cur = 1 - r.cur
	return nil
}

// wait blocks until b's submitted work is done and recycles its resources.
func (r *recorder) wait(b *batch) error {
	if !b.inFlight {
		return nil
	}
	if vulkan.GetFenceStatus(r.d.dev, b.fence) != vulkan.Success {
		r.waits++
	}
	if err := check("vkWaitForFences", vulkan.WaitForFences(r.d.dev, 1, []vulkan.Fence{b.fence}, vulkan.True, math.MaxUint64)); err != nil {
		return err
	}
	b.inFlight = false
	if err := check("vkResetFences", vulkan.ResetFences(r.d.dev, 1, []vulkan.Fence{b.fence})); err != nil {
		return err
	}
	for _, p := range b.pools {
		if err := check("vkResetDescriptorPool", vulkan.ResetDescriptorPool(r.d.dev, p, 0)); err != nil {
			return err
		}
	}
	b.pool, b.left = 0, 0
	if len(b.pools) > 0 {
		b.left = setsPerPool
	}
	b.destroyViews(r.d.dev)
	b.touched = b.touched[:0]
	for _, st := range b.staging {
		r.d.staging.put(st)
	}
	clear(b.staging)
	b.staging, b.stageOff, b.staged = b.staging[:0], 0, 0
	if r.d.prof != nil && len(b.timed) > 0 {
		return r.d.prof.collect(r.d.dev, b)
	}
	return nil
}

// retire recycles submitted batches that have completed, without blocking.
func (r *recorder) retire() error {
	for _, b := range r.batches {
		if !b.inFlight {
			continue
		}
		switch res := vulkan.GetFenceStatus(r.d.dev, b.fence); res {
		case vulkan.Success:
			if err := r.wait(b); err != nil {
				return err
			}
		case vulkan.NotReady:
		default:
			return check("vkGetFenceStatus", res)
		}
	}
	return nil
}

// busy reports whether work recorded or still running uses any byte of x.
func (r *recorder) busy(x rng) bool {
	for _, b := range r.batches {
		if (b.open || b.inFlight) && overlaps(b.touched, x) {
			return true
		}
	}
	return false
}

// touch notes a range b's commands use. Ops bind the same tensors again and
// again, so a range already among the last few is not added twice.
func (b *batch) touch(x rng) {
	for i := len(b.touched) - 1; i >= 0 && i >= len(b.touched)-8; i-- {
		if y := b.touched[i]; y.buf == x.buf && y.lo <= x.lo && x.hi <= y.hi {
			return
		}
	}
	b.touched = append(b.touched, x)
}

// stage returns room for n bytes in a host-visible staging block that stays
// alive until the open batch completes, so that a copy recorded into that
// batch may read it.
func (r *recorder) stage(n int64) (*batch, *block, int64, error) {
	b, err := r.begin()
	if err != nil {
		return nil, nil, 0, err
	}
	size := alignUp(n, allocAlign)
	if last := len(b.staging) - 1; last >= 0 && b.stageOff+size <= b.staging[last].size {
		off := b.stageOff
		b.stageOff += size
		b.staged += size
		return b, b.staging[last], off, nil
	}
	st, err := r.d.stager().get(n)
	if err != nil {
		return nil, nil, 0, err
	}
	b.staging = append(b.staging, st)
	b.stageOff = size
	b.staged += size
	return b, st, 0, nil
}

// flush submits pending work and waits for all of it.
func (r *recorder) flush() error {
	if err := r.submit(); err != nil {
		return err
	}
	for _, b := range r.batches {
		if err := r.wait(b); err != nil {
			return err
		}
	}
	return nil
}

// idle reports whether no work is recorded or in flight.
func (r *recorder) idle() bool {
	for _, b := range r.batches {
		if b.open || b.inFlight {
			return false
		}
	}
	return true
}

func (r *recorder) descriptorSet(b *batch, layout vulkan.DescriptorSetLayout) (vulkan.DescriptorSet, error) {
	if b.left == 0 {
		b.pool++
		if len(b.pools) == 0 {
			b.pool = 0
		}
		if b.pool >= len(b.pools) {
			ci := vulkan.DescriptorPoolCreateInfo{
				SType:         vulkan.StructureTypeDescriptorPoolCreateInfo,
				MaxSets:       setsPerPool,
				PoolSizeCount: 2,
				PPoolSizes: []vulkan.DescriptorPoolSize{{
					Type:            vulkan.DescriptorTypeStorageBuffer,
					DescriptorCount: setsPerPool * maxBindings,
				}, {
					Type:            vulkan.DescriptorTypeUniformTexelBuffer,
					DescriptorCount: setsPerPool * maxBindings,
				}},
			}
			var p vulkan.DescriptorPool
			if err := check("vkCreateDescriptorPool", vulkan.CreateDescriptorPool(r.d.dev, &ci, nil, &p)); err != nil {
				return nil, err
			}
			b.pools = append(b.pools, p)
			b.pool = len(b.pools) - 1
		}
		b.left = setsPerPool
	}
	ai := vulkan.DescriptorSetAllocateInfo{
		SType:              vulkan.StructureTypeDescriptorSetAllocateInfo,
		DescriptorPool:     b.pools[b.pool],
		DescriptorSetCount: 1,
		PSetLayouts:        []vulkan.DescriptorSetLayout{layout},
	}
	var set vulkan.DescriptorSet
	if err := check("vkAllocateDescriptorSets", vulkan.AllocateDescriptorSets(r.d.dev, &ai, &set)); err != nil {
		return nil, err
	}
	b.left--
	return set, nil
}

func overlaps(list []rng, x rng) bool {
	for _, y := range list {
		if y.buf == x.buf && y.lo < x.hi && x.lo < y.hi {
			return true
		}
	}
	return false
}

// hazard records a barrier when the ranges conflict with what earlier
// commands since the last barrier touched (read after write, write after
// read or write), then notes the new ranges.
func (r *recorder) hazard(b *batch, binds []binding) {
	need := false
	for _, bd := range binds {
		x := rng{bd.buf, bd.off, bd.off + bd.size}
		if overlaps(r.writes, x) || (bd.write && overlaps(r.reads, x)) {
			need = true
			break
		}
	}
	if need {
		fullBarrier(b.cmd)
		r.barriers++
		r.writes, r.reads = r.writes[:0], r.reads[:0]
	}
	for _, bd := range binds {
		x := rng{bd.buf, bd.off, bd.off + bd.size}
		b.touch(x)
		if bd.write {
			r.writes = append(r.writes, x)
		} else {
			r.reads = append(r.reads, x)
		}
	}
}

// dispatch records one kernel launch.
func (r *recorder) dispatch(k *kernels.Kernel, spec []uint32, push unsafe.Pointer, pushSize uintptr,
	groups [3]uint32, binds []binding) error {
	if len(binds) != k.Bindings {
		return fmt.Errorf("vk: kernel %s takes %d bindings, got %d", k.Name, k.Bindings, len(binds))
	}
	if int(pushSize) != k.PushSize {
		return fmt.Errorf("vk: kernel %s takes %d bytes of push constants, got %d", k.Name, k.PushSize, pushSize)
	}
	lim := r.d.maxGroups
	if groups[0] == 0 || groups[1] == 0 || groups[2] == 0 {
		return nil // nothing to do
	}
	if groups[0] > lim[0] || groups[1] > lim[1] || groups[2] > lim[2] {
		return fmt.Errorf("vk: kernel %s: %v workgroups exceed the device limit %v", k.Name, groups, lim)
	}
	p, err := r.d.pipes.get(k, spec)
	if err != nil {
		return err
	}
	b, err := r.begin()
	if err != nil {
		return err
	}
	set, err := r.descriptorSet(b, p.set)
	if err != nil {
		return err
	}
	infos := make([]vulkan.DescriptorBufferInfo, len(binds))
	writes := make([]vulkan.WriteDescriptorSet, len(binds))
	for i, bd := range binds {
		writes[i] = vulkan.WriteDescriptorSet{
			SType:           vulkan.StructureTypeWriteDescriptorSet,
			DstSet:          set,
			DstBinding:      uint32(i),
			DescriptorCount: 1,
			DescriptorType:  descriptorType(k.Texels, i),
		}
		if k.Texels&(1<<i) == 0 {
			infos[i] = vulkan.DescriptorBufferInfo{Buffer: bd.buf, Offset: vulkan.DeviceSize(bd.off), Range: vulkan.DeviceSize(bd.size)}
			writes[i].PBufferInfo = infos[i : i+1]
			continue
		}
		view, err := r.texelView(k, bd)
		if err != nil {
			return err
		}
		b.views = append(b.views, view)
		writes[i].PTexelBufferView = []vulkan.BufferView{view}
	}
	vulkan.UpdateDescriptorSets(r.d.dev, uint32(len(writes)), writes, 0, nil)
	r.hazard(b, binds)
	if p.pipe != r.lastPipe {
		vulkan.CmdBindPipeline(b.cmd, vulkan.PipelineBindPointCompute, p.pipe)
		r.lastPipe = p.pipe
	}
	vulkan.CmdBindDescriptorSets(b.cmd, vulkan.PipelineBindPointCompute, p.layout, 0, 1, []vulkan.DescriptorSet{set}, 0, nil)
	if pushSize > 0 {
		vulkan.CmdPushConstants(b.cmd, p.layout, vulkan.ShaderStageFlags(vulkan.ShaderStageComputeBit), 0, uint32(pushSize), push)
	}
	vulkan.CmdDispatch(b.cmd, groups[0], groups[1], groups[2])
	b.n++
	b.ops++
	if b.queries != nil {
		b.timed = append(b.timed, k)
		vulkan.CmdWriteTimestamp(b.cmd, vulkan.PipelineStageBottomOfPipeBit, b.queries, uint32(len(b.timed)))
	}
	if b.n >= r.maxBatch {
		return r.submit()
	}
	return nil
}

// texelView makes a uniform texel-buffer view of bd for kernel k: RGBA32F
// over F32 tensors, RGBA16F over F16 ones, one texel per 4 elements (R32F
// and R16F, one per element, for kernels with ScalarTexels).
func (r *recorder) texelView(k *kernels.Kernel, bd binding) (vulkan.BufferView, error) {
	format, comps := vulkan.FormatR32g32b32a32Sfloat, 4
	switch {
	case k.ScalarTexels && bd.dtype == engine.F16:
		format, comps = vulkan.FormatR16Sfloat, 1
	case k.ScalarTexels:
		format, comps = vulkan.FormatR32Sfloat, 1
	case bd.dtype == engine.F16:
		format = vulkan.FormatR16g16b16a16Sfloat
	}
	if err := r.d.texelError("kernel "+k.Name, comps, bd); err != nil {
		return nil, err
	}
	ci := vulkan.BufferViewCreateInfo{
		SType:  vulkan.StructureTypeBufferViewCreateInfo,
		Buffer: bd.buf,
		Format: format,
		Offset: vulkan.DeviceSize(bd.off),
		Range:  vulkan.DeviceSize(bd.size),
	}
	var view vulkan.BufferView
	if err := check("vkCreateBufferView "+bd.name, vulkan.CreateBufferView(r.d.dev, &ci, nil, &view)); err != nil {
		return nil, err
	}
	return view, nil
}

// updateBuffer records an inline upload of small data (at most 64 KiB per
// command, a multiple of 4 bytes) into buf at off.
func (r *recorder) updateBuffer(buf vulkan.Buffer, off int64, data []byte) error {
	b, err := r.begin()
	if err != nil {
		return err
	}
	r.hazard(b, []binding{{buf: buf, off: off, size: int64(len(data)), write: true}})
	for len(data) > 0 {
		n := min(len(data), 65536)
		vulkan.CmdUpdateBuffer(b.cmd, buf, vulkan.DeviceSize(off), vulkan.DeviceSize(n), (*uint32)(unsafe.Pointer(&data[0])))
		data, off = data[n:], off+int64(n)
	}
	b.n++
	return nil
}

// copyBuffer records a buffer-to-buffer copy.
func (r *recorder) copyBuffer(src vulkan.Buffer, srcOff int64, dst vulkan.Buffer, dstOff, size int64) error {
	b, err := r.begin()
	if err != nil {
		return err
	}
	r.hazard(b, []binding{{buf: src, off: srcOff, size: size}, {buf: dst, off: dstOff, size: size, write: true}})
	vulkan.CmdCopyBuffer(b.cmd, src, dst, 1, []vulkan.BufferCopy{{
		SrcOffset: vulkan.DeviceSize(srcOff), DstOffset: vulkan.DeviceSize(dstOff), Size: vulkan.DeviceSize(size)}})
	b.n++
	return nil
}
