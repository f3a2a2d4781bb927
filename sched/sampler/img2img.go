package sampler

import (
	"fmt"
	"math"
)

// Img2ImgStart is the index of the first timestep an img2img or
// inpainting run of a Stable Diffusion pipeline uses for strength, as
// diffusers 0.30's get_timesteps computes it: init_timestep =
// min(int(steps * strength), steps) (the float product, truncated), t_start
// = steps - init_timestep. Every scheduler here has order 1, so t_start
// indexes Timesteps() directly; PNDM's list has one timestep more than
// steps, so the cut keeps one more model call than int(steps * strength).
// A strength that keeps no step is an error (diffusers' img2img crashes
// there and its inpainting pipeline raises).
func Img2ImgStart(steps int, strength float64) (int, error) {
	if err := checkStrength(strength); err != nil {
		return 0, err
	}
	init := min(int(float64(steps)*strength), steps)
	if init < 1 {
		return 0, noStepError(steps, strength)
	}
	return steps - init, nil
}

// FlowImg2ImgStart is Img2ImgStart as diffusers 0.36's
// ZImageImg2ImgPipeline (like FluxImg2ImgPipeline) computes it: init =
// min(steps * strength, steps) as a float, t_start = int(steps - init), so
// a fractional step counts (4 steps at 0.3 keep 2, where the SD pipelines
// keep 1).
func FlowImg2ImgStart(steps int, strength float64) (int, error) {
	if err := checkStrength(strength); err != nil {
		return 0, err
	}
	init := min(float64(steps)*strength, float64(steps))
	start := int(max(float64(steps)-init, 0))
	if steps-start < 1 {
		return 0, noStepError(steps, strength)
	}
	return start, nil
}

func checkStrength(s float64) error {
	if math.IsNaN(s) || s <= 0 || s > 1 {
		return fmt.Errorf("sampler: strength %v: want more than 0 and at most 1", s)
	}
	return nil
}

// StrengthError is a strength that keeps no step of an img2img schedule.
type StrengthError struct {
	Steps    int
	Strength float64
}

func (e *StrengthError) Error() string {
	return fmt.Sprintf("sampler: strength %v with %d steps runs no step (steps x strength must be at least 1): raise the steps or the strength", e.Strength, e.Steps)
}

func noStepError(steps int, strength float64) error {
	return &StrengthError{Steps: steps, Strength: strength}
}

// checkNoise validates the buffers of one AddNoise call.
func checkNoise(name string, dst, x, noise []float32, step, n int) error {
	if step < 0 || step >= n {
		return stepError(name, step, n)
	}
	if len(x) != len(noise) || len(dst) != len(x) {
		return fmt.Errorf("sampler: %s add noise: %d sample, %d noise and %d output values, want the same count", name, len(x), len(noise), len(dst))
	}
	return nil
}

// ddpmAddNoise is DDPMScheduler.add_noise (PNDM, DDIM and LCM copy it):
// sqrt(alphas_cumprod[t]) * x + sqrt(1 - alphas_cumprod[t]) * noise, each
// factor a float32 tensor op as torch computes it.
func ddpmAddNoise(name string, ac []float32, timesteps []float64, dst, x, noise []float32, step int) error {
	if err := checkNoise(name, dst, x, noise, step, len(timesteps)); err != nil {
		return err
	}
	t := int(timesteps[step])
	if t < 0 || t >= len(ac) {
		return fmt.Errorf("sampler: %s add noise: timestep %d outside the %d training steps", name, t, len(ac))
	}
	a := ac[t]
	sa, sb := sqrt32(a), sqrt32(1-a)
	for i, v := range x {
		dst[i] = float32(sa*v) + float32(sb*noise[i])
	}
	return nil
}

// checkBegin validates a Begin call.
func checkBegin(name string, step, n int) error {
	if step < 0 || step >= n {
		return stepError(name, step, n)
	}
	return nil
}
