package sampler

import (
	"fmt"
	"math"
)

// betas builds the training noise schedule as diffusers does
// (float32 torch tensors).
func betas(c *config) ([]float32, error) {
	n := c.numTrain
	var b []float32
	switch {
	case len(c.trainedBetas) > 0:
		if len(c.trainedBetas) != n {
			return nil, fmt.Errorf("sampler: trained_betas has %d values, num_train_timesteps is %d", len(c.trainedBetas), n)
		}
		b = make([]float32, n)
		for i, v := range c.trainedBetas {
			b[i] = float32(v)
		}
	case c.betaSchedule == "linear":
		b = linspace32(c.betaStart, c.betaEnd, n)
	case c.betaSchedule == "scaled_linear":
		b = linspace32(math.Sqrt(c.betaStart), math.Sqrt(c.betaEnd), n)
		for i, v := range b {
			b[i] = v * v
		}
	case c.betaSchedule == "squaredcos_cap_v2":
		b = cosineBetas(n)
	default:
		return nil, fmt.Errorf("sampler: beta_schedule %q is not supported (want linear, scaled_linear or squaredcos_cap_v2)", c.betaSchedule)
	}
	if c.rescaleZeroSNR {
		b = rescaleZeroTerminalSNR(b)
	}
	return b, nil
}

// cosineBetas is diffusers' betas_for_alpha_bar with the cosine alpha_bar
// (GLIDE's "squaredcos_cap_v2"), computed in float64 and stored as float32.
func cosineBetas(n int) []float32 {
	alphaBar := func(t float64) float64 {
		c := math.Cos((t + 0.008) / 1.008 * math.Pi / 2)
		return c * c
	}
	b := make([]float32, n)
	for i := range b {
		t1 := float64(i) / float64(n)
		t2 := float64(i+1) / float64(n)
		b[i] = float32(min(1-alphaBar(t2)/alphaBar(t1), 0.999))
	}
	return b
}

// rescaleZeroTerminalSNR is diffusers' rescale_zero_terminal_snr
// (arXiv:2305.08891, Algorithm 1) in float32: shift and scale
// sqrt(alphas_cumprod) so that the last step has zero signal.
func rescaleZeroTerminalSNR(b []float32) []float32 {
	n := len(b)
	alphas := make([]float32, n)
	for i, v := range b {
		alphas[i] = 1 - v
	}
	s := cumprod32(alphas)
	for i, v := range s {
		s[i] = sqrt32(v)
	}
	s0, sT := s[0], s[n-1]
	scale := s0 / (s0 - sT)
	for i := range s {
		s[i] = float32((s[i] - sT) * scale)
	}
	bar := make([]float32, n)
	for i, v := range s {
		bar[i] = v * v
	}
	out := make([]float32, n)
	out[0] = 1 - bar[0]
	for i := 1; i < n; i++ {
		out[i] = 1 - bar[i]/bar[i-1]
	}
	return out
}

// alphasCumprod is torch.cumprod(1 - betas).
func alphasCumprod(b []float32) []float32 {
	a := make([]float32, len(b))
	for i, v := range b {
		a[i] = 1 - v
	}
	return cumprod32(a)
}

// trainSigmas is ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5 in float32,
// indexed by training timestep.
func trainSigmas(ac []float32) []float32 {
	s := make([]float32, len(ac))
	for i, a := range ac {
		s[i] = sqrt32((1 - a) / a)
	}
	return s
}
