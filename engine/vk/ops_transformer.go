package vk

import (
	"fmt"
	"unsafe"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/kernels"
)

// The ops of the transformer text encoders and DiTs (Qwen3, Z-Image):
// RMSNorm, rotary embeddings and SwiGLU. Attention is in ops_attention.go.

// RMSNorm normalises over the last dim by the root mean square:
// x / sqrt(mean(x²) + eps) * gamma; gamma [D], or nil for no scale.
func (d *Device) RMSNorm(dst, x, gamma *engine.Tensor, eps float32) error {
	if dst == nil || x == nil {
		return fmt.Errorf("vk: rms_norm: nil tensor")
	}
	c := d.newOp("rms_norm " + x.Name)
	if len(x.Shape) < 1 {
		return &engine.ShapeError{Op: "rms_norm", Tensor: x.Name, Got: x.Shape.String(), Want: "[..., D]"}
	}
	dim := x.Shape[len(x.Shape)-1]
	c.check(sameShape(c.op, dst, x))
	if gamma != nil {
		c.check(engine.WantShape(c.op, gamma, dim))
		c.dtype(gamma, engine.F32)
	}
	c.dtype(x, engine.F32)
	c.dtype(dst, engine.F32)
	rows := x.NumElem() / dim
	if c.err == nil && !d.fits(dst, x) {
		// Rows are independent: normalise the tensor in pieces of rows.
		if ok, err := d.splitLeading([]*engine.Tensor{flat2(dst, dim), flat2(x, dim)}, func(v []*engine.Tensor) error {
			return d.RMSNorm(v[0], v[1], gamma, eps)
		}); ok {
			return err
		}
	}
	c.in(x)
	hasGamma := c.opt(gamma)
	c.out(dst)
	if c.err != nil {
		return c.err
	}
	p := kernels.RMSNormParams{Rows: uint32(rows), D: uint32(dim), Eps: eps, HasGamma: hasGamma}
	if d.tuning == TuningCPU && dim%4 == 0 && rows >= 64 {
		// One invocation per row: no barriers (slow on llvmpipe).
		return c.run(kernels.RMSNormRows, []uint32{wgReg}, unsafe.Pointer(&p), unsafe.Sizeof(p), d.grid(rows, wgReg))
	}
	return c.run(kernels.RMSNorm, []uint32{rowWG(dim)}, unsafe.Pointer(&p), unsafe.Sizeof(p), d.groupGrid(rows, 1))
}

// flat2 views t as [rows, dim] (dim divides its element count); on a
// malformed tensor it returns t itself for the op to reject.
func flat2(t *engine.Tensor, dim int) *engine.Tensor {
	v, err := t.Reshape(t.NumElem()/dim, dim)
	if err != nil {
		return t
	}
	return v
}

// Rope rotates pairs of each head of x [B, L, H*D] by per-token angles
// (cos and sin [1 or B, L, D/2]); dst may be x.
func (d *Device) Rope(dst, x, cos, sin *engine.Tensor, heads int, mode engine.RopeMode) error {
	if dst == nil || x == nil || cos == nil || sin == nil {
		return fmt.Errorf("vk: rope: nil tensor")
	}
	c := d.newOp("rope " + x.Name)
	nb, l, dim, err := engine.RopeCheck(x, cos, sin, heads, mode)
	if err != nil {
		return err
	}
	c.check(sameShape(c.op, dst, x))
	for _, t := range []*engine.Tensor{x, cos, sin, dst} {
		c.dtype(t, engine.F32)
	}
	if c.err == nil && !d.fits(dst, x, cos, sin) {
		if ok, err := d.ropePieces(dst, x, cos, sin, heads, mode, nb, l); ok {
			return err
		}
	}
	c.in(x)
	c.in(cos)
	c.in(sin)
	c.out(dst)
	if c.err != nil {
		return c.err
	}
	p := kernels.RopeParams{Heads: uint32(heads), D: uint32(dim), L: uint32(l), Mode: uint32(mode)}
	if cos.Shape[0] == nb && nb > 1 {
		p.TableBatch = 1
	}
	k, n := kernels.Rope, x.NumElem()/2
	if (mode == engine.RopeHalf && dim%8 == 0) || (mode == engine.RopeInterleaved && dim%4 == 0) {
		k, n = kernels.RopeVec4, x.NumElem()/4
	}
	p.N = uint32(n)
	return c.run(k, []uint32{wgElem}, unsafe.Pointer(&p), unsafe.Sizeof(p), d.grid(n, wgElem))
}

// ropePieces runs a Rope whose operands do not all bind whole over pieces
// of batch rows, or of the tokens of a single batch row; false when
// neither axis splits.
func (d *Device) ropePieces(dst, x, cos, sin *engine.Tensor, heads int, mode engine.RopeMode, nb, l int) (bool, error) {
	f := func(v []*engine.Tensor) error { return d.Rope(v[0], v[1], v[2], v[3], heads, mode) }
	ts := []*engine.Tensor{dst, x, cos, sin}
	w, half := x.Shape[2], cos.Shape[2]
	if nb > 1 {
		tb := int64(0) // a table shared by the batch is bound whole
		if cos.Shape[0] == nb {
			tb = cos.Bytes() / int64(nb)
		}
		xb := x.Bytes() / int64(nb)
		return d.split(nb, ts, []int64{xb, xb, tb, tb}, [][]int{{-1, l, w}, {-1, l, w}, {-1, l, half}, {-1, l, half}}, f)
	}
	xb, tb := int64(4*w), int64(4*half)
	return d.split(l, ts, []int64{xb, xb, tb, tb}, [][]int{{1, -1, w}, {1, -1, w}, {1, -1, half}, {1, -1, half}}, f)
}

// SwiGLU: dst = silu(gate) * up, all of one shape; dst may be gate or up.
func (d *Device) SwiGLU(dst, gate, up *engine.Tensor) error {
	if dst == nil || gate == nil || up == nil {
		return fmt.Errorf("vk: swiglu: nil tensor")
	}
	c := d.newOp("swiglu " + gate.Name)
	c.check(sameShape(c.op, up, gate))
	c.check(sameShape(c.op, dst, gate))
	for _, t := range []*engine.Tensor{gate, up, dst} {
		c.dtype(t, engine.F32)
	}
	if c.err == nil && !d.fits(dst, gate, up) {
		if ok, err := d.splitFlat([]*engine.Tensor{dst, gate, up}, func(v []*engine.Tensor) error {
			return d.SwiGLU(v[0], v[1], v[2])
		}); ok {
			return err
		}
	}
	c.in(gate)
	c.in(up)
	c.out(dst)
	if c.err != nil {
		return c.err
	}
	n := gate.NumElem()
	k := kernels.SwiGLU
	if n%4 == 0 {
		k, n = kernels.SwiGLUVec4, n/4
	}
	p := kernels.SwiGLUParams{N: uint32(n)}
	return c.run(k, []uint32{wgElem}, unsafe.Pointer(&p), unsafe.Sizeof(p), d.grid(n, wgElem))
}
