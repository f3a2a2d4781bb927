package ref

import (
	"fmt"

	"github.com/zimage/zimage/engine"
)

// Layout ops move elements without arithmetic. They work on F32 or F16 as
// long as the operands share a dtype, so results are exact.

// sameDType requires every operand to have t[0]'s dtype.
func sameDType(op string, ts ...*engine.Tensor) error {
	for _, t := range ts[1:] {
		if err := engine.WantDType(op, t, ts[0].DType); err != nil {
			return err
		}
	}
	return nil
}

// Upsample2x: nearest-neighbour x [N, C, H, W] -> dst [N, C, 2H, 2W].
func (b *Backend) Upsample2x(dst, x *engine.Tensor) error {
	const op = "upsample2x"
	if err := checkAll(op, dst, x); err != nil {
		return err
	}
	if err := sameDType(op, x, dst); err != nil {
		return err
	}
	if len(x.Shape) != 4 {
		return &engine.ShapeError{Op: op, Tensor: x.Name, Got: x.Shape.String(), Want: "[N, C, H, W]"}
	}
	s := x.Shape
	if err := engine.WantShape(op, dst, s[0], s[1], 2*s[2], 2*s[3]); err != nil {
		return err
	}
	if x.DType == engine.F16 {
		upsample(raw16(dst), raw16(x), s[0]*s[1], s[2], s[3])
	} else {
		upsample(data(dst), data(x), s[0]*s[1], s[2], s[3])
	}
	return nil
}

func upsample[T any](dst, src []T, planes, h, w int) {
	for p := 0; p < planes; p++ {
		for y := 0; y < h; y++ {
			in := src[(p*h+y)*w : (p*h+y+1)*w]
			out := dst[(p*2*h+2*y)*2*w : (p*2*h+2*y+1)*2*w]
			for x, v := range in {
				out[2*x], out[2*x+1] = v, v
			}
			copy(dst[(p*2*h+2*y+1)*2*w:(p*2*h+2*y+2)*2*w], out)
		}
	}
}

// Concat joins a [N, Ca, ...] and b [N, Cb, ...] on axis 1.
func (b *Backend) Concat(dst, a, bt *engine.Tensor) error {
	const op = "concat"
	if err := checkAll(op, dst, a, bt); err != nil {
		return err
	}
	if err := sameDType(op, a, bt, dst); err != nil {
		return err
	}
	s, err := engine.ConcatShape(a, bt)
	if err != nil {
		return err
	}
	if err := engine.WantShape(op, dst, s...); err != nil {
		return err
	}
	na, nb := a.NumElem()/a.Shape[0], bt.NumElem()/bt.Shape[0]
	if a.DType == engine.F16 {
		concat(raw16(dst), raw16(a), raw16(bt), a.Shape[0], na, nb)
	} else {
		concat(data(dst), data(a), data(bt), a.Shape[0], na, nb)
	}
	return nil
}

func concat[T any](dst, a, b []T, n, na, nb int) {
	for i := 0; i < n; i++ {
		copy(dst[i*(na+nb):], a[i*na:(i+1)*na])
		copy(dst[i*(na+nb)+na:], b[i*nb:(i+1)*nb])
	}
}

// Permute: dst dims are x's dims reordered by perm (up to 4 dims).
func (b *Backend) Permute(dst, x *engine.Tensor, perm []int) error {
	const op = "permute"
	if err := checkAll(op, dst, x); err != nil {
		return err
	}
	if err := sameDType(op, x, dst); err != nil {
		return err
	}
	s, err := engine.PermuteShape(x.Shape, perm)
	if err != nil {
		return fmt.Errorf("ref: permute %s: %w", x.Name, err)
	}
	if err := engine.WantShape(op, dst, s...); err != nil {
		return err
	}
	// Walk dst in order; src strides are x's strides taken in perm order.
	var xs [4]int
	step := 1
	for i := len(x.Shape) - 1; i >= 0; i-- {
		xs[i] = step
		step *= x.Shape[i]
	}
	k := 4 - len(s)
	var ds, st [4]int
	for i := range ds {
		ds[i] = 1
	}
	for i, p := range perm {
		ds[k+i], st[k+i] = s[i], xs[p]
	}
	if x.DType == engine.F16 {
		permute(raw16(dst), raw16(x), ds, st)
	} else {
		permute(data(dst), data(x), ds, st)
	}
	return nil
}

func permute[T any](dst, src []T, d, st [4]int) {
	i := 0
	for i0 := 0; i0 < d[0]; i0++ {
		for i1 := 0; i1 < d[1]; i1++ {
			for i2 := 0; i2 < d[2]; i2++ {
				j := i0*st[0] + i1*st[1] + i2*st[2]
				for i3 := 0; i3 < d[3]; i3++ {
					dst[i] = src[j]
					j += st[3]
					i++
				}
			}
		}
	}
}

// Embedding gathers rows: table [V, D] (F16 or F32), ids in [0, V) ->
// dst [len(ids), D] F32.
func (b *Backend) Embedding(dst, table *engine.Tensor, ids []int32) error {
	const op = "embedding"
	if err := checkAll(op, dst, table); err != nil {
		return err
	}
	if err := wantF32(op, dst); err != nil {
		return err
	}
	if len(table.Shape) != 2 || len(ids) == 0 {
		return &engine.ShapeError{Op: op, Tensor: table.Name, Got: fmt.Sprintf("%v with %d ids", table.Shape, len(ids)),
			Want: "[V, D] and at least one id"}
	}
	v, d := table.Shape[0], table.Shape[1]
	if err := engine.WantShape(op, dst, len(ids), d); err != nil {
		return err
	}
	for i, id := range ids {
		if id < 0 || int(id) >= v {
			return fmt.Errorf("ref: embedding %s: id %d at position %d is outside [0, %d)", table.Name, id, i, v)
		}
	}
	out := data(dst)
	for i, id := range ids {
		row := out[i*d : (i+1)*d]
		if table.DType == engine.F16 {
			for j, h := range raw16(table)[int(id)*d : (int(id)+1)*d] {
				row[j] = F16ToF32(h)
			}
		} else {
			copy(row, data(table)[int(id)*d:(int(id)+1)*d])
		}
	}
	return nil
}

// Copy copies x into dst of the same shape, converting dtypes (F32 to F16
// rounds to nearest even).
func (b *Backend) Copy(dst, x *engine.Tensor) error {
	const op = "copy"
	if err := checkAll(op, dst, x); err != nil {
		return err
	}
	if err := engine.WantShape(op, dst, x.Shape...); err != nil {
		return err
	}
	if dst.DType.Quantized() {
		return &engine.ShapeError{Op: op, Tensor: dst.Name, Got: dst.DType.String(), Want: "F32 or F16 (the engine does not quantize)"}
	}
	switch {
	case x.DType.Quantized():
		store(dst, load(x))
	case x.DType == engine.F16 && dst.DType == engine.F16:
		copy(raw16(dst), raw16(x))
	case x.DType == engine.F16:
		out := data(dst)
		for i, h := range raw16(x) {
			out[i] = F16ToF32(h)
		}
	default:
		store(dst, data(x))
	}
	return nil
}
