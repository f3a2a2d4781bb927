package vk

import (
	"flag"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/enginetest"
	"github.com/zimage/zimage/internal/gcstress"
)

var (
	stressDispatches = flag.Int("stress.dispatches", 20000,
		"dispatches TestGCStress records under constant garbage collection (long run: 200000)")
	stressConformance = flag.Bool("stress.conformance", false,
		"TestGCStress also runs the conformance suite on both kernel families under constant garbage collection (long run)")
)

// TestGCStress records tens of thousands of dispatches of every kind while
// the collector runs constantly, on fresh devices of both kernel families
// (so every pipeline is created under it: cold compiles with
// MESA_SHADER_CACHE_DISABLE=true). Each device runs rounds of a mixed
// workload (every op, texel views, staged and inline uploads, reads) in
// small batches (many submits, fence waits and descriptor pool resets),
// whose output must stay bit-identical round after round, and whose
// Vulkan objects must return to their count after the first round. With
// -stress.conformance the conformance suite runs first on each device.
// vulkan-go freed C copies of nested structs from finalizers that could
// run during the call, and crashed in vkCreateComputePipelines under this.
// Run it under the validation layer.
func TestGCStress(t *testing.T) {
	idx := device(t).Info().Index
	stop := gcstress.Loop()
	var total Counters
	rounds := 0
	for i, tuning := range []Tuning{TuningCPU, TuningGPU} {
		d, err := Open(Options{DeviceIndex: idx, Tuning: tuning, MaxBatch: 16})
		require.NoError(t, err)
		if *stressConformance {
			t.Run("conformance-"+tuning.String(), func(t *testing.T) { enginetest.All(t, d, enginetest.SmallOnly()) })
		}
		s := newStressSet(t, d)
		want := s.round(t)
		require.NoError(t, d.Flush())
		base := d.Objects()
		target := int64(*stressDispatches) * int64(i+1) / 2
		for n := 1; d.Counters().Dispatches+total.Dispatches < target; n++ {
			got := s.round(t)
			rounds++
			for i := range want {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
					t.Fatalf("%v round %d: output[%d] = %v, round 1 gave %v: work was corrupted", tuning, n, i, got[i], want[i])
				}
			}
		}
		require.NoError(t, d.Flush())
		d.mem.trim()
		require.Equal(t, base, d.Objects(), "%v: Vulkan objects after the rounds vs after the first", tuning)
		s.free()
		total = addCounters(total, d.Counters())
		require.NoError(t, d.Close(), "closing the %v device", tuning)
	}
	cycles := stop()
	t.Logf("%d dispatches (%d copies, %d inline updates, %d barriers, %d submits, %d pipelines created, %d texel views, %d uploads of which %d staged) under %d forced GC cycles; %d mixed rounds bit-identical",
		total.Dispatches, total.Copies, total.Updates, total.Barriers, total.Submits, total.PipelinesCreated, total.ViewsCreated,
		total.Uploads, total.StagedUploads, cycles, rounds)
	require.GreaterOrEqual(t, total.Dispatches, int64(*stressDispatches))
}

func addCounters(a, b Counters) Counters {
	a.Dispatches += b.Dispatches
	a.Copies += b.Copies
	a.Updates += b.Updates
	a.Barriers += b.Barriers
	a.Submits += b.Submits
	a.Waits += b.Waits
	a.PipelinesCreated += b.PipelinesCreated
	a.ViewsCreated += b.ViewsCreated
	a.Uploads += b.Uploads
	a.StagedUploads += b.StagedUploads
	return a
}

// stressSet is the tensors of the mixed workload.
type stressSet struct {
	d     *Device
	hostX []float32
	all   []*engine.Tensor
	// Inputs: conv input and weights, per-channel vectors, linear and
	// matmul weights, an embedding table.
	x, w3, w3s, bias, gamma, beta, wl, wl2, b16, bm, g12, b12, table, cos, sin *engine.Tensor
	// Intermediates and outputs.
	c1, c2, c3, up, cat, perm, h, h2, q, att, gl, rms, sm, sw, ln, half, out, emb *engine.Tensor
}

func newStressSet(t *testing.T, d *Device) *stressSet {
	s := &stressSet{d: d}
	r := rand.New(rand.NewPCG(1, 2))
	mk := func(name string, dt engine.DType, init bool, shape ...int) *engine.Tensor {
		x, err := d.Alloc(name, dt, engine.Shape(shape))
		require.NoError(t, err)
		s.all = append(s.all, x)
		if init {
			v := make([]float32, x.NumElem())
			for i := range v {
				v[i] = float32(r.NormFloat64()) * 0.3
			}
			require.NoError(t, d.Write(x, v))
		}
		return x
	}
	s.x = mk("x", engine.F32, true, 2, 8, 8, 8)
	var err error
	s.hostX, err = d.Read(s.x)
	require.NoError(t, err)
	s.w3 = mk("w3", engine.F16, true, 8, 8, 3, 3)
	s.w3s = mk("w3s", engine.F32, true, 8, 8, 3, 3)
	s.bias = mk("bias", engine.F32, true, 8)
	s.gamma = mk("gamma", engine.F32, true, 8)
	s.beta = mk("beta", engine.F32, true, 8)
	s.wl = mk("wl", engine.F16, true, 24, 16)
	s.wl2 = mk("wl2", engine.F32, true, 16, 24)
	s.b16 = mk("b16", engine.F32, true, 16)
	s.bm = mk("bm", engine.F32, true, 2, 24, 16)
	s.g12 = mk("g12", engine.F32, true, 12)
	s.b12 = mk("b12", engine.F32, true, 12)
	s.table = mk("table", engine.F16, true, 10, 16)
	s.cos = mk("cos", engine.F32, true, 1, 64, 4)
	s.sin = mk("sin", engine.F32, true, 1, 64, 4)
	s.c1 = mk("c1", engine.F32, false, 2, 8, 8, 8)
	s.c2 = mk("c2", engine.F32, false, 2, 8, 4, 4)
	s.c3 = mk("c3", engine.F32, false, 2, 8, 8, 8)
	s.up = mk("up", engine.F32, false, 2, 8, 8, 8)
	s.cat = mk("cat", engine.F32, false, 2, 16, 8, 8)
	s.perm = mk("perm", engine.F32, false, 2, 8, 8, 16)
	s.h = mk("h", engine.F32, false, 2, 64, 24)
	s.h2 = mk("h2", engine.F32, false, 2, 64, 24)
	s.q = mk("q", engine.F32, false, 2, 64, 16)
	s.att = mk("att", engine.F32, false, 2, 64, 16)
	s.gl = mk("gl", engine.F32, false, 2, 64, 12)
	s.rms = mk("rms", engine.F32, false, 2, 64, 12)
	s.sm = mk("sm", engine.F32, false, 2, 64, 12)
	s.sw = mk("sw", engine.F32, false, 2, 64, 12)
	s.ln = mk("ln", engine.F32, false, 2, 64, 12)
	s.half = mk("half", engine.F16, false, 2, 64, 12)
	s.out = mk("out", engine.F32, false, 2, 64, 12)
	s.emb = mk("emb", engine.F32, false, 6, 16)
	return s
}

func (s *stressSet) free() {
	for _, x := range s.all {
		s.d.Free(x)
	}
}

// round records one pass of the mixed workload (about 25 dispatches: every
// op of engine.Backend; one
// staged upload into a tensor that pending work reads, one inline update)
// and reads the result back.
func (s *stressSet) round(t *testing.T) []float32 {
	t.Helper()
	d := s.d
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	seq, err := s.perm.Reshape(2, 64, 16)
	must(err)
	attn := engine.AttentionOptions{Heads: 2, Scale: 0.25}
	masked := engine.AttentionOptions{Heads: 2, Scale: 0.25, Causal: true, KeyLens: []int{40, 64}}
	must(d.Conv2d(s.c1, s.x, s.w3, s.bias, engine.Conv2dParams{Stride: 1, Pad: 1})) // [2,8,8,8]
	must(d.Conv2d(s.c2, s.c1, s.w3s, nil, engine.Conv2dParams{Stride: 2, Pad: 1}))  // [2,8,4,4]
	must(d.GroupNorm(s.c1, s.c1, s.gamma, s.beta, 4, 1e-5, true))                   // in place
	must(d.Write(s.x, s.hostX))                                                     // pending work reads x: staged
	must(d.Upsample2x(s.up, s.c2))                                                  // [2,8,8,8]
	must(d.Binary(s.c3, s.c1, s.up, engine.Add))
	must(d.Concat(s.cat, s.c3, s.x))                  // [2,16,8,8]
	must(d.Permute(s.perm, s.cat, []int{0, 2, 3, 1})) // [2,8,8,16]
	must(d.Linear(s.h, seq, s.wl, nil))               // [2,64,24]
	must(d.Unary(s.h2, s.h, engine.GELU))
	must(d.Unary(s.h2, s.h2, engine.Tanh))                   // in place
	must(d.Linear(s.q, s.h2, s.wl2, s.b16))                  // [2,64,16]
	must(d.Rope(s.q, s.q, s.cos, s.sin, 2, engine.RopeHalf)) // in place
	must(d.Attention(s.att, s.q, seq, seq, attn))
	must(d.Attention(s.q, s.att, seq, seq, masked))
	must(d.Rope(s.q, s.q, s.cos, s.sin, 2, engine.RopeInterleaved))
	must(d.MatMul(s.h, s.q, s.bm, true, 0.5)) // [2,64,24]
	must(d.GEGLU(s.gl, s.h))                  // [2,64,12]
	must(d.RMSNorm(s.rms, s.gl, s.g12, 1e-6))
	must(d.Softmax(s.sm, s.rms))
	must(d.SwiGLU(s.sw, s.gl, s.sm))
	must(d.LayerNorm(s.ln, s.sw, s.g12, s.b12, 1e-5))
	must(d.Embedding(s.emb, s.table, []int32{3, 1, 4, 1, 5, 9})) // inline update
	must(d.Copy(s.half, s.ln))                                   // F32 -> F16
	must(d.Copy(s.out, s.half))
	must(d.Scale(s.out, s.out, 2, 0.5))
	out, err := d.Read(s.out)
	must(err)
	emb, err := d.Read(s.emb)
	must(err)
	return append(out, emb...)
}
