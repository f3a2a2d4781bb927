package vk

import (
	"fmt"
	"unsafe"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/kernels"
)

// Workgroup sizes: elementwise kernels use 256 invocations, row reductions
// 256 (a power of two, as reduce.glsl needs), and the register-blocked
// kernels 64 so that small problems still spread over several workgroups.
const (
	wgElem   = 256
	wgReduce = 256
	wgReg    = 64
)

// opCtx collects the bindings of one dispatch, copying misaligned views to
// aligned temporaries, and frees the temporaries once the work is recorded.
type opCtx struct {
	d     *Device
	op    string
	binds []binding
	temps []*engine.Tensor
	post  []func() error // run after the dispatch (copy-backs)
	err   error
}

func (d *Device) newOp(op string) *opCtx {
	return &opCtx{d: d, op: op, err: d.usable()}
}

// fail records the first error and frees the temporaries at once: no
// dispatch of this op will use them.
func (c *opCtx) fail(err error) {
	if c.err == nil {
		c.err = err
	}
	c.release()
}

func (c *opCtx) release() {
	for _, t := range c.temps {
		c.d.Free(t)
	}
	c.temps = nil
}

// check records a shape or dtype error.
func (c *opCtx) check(err error) {
	if err != nil {
		c.fail(err)
	}
}

// dtype requires t to have one of the dtypes, and F16 storage support.
func (c *opCtx) dtype(t *engine.Tensor, want ...engine.DType) {
	if c.err != nil {
		return
	}
	if t == nil {
		c.fail(fmt.Errorf("vk: %s: nil tensor", c.op))
		return
	}
	if err := engine.WantDType(c.op, t, want...); err != nil {
		c.fail(err)
		return
	}
	if t.DType == engine.F16 && !c.d.info.FP16Storage {
		c.fail(fmt.Errorf("vk: %s: %s is F16 but %s lacks 16-bit storage buffers", c.op, t.Name, c.d.info.Name))
	}
	if t.DType.Quantized() && t.ByteOffset()%4 != 0 {
		c.fail(fmt.Errorf("vk: %s: view %s starts inside a 32-bit word of its %v blocks", c.op, t.Name, t.DType))
	}
}

// rawBinding is t's byte range in its block.
func (c *opCtx) rawBinding(t *engine.Tensor, write bool) (binding, *allocation, error) {
	al, err := c.d.storage(c.op, t)
	if err != nil {
		return binding{}, nil, err
	}
	off := al.off + t.ByteOffset()
	size := t.Bytes()
	if t.DType.Quantized() {
		size = quantBindBytes(t) // whole words, and the one the kernels may read past the end
	}
	return binding{buf: al.blk.buf, off: off, size: size, write: write, dtype: t.DType, name: t.Name}, al, nil
}

func (c *opCtx) bindable(t *engine.Tensor, bd binding) error {
	if lim := c.d.bindLimit(); lim > 0 && bd.size > lim {
		return &RangeError{Op: c.op, Tensor: t.Name, Bytes: bd.size, Limit: lim, What: "maxStorageBufferRange"}
	}
	return nil
}

func (c *opCtx) aligned(bd binding) bool {
	return bd.off%c.d.bindAlign() == 0
}

// in binds t as an input, through an aligned copy if it is a misaligned view.
func (c *opCtx) in(t *engine.Tensor) {
	if c.err != nil {
		return
	}
	bd, _, err := c.rawBinding(t, false)
	if err != nil {
		c.fail(err)
		return
	}
	if !c.aligned(bd) {
		if t.DType.Quantized() {
			c.fail(fmt.Errorf("vk: %s: view %s of %v blocks is not bound at an aligned offset", c.op, t.Name, t.DType))
			return
		}
		tmp, err := c.d.Alloc(t.Name+".aligned", t.DType, t.Shape)
		if err != nil {
			c.fail(err)
			return
		}
		c.temps = append(c.temps, tmp)
		if err := c.d.copyRaw(c.op, tmp, t); err != nil {
			c.fail(err)
			return
		}
		c.in(tmp)
		return
	}
	if err := c.bindable(t, bd); err != nil {
		c.fail(err)
		return
	}
	c.binds = append(c.binds, bd)
}

// weighted checks and binds the operands of a weighted op (conv, linear):
// F32 activations, F32, F16 or block-quantized weights (whose rows of
// rowLen elements must be whole blocks), an optional F32 bias of outCh
// values. It returns 1 when a bias is bound, for the kernel's push
// constants.
func (c *opCtx) weighted(dst, x, w, bias *engine.Tensor, outCh, rowLen int) uint32 {
	if bias != nil {
		c.check(engine.WantShape(c.op, bias, outCh))
		c.dtype(bias, engine.F32)
	}
	c.dtype(x, engine.F32)
	c.dtype(w, weightDTypes...)
	if c.err == nil && w.DType.Quantized() {
		c.check(engine.WholeBlocks(c.op, w, rowLen, "rows"))
	}
	c.dtype(dst, engine.F32)
	c.in(x)
	c.in(w)
	hasBias := c.opt(bias)
	c.out(dst)
	return hasBias
}

// opt binds t, or the dummy buffer when t is nil (an absent bias).
func (c *opCtx) opt(t *engine.Tensor) uint32 {
	if t == nil {
		if c.err == nil {
			c.binds = append(c.binds, binding{buf: c.d.dummy.blk.buf, off: c.d.dummy.off, size: c.d.dummy.size})
		}
		return 0
	}
	c.in(t)
	return 1
}

// out binds t as the output; a misaligned view is computed into a
// temporary and copied back after the dispatch.
func (c *opCtx) out(t *engine.Tensor) {
	if c.err != nil {
		return
	}
	bd, _, err := c.rawBinding(t, true)
	if err != nil {
		c.fail(err)
		return
	}
	if !c.aligned(bd) {
		tmp, err := c.d.Alloc(t.Name+".aligned", t.DType, t.Shape)
		if err != nil {
			c.fail(err)
			return
		}
		c.temps = append(c.temps, tmp)
		c.post = append(c.post, func() error { return c.d.copyRaw(c.op, t, tmp) })
		c.out(tmp)
		return
	}
	if err := c.bindable(t, bd); err != nil {
		c.fail(err)
		return
	}
	c.binds = append(c.binds, bd)
}

// run records the dispatch and frees temporaries.
func (c *opCtx) run(k *kernels.Kernel, spec []uint32, push unsafe.Pointer, pushSize uintptr, groups [3]uint32) error {
	defer c.release()
	if c.err != nil {
		return c.err
	}
	if err := c.d.rec.dispatch(k, spec, push, pushSize, groups, c.binds); err != nil {
		return c.d.fail(fmt.Errorf("vk: %s: %w", c.op, err))
	}
	for _, f := range c.post {
		if err := f(); err != nil {
			return err
		}
	}
	return nil
}

// grid spreads n invocations over workgroups of wg, using y when x would
// exceed the device limit (kernels rebuild the flat index).
func (d *Device) grid(n, wg int) [3]uint32 {
	groups := (n + wg - 1) / wg
	return d.groupGrid(groups, 1)
}

// groupGrid lays out groups workgroups over x and y, with z as given.
func (d *Device) groupGrid(groups, z int) [3]uint32 {
	if groups < 1 {
		return [3]uint32{0, 0, 0}
	}
	maxX := int(min(d.maxGroups[0], 65535))
	x := min(groups, maxX)
	y := (groups + x - 1) / x
	return [3]uint32{uint32(x), uint32(y), uint32(z)}
}

// copyRaw records dst = src (same element count, any dtypes), using element
// offsets so that neither needs an aligned binding.
func (d *Device) copyRaw(op string, dst, src *engine.Tensor) error {
	if dst.NumElem() != src.NumElem() {
		return &engine.ShapeError{Op: op, Tensor: dst.Name, Got: dst.Shape.String(), Want: src.Shape.String()}
	}
	c := d.newOp(op)
	c.dtype(src, engine.F32, engine.F16)
	c.dtype(dst, engine.F32, engine.F16)
	if c.err != nil {
		return c.err
	}
	k := copyKernel(src.DType, dst.DType)
	var offs [2]uint32
	for i, t := range []*engine.Tensor{src, dst} {
		al, err := d.storage(op, t)
		if err != nil {
			return err
		}
		// Bind from the aligned offset at or below the view's start to its
		// end and address the view by its element offset from there (the
		// allocation starts aligned, so that offset is whole elements).
		es := int64(t.DType.Size())
		start := al.off + int64(t.Offset)*es
		off := start / d.bindAlign() * d.bindAlign()
		bd := binding{buf: al.blk.buf, off: off, size: alignUp(start-off+int64(t.NumElem())*es, 4), write: i == 1}
		if err := c.bindable(t, bd); err != nil {
			return err
		}
		c.binds = append(c.binds, bd)
		offs[i] = uint32((start - off) / es)
	}
	n := src.NumElem()
	p := kernels.CopyParams{N: uint32(n), SrcOff: offs[0], DstOff: offs[1]}
	return c.run(k, []uint32{wgElem}, unsafe.Pointer(&p), unsafe.Sizeof(p), d.grid(n, wgElem))
}

func copyKernel(src, dst engine.DType) *kernels.Kernel {
	switch {
	case src == engine.F32 && dst == engine.F32:
		return kernels.CopyF32F32
	case src == engine.F16 && dst == engine.F32:
		return kernels.CopyF16F32
	case src == engine.F32 && dst == engine.F16:
		return kernels.CopyF32F16
	}
	return kernels.CopyF16F16
}

// Copy copies x into dst of the same shape, converting dtypes.
func (d *Device) Copy(dst, x *engine.Tensor) error {
	if dst == nil || x == nil {
		return fmt.Errorf("vk: copy: nil tensor")
	}
	if !dst.Shape.Equal(x.Shape) {
		return &engine.ShapeError{Op: "copy", Tensor: dst.Name, Got: dst.Shape.String(), Want: x.Shape.String()}
	}
	if x.DType.Quantized() {
		return d.copyQuant(dst, x)
	}
	if !d.fits(dst, x) && d.usable() == nil {
		if ok, err := d.splitFlat([]*engine.Tensor{dst, x}, func(v []*engine.Tensor) error {
			return d.copyRaw("copy "+x.Name, v[0], v[1])
		}); ok {
			return err
		}
	}
	return d.copyRaw("copy "+x.Name, dst, x)
}

// texelsFit reports whether every tensor can be read as a texel buffer of
// comps-element texels: the device supports them and each tensor stays
// under maxTexelBufferElements (the spec only promises 65536 texels).
func (d *Device) texelsFit(comps int, ts ...*engine.Tensor) bool {
	bds := make([]binding, len(ts))
	for i, t := range ts {
		bds[i] = binding{size: t.Bytes(), dtype: t.DType}
	}
	return d.texelBindsFit(comps, bds...)
}

// texelBindsFit is texelsFit for bound ranges.
func (d *Device) texelBindsFit(comps int, bds ...binding) bool {
	for _, bd := range bds {
		if d.texelError(bd.name, comps, bd) != nil {
			return false
		}
	}
	return true
}

// texelError says why bd cannot be read as a texel buffer of comps-element
// texels, or returns nil: the ops choose their kernels by it and dispatch
// checks it again before making a view.
func (d *Device) texelError(op string, comps int, bd binding) error {
	if !d.info.TexelBuffers {
		return fmt.Errorf("vk: %s reads texel buffers, which %s lacks for R(GBA)32F/R(GBA)16F", op, d.info.Name)
	}
	texel := int64(comps * bd.dtype.Size())
	if bd.dtype.Quantized() {
		texel = int64(4 * comps) // R32UI or RGBA32UI words of the blocks
	}
	if bd.size%texel != 0 {
		return fmt.Errorf("vk: %s: %s is %d bytes, not whole %d-element texels", op, bd.name, bd.size, comps)
	}
	if lim := d.info.MaxTexelBufferElements; lim > 0 && bd.size/texel > lim {
		return &RangeError{Op: op, Tensor: bd.name, Bytes: bd.size, Limit: lim * texel, What: "maxTexelBufferElements"}
	}
	return nil
}
