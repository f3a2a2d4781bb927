package vk

import (
	"fmt"
	"unsafe"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/kernels"
)

// GroupNorm normalises x [N, C, ...] in groups of C/groups channels.
func (d *Device) GroupNorm(dst, x, gamma, beta *engine.Tensor, groups int, eps float32, silu bool) error {
	c := d.newOp("group_norm")
	if dst == nil || x == nil || gamma == nil || beta == nil {
		return fmt.Errorf("vk: group_norm: nil tensor")
	}
	if len(x.Shape) < 2 || groups < 1 || x.Shape[1]%groups != 0 {
		return &engine.ShapeError{Op: "group_norm", Tensor: x.Name, Got: fmt.Sprintf("%v in %d groups", x.Shape, groups),
			Want: "[N, C, ...] with C divisible by groups"}
	}
	ch := x.Shape[1]
	c.check(sameShape(c.op, dst, x))
	c.check(engine.WantShape(c.op, gamma, ch))
	c.check(engine.WantShape(c.op, beta, ch))
	for _, t := range []*engine.Tensor{x, gamma, beta, dst} {
		c.dtype(t, engine.F32)
	}
	if c.err == nil && !d.fits(dst, x) {
		if ok, err := d.groupNormPieces(dst, x, gamma, beta, groups, eps, silu); ok {
			return err
		}
	}
	c.in(x)
	c.in(gamma)
	c.in(beta)
	c.out(dst)
	if c.err != nil {
		return c.err
	}
	count := x.Shape[0] * groups
	p := kernels.GroupNormParams{Count: uint32(count), Groups: uint32(groups), Cpg: uint32(ch / groups),
		S: uint32(x.NumElem() / (x.Shape[0] * ch)), Eps: eps}
	if silu {
		p.Silu = 1
	}
	k := kernels.GroupNorm
	if p.S%4 == 0 {
		k = kernels.GroupNormVec4
	}
	return c.run(k, []uint32{wgReduce}, unsafe.Pointer(&p), unsafe.Sizeof(p), d.groupGrid(count, 1))
}

// LayerNorm normalises over the last dim; gamma/beta [D].
func (d *Device) LayerNorm(dst, x, gamma, beta *engine.Tensor, eps float32) error {
	c := d.newOp("layer_norm")
	if dst == nil || x == nil || gamma == nil || beta == nil {
		return fmt.Errorf("vk: layer_norm: nil tensor")
	}
	if len(x.Shape) < 1 {
		return &engine.ShapeError{Op: "layer_norm", Tensor: x.Name, Got: x.Shape.String(), Want: "[..., D]"}
	}
	dim := x.Shape[len(x.Shape)-1]
	c.check(sameShape(c.op, dst, x))
	c.check(engine.WantShape(c.op, gamma, dim))
	c.check(engine.WantShape(c.op, beta, dim))
	for _, t := range []*engine.Tensor{x, gamma, beta, dst} {
		c.dtype(t, engine.F32)
	}
	if c.err == nil && !d.fits(dst, x) {
		if ok, err := d.splitLeading([]*engine.Tensor{flat2(dst, dim), flat2(x, dim)}, func(v []*engine.Tensor) error {
			return d.LayerNorm(v[0], v[1], gamma, beta, eps)
		}); ok {
			return err
		}
	}
	c.in(x)
	c.in(gamma)
	c.in(beta)
	c.out(dst)
	if c.err != nil {
		return c.err
	}
	rows := x.NumElem() / dim
	p := kernels.LayerNormParams{Rows: uint32(rows), D: uint32(dim), Eps: eps}
	if d.tuning == TuningCPU && dim%4 == 0 && rows >= 64 {
		// One invocation per row: no barriers (slow on llvmpipe).
		return c.run(kernels.LayerNormRows, []uint32{wgReg}, unsafe.Pointer(&p), unsafe.Sizeof(p), d.grid(rows, wgReg))
	}
	return c.run(kernels.LayerNorm, []uint32{rowWG(dim)}, unsafe.Pointer(&p), unsafe.Sizeof(p), d.groupGrid(rows, 1))
}

// rowWG is the workgroup size of a row reduction: a power of two, at most
// wgReduce, and not much wider than the row.
func rowWG(n int) uint32 {
	wg := uint32(32)
	for int(wg) < n && wg < wgReduce {
		wg *= 2
	}
	return wg
}

// Softmax over the last dim.
func (d *Device) Softmax(dst, x *engine.Tensor) error {
	c := d.newOp("softmax")
	c.check(sameShape(c.op, dst, x))
	if c.err != nil {
		return c.err
	}
	if len(x.Shape) < 1 {
		return &engine.ShapeError{Op: "softmax", Tensor: x.Name, Got: x.Shape.String(), Want: "[..., D]"}
	}
	c.dtype(x, engine.F32)
	c.dtype(dst, engine.F32)
	dim := x.Shape[len(x.Shape)-1]
	if c.err == nil && !d.fits(dst, x) {
		if ok, err := d.splitLeading([]*engine.Tensor{flat2(dst, dim), flat2(x, dim)}, func(v []*engine.Tensor) error {
			return d.Softmax(v[0], v[1])
		}); ok {
			return err
		}
	}
	c.in(x)
	c.out(dst)
	if c.err != nil {
		return c.err
	}
	rows := x.NumElem() / dim
	p := kernels.SoftmaxParams{Rows: uint32(rows), D: uint32(dim)}
	return c.run(kernels.Softmax, []uint32{rowWG(dim)}, unsafe.Pointer(&p), unsafe.Sizeof(p), d.groupGrid(rows, 1))
}

// groupNormPieces runs a GroupNorm whose x does not bind whole in pieces of
// images, or of the groups of one image: a group's channels are contiguous,
// so groups [g0, g1) are one view of x and dst and a slice of gamma and
// beta. False when neither splits (one group over the limit).
func (d *Device) groupNormPieces(dst, x, gamma, beta *engine.Tensor, groups int, eps float32, silu bool) (bool, error) {
	if x.Shape[0] > 1 {
		return d.splitLeading([]*engine.Tensor{dst, x}, func(v []*engine.Tensor) error {
			return d.GroupNorm(v[0], v[1], gamma, beta, groups, eps, silu)
		})
	}
	cpg := x.Shape[1] / groups
	s := x.NumElem() / x.Shape[1]
	gb := int64(4 * cpg * s)
	return d.split(groups, []*engine.Tensor{dst, x, gamma, beta}, []int64{gb, gb, int64(4 * cpg), int64(4 * cpg)},
		[][]int{{1, -1, cpg * s}, {1, -1, cpg * s}, {-1, cpg}, {-1, cpg}}, func(v []*engine.Tensor) error {
			// Reshape the piece's groups into channels.
			n := v[1].Shape[1]
			var vw viewer
			dv := vw.rows(v[0], 1, 0, 1, 1, n*cpg, s)
			xv := vw.rows(v[1], 1, 0, 1, 1, n*cpg, s)
			gv := vw.rows(v[2], 1, 0, 1, n*cpg)
			bv := vw.rows(v[3], 1, 0, 1, n*cpg)
			if vw.err != nil {
				return vw.err
			}
			return d.GroupNorm(dv, xv, gv, bv, n, eps, silu)
		})
}
