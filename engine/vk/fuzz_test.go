package vk

import (
	"testing"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/enginetest"
)

// The fuzz targets compare the Vulkan backend with engine/ref on generated
// shapes (both kernel families: the family bit picks the device). Sizes
// are folded into small ranges so that each input runs in milliseconds:
// run them with go test -fuzz FuzzConv2d ./engine/vk.

func fuzzDevice(t *testing.T, otherFam bool) *Device {
	if otherFam {
		return otherFamily(t)
	}
	return device(t)
}

func FuzzConv2d(f *testing.F) {
	f.Add(uint8(1), uint8(3), uint8(9), uint8(9), uint8(5), uint8(3), uint8(1), uint8(1), false, false)
	f.Add(uint8(2), uint8(17), uint8(5), uint8(13), uint8(33), uint8(3), uint8(2), uint8(1), true, false)
	f.Add(uint8(1), uint8(8), uint8(7), uint8(7), uint8(16), uint8(1), uint8(1), uint8(0), true, true)
	f.Add(uint8(1), uint8(4), uint8(16), uint8(18), uint8(20), uint8(3), uint8(1), uint8(0), false, true)
	f.Fuzz(func(t *testing.T, n, c, h, w, o, k, stride, pad uint8, f16, otherFam bool) {
		d := fuzzDevice(t, otherFam)
		wdt := engine.F32
		if f16 {
			wdt = engine.F16
		}
		kk := int(k)%3 + 1 // 1, 2 or 3 (kernels with even sizes too)
		enginetest.CheckConv2d(t, d, int(n)%2+1, int(c)%24+1, int(h)%20+1, int(w)%20+1, int(o)%40+1,
			kk, int(stride)%2+1, int(pad)%(kk+1), wdt)
	})
}

func FuzzMatMul(f *testing.F) {
	f.Add(uint8(1), uint8(5), uint8(8), uint8(7), false, false)
	f.Add(uint8(2), uint8(33), uint8(17), uint8(65), true, false)
	f.Add(uint8(1), uint8(64), uint8(64), uint8(64), false, true)
	f.Add(uint8(3), uint8(1), uint8(4), uint8(40), true, true)
	f.Fuzz(func(t *testing.T, batch, m, k, n uint8, transB, otherFam bool) {
		d := fuzzDevice(t, otherFam)
		enginetest.CheckMatMul(t, d, int(batch)%3+1, int(m)%80+1, int(k)%80+1, int(n)%80+1, transB, 0.5)
	})
}

func FuzzLinear(f *testing.F) {
	f.Add(uint8(1), uint8(5), uint8(8), uint8(7), true, false, false)
	f.Add(uint8(2), uint8(33), uint8(16), uint8(65), false, true, false)
	f.Add(uint8(1), uint8(17), uint8(3), uint8(9), true, true, true)
	f.Fuzz(func(t *testing.T, batch, rows, k, n uint8, bias, f16, otherFam bool) {
		d := fuzzDevice(t, otherFam)
		wdt := engine.F32
		if f16 {
			wdt = engine.F16
		}
		enginetest.CheckLinear(t, d, int(batch)%2+1, int(rows)%80+1, int(k)%80+1, int(n)%80+1, bias, wdt)
	})
}

func FuzzAttention(f *testing.F) {
	f.Add(uint8(1), uint8(9), uint8(9), uint8(2), uint8(0), uint8(8), false, uint8(0), uint8(0))
	f.Add(uint8(2), uint8(17), uint8(5), uint8(3), uint8(0), uint8(10), true, uint8(0), uint8(0))
	f.Add(uint8(1), uint8(40), uint8(77), uint8(1), uint8(0), uint8(40), false, uint8(0), uint8(0))
	f.Add(uint8(2), uint8(33), uint8(33), uint8(4), uint8(1), uint8(8), true, uint8(20), uint8(3))
	f.Add(uint8(3), uint8(12), uint8(50), uint8(6), uint8(2), uint8(64), false, uint8(7), uint8(49))
	f.Fuzz(func(t *testing.T, batch, lq, lk, heads, kvDiv, dim uint8, causal bool, len0, len1 uint8) {
		// Head dims are the ones networks use (and odd ones for the scalar
		// kernel): every distinct dim is a separate pipeline to compile.
		dims := []int{3, 8, 10, 40, 64, 128}
		nb, h := int(batch)%3+1, int(heads)%6+1
		// KV heads: a divisor of the query heads (kvDiv picks which).
		var divs []int
		for x := 1; x <= h; x++ {
			if h%x == 0 {
				divs = append(divs, x)
			}
		}
		o := engine.AttentionOptions{Heads: h, KVHeads: divs[int(kvDiv)%len(divs)], Causal: causal}
		nk := int(lk)%80 + 1
		if len0 != 0 {
			// Key lengths in 1..nk, varied over the batch rows.
			for i := 0; i < nb; i++ {
				o.KeyLens = append(o.KeyLens, (int(len0)+i*int(len1))%nk+1)
			}
		}
		enginetest.CheckAttentionOptions(t, device(t), nb, int(lq)%70+1, nk, dims[int(dim)%len(dims)], o)
	})
}
