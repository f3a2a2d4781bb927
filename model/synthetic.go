package model

import (
	"encoding/binary"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"strings"

	"github.com/zimage/zimage/model/safetensors"
)

// NewSyntheticSource returns a source that invents every tensor a network
// asks for: seeded random F16 values with the shape asked for, so that
// full-size architectures can be benchmarked (and tiny demo models built)
// without downloading weights. Values depend only on seed and key, and are
// regenerated on every read instead of being kept, so host memory stays flat
// however large the network.
//
// Matrices get uniform values with variance 1/fan_in (activations keep their
// scale through deep stacks); 1-D "weight" tensors (norm gains) are near 1,
// other vectors (biases) near 0.
func NewSyntheticSource(name string, seed uint64) *Source {
	s := NewSource(name)
	s.synth = func(key string, shape []int) *Entry {
		e := &Entry{Key: key, DType: safetensors.F16, Shape: append([]int(nil), shape...), File: "<synthetic>"}
		e.data = func() []byte { return synthesize(seed, key, e.Shape) }
		return e
	}
	return s
}

func synthesize(seed uint64, key string, shape []int) []byte {
	h := fnv.New64a()
	h.Write([]byte(key))
	r := rand.New(rand.NewPCG(seed, h.Sum64()))
	n, fanIn := 1, 1
	for i, d := range shape {
		n *= d
		if i > 0 {
			fanIn *= d
		}
	}
	center, amp := 0.0, 0.02
	switch {
	case len(shape) >= 2:
		amp = math.Sqrt(3 / float64(fanIn))
	case strings.HasSuffix(key, "weight"):
		center, amp = 1, 0.05
	}
	out := make([]byte, 2*n)
	for i := 0; i < n; i++ {
		v := center + amp*(2*r.Float64()-1)
		binary.LittleEndian.PutUint16(out[2*i:], F16Bits(float32(v)))
	}
	return out
}
