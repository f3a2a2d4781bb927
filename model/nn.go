package model

import (
	"fmt"

	"github.com/zimage/zimage/engine"
)

// Building blocks shared by the networks. Each mirrors a torch module; its
// fields are the module's parameters under their checkpoint names.

// Linear is torch.nn.Linear: weight [out, in], optional bias [out].
type Linear struct {
	Weight, Bias *Param
	// LoRA, when set, adds a low-rank term in the forward pass (see
	// LowRank); nil costs nothing.
	LoRA *LowRank
}

func loadLinear(w *Weights, in, out int, bias bool) *Linear {
	l := &Linear{Weight: w.ParamQ("weight", out, in)}
	if bias {
		l.Bias = w.Param("bias", out)
	}
	return l
}

// Forward: x [..., in] -> [..., out].
func (l *Linear) Forward(rec *engine.Rec, x *engine.Tensor) *engine.Tensor {
	y := rec.Linear(l.Weight.Key, x, l.Weight.T, tensorOf(l.Bias))
	if l.LoRA != nil {
		l.LoRA.addLinear(rec, y, x)
	}
	return y
}

// Conv2d is torch.nn.Conv2d with symmetric padding.
type Conv2d struct {
	Weight, Bias *Param
	Stride, Pad  int
	LoRA         *LowRank // as in Linear
}

func loadConv2d(w *Weights, in, out, kernel, stride, pad int) *Conv2d {
	return &Conv2d{
		Weight: w.ParamQ("weight", out, in, kernel, kernel),
		Bias:   w.Param("bias", out),
		Stride: stride, Pad: pad,
	}
}

// loadConv2dNoBias is loadConv2d for a conv built with bias=False.
func loadConv2dNoBias(w *Weights, in, out, kernel, stride, pad int) *Conv2d {
	return &Conv2d{Weight: w.Param("weight", out, in, kernel, kernel), Stride: stride, Pad: pad}
}

// Forward: x [N, in, H, W] -> [N, out, H', W'].
func (c *Conv2d) Forward(rec *engine.Rec, x *engine.Tensor) *engine.Tensor {
	y := rec.Conv2d(c.Weight.Key, x, c.Weight.T, tensorOf(c.Bias), c.Stride, c.Pad)
	if c.LoRA != nil {
		c.LoRA.addConv(rec, y, x, c.Stride, c.Pad)
	}
	return y
}

// GroupNorm is torch.nn.GroupNorm with affine parameters.
type GroupNorm struct {
	Weight, Bias *Param
	Groups       int
	Eps          float32
}

func loadGroupNorm(w *Weights, groups, channels int, eps float32) *GroupNorm {
	return &GroupNorm{Weight: w.Param("weight", channels), Bias: w.Param("bias", channels), Groups: groups, Eps: eps}
}

// Forward normalises x [N, C, ...]; silu fuses the activation that follows
// almost every GroupNorm in the UNet and VAE.
func (g *GroupNorm) Forward(rec *engine.Rec, x *engine.Tensor, silu bool) *engine.Tensor {
	return rec.GroupNorm(g.Weight.Key, x, g.Weight.T, g.Bias.T, g.Groups, g.Eps, silu)
}

// LayerNorm is torch.nn.LayerNorm over the last dim.
type LayerNorm struct {
	Weight, Bias *Param
	Eps          float32
}

func loadLayerNorm(w *Weights, dim int, eps float32) *LayerNorm {
	return &LayerNorm{Weight: w.Param("weight", dim), Bias: w.Param("bias", dim), Eps: eps}
}

// Forward normalises x [..., dim].
func (l *LayerNorm) Forward(rec *engine.Rec, x *engine.Tensor) *engine.Tensor {
	return rec.LayerNorm(l.Weight.Key, x, l.Weight.T, l.Bias.T, l.Eps)
}

func tensorOf(p *Param) *engine.Tensor {
	if p == nil {
		return nil
	}
	return p.T
}

// RMSNorm is the root-mean-square norm of Qwen3 and Z-Image (torch's and
// diffusers' RMSNorm with a gain): x / sqrt(mean(x²) + eps) * weight over the
// last dim.
type RMSNorm struct {
	Weight *Param
	Eps    float32
}

func loadRMSNorm(w *Weights, dim int, eps float32) *RMSNorm {
	return &RMSNorm{Weight: w.Param("weight", dim), Eps: eps}
}

// Forward normalises x [..., dim] into a new tensor.
func (n *RMSNorm) Forward(rec *engine.Rec, x *engine.Tensor) *engine.Tensor {
	return rec.RMSNorm(n.Weight.Key, x, n.Weight.T, n.Eps)
}

// forwardHeads normalises every head of x [B, L, H*D] over its D elements
// (the per-head q/k norm of Qwen3 and Z-Image; weight [D]) into a new
// [B, L, H*D] tensor.
func (n *RMSNorm) forwardHeads(rec *engine.Rec, x *engine.Tensor, heads int) *engine.Tensor {
	if rec.Err() != nil {
		return nil
	}
	if x == nil || len(x.Shape) != 3 || heads < 1 || x.Shape[2]%heads != 0 {
		return rec.Fail(fmt.Errorf("model: head norm %s: input %v does not split into %d heads", n.Weight.Key, tensorShape(x), heads))
	}
	rows := x.NumElem() / (x.Shape[2] / heads)
	dst := rec.Alloc(n.Weight.Key, x.Shape...)
	dv, xv := rec.Reshape(dst, rows, x.Shape[2]/heads), rec.Reshape(x, rows, x.Shape[2]/heads)
	if rec.Err() != nil {
		rec.Free(dst)
		return nil
	}
	if err := rec.B.RMSNorm(dv, xv, n.Weight.T, n.Eps); err != nil {
		rec.Free(dst)
		return rec.Fail(fmt.Errorf("model: head norm %s: %w", n.Weight.Key, err))
	}
	return dst
}

func tensorShape(t *engine.Tensor) string {
	if t == nil {
		return "nil"
	}
	return t.Shape.String()
}

// mulInPlace multiplies a by b (broadcast, e.g. [B, L, D] by [B, 1, D]) in
// place and returns a.
func mulInPlace(rec *engine.Rec, a, b *engine.Tensor) *engine.Tensor {
	if rec.Err() != nil {
		return nil
	}
	if a == nil || b == nil {
		return rec.Fail(fmt.Errorf("model: multiply: nil operand"))
	}
	if err := rec.B.Binary(a, a, b, engine.Mul); err != nil {
		return rec.Fail(err)
	}
	return a
}
