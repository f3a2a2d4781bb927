package vk

import (
	"fmt"
	"unsafe"

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
	buf   vkBuffer
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
	cmd      vkCmd
	fence    vkFence
	pools    []vkDescPool
	pool     int // pool sets are allocated from
	left     int // sets left in pools[pool]
	queries  vkQueryPool
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
	views []vkView
}

// destroyViews destroys b's texel-buffer views; b's work must be complete.
func (b *batch) destroyViews(a *api) {
	for _, v := range b.views {
		a.destroyBufferView(v)
	}
	clear(b.views)
	b.views = b.views[:0]
}

// rng is a byte range of a buffer touched since the last barrier.
type rng struct {
	buf    vkBuffer
	lo, hi int64
}

// recorder owns the batches of a device and records dispatches into them.
type recorder struct {
	d        *Device
	vk       *api
	batches  [2]*batch
	cur      int
	maxBatch int
	writes   []rng // written since the last barrier
	reads    []rng // read since the last barrier
	lastPipe vkPipeline
	barriers int // barriers recorded (for tests and profiling)
	// stagedWrites counts host writes that went through a staging copy
	// because pending work used their bytes (or memory is not host-visible).
	stagedWrites int
	waits        int // fence waits that blocked the host (retire's are not)
	// abandoned counts batches whose recorded work was dropped because
	// ending or submitting them failed; dropped is that failure until the
	// next Flush or Read reports it (see Device.Flush).
	abandoned int
	dropped   error
}

func newRecorder(d *Device, maxBatch int) (*recorder, error) {
	r := &recorder{d: d, vk: d.vk, maxBatch: maxBatch}
	for i := range r.batches {
		b := &batch{}
		r.batches[i] = b
		var err error
		if b.cmd, err = r.vk.allocateCommandBuffer(d.cmdPool); err != nil {
			return r, err
		}
		if b.fence, err = r.vk.createFence(); err != nil {
			return r, err
		}
		if d.prof != nil {
			if b.queries, err = r.vk.createQueryPool(uint32(maxBatch + 1)); err != nil {
				return r, err
			}
		}
	}
	return r, nil
}

// destroy frees every object of the batches; the device must be idle.
func (r *recorder) destroy() {
	for _, b := range r.batches {
		if b == nil {
			continue
		}
		b.destroyViews(r.vk)
		for _, p := range b.pools {
			r.vk.destroyDescriptorPool(p)
		}
		b.pools = nil
		if b.fence != 0 {
			r.vk.destroyFence(b.fence)
		}
		if b.queries != 0 {
			r.vk.destroyQueryPool(b.queries)
		}
		if b.cmd != 0 {
			r.vk.freeCommandBuffer(r.d.cmdPool, b.cmd)
		}
		*b = batch{}
	}
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
	if err := r.vk.begin(b.cmd); err != nil {
		return nil, err
	}
	b.open = true
	b.n, b.ops = 0, 0
	b.timed = b.timed[:0]
	r.lastPipe = 0
	// Submission order alone does not order work between command buffers:
	// this barrier orders everything below after every earlier submission.
	r.vk.cmdBarrier(b.cmd)
	r.writes, r.reads = r.writes[:0], r.reads[:0]
	if b.queries != 0 {
		r.vk.cmdResetQueries(b.cmd, b.queries, uint32(r.maxBatch+1))
		r.vk.cmdTimestamp(b.cmd, b.queries, 0)
	}
	return b, nil
}

// submit ends and submits the open batch without waiting, then moves on to
// the other batch. If ending or submitting fails, the batch's work is
// dropped (see abandon) and the error returned.
func (r *recorder) submit() error {
	b := r.batches[r.cur]
	if !b.open {
		return nil
	}
	b.open = false
	err := r.vk.end(b.cmd)
	if err == nil {
		err = r.vk.submit(b.cmd, b.fence)
	}
	if err != nil {
		r.abandon(b, err)
		return err
	}
	b.inFlight = true
	r.cur = 1 - r.cur
	return nil
}

// abandon drops the work recorded in b, which never reached the device:
// its descriptor sets, views and staging blocks are recycled at once, and
// the next begin rerecords the command buffer from scratch. What the
// dropped commands would have written stays unwritten. The failed call
// returns err, but that caller may not own the dropped work (an upload
// submits the ops recorded before it), so the next Flush or Read reports
// it too.
func (r *recorder) abandon(b *batch, err error) {
	r.abandoned++
	if r.dropped == nil {
		r.dropped = fmt.Errorf("vk: work recorded before a failed submission was dropped; tensors it wrote hold stale values: %w", err)
	}
	b.open, b.inFlight = false, false
	r.recycle(b)
	r.writes, r.reads = r.writes[:0], r.reads[:0]
	r.lastPipe = 0
}

// wait blocks until b's submitted work is done and recycles its resources.
func (r *recorder) wait(b *batch) error {
	if !b.inFlight {
		return nil
	}
	if r.vk.fenceStatus(b.fence) != vkSuccess {
		r.waits++
	}
	if err := r.vk.waitFence(b.fence); err != nil {
		return err
	}
	b.inFlight = false
	if err := r.vk.resetFence(b.fence); err != nil {
		return err
	}
	if err := r.recycle(b); err != nil {
		return err
	}
	if r.d.prof != nil && len(b.timed) > 0 {
		return r.d.prof.collect(r.vk, b)
	}
	return nil
}

// recycle returns what b's work held to the pools; the device must not be
// using it (b completed, or was never submitted).
func (r *recorder) recycle(b *batch) error {
	var err error
	for _, p := range b.pools {
		if e := r.vk.resetDescriptorPool(p); e != nil && err == nil {
			err = e
		}
	}
	b.pool, b.left = 0, 0
	if len(b.pools) > 0 {
		b.left = setsPerPool
	}
	b.destroyViews(r.vk)
	b.touched = b.touched[:0]
	for _, st := range b.staging {
		r.d.staging.put(st)
	}
	clear(b.staging)
	b.staging, b.stageOff, b.staged = b.staging[:0], 0, 0
	return err
}

// trimPools keeps one descriptor pool per batch once all work is done:
// a batch holds as many pools as its largest recording needed, and an idle
// device (a server between requests, or after a failure split the work
// differently) need not.
func (r *recorder) trimPools() {
	for _, b := range r.batches {
		if b.open || b.inFlight || len(b.pools) <= 1 {
			continue
		}
		for _, p := range b.pools[1:] {
			r.vk.destroyDescriptorPool(p)
		}
		clear(b.pools[1:])
		b.pools = b.pools[:1]
		b.pool, b.left = 0, setsPerPool
	}
}

// retire recycles submitted batches that have completed, without blocking.
func (r *recorder) retire() error {
	for _, b := range r.batches {
		if !b.inFlight {
			continue
		}
		switch res := r.vk.fenceStatus(b.fence); res {
		case vkSuccess:
			if err := r.wait(b); err != nil {
				return err
			}
		case vkNotReady:
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

func (r *recorder) descriptorSet(b *batch, layout vkSetLayout) (vkSet, error) {
	if b.left == 0 {
		b.pool++
		if len(b.pools) == 0 {
			b.pool = 0
		}
		if b.pool >= len(b.pools) {
			p, err := r.vk.createDescriptorPool(setsPerPool, setsPerPool*maxBindings)
			if err != nil {
				return 0, err
			}
			b.pools = append(b.pools, p)
			b.pool = len(b.pools) - 1
		}
		b.left = setsPerPool
	}
	set, err := r.vk.allocateSet(b.pools[b.pool], layout)
	if err != nil {
		return 0, err
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
		r.vk.cmdBarrier(b.cmd)
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
	w := setWrites{n: len(binds), texels: k.Texels}
	for i, bd := range binds {
		if k.Texels&(1<<i) == 0 {
			w.bufs[i], w.offs[i], w.ranges[i] = uint64(bd.buf), uint64(bd.off), uint64(bd.size)
			continue
		}
		view, err := r.texelView(k, bd)
		if err != nil {
			return err
		}
		b.views = append(b.views, view)
		w.views[i] = uint64(view)
	}
	r.vk.writeSet(set, &w)
	r.hazard(b, binds)
	if p.pipe != r.lastPipe {
		r.vk.cmdBindPipeline(b.cmd, p.pipe)
		r.lastPipe = p.pipe
	}
	r.vk.cmdBindSet(b.cmd, p.layout, set)
	if pushSize > 0 {
		r.vk.cmdPush(b.cmd, p.layout, pushSize, push)
	}
	r.vk.cmdDispatch(b.cmd, groups)
	b.n++
	b.ops++
	if b.queries != 0 {
		b.timed = append(b.timed, k)
		r.vk.cmdTimestamp(b.cmd, b.queries, uint32(len(b.timed)))
	}
	if b.n >= r.maxBatch {
		return r.submit()
	}
	return nil
}

// texelView makes a uniform texel-buffer view of bd for kernel k: RGBA32F
// over F32 tensors, RGBA16F over F16 ones, one texel per 4 elements (R32F
// and R16F, one per element, for kernels with ScalarTexels); R32UI words
// over block-quantized ones.
func (r *recorder) texelView(k *kernels.Kernel, bd binding) (vkView, error) {
	format, comps := uint32(formatRGBA32F), 4
	switch {
	case bd.dtype.Quantized() && k.QuadTexels:
		format, comps = formatRGBA32UI, 4 // 16 bytes of blocks per texel
	case bd.dtype.Quantized():
		format, comps = formatR32UI, 1 // the blocks' 32-bit words (kernels/glsl/quant.glsl)
	case k.ScalarTexels && bd.dtype == engine.F16:
		format, comps = formatR16F, 1
	case k.ScalarTexels:
		format, comps = formatR32F, 1
	case bd.dtype == engine.F16:
		format = formatRGBA16F
	}
	if err := r.d.texelError("kernel "+k.Name, comps, bd); err != nil {
		return 0, err
	}
	view, err := r.vk.createBufferView(bd.buf, format, bd.off, bd.size)
	if err != nil {
		return 0, fmt.Errorf("texel view of %s: %w", bd.name, err)
	}
	return view, nil
}

// updateBuffer records an inline upload of small data (at most 64 KiB per
// command, a multiple of 4 bytes) into buf at off.
func (r *recorder) updateBuffer(buf vkBuffer, off int64, data []byte) error {
	b, err := r.begin()
	if err != nil {
		return err
	}
	r.hazard(b, []binding{{buf: buf, off: off, size: int64(len(data)), write: true}})
	for len(data) > 0 {
		n := min(len(data), 65536)
		r.vk.cmdUpdate(b.cmd, buf, off, data[:n])
		data, off = data[n:], off+int64(n)
	}
	b.n++
	return nil
}

// copyBuffer records a buffer-to-buffer copy.
func (r *recorder) copyBuffer(src vkBuffer, srcOff int64, dst vkBuffer, dstOff, size int64) error {
	b, err := r.begin()
	if err != nil {
		return err
	}
	r.hazard(b, []binding{{buf: src, off: srcOff, size: size}, {buf: dst, off: dstOff, size: size, write: true}})
	r.vk.cmdCopy(b.cmd, src, srcOff, dst, dstOff, size)
	b.n++
	return nil
}
