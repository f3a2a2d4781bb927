package vk

import (
	"fmt"

	"github.com/zimage/zimage/engine"
)

// Devices bind at most maxStorageBufferRange bytes of a buffer per
// descriptor (128 MiB on lavapipe and many GPUs), while one allocation may
// hold far more (maxMemoryAllocationSize: 2 GiB on lavapipe). Ops whose
// work is independent along some axis (rows of a Linear or a norm, the
// elements of an elementwise op, batch rows and queries of attention,
// images and groups of a GroupNorm) therefore run tensors over the limit
// in pieces: views of consecutive indices along that axis, each within
// the limit, one dispatch per piece. Pieces start where an aligned tensor's
// byte offset stays aligned, so no piece needs an aligned copy; the common
// case, where everything fits, runs one dispatch as before.

// MaxTensorBytes is the largest tensor every kernel can bind whole on this
// device: maxStorageBufferRange, or Options.MaxBinding when lower. It
// implements engine.TensorLimiter. The row-wise ops split bigger tensors
// themselves (see above); a convolution over one image that does not fit
// still fails with a *RangeError, which the tiled VAE decoder avoids by
// sizing its tiles to this limit.
func (d *Device) MaxTensorBytes() int64 { return d.bindLimit() }

// bindLimit is the most bytes one binding may span; 0 means no limit.
func (d *Device) bindLimit() int64 {
	lim := d.info.MaxStorageBufferRange
	if m := d.opts.MaxBinding; m > 0 && (lim <= 0 || m < lim) {
		lim = m
	}
	return lim
}

// bindAlign is the alignment a binding's byte offset needs: the device's
// storage and texel offset alignments, and 16 for vec4 loads.
func (d *Device) bindAlign() int64 {
	return max(d.info.MinStorageBufferAlign, d.info.MinTexelBufferAlign, 16)
}

// fits reports whether every non-nil tensor binds whole.
func (d *Device) fits(ts ...*engine.Tensor) bool {
	lim := d.bindLimit()
	for _, t := range ts {
		if t != nil && lim > 0 && t.Bytes() > lim {
			return false
		}
	}
	return true
}

// pieces splits the n indices of an axis into consecutive ranges [r0, r1)
// such that each operand, spanning rowBytes[i] bytes per index (0: bound
// whole, not split), binds at most the limit per piece. Piece starts are
// multiples of a row count whose byte offset is a multiple of bindAlign for
// every operand, so views of aligned tensors stay aligned. When even one
// aligned group of rows is over the limit, pieces are as large as fit (or
// one index): a misaligned view then binds through an aligned copy, and
// one index over the limit is for the caller to split further or report.
func (d *Device) pieces(n int, rowBytes ...int64) [][2]int {
	lim, align := d.bindLimit(), d.bindAlign()
	most, g := int64(n), int64(1)
	for _, rb := range rowBytes {
		if rb <= 0 {
			continue
		}
		g = lcm(g, align/gcd(rb, align))
		if lim > 0 {
			// Less one alignment: a misaligned view binds from the aligned
			// offset below it (copyRaw).
			most = min(most, max(lim-align, 1)/rb)
		}
	}
	step := most / g * g
	if step < 1 {
		step = max(most, 1)
	}
	var out [][2]int
	for r0 := 0; r0 < n; r0 += int(step) {
		out = append(out, [2]int{r0, min(n, r0+int(step))})
	}
	return out
}

func gcd(a, b int64) int64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

func lcm(a, b int64) int64 { return a / gcd(a, b) * b }

// viewer makes the views of one piece, keeping the first error.
type viewer struct{ err error }

// rows views t as n equal rows and returns rows [r0, r1) with the given
// shape (whose element count must be that of the rows).
func (v *viewer) rows(t *engine.Tensor, n, r0, r1 int, shape ...int) *engine.Tensor {
	if v.err != nil || t == nil {
		return nil
	}
	if n < 1 || t.NumElem()%n != 0 {
		v.err = fmt.Errorf("vk: %s%v cannot be split into %d rows", t.Name, t.Shape, n)
		return nil
	}
	flat, err := t.Reshape(n, t.NumElem()/n)
	if err == nil {
		flat, err = flat.SliceRows(r0, r1)
	}
	if err == nil {
		flat, err = flat.Reshape(shape...)
	}
	if err != nil {
		v.err = fmt.Errorf("vk: splitting %s: %w", t.Name, err)
		return nil
	}
	return flat
}

// splitFlat runs f on consecutive element ranges of tensors that all have
// n elements (viewed flat), each range binding within the limit. It
// returns false, having run nothing, when one range would hold them all.
func (d *Device) splitFlat(ts []*engine.Tensor, f func(vs []*engine.Tensor) error) (bool, error) {
	n := ts[0].NumElem()
	rb := make([]int64, len(ts))
	shapes := make([][]int, len(ts))
	for i, t := range ts {
		rb[i] = int64(t.DType.Size())
		shapes[i] = []int{-1}
	}
	return d.split(n, ts, rb, shapes, f)
}

// splitLeading runs f on pieces along the leading axis of tensors that
// share it (shape [n, ...]); nil entries stay nil. It returns false, having
// run nothing, when one piece would hold them all.
func (d *Device) splitLeading(ts []*engine.Tensor, f func(vs []*engine.Tensor) error) (bool, error) {
	n := 0
	rb := make([]int64, len(ts))
	shapes := make([][]int, len(ts))
	for i, t := range ts {
		if t != nil {
			n = t.Shape[0]
			rb[i] = t.Bytes() / int64(n)
			shapes[i] = append([]int{-1}, t.Shape[1:]...)
		}
	}
	return d.split(n, ts, rb, shapes, f)
}

// split runs f on the pieces of an axis of n indices: ts[i] with
// rowBytes[i] > 0 is viewed as n rows, each piece shaped like shapes[i]
// with the piece's length where shapes[i] holds -1; the others are passed
// whole. It returns false, having run nothing, when the axis would not be
// split (so that ops cannot recurse on the same shapes).
func (d *Device) split(n int, ts []*engine.Tensor, rowBytes []int64, shapes [][]int, f func(vs []*engine.Tensor) error) (bool, error) {
	pcs := d.pieces(n, rowBytes...)
	if len(pcs) < 2 {
		return false, nil
	}
	for _, pc := range pcs {
		var v viewer
		vs := make([]*engine.Tensor, len(ts))
		for i, t := range ts {
			if t == nil || rowBytes[i] <= 0 {
				vs[i] = t
				continue
			}
			shape := append([]int(nil), shapes[i]...)
			for j, x := range shape {
				if x < 0 {
					shape[j] = pc[1] - pc[0]
				}
			}
			vs[i] = v.rows(t, n, pc[0], pc[1], shape...)
		}
		if v.err != nil {
			return true, v.err
		}
		if err := f(vs); err != nil {
			return true, err
		}
	}
	return true, nil
}
