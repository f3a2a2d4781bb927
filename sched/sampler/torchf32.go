package sampler

import "math"

// The noise tables of diffusers are float32 torch tensors; these helpers
// rebuild them operation by operation as torch 1.13's CPU kernels compute
// them (x86-64 build, AVX2 kernels compiled by GCC, which contracts a*b+c
// into fused multiply-adds), so that timesteps derived from them and the
// sigmas agree with the reference bit for bit where possible. Every float32
// product that must stay rounded is wrapped in float32(): Go may otherwise
// fuse it into a following addition.

// fma32 is a correctly rounded float32 fused multiply-add.
func fma32(a, b, c float32) float32 {
	p := float64(float64(a) * float64(b)) // exact
	s := p + float64(c)
	bv := s - p
	err := (p - (s - bv)) + (float64(c) - bv) // exact error of s (TwoSum)
	r := float32(s)
	if err == 0 || float64(r) == s {
		return r
	}
	o := math.Nextafter32(r, float32(math.Inf(1)))
	if float64(r) > s {
		o = math.Nextafter32(r, float32(math.Inf(-1)))
	}
	if (float64(r)+float64(o))/2 != s {
		return r // s is not a float32 midpoint: one rounding was enough
	}
	if (err > 0) == (o > r) {
		return o
	}
	return r
}

// linspace32 is torch.linspace(start, end, steps, dtype=torch.float32) on
// the CPU: float32 step, values from start up to the half-way index and from
// end down after it, with the 8-lane vector kernel's arange for whole blocks
// of 16 and the scalar kernel for the tail.
func linspace32(start, end float64, steps int) []float32 {
	out := make([]float32, steps)
	if steps == 0 {
		return out
	}
	s, e := float32(start), float32(end)
	if steps == 1 {
		out[0] = s
		return out
	}
	step := (e - s) / float32(steps-1)
	half := steps / 2
	base := func(idx int) float32 {
		if idx < half {
			return fma32(step, float32(idx), s)
		}
		return fma32(-step, float32(steps-idx-1), e)
	}
	const lanes = 8
	i := 0
	// The vector loop takes two vectors per round and picks each vector's
	// base by its own first index.
	for ; i+2*lanes <= steps; i += 2 * lanes {
		for v := i; v < i+2*lanes; v += lanes {
			b := base(v)
			for k := 0; k < lanes; k++ {
				out[v+k] = fma32(float32(k), step, b)
			}
		}
	}
	for ; i < steps; i++ {
		out[i] = base(i)
	}
	return out
}

// cumprod32 is torch.cumprod on float32 CPU tensors: a double accumulator,
// each prefix rounded to float32.
func cumprod32(x []float32) []float32 {
	out := make([]float32, len(x))
	acc := 1.0
	for i, v := range x {
		acc *= float64(v)
		out[i] = float32(acc)
	}
	return out
}

func sqrt32(x float32) float32 { return float32(math.Sqrt(float64(x))) }
func log32(x float32) float32  { return float32(math.Log(float64(x))) }
func exp32(x float32) float32  { return float32(math.Exp(float64(x))) }
