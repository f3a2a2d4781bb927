package testref

import "math/rand/v2"

// Normal returns n N(0,1) float32 values drawn from r: seeded inputs for
// tests and benchmarks.
func Normal(r *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64())
	}
	return v
}
