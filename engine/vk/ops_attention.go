package vk

import (
	"fmt"
	"unsafe"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/kernels"
)

// Attention: q [B, Lq, H*D], k and v [B, Lk, H*D] -> dst [B, Lq, H*D],
// softmax(scale · q kᵀ) v per head, flash-style (no score matrix).
func (d *Device) Attention(dst, q, k, v *engine.Tensor, heads int, scale float32, causal bool) error {
	if dst == nil || q == nil || k == nil || v == nil {
		return fmt.Errorf("vk: attention: nil tensor")
	}
	c := d.newOp("attention " + q.Name)
	b, lq, lk, dim, err := engine.AttentionCheck(q, k, v, heads)
	if err != nil {
		return err
	}
	c.check(sameShape(c.op, dst, q))
	for _, t := range []*engine.Tensor{q, k, v, dst} {
		c.dtype(t, engine.F32)
	}
	c.in(q)
	c.in(k)
	c.in(v)
	c.out(dst)
	if c.err != nil {
		return c.err
	}
	p := kernels.AttentionParams{Lq: uint32(lq), Lk: uint32(lk), Heads: uint32(heads), Scale: scale}
	if causal {
		p.Causal = 1
	}
	if dim%4 == 0 {
		qb := attentionQB(dim)
		tiles := ((lq + qb - 1) / qb) * heads
		groups := d.groupGrid((tiles+wgReg-1)/wgReg, b)
		return c.run(kernels.AttentionReg, []uint32{wgReg, uint32(dim), uint32(qb)}, unsafe.Pointer(&p), unsafe.Sizeof(p), groups)
	}
	groups := d.groupGrid((lq*heads+wgReg-1)/wgReg, b)
	return c.run(kernels.AttentionScalar, []uint32{wgReg, uint32(dim), 1}, unsafe.Pointer(&p), unsafe.Sizeof(p), groups)
}

// attentionQB is the queries per invocation: enough to reuse each loaded
// key and value, few enough to keep q and the accumulators in registers.
func attentionQB(dim int) int {
	switch {
	case dim <= 64:
		return 4
	case dim <= 128:
		return 2
	}
	return 1
}
