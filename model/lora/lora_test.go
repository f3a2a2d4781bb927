package lora

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model"
)

// One Vulkan device per test binary: opening one and compiling its
// pipelines is the slow part on lavapipe.
var (
	vkOnce sync.Once
	vkDev  *vk.Device
	vkErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if vkDev != nil {
		vkDev.Close()
	}
	os.Exit(code)
}

// backends are the engines the conformance tests run on.
var backends = []struct {
	name string
	open func(t testing.TB) engine.Backend
}{
	{"ref", func(t testing.TB) engine.Backend { return ref.New() }},
	{"vk", func(t testing.TB) engine.Backend {
		vkOnce.Do(func() { vkDev, vkErr = vk.Open(vk.DefaultOptions()) })
		if errors.Is(vkErr, vk.ErrNoDevice) {
			t.Skip("no Vulkan device")
		}
		require.NoError(t, vkErr)
		return vkDev
	}},
}

// sdModel is a reference model's networks as LoRAs see them.
type sdModel struct {
	ck       *model.Checkpoint
	unet     *model.UNet
	encoders []*model.CLIPText
	target   *Target
}

func loadSD(t testing.TB, dir string) *sdModel {
	t.Helper()
	ck, err := model.OpenCheckpoint(dir, model.OpenOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { ck.Close() })
	m := &sdModel{ck: ck}
	m.unet, err = model.LoadUNet(ck.UNet.Source, ck.UNet.Config)
	require.NoError(t, err)
	for _, te := range ck.TextEncoders {
		net, err := model.LoadCLIPText(te.Source, te.Config)
		require.NoError(t, err)
		m.encoders = append(m.encoders, net)
	}
	m.target = SDTarget(m.unet, m.encoders...)
	return m
}

// module finds a component's module.
func (m *sdModel) module(t testing.TB, component, path string) model.Module {
	t.Helper()
	mod, ok := m.target.byKey[component+":"+path]
	require.True(t, ok, "no module %s %s", component, path)
	return mod
}

// evictAll frees every weight of the model on b.
func (m *sdModel) evictAll(b engine.Backend) {
	for _, bl := range m.unet.Blocks() {
		bl.Evict(b)
	}
	for _, e := range m.encoders {
		for _, bl := range e.Blocks() {
			bl.Evict(b)
		}
	}
}

func openLoRA(t testing.TB, dir, rel string) *File {
	t.Helper()
	f, err := Open(filepath.Join(dir, rel))
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

// specsOf opens a run's LoRAs.
func specsOf(t testing.TB, dir string, rn testref.LoRARun) []Spec {
	var specs []Spec
	for _, l := range rn.LoRAs {
		specs = append(specs, Spec{File: openLoRA(t, dir, l.File), TE: l.TE, UNet: l.UNet})
	}
	return specs
}

// relMax is max |got - want| / max |want|.
func relMax(got, want []float32) float64 {
	var d, m float64
	for i := range want {
		d = math.Max(d, math.Abs(float64(got[i])-float64(want[i])))
		m = math.Max(m, math.Abs(float64(want[i])))
	}
	return d / m
}

// TestMergeCases checks every single-module merge of the three reference
// models, on every backend: the LoRA tensors the reader binds to the
// module are the reference's, the float32 merge (the engine ops Merge
// runs) is within 1e-6 relative of the reference's merged weight, and the
// F16 weight Merge leaves on the device is that value rounded to F16.
func TestMergeCases(t *testing.T) {
	for _, name := range testref.Models {
		for _, be := range backends {
			t.Run(name+"/"+be.name, func(t *testing.T) {
				r := testref.OpenLoRA(t, name)
				b := be.open(t)
				m := loadSD(t, r.Dir)
				defer m.evictAll(b)
				runs := map[string]bool{}
				for _, c := range r.MergeCases {
					runs[c.Run] = true
				}
				for id := range runs {
					rn := r.Run(t, id)
					a := NewApplier(b, m.target, Options{})
					require.NoError(t, a.Apply(specsOf(t, r.Dir, rn), Modes{Default: Merge}))
					for _, c := range r.MergeCases {
						if c.Run == id {
							checkMergeCase(t, r, m, a, b, c)
						}
					}
					require.NoError(t, a.Close())
				}
			})
		}
	}
}

func checkMergeCase(t *testing.T, r *testref.LoRARefs, m *sdModel, a *Applier, b engine.Backend, c testref.MergeCase) {
	t.Helper()
	st := a.state[c.Component+":"+c.Module]
	require.NotNil(t, st, "%s: module %s %s not adapted", c.ID, c.Component, c.Module)
	var present int
	for _, l := range c.LoRAs {
		if !l.Present {
			continue
		}
		require.Less(t, present, len(st.terms), "%s: fewer terms than LoRAs", c.ID)
		tm := st.terms[present]
		present++
		require.Equal(t, l.FileKey, tm.src.Key, c.ID)
		require.Equal(t, l.Rank, tm.src.Rank(), c.ID)
		require.InDelta(t, l.Scale*l.Multiplier, tm.scale, 1e-12, c.ID)
		down, up, err := tm.file.downUp(tm.src)
		require.NoError(t, err)
		wantDown, _ := r.Floats(t, l.Down)
		wantUp, _ := r.Floats(t, l.Up)
		require.Equal(t, wantDown, down, "%s: lora_down", c.ID)
		require.Equal(t, wantUp, up, "%s: lora_up", c.ID)
	}
	require.Equal(t, present, len(st.terms), "%s: more terms than LoRAs", c.ID)

	base, shape := r.Floats(t, "merge."+c.ID+".base")
	merged, _ := r.Floats(t, "merge."+c.ID+".merged")
	mod := m.module(t, c.Component, c.Module)
	require.Equal(t, shape, []int(mod.Weight().Shape), c.ID)
	out := shape[0]
	k := len(base) / out

	// The float32 merge itself.
	rec := engine.NewRec(b)
	acc := rec.Write("base", base, out, k)
	require.NoError(t, a.addTerms(rec, acc, st.terms))
	got, err := b.Read(acc)
	require.NoError(t, err)
	rec.Free(acc)
	rel := relMax(got, merged)
	t.Logf("%s (%s, %d terms): float32 merge %.2g relative", c.ID, c.Kind, len(st.terms), rel)
	require.LessOrEqual(t, rel, 1e-6, c.ID)

	// What Merge stored: the F16 rounding of that value. The reference
	// and we may round a value that sits within float32 noise of a tie
	// differently, so allow one F16 step where the float32 sums differ.
	dev, err := b.Read(mod.Weight().T)
	require.NoError(t, err)
	var off int
	for i, w := range merged {
		h := model.F16Value(model.F16Bits(w))
		if dev[i] != h {
			off++
			step := math.Max(math.Abs(float64(h))*math.Pow(2, -10), math.Pow(2, -24)) // subnormals: fixed 2^-24
			require.LessOrEqual(t, math.Abs(float64(dev[i]-h)), step, "%s: element %d: %g, want %g (F16 of %g)", c.ID, i, dev[i], h, w)
		}
	}
	require.LessOrEqual(t, off, len(merged)/100, "%s: %d of %d elements off by one F16 step", c.ID, off, len(merged))
}
