package sampler

import "math"

// Timestep tables in diffusers are built with numpy in float64; these
// helpers follow numpy 1.24's arithmetic (no fused operations) so that
// rounding lands on the same integers.

// npLinspace is np.linspace(start, stop, num, endpoint=endpoint).
func npLinspace(start, stop float64, num int, endpoint bool) []float64 {
	div := num
	if endpoint {
		div = num - 1
	}
	delta := stop - start
	y := make([]float64, num)
	for i := range y {
		fi := float64(i)
		switch {
		case div <= 0:
			y[i] = float64(fi*delta) + start
		case delta/float64(div) == 0:
			y[i] = float64(fi/float64(div)*delta) + start
		default:
			y[i] = float64(fi*(delta/float64(div))) + start
		}
	}
	if endpoint && num > 1 {
		y[num-1] = stop
	}
	return y
}

// npArange is np.arange(start, stop, step) for float steps: the length is
// ceil((stop-start)/step) and element i >= 2 is start + i*(a[1]-a[0]).
func npArange(start, stop, step float64) []float64 {
	n := int(math.Ceil((stop - start) / step))
	if n <= 0 {
		return nil
	}
	y := make([]float64, n)
	y[0] = start
	if n > 1 {
		y[1] = start + step
		delta := y[1] - y[0]
		for i := 2; i < n; i++ {
			y[i] = float64(float64(i)*delta) + start
		}
	}
	return y
}

// npRound is np.round: halves go to the even neighbour.
func npRound(x []float64) []float64 {
	for i, v := range x {
		x[i] = math.RoundToEven(v)
	}
	return x
}

func reversed(x []float64) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[len(x)-1-i] = v
	}
	return out
}

// interpTable is np.interp(x, arange(len(fp)), fp) for one x: values at
// integer x are exact table entries.
func interpTable(x float64, fp []float32) float64 {
	n := len(fp)
	if x <= 0 {
		return float64(fp[0])
	}
	if x >= float64(n-1) {
		return float64(fp[n-1])
	}
	j := int(math.Floor(x))
	if float64(j) == x {
		return float64(fp[j])
	}
	slope := float64(fp[j+1]) - float64(fp[j]) // over a unit interval
	return float64(slope*(x-float64(j))) + float64(fp[j])
}

// karrasSigmas is diffusers' _convert_to_karras: n sigmas from sigmaMax
// down to sigmaMin, evenly spaced in sigma^(1/7) (Karras et al. 2022).
func karrasSigmas(sigmaMin, sigmaMax float64, n int) []float64 {
	const rho = 7.0
	ramp := npLinspace(0, 1, n, true)
	minInv := math.Pow(sigmaMin, 1/rho)
	maxInv := math.Pow(sigmaMax, 1/rho)
	out := make([]float64, n)
	for i, r := range ramp {
		out[i] = math.Pow(maxInv+float64(r*(minInv-maxInv)), rho)
	}
	return out
}

// sigmaToT is diffusers' _sigma_to_t: the fractional training timestep
// whose log-sigma interpolates linearly to log(sigma). logSigmas are
// float32, as np.log of the float32 sigma table gives them.
func sigmaToT(sigma float64, logSigmas []float32) float64 {
	ls := math.Log(math.Max(sigma, 1e-10))
	// Last index whose log-sigma is <= ls (0 when none), capped so that a
	// neighbour above exists.
	low := 0
	for i, v := range logSigmas {
		if ls-float64(v) >= 0 {
			low = i
		}
	}
	low = min(low, len(logSigmas)-2)
	lo, hi := float64(logSigmas[low]), float64(logSigmas[low+1])
	w := (lo - ls) / (lo - hi)
	w = math.Min(math.Max(w, 0), 1)
	return float64((1-w)*float64(low)) + float64(w*float64(low+1))
}
