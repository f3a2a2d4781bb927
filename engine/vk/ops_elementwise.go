package vk

import (
	"fmt"
	"unsafe"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/kernels"
)

func sameShape(op string, dst, x *engine.Tensor) error {
	if dst == nil || x == nil {
		return fmt.Errorf("vk: %s: nil tensor", op)
	}
	if !dst.Shape.Equal(x.Shape) {
		return &engine.ShapeError{Op: op, Tensor: dst.Name, Got: dst.Shape.String(), Want: x.Shape.String()}
	}
	return nil
}

// Unary applies op elementwise; dst may be x.
func (d *Device) Unary(dst, x *engine.Tensor, op engine.UnaryOp) error {
	c := d.newOp("unary " + op.String())
	c.check(sameShape(c.op, dst, x))
	if op > engine.ReLU && c.err == nil {
		c.fail(fmt.Errorf("vk: unary %s -> %s: unknown op %d", x.Name, dst.Name, op))
	}
	c.dtype(x, engine.F32)
	c.dtype(dst, engine.F32)
	if c.err == nil && !d.fits(dst, x) {
		if ok, err := d.splitFlat([]*engine.Tensor{dst, x}, func(v []*engine.Tensor) error { return d.Unary(v[0], v[1], op) }); ok {
			return err
		}
	}
	c.in(x)
	c.out(dst)
	if c.err != nil {
		return c.err
	}
	n := x.NumElem()
	k := kernels.Unary
	if n%4 == 0 {
		k, n = kernels.UnaryVec4, n/4
	}
	p := kernels.UnaryParams{N: uint32(n), Op: uint32(op)}
	return c.run(k, []uint32{wgElem}, unsafe.Pointer(&p), unsafe.Sizeof(p), d.grid(n, wgElem))
}

// GEGLU: x [..., 2N] -> dst [..., N] = x[..., :N] * gelu(x[..., N:]).
func (d *Device) GEGLU(dst, x *engine.Tensor) error {
	c := d.newOp("geglu")
	if dst == nil || x == nil {
		return fmt.Errorf("vk: geglu: nil tensor")
	}
	r := len(x.Shape)
	if r == 0 || x.Shape[r-1]%2 != 0 {
		return &engine.ShapeError{Op: "geglu", Tensor: x.Name, Got: x.Shape.String(), Want: "[..., 2N]"}
	}
	want := x.Shape.Clone()
	want[r-1] /= 2
	c.check(engine.WantShape("geglu", dst, want...))
	c.dtype(x, engine.F32)
	c.dtype(dst, engine.F32)
	if c.err == nil && !d.fits(dst, x) {
		if ok, err := d.splitLeading([]*engine.Tensor{flat2(dst, want[r-1]), flat2(x, x.Shape[r-1])}, func(v []*engine.Tensor) error {
			return d.GEGLU(v[0], v[1])
		}); ok {
			return err
		}
	}
	c.in(x)
	c.out(dst)
	if c.err != nil {
		return c.err
	}
	n := dst.NumElem()
	p := kernels.GEGLUParams{N: uint32(n), Half: uint32(want[r-1])}
	return c.run(kernels.GEGLU, []uint32{wgElem}, unsafe.Pointer(&p), unsafe.Sizeof(p), d.grid(n, wgElem))
}

// pad4 right-aligns a shape of up to 4 dims into 4, padding with 1s.
func pad4(s engine.Shape) [4]int {
	out := [4]int{1, 1, 1, 1}
	copy(out[4-len(s):], s)
	return out
}

// bcastStrides are x's element strides per dim of the 4-dim dst shape, 0
// where x is broadcast.
func bcastStrides(x engine.Shape, dst [4]int) [4]uint32 {
	xs := pad4(x)
	var st [4]uint32
	stride := 1
	for i := 3; i >= 0; i-- {
		if xs[i] != 1 || dst[i] == 1 {
			st[i] = uint32(stride)
		}
		stride *= xs[i]
	}
	return st
}

// Binary: dst = a op b with numpy-style broadcasting (up to 4 dims).
func (d *Device) Binary(dst, a, b *engine.Tensor, op engine.BinaryOp) error {
	c := d.newOp("binary " + op.String())
	if dst == nil || a == nil || b == nil {
		return fmt.Errorf("vk: %s: nil tensor", c.op)
	}
	if op > engine.Mul {
		return fmt.Errorf("vk: binary %s, %s -> %s: unknown op %d", a.Name, b.Name, dst.Name, op)
	}
	s, err := engine.BroadcastShape(a.Shape, b.Shape)
	if err != nil {
		return fmt.Errorf("vk: %s %s %s: %w", a.Name, op, b.Name, err)
	}
	c.check(engine.WantShape(c.op, dst, s...))
	c.dtype(a, engine.F32)
	c.dtype(b, engine.F32)
	c.dtype(dst, engine.F32)
	if c.err == nil && !d.fits(dst, a, b) {
		if ok, err := d.binaryPieces(dst, a, b, op, s); ok {
			return err
		}
	}
	c.in(a)
	c.in(b)
	c.out(dst)
	if c.err != nil {
		return c.err
	}
	ds := pad4(s)
	sa, sb := bcastStrides(a.Shape, ds), bcastStrides(b.Shape, ds)
	var flat uint32
	if a.Shape.Equal(s) {
		flat |= 1
	}
	if b.Shape.Equal(s) {
		flat |= 2
	}
	n := dst.NumElem()
	k := kernels.Binary
	if (flat == 3 && n%4 == 0) || ds[3]%4 == 0 {
		k, n = kernels.BinaryVec4, n/4
	}
	p := kernels.BinaryParams{N: uint32(n), Op: uint32(op), Flat: flat,
		D1: uint32(ds[1]), D2: uint32(ds[2]), D3: uint32(ds[3]),
		Sa0: sa[0], Sa1: sa[1], Sa2: sa[2], Sa3: sa[3],
		Sb0: sb[0], Sb1: sb[1], Sb2: sb[2], Sb3: sb[3]}
	return c.run(k, []uint32{wgElem}, unsafe.Pointer(&p), unsafe.Sizeof(p), d.grid(n, wgElem))
}

// Scale: dst = alpha*x + beta; dst may be x.
func (d *Device) Scale(dst, x *engine.Tensor, alpha, beta float32) error {
	c := d.newOp("scale")
	c.check(sameShape(c.op, dst, x))
	c.dtype(x, engine.F32)
	c.dtype(dst, engine.F32)
	if c.err == nil && !d.fits(dst, x) {
		if ok, err := d.splitFlat([]*engine.Tensor{dst, x}, func(v []*engine.Tensor) error {
			return d.Scale(v[0], v[1], alpha, beta)
		}); ok {
			return err
		}
	}
	c.in(x)
	c.out(dst)
	if c.err != nil {
		return c.err
	}
	n := x.NumElem()
	k := kernels.Scale
	if n%4 == 0 {
		k, n = kernels.ScaleVec4, n/4
	}
	p := kernels.ScaleParams{N: uint32(n), Alpha: alpha, Beta: beta}
	return c.run(k, []uint32{wgElem}, unsafe.Pointer(&p), unsafe.Sizeof(p), d.grid(n, wgElem))
}

// Upsample2x: nearest-neighbour x [N, C, H, W] -> dst [N, C, 2H, 2W].
func (d *Device) Upsample2x(dst, x *engine.Tensor) error {
	c := d.newOp("upsample2x")
	if dst == nil || x == nil {
		return fmt.Errorf("vk: upsample2x: nil tensor")
	}
	if len(x.Shape) != 4 {
		return &engine.ShapeError{Op: "upsample2x", Tensor: x.Name, Got: x.Shape.String(), Want: "[N, C, H, W]"}
	}
	c.check(engine.WantShape(c.op, dst, x.Shape[0], x.Shape[1], 2*x.Shape[2], 2*x.Shape[3]))
	c.dtype(x, engine.F32)
	c.dtype(dst, engine.F32)
	if c.err == nil && !d.fits(dst, x) {
		// Each channel plane is upsampled alone.
		h, w := x.Shape[2], x.Shape[3]
		xv, err1 := x.Reshape(x.Shape[0]*x.Shape[1], 1, h, w)
		dv, err2 := dst.Reshape(x.Shape[0]*x.Shape[1], 1, 2*h, 2*w)
		if err1 == nil && err2 == nil {
			if ok, err := d.splitLeading([]*engine.Tensor{dv, xv}, func(v []*engine.Tensor) error { return d.Upsample2x(v[0], v[1]) }); ok {
				return err
			}
		}
	}
	c.in(x)
	c.out(dst)
	if c.err != nil {
		return c.err
	}
	n := dst.NumElem()
	k := kernels.Upsample2x
	if x.Shape[3]%2 == 0 {
		k, n = kernels.Upsample2xVec4, n/4
	}
	p := kernels.Upsample2xParams{N: uint32(n), H: uint32(x.Shape[2]), W: uint32(x.Shape[3])}
	return c.run(k, []uint32{wgElem}, unsafe.Pointer(&p), unsafe.Sizeof(p), d.grid(n, wgElem))
}

// Concat joins a [N, Ca, ...] and b [N, Cb, ...] on axis 1.
func (d *Device) Concat(dst, a, b *engine.Tensor) error {
	c := d.newOp("concat")
	if dst == nil || a == nil || b == nil {
		return fmt.Errorf("vk: concat: nil tensor")
	}
	s, err := engine.ConcatShape(a, b)
	if err != nil {
		return err
	}
	c.check(engine.WantShape(c.op, dst, s...))
	c.dtype(a, engine.F32)
	c.dtype(b, engine.F32)
	c.dtype(dst, engine.F32)
	if c.err == nil && !d.fits(dst, a, b) {
		if a.Shape[0] == 1 {
			// One image: dst is a followed by b, two copies (which split).
			na := a.NumElem()
			dv, err := dst.Reshape(dst.NumElem())
			if err != nil {
				return err
			}
			var v viewer
			da := v.rows(dv, dv.NumElem(), 0, na, a.Shape...)
			db := v.rows(dv, dv.NumElem(), na, dv.NumElem(), b.Shape...)
			if v.err != nil {
				return v.err
			}
			if err := d.Copy(da, a); err != nil {
				return err
			}
			return d.Copy(db, b)
		}
		if ok, err := d.splitLeading([]*engine.Tensor{dst, a, b}, func(v []*engine.Tensor) error { return d.Concat(v[0], v[1], v[2]) }); ok {
			return err
		}
	}
	c.in(a)
	c.in(b)
	c.out(dst)
	if c.err != nil {
		return c.err
	}
	n, sa, sb := dst.NumElem(), a.NumElem()/a.Shape[0], b.NumElem()/b.Shape[0]
	k := kernels.Concat
	if sa%4 == 0 && sb%4 == 0 {
		k, n, sa, sb = kernels.ConcatVec4, n/4, sa/4, sb/4
	}
	p := kernels.ConcatParams{N: uint32(n), Sa: uint32(sa), Sb: uint32(sb)}
	return c.run(k, []uint32{wgElem}, unsafe.Pointer(&p), unsafe.Sizeof(p), d.grid(n, wgElem))
}

// Permute: dst dims are x's dims reordered by perm (up to 4 dims).
func (d *Device) Permute(dst, x *engine.Tensor, perm []int) error {
	c := d.newOp("permute")
	if dst == nil || x == nil {
		return fmt.Errorf("vk: permute: nil tensor")
	}
	s, err := engine.PermuteShape(x.Shape, perm)
	if err != nil {
		return fmt.Errorf("vk: permute %s: %w", x.Name, err)
	}
	c.check(engine.WantShape(c.op, dst, s...))
	c.dtype(x, engine.F32)
	c.dtype(dst, engine.F32)
	if c.err == nil && perm[0] == 0 && !d.fits(dst, x) {
		// The leading axis stays in place: permute its pieces alone.
		if ok, err := d.splitLeading([]*engine.Tensor{dst, x}, func(v []*engine.Tensor) error { return d.Permute(v[0], v[1], perm) }); ok {
			return err
		}
	}
	c.in(x)
	c.out(dst)
	if c.err != nil {
		return c.err
	}
	// x's strides, then reordered into dst's dim order and padded to 4.
	r := len(x.Shape)
	xs := make([]int, r)
	stride := 1
	for i := r - 1; i >= 0; i-- {
		xs[i] = stride
		stride *= x.Shape[i]
	}
	ds := pad4(s)
	var st [4]uint32
	for i, p := range perm {
		st[4-r+i] = uint32(xs[p])
	}
	n := dst.NumElem()
	p := kernels.PermuteParams{N: uint32(n), D1: uint32(ds[1]), D2: uint32(ds[2]), D3: uint32(ds[3]),
		S0: st[0], S1: st[1], S2: st[2], S3: st[3]}
	return c.run(kernels.Permute, []uint32{wgElem}, unsafe.Pointer(&p), unsafe.Sizeof(p), d.grid(n, wgElem))
}

// Embedding gathers rows: table [V, D], ids in [0, V) -> dst [len(ids), D].
func (d *Device) Embedding(dst, table *engine.Tensor, ids []int32) error {
	c := d.newOp("embedding")
	if dst == nil || table == nil {
		return fmt.Errorf("vk: embedding: nil tensor")
	}
	if len(table.Shape) != 2 || len(ids) == 0 {
		return &engine.ShapeError{Op: "embedding", Tensor: table.Name, Got: table.Shape.String(), Want: "[V, D] and at least one id"}
	}
	v, dim := table.Shape[0], table.Shape[1]
	for i, id := range ids {
		if id < 0 || int(id) >= v {
			return fmt.Errorf("vk: embedding %s: id %d at position %d is outside [0, %d)", table.Name, id, i, v)
		}
	}
	c.check(engine.WantShape(c.op, dst, len(ids), dim))
	c.dtype(table, engine.F32, engine.F16)
	c.dtype(dst, engine.F32)
	if c.err != nil {
		return c.err
	}
	if !d.fits(dst) {
		if ok, err := d.split(len(ids), []*engine.Tensor{dst}, []int64{int64(4 * dim)}, [][]int{{-1, dim}}, func(v []*engine.Tensor) error {
			r0 := (v[0].Offset - dst.Offset) / dim
			return d.Embedding(v[0], table, ids[r0:r0+v[0].Shape[0]])
		}); ok {
			return err
		}
	}
	idt, err := d.Alloc(table.Name+".ids", engine.F32, engine.Shape{len(ids)})
	if err != nil {
		return err
	}
	// Freed once every piece is recorded (pending reads stay safe).
	defer d.Free(idt)
	raw := make([]byte, alignUp(int64(4*len(ids)), 4))
	copy(raw, unsafe.Slice((*byte)(unsafe.Pointer(&ids[0])), 4*len(ids)))
	bd, _, err := c.rawBinding(idt, false)
	if err != nil {
		return err
	}
	if err := d.rec.updateBuffer(bd.buf, bd.off, raw); err != nil {
		return d.fail(err)
	}
	k := kernels.EmbeddingF32
	if table.DType == engine.F16 {
		k = kernels.EmbeddingF16
	}
	n := dst.NumElem()
	// A table over the binding limit (Qwen3's 151936 x 2560) is bound in
	// pieces of rows; each dispatch writes the rows whose ids fall in its
	// piece.
	pcs := [][2]int{{0, v}}
	if !d.fits(table) {
		pcs = d.pieces(v, int64(dim*table.DType.Size()))
	}
	for _, pc := range pcs {
		var vw viewer
		tv := table
		if len(pcs) > 1 {
			tv = vw.rows(table, v, pc[0], pc[1], pc[1]-pc[0], dim)
		}
		if vw.err != nil {
			return vw.err
		}
		c := d.newOp("embedding " + table.Name)
		c.in(tv)
		if c.err == nil {
			c.binds = append(c.binds, bd)
		}
		c.out(dst)
		p := kernels.EmbeddingParams{N: uint32(n), D: uint32(dim), V0: uint32(pc[0]), V1: uint32(pc[1])}
		if err := c.run(k, []uint32{wgElem}, unsafe.Pointer(&p), unsafe.Sizeof(p), d.grid(n, wgElem)); err != nil {
			return err
		}
	}
	return nil
}

// binaryPieces runs a Binary whose operands do not all bind whole in
// pieces along the first axis of the broadcast shape s longer than 1: an
// operand that spans that axis is split with dst, one broadcast along it is
// bound whole. A piece still too large splits again along the next axis.
func (d *Device) binaryPieces(dst, a, b *engine.Tensor, op engine.BinaryOp, s engine.Shape) (bool, error) {
	ds := pad4(s)
	ax := 0
	for ax < 4 && ds[ax] == 1 {
		ax++
	}
	if ax == 4 {
		return false, nil
	}
	ts := []*engine.Tensor{dst, a, b}
	rb := make([]int64, 3)
	shapes := make([][]int, 3)
	for i, t := range ts {
		ts4 := pad4(t.Shape)
		if ts4[ax] != ds[ax] {
			continue // broadcast along ax: bound whole
		}
		rb[i] = t.Bytes() / int64(ds[ax])
		shapes[i] = ts4[:]
		shapes[i][ax] = -1
	}
	// Rows along ax of a tensor whose earlier dims are all 1 are contiguous.
	return d.split(ds[ax], ts, rb, shapes, func(v []*engine.Tensor) error { return d.Binary(v[0], v[1], v[2], op) })
}
