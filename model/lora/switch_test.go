package lora

import (
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/model/safetensors"
)

// snapshot reads every weight of the model's networks from the device.
func (m *sdModel) snapshot(t *testing.T, b engine.Backend) map[string][]float32 {
	t.Helper()
	out := map[string][]float32{}
	var blocks []*model.Block
	blocks = append(blocks, m.unet.Blocks()...)
	for _, e := range m.encoders {
		blocks = append(blocks, e.Blocks()...)
	}
	for _, bl := range blocks {
		require.NoError(t, bl.Upload(b))
		for _, p := range bl.Params {
			v, err := b.Read(p.T)
			require.NoError(t, err)
			out[p.Key] = v
		}
	}
	return out
}

// unetOut runs the UNet once on fixed inputs.
func (m *sdModel) unetOut(t *testing.T, b engine.Backend) []float32 {
	t.Helper()
	u := m.unet
	rng := rand.New(rand.NewPCG(3, 4))
	rec := engine.NewRec(b)
	x := rec.Write("x", testref.Normal(rng, 2*u.Config.InChannels*8*8), 2, u.Config.InChannels, 8, 8)
	cross := u.Config.CrossAttentionDim.At(0)
	ctx := rec.Write("ctx", testref.Normal(rng, 2*5*cross), 2, 5, cross)
	var added *model.AddedCond
	if u.AddEmbedding != nil {
		pooled := u.Config.ProjectionClassEmbedInputDim - 6*u.Config.AdditionTimeEmbedDim
		added = &model.AddedCond{TextEmbeds: rec.Write("te", testref.Normal(rng, 2*pooled), 2, pooled),
			TimeIDs: [][6]float64{{64, 64, 0, 0, 64, 64}}}
	}
	y := u.Forward(rec, model.AllResident{B: b}, x, 500, ctx, added)
	require.NoError(t, rec.Err())
	v, err := b.Read(y)
	require.NoError(t, err)
	rec.Free(x, ctx, y)
	if added != nil {
		rec.Free(added.TextEmbeds)
	}
	return v
}

// TestSwitchBitIdentical: A -> B -> A+B (text encoders in the forward
// pass) -> none leaves every weight and the UNet's output bit-identical to
// a fresh load, frees every LoRA tensor, and re-uploads only the modules
// that changed. Merged weights that were evicted in between (a run that
// streamed) are merged again by the next Apply.
func TestSwitchBitIdentical(t *testing.T) {
	for _, name := range testref.Models {
		for _, be := range backends {
			t.Run(name+"/"+be.name, func(t *testing.T) {
				r := testref.OpenLoRA(t, name)
				b := be.open(t)
				m := loadSD(t, r.Dir)
				defer m.evictAll(b)
				fresh := m.snapshot(t, b)
				freshOut := m.unetOut(t, b)
				inUse := b.MemStats().InUse

				fa := openLoRA(t, r.Dir, "loras/style_a.safetensors")
				fb := openLoRA(t, r.Dir, "loras/locon_c.safetensors")
				a := NewApplier(b, m.target, Options{})
				merged := Modes{Default: Merge}
				require.NoError(t, a.Apply([]Spec{{File: fa, TE: 1, UNet: 1}}, merged))
				withA := m.snapshot(t, b)
				outA := m.unetOut(t, b)
				assert.NotEqual(t, freshOut, outA, "style_a changed nothing")

				require.NoError(t, a.Apply([]Spec{{File: fb, TE: 0.5, UNet: 1}}, merged))
				require.NoError(t, a.Apply([]Spec{{File: fa, TE: 1, UNet: 1}, {File: fb, TE: 1, UNet: 0.3}},
					Modes{Default: Merge, Components: map[string]Mode{"text_encoder": InForward, "text_encoder_2": InForward}}))
				st := a.Stats()
				assert.Positive(t, st.InForward)
				assert.Positive(t, st.Merged)
				assert.Positive(t, st.ForwardBytes)

				// Back to A alone: the same weights as the first time.
				require.NoError(t, a.Apply([]Spec{{File: fa, TE: 1, UNet: 1}}, merged))
				assert.Equal(t, withA, m.snapshot(t, b))
				// Evicted merged weights come back as the base weight; Apply
				// notices and merges them again.
				m.evictAll(b)
				require.NoError(t, a.Apply([]Spec{{File: fa, TE: 1, UNet: 1}}, merged))
				assert.Equal(t, withA, m.snapshot(t, b))
				assert.Equal(t, outA, m.unetOut(t, b))

				restored := a.Stats().Restored
				require.NoError(t, a.Apply(nil, merged))
				assert.Positive(t, a.Stats().Restored-restored)
				assert.Equal(t, Stats{Restored: a.Stats().Restored}, a.Stats())
				assert.Equal(t, fresh, m.snapshot(t, b), "weights after A -> B -> A+B -> A -> none")
				assert.Equal(t, freshOut, m.unetOut(t, b), "UNet output after A -> B -> A+B -> A -> none")
				for _, n := range m.target.Networks() {
					for _, mod := range n.Modules {
						require.Nil(t, mod.LoRA(), "%s %s still has a forward term", n.Component, mod.Path)
					}
				}
				assert.Equal(t, inUse, b.MemStats().InUse, "device memory after switching back")
				require.NoError(t, a.Close())
			})
		}
	}
}

// TestInForwardMatchesMerge: a module's forward term gives the output of
// its float32-merged weight, for linears, 1x1 and 3x3 (stride 2) convs.
func TestInForwardMatchesMerge(t *testing.T) {
	r := testref.OpenLoRA(t, "tiny-sd15")
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			b := be.open(t)
			m := loadSD(t, r.Dir)
			defer m.evictAll(b)
			f := openLoRA(t, r.Dir, "loras/locon_c.safetensors")
			g := openLoRA(t, r.Dir, "loras/style_b.safetensors")
			a := NewApplier(b, m.target, Options{})
			specs := []Spec{{File: f, TE: 1, UNet: 0.8}, {File: g, TE: 1, UNet: -0.5}}
			require.NoError(t, a.Apply(specs, Modes{Default: InForward}))
			defer a.Close()
			for _, path := range []string{
				"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", // linear, two LoRAs
				"down_blocks.0.attentions.0.proj_in",                         // 1x1 conv run as a linear
				"down_blocks.0.resnets.0.conv1",                              // 3x3
				"down_blocks.0.downsamplers.0.conv",                          // 3x3, stride 2
			} {
				mod := m.module(t, "unet", path)
				st := a.state["unet:"+path]
				require.NotNil(t, st, path)
				require.NoError(t, mod.Weight().Upload(b))
				rng := rand.New(rand.NewPCG(5, 6))
				rec := engine.NewRec(b)
				var x *engine.Tensor
				if mod.Kernel() > 0 {
					x = rec.Write("x", testref.Normal(rng, 2*mod.In()*9*9), 2, mod.In(), 9, 9)
				} else {
					x = rec.Write("x", testref.Normal(rng, 2*7*mod.In()), 2, 7, mod.In())
				}
				forward := func() []float32 {
					var y *engine.Tensor
					if mod.Conv != nil {
						y = mod.Conv.Forward(rec, x)
					} else {
						// The projection's weight is [out, in, 1, 1]: run it
						// as the UNet does, on the token layout.
						w := mod.Weight().T
						w2 := rec.Reshape(w, mod.Out(), mod.In())
						l := &model.Linear{Weight: &model.Param{Key: mod.Weight().Key, Shape: w2.Shape, T: w2}, Bias: mod.Linear.Bias, LoRA: mod.LoRA()}
						y = l.Forward(rec, x)
					}
					require.NoError(t, rec.Err())
					v, err := b.Read(y)
					require.NoError(t, err)
					rec.Free(y)
					return v
				}
				got := forward()
				// The float32 merge of the same terms, swapped in.
				out := mod.Out()
				k := mod.Weight().Shape.NumElem() / out
				acc := rec.Copy("acc", rec.Reshape(mod.Weight().T, out, k))
				require.NoError(t, a.addTerms(rec, acc, st.terms))
				base, lr := mod.Weight().T, mod.LoRA()
				mod.Weight().T = rec.Reshape(acc, mod.Weight().Shape...)
				require.NoError(t, mod.SetLoRA(nil))
				want := forward()
				mod.Weight().T = base
				require.NoError(t, mod.SetLoRA(lr))
				rec.Free(acc, x)
				rel := relMax(got, want)
				t.Logf("%s: in-forward vs merged %.2g relative", path, rel)
				assert.LessOrEqual(t, rel, 1e-5, path)
			}
		})
	}
}

// TestZImageTarget: a diffusers/PEFT LoRA on the Z-Image transformer
// resolves onto its Linears, merges, attaches for the forward pass, and
// switching back leaves the weights as loaded.
func TestZImageTarget(t *testing.T) {
	dir := testref.Dir(t, "tiny-z-image-turbo")
	ck, err := model.OpenCheckpoint(dir, model.OpenOptions{})
	require.NoError(t, err)
	defer ck.Close()
	require.NotNil(t, ck.Transformer)
	dit, err := model.LoadZImage(ck.Transformer.Source, ck.Transformer.Config)
	require.NoError(t, err)
	target := ZImageTarget(dit)
	mods := dit.Modules()
	var ts []safetensors.WriteTensor
	for i, m := range mods {
		if i%3 != 0 {
			continue // a third of the modules, spread over every kind
		}
		ts = append(ts, f16Tensor("transformer."+m.Path+".lora_A.weight", 4, m.In()), f16Tensor("transformer."+m.Path+".lora_B.weight", m.Out(), 4))
	}
	p := filepath.Join(t.TempDir(), "zimage_lora.safetensors")
	require.NoError(t, safetensors.WriteFile(p, ts, nil))
	f, err := Open(p)
	require.NoError(t, err)
	defer f.Close()
	res, err := target.Resolve(f, false)
	require.NoError(t, err)
	require.Len(t, res.Bindings, len(ts)/2)

	b := ref.New()
	a := NewApplier(b, target, Options{})
	snap := func() map[string][]float32 {
		out := map[string][]float32{}
		for _, bl := range dit.Blocks() {
			require.NoError(t, bl.Upload(b))
			for _, p := range bl.Params {
				v, err := b.Read(p.T)
				require.NoError(t, err)
				out[p.Key] = v
			}
		}
		return out
	}
	fresh := snap()
	require.NoError(t, a.Apply([]Spec{{File: f, TE: 0, UNet: 0.7}}, Modes{Default: Merge}))
	assert.Equal(t, len(ts)/2, a.Stats().Merged)
	assert.NotEqual(t, fresh, snap())
	require.NoError(t, a.Apply([]Spec{{File: f, TE: 0, UNet: 0.7}}, Modes{Default: InForward}))
	assert.Equal(t, len(ts)/2, a.Stats().InForward)
	assert.Equal(t, fresh, snap())
	require.NoError(t, a.Close())
	for _, m := range mods {
		require.Nil(t, m.LoRA())
	}
	for _, bl := range dit.Blocks() {
		bl.Evict(b)
	}
	assert.Zero(t, b.MemStats().InUse)
}
