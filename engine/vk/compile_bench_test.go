package vk

import (
	"testing"
	"time"

	"github.com/zimage/zimage/engine"
)

// BenchmarkFirstDispatch times the first dispatch of each kernel family on
// a fresh device: on lavapipe that is where LLVM compiles the shader (once
// per kernel, specialization and texel-format combination). Run it with
// MESA_SHADER_CACHE_DISABLE=true to see cold compiles rather than Mesa's
// disk cache.
func BenchmarkFirstDispatch(b *testing.B) {
	device(b)
	d, err := Open(DefaultOptions())
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	tm := func(name string, f func() error) {
		start := time.Now()
		if err := f(); err != nil {
			b.Fatal(err)
		}
		if err := d.Flush(); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(time.Since(start).Seconds(), name+"-s")
	}
	q := benchTensor(b, d, "q", engine.F32, 1, 64, 512)
	o := benchTensor(b, d, "o", engine.F32, 1, 64, 512)
	tm("attention_D512", func() error { return d.Attention(o, q, q, q, engine.AttentionOptions{Heads: 1, Scale: 0.1}) })
	tm("attention_D64", func() error { return d.Attention(o, q, q, q, engine.AttentionOptions{Heads: 8, Scale: 0.1}) })
	tm("attention_D128", func() error { return d.Attention(o, q, q, q, engine.AttentionOptions{Heads: 4, Scale: 0.1}) })
	cs := benchTensor(b, d, "cs", engine.F32, 1, 64, 64)
	tm("rope_vec4", func() error { return d.Rope(o, q, cs, cs, 4, engine.RopeInterleaved) })
	tm("rms_norm_rows", func() error { return d.RMSNorm(o, q, nil, 1e-6) })
	tm("swiglu_vec4", func() error { return d.SwiGLU(o, q, q) })
	a := benchTensor(b, d, "a", engine.F32, 1, 64, 64)
	w := benchTensor(b, d, "w", engine.F16, 64, 64)
	y := benchTensor(b, d, "y", engine.F32, 1, 64, 64)
	tm("matmul_reg_nt", func() error { return d.Linear(y, a, w, nil) })
	a2 := benchTensor(b, d, "a2", engine.F32, 1, 512, 64)
	y2 := benchTensor(b, d, "y2", engine.F32, 1, 512, 64)
	tm("matmul_reg_nt_m32", func() error { return d.Linear(y2, a2, w, nil) })
	x := benchTensor(b, d, "x", engine.F32, 1, 64, 32, 32)
	cw := benchTensor(b, d, "cw", engine.F16, 64, 64, 3, 3)
	cy := benchTensor(b, d, "cy", engine.F32, 1, 64, 32, 32)
	tm("conv_winograd", func() error { return d.Conv2d(cy, x, cw, nil, engine.Conv2dParams{Stride: 1, Pad: 1}) })
	x8 := benchTensor(b, d, "x8", engine.F32, 1, 64, 8, 8)
	cy8 := benchTensor(b, d, "cy8", engine.F32, 1, 64, 8, 8)
	tm("conv_im2col", func() error { return d.Conv2d(cy8, x8, cw, nil, engine.Conv2dParams{Stride: 1, Pad: 1}) })
	cw4 := benchTensor(b, d, "cw4", engine.F16, 3, 64, 3, 3)
	cy4 := benchTensor(b, d, "cy4", engine.F32, 1, 3, 32, 32)
	tm("conv_direct", func() error { return d.Conv2d(cy4, x, cw4, nil, engine.Conv2dParams{Stride: 1, Pad: 1}) })
}
