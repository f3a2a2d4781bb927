package sampler

import (
	"fmt"
	"math"
)

// dpm is DPMSolverMultistepScheduler with algorithm_type "dpmsolver++" and
// the midpoint solver: DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095)
// on data predictions, first order on the first step and, by diffusers'
// rules, on the final one(s).
type dpm struct {
	c         *config
	t         *tables
	timesteps []float64
	sigmas    []float32
	// run state
	prevX0    []float32 // data prediction of the previous step
	lowerNums int       // steps taken so far, capped at the solver order
	next      int
}

func newDPM(c *config) (*dpm, error) {
	if c.algorithm != "dpmsolver++" {
		return nil, fmt.Errorf("sampler: dpmpp_2m: algorithm_type %q is not supported (want dpmsolver++)", c.algorithm)
	}
	if c.solverOrder < 1 || c.solverOrder > 2 {
		return nil, fmt.Errorf("sampler: dpmpp_2m: solver_order %d is not supported (want 1 or 2)", c.solverOrder)
	}
	t, err := newSigmaTables(c)
	if err != nil {
		return nil, err
	}
	return &dpm{c: c, t: t}, nil
}

func (d *dpm) Name() string                   { return "dpmpp_2m" }
func (d *dpm) Timesteps() []float64           { return append([]float64(nil), d.timesteps...) }
func (d *dpm) Sigmas() []float64              { return widen(d.sigmas) }
func (d *dpm) InitNoiseSigma() float64        { return 1 }
func (d *dpm) NeedsNoise(int) bool            { return false }
func (d *dpm) ScaleModelInput([]float32, int) {}

func (d *dpm) SetTimesteps(n int) error {
	c := d.c
	if err := checkSteps("dpmpp_2m", n, c.numTrain); err != nil {
		return err
	}
	ts := integerTimesteps(c, n, 1)
	var sig []float64
	if c.karras {
		// Karras spacing over the whole training range, timesteps rounded
		// back from the sigmas.
		s := d.t.sigmas
		sig = karrasSigmas(float64(s[0]), float64(s[len(s)-1]), n)
		logs := make([]float32, len(s))
		for i, v := range s {
			logs[i] = log32(v)
		}
		ts = make([]float64, n)
		for i, v := range sig {
			ts[i] = math.RoundToEven(sigmaToT(v, logs))
		}
	} else {
		sig = make([]float64, len(ts))
		for i, t := range ts {
			sig[i] = interpTable(t, d.t.sigmas)
		}
	}
	last := float32(0)
	if c.finalSigmas == "sigma_min" {
		last = d.t.sigmas[0]
	}
	d.sigmas = make([]float32, len(sig)+1)
	for i, s := range sig {
		d.sigmas[i] = float32(s)
	}
	d.sigmas[len(sig)] = last
	d.timesteps = ts
	d.prevX0, d.lowerNums, d.next = nil, 0, 0
	return nil
}

// alphaSigma is _sigma_to_alpha_sigma_t: alpha_t = 1/sqrt(sigma^2+1),
// sigma_t = sigma*alpha_t, and lambda = log(alpha_t) - log(sigma_t).
func alphaSigma(sigma float32) (alpha, sig, lambda float32) {
	alpha = 1 / sqrt32(float32(sigma*sigma)+1)
	sig = sigma * alpha
	return alpha, sig, log32(alpha) - log32(sig)
}

func (d *dpm) Step(modelOutput, sample []float32, step int, noise []float32) error {
	n := len(d.timesteps)
	if err := checkStep("dpmpp_2m", modelOutput, sample, step, n, noise, false); err != nil {
		return err
	}
	if step != d.next {
		return fmt.Errorf("sampler: dpmpp_2m: step %d after %d steps; multistep solvers must run in order (SetTimesteps restarts)", step, d.next)
	}
	if d.prevX0 != nil && len(d.prevX0) != len(sample) {
		return fmt.Errorf("sampler: dpmpp_2m step %d: sample has %d values, the run started with %d", step, len(sample), len(d.prevX0))
	}
	lowerFinal := step == n-1 && ((d.c.lowerOrderFinal && n < 15) || d.c.finalSigmas == "zero")

	// Data prediction x0 at this step's sigma.
	as, ss, ls := alphaSigma(d.sigmas[step])
	x0 := make([]float32, len(sample))
	for i, x := range sample {
		m := modelOutput[i]
		switch d.c.prediction {
		case "epsilon":
			x0[i] = (x - float32(ss*m)) / as
		case "sample":
			x0[i] = m
		default: // v_prediction
			x0[i] = float32(as*x) - float32(ss*m)
		}
	}

	at, st, lt := alphaSigma(d.sigmas[step+1])
	h := lt - ls
	ratio := st / ss
	c0 := at * (exp32(-h) - 1)
	if d.c.solverOrder == 1 || d.lowerNums < 1 || lowerFinal {
		for i, x := range sample {
			sample[i] = float32(ratio*x) - float32(c0*x0[i])
		}
	} else {
		// Second order (midpoint): D1 = (x0 - x0_prev) / r0.
		_, _, lp := alphaSigma(d.sigmas[step-1])
		r0 := (ls - lp) / h
		inv := 1 / r0
		c1 := 0.5 * c0
		for i, x := range sample {
			d1 := float32(inv * (x0[i] - d.prevX0[i]))
			sample[i] = float32(ratio*x) - float32(c0*x0[i]) - float32(c1*d1)
		}
	}
	d.prevX0 = x0
	if d.lowerNums < d.c.solverOrder {
		d.lowerNums++
	}
	d.next++
	return nil
}

// AddNoise is alpha_t * x + sigma_t * noise at the step's sigma.
func (d *dpm) AddNoise(dst, x, noise []float32, step int) error {
	if err := checkNoise("dpmpp_2m", dst, x, noise, step, len(d.timesteps)); err != nil {
		return err
	}
	a, s, _ := alphaSigma(d.sigmas[step])
	for i, v := range x {
		dst[i] = float32(a*v) + float32(s*noise[i])
	}
	return nil
}

// Begin restarts the multistep history at step: its first update is first
// order (lower_order_nums is 0), and the final-step rules still look at
// the whole list, as step_index does after set_begin_index.
func (d *dpm) Begin(step int) error {
	if err := checkBegin("dpmpp_2m", step, len(d.timesteps)); err != nil {
		return err
	}
	d.prevX0, d.lowerNums, d.next = nil, 0, step
	return nil
}
