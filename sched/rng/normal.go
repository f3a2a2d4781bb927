package rng

import "math"

// Generator is a torch.Generator('cpu'): an MT19937 stream plus the cached
// second Box-Muller value of the double-precision scalar path. Successive
// calls continue the stream the way successive torch calls on one generator
// do. A Generator is not safe for concurrent use.
type Generator struct {
	mt         mt19937
	nextNormal float64 // cached r*sin(theta) of the scalar path
	hasNext    bool
}

// NewTorchCPU returns torch.Generator('cpu').manual_seed(seed).
func NewTorchCPU(seed uint64) *Generator {
	g := &Generator{}
	g.Seed(seed)
	return g
}

// Seed resets the generator as manual_seed does, dropping the cached
// normal value.
func (g *Generator) Seed(seed uint64) {
	g.mt.seed(seed)
	g.hasNext = false
	g.nextNormal = 0
}

// Randn returns torch.randn(shape, generator=g) as float32 in row-major
// order. An empty shape is a scalar (one value); a negative dimension gives
// nil and leaves the stream untouched.
func (g *Generator) Randn(shape ...int) []float32 {
	n := 1
	for _, d := range shape {
		if d < 0 {
			return nil
		}
		n *= d
	}
	out := make([]float32, n)
	g.Normal(out)
	return out
}

// Normal fills dst with standard normal draws exactly as torch's CPU
// normal_ does for a contiguous float32 tensor of len(dst) elements.
func (g *Generator) Normal(dst []float32) {
	// torch (ATen/native/cpu/DistributionTemplates.h, normal_kernel): 16 or
	// more contiguous floats take the batched Box-Muller fill; shorter
	// tensors draw one double-precision normal per element.
	if len(dst) >= 16 {
		g.fill16(dst)
		return
	}
	for i := range dst {
		dst[i] = float32(g.normalDouble())
	}
}

// uniformFloat is at::uniform_real_distribution<float>(0, 1): the low 24
// bits of one 32-bit draw, scaled by 2^-24 (exact in float32).
func (g *Generator) uniformFloat() float32 {
	return float32(g.mt.uint32()&(1<<24-1)) * (1.0 / (1 << 24))
}

// uniformDouble is at::uniform_real_distribution<double>(0, 1): the low 53
// bits of random64() (first 32-bit draw high, second low) times 2^-53.
func (g *Generator) uniformDouble() float64 {
	hi := uint64(g.mt.uint32())
	lo := uint64(g.mt.uint32())
	return float64((hi<<32|lo)&(1<<53-1)) * (1.0 / (1 << 53))
}

// normalDouble is at::normal_distribution<double>(0, 1) with its cache: one
// Box-Muller pair per two calls, cos first, sin cached in the generator.
func (g *Generator) normalDouble() float64 {
	if g.hasNext {
		g.hasNext = false
		return g.nextNormal
	}
	u1 := g.uniformDouble()
	u2 := g.uniformDouble()
	r := math.Sqrt(-2 * math.Log(1-u2))
	theta := 2 * math.Pi * u1
	g.nextNormal = r * math.Sin(theta)
	g.hasNext = true
	return r * math.Cos(theta)
}

// fill16 is torch's normal_fill for float32: every element first gets a
// uniform, then each block of 16 turns into 8 Box-Muller pairs (element j
// pairs with j+8). A ragged tail redraws 16 fresh uniforms for the last 16
// slots (overwriting ones already done) and transforms those.
func (g *Generator) fill16(dst []float32) {
	n := len(dst)
	for i := range dst {
		dst[i] = g.uniformFloat()
	}
	for i := 0; i+16 <= n; i += 16 {
		boxMuller16(dst[i : i+16])
	}
	if n%16 != 0 {
		tail := dst[n-16:]
		for i := range tail {
			tail[i] = g.uniformFloat()
		}
		boxMuller16(tail)
	}
}
