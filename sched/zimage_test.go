package sched

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/model/tokenizer"
)

const tinyZImage = "tiny-z-image-turbo"

// zimageNegativeIDs are the chat-templated ids of the CFG run's negative
// prompt "blurry, low quality", which the references give as features
// (run.cfg4_s2_96x64.cap_feats.1) but not as ids: the template's tokens
// as in tok.0, and "blur" "ry" "," " low" " quality" from vocab.json and
// merges.txt.
var zimageNegativeIDs = []int32{151644, 872, 198, 33542, 884, 11, 3347, 4271, 151645, 198, 151644, 77091, 198}

// zimageRun is one refs.json run.
type zimageRun struct {
	ID       string  `json:"id"`
	Prompt   int     `json:"prompt"`
	Negative *string `json:"negative"`
	Height   int     `json:"height"`
	Width    int     `json:"width"`
	Steps    int     `json:"steps"`
	Guidance float64 `json:"guidance"`
	Seed     uint64  `json:"seed"`
	Text     string  `json:"prompt_text"`
}

func zimageRuns(t testing.TB, r *testref.Refs) []zimageRun {
	raw, err := json.Marshal(r.JSON["runs"])
	require.NoError(t, err)
	var runs []zimageRun
	require.NoError(t, json.Unmarshal(raw, &runs))
	require.NotEmpty(t, runs)
	return runs
}

// openComponent maps a tiny Z-Image component and reads its config.
func openZImageComponent(t testing.TB, dir, component string, cfg any) *model.FileSource {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, component, "config.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(raw, cfg))
	files, _ := filepath.Glob(filepath.Join(dir, component, "*.safetensors"))
	require.Len(t, files, 1)
	src, err := model.OpenFileSource(component, files[0])
	require.NoError(t, err)
	t.Cleanup(func() { src.Close() })
	return src
}

// loadZImageModels loads the tiny pipeline with its Qwen2 tokenizer.
func loadZImageModels(t testing.TB) (*ZImageModels, *testref.Refs) {
	r := testref.Open(t, tinyZImage)
	tok, err := tokenizer.LoadQwen2(filepath.Join(r.Dir, "tokenizer"))
	require.NoError(t, err)
	m := &ZImageModels{Tokenizer: QwenTokenizer(tok)}
	var qc model.Qwen3Config
	m.TextEncoder, err = model.LoadQwen3(openZImageComponent(t, r.Dir, "text_encoder", &qc).Source, &qc)
	require.NoError(t, err)
	var zc model.ZImageConfig
	m.Transformer, err = model.LoadZImage(openZImageComponent(t, r.Dir, "transformer", &zc).Source, &zc)
	require.NoError(t, err)
	var vc model.VAEConfig
	m.VAE, err = model.LoadVAEDecoder(openZImageComponent(t, r.Dir, "vae", &vc).Source, &vc)
	require.NoError(t, err)
	raw, err := os.ReadFile(filepath.Join(r.Dir, "scheduler", "scheduler_config.json"))
	require.NoError(t, err)
	m.Scheduler = &model.SchedulerConfig{}
	require.NoError(t, json.Unmarshal(raw, m.Scheduler))
	return m, r
}

// refsFlowMatch is FlowMatchEulerDiscreteScheduler as ZImagePipeline sets
// it up (shift 3, sigma_min 0), its tables read from the references'
// sched.<n> tensors, until sched/sampler's own flow-match scheduler lands:
// prev = sample + (sigma_next - sigma) * model_output in float32.
type refsFlowMatch struct {
	t         testing.TB
	r         *testref.Refs
	sigmas    []float32
	timesteps []float64
}

func (s *refsFlowMatch) SetTimesteps(n int) error {
	key := fmt.Sprintf("sched.%d.", n)
	if !s.r.Has(key + "sigmas") {
		return fmt.Errorf("no reference table for %d steps", n)
	}
	s.sigmas, _ = s.r.Floats(s.t, key+"sigmas")
	ts, _ := s.r.Floats(s.t, key+"timesteps")
	s.timesteps = make([]float64, len(ts))
	for i, v := range ts {
		s.timesteps[i] = float64(v)
	}
	return nil
}
func (s *refsFlowMatch) Timesteps() []float64 { return s.timesteps }
func (s *refsFlowMatch) Sigmas() []float64 {
	out := make([]float64, len(s.sigmas))
	for i, v := range s.sigmas {
		out[i] = float64(v)
	}
	return out
}
func (s *refsFlowMatch) InitNoiseSigma() float64        { return 1 }
func (s *refsFlowMatch) ScaleModelInput([]float32, int) {}
func (s *refsFlowMatch) NeedsNoise(int) bool            { return false }
func (s *refsFlowMatch) Name() string                   { return "flowmatch_euler (reference tables)" }
func (s *refsFlowMatch) Begin(int) error                { return nil }
func (s *refsFlowMatch) AddNoise(dst, x, noise []float32, step int) error {
	sg := s.sigmas[step]
	for i := range x {
		dst[i] = sg*noise[i] + (1-sg)*x[i]
	}
	return nil
}
func (s *refsFlowMatch) Step(out, sample []float32, step int, _ []float32) error {
	if step < 0 || step+1 >= len(s.sigmas) {
		return fmt.Errorf("step %d out of range", step)
	}
	dt := s.sigmas[step+1] - s.sigmas[step]
	for i := range sample {
		sample[i] += dt * out[i]
	}
	return nil
}

func zimageParams(t testing.TB, r *testref.Refs, rn zimageRun) ZImageParams {
	p := ZImageParams{Params: Params{Prompt: rn.Text, Width: rn.Width, Height: rn.Height, Steps: rn.Steps,
		Guidance: rn.Guidance, Seed: rn.Seed, Batch: 1}, Scheduler: &refsFlowMatch{t: t, r: r}}
	if rn.Negative != nil {
		p.NegativePrompt = *rn.Negative
	}
	return p
}

// rgbaPSNR of two 8-bit RGB images in dB (+Inf when identical).
func rgbaPSNR(a *image.RGBA, b image.Image) float64 {
	var se float64
	n := 0
	for y := 0; y < a.Rect.Dy(); y++ {
		for x := 0; x < a.Rect.Dx(); x++ {
			r2, g2, b2, _ := b.At(b.Bounds().Min.X+x, b.Bounds().Min.Y+y).RGBA()
			o := a.PixOffset(x, y)
			for c, v := range []uint32{r2 >> 8, g2 >> 8, b2 >> 8} {
				d := float64(a.Pix[o+c]) - float64(v)
				se += d * d
				n++
			}
		}
	}
	if se == 0 {
		return math.Inf(1)
	}
	return 10 * math.Log10(255*255/(se/float64(n)))
}

// TestZImageRuns replays every reference run (1, 2 and 9 steps, and the
// guidance-4 run with a negative prompt, whose transformer batch holds two
// captions of different lengths) on the reference backend from the seed,
// and checks the latents after every step and the final image.
//
// Bounds: the transformer and VAE run with F16 matrices against the F32
// checkpoint (see model's tests: 8e-4 and 1e-3 of max|ref| + 1 per call).
// Latents after a step are allowed 5e-3 x (max|ref| + 1); observed at most
// 8.3e-4 (the CFG run: guidance 4 multiplies the difference of two
// predictions), 3.1e-4 without CFG, growing over the 9 steps to 1.6e-4.
// Images: PSNR >= 50 dB against the float32 reference PNG, the issue's
// target; observed 61.3 (CFG) to 62.9 dB (9 steps).
//
// The vk variant runs the same checks on the Vulkan device; it skips while
// the device lacks the transformer ops (they land with the Vulkan kernels).
func TestZImageRuns(t *testing.T) {
	m, r := loadZImageModels(t)
	t.Run("ref", func(t *testing.T) { testZImageRuns(t, m, r, ref.New()) })
	t.Run("vk", func(t *testing.T) {
		dev, err := vk.Open(vk.DefaultOptions())
		if errors.Is(err, vk.ErrNoDevice) {
			t.Skip("no Vulkan device")
		}
		require.NoError(t, err)
		t.Cleanup(func() {
			for _, nets := range [][]*model.Block{m.TextEncoder.Blocks(), m.Transformer.Blocks(), m.VAE.Blocks()} {
				for _, bl := range nets {
					bl.Evict(dev)
				}
			}
			dev.Close()
		})
		testZImageRuns(t, m, r, dev)
	})
}

func testZImageRuns(t *testing.T, m *ZImageModels, r *testref.Refs, b engine.Backend) {
	for _, rn := range zimageRuns(t, r) {
		t.Run(rn.ID, func(t *testing.T) {
			if testing.Short() && rn.Steps > 2 {
				t.Skip("-short: the 9-step run")
			}
			p := zimageParams(t, r, rn)
			worst := 0.0
			p.OnStep = func(step int, lat []float32) {
				key := fmt.Sprintf("run.%s.step%d.latents", rn.ID, step)
				want, _ := r.Floats(t, key)
				d := testref.Compare(lat, want)
				worst = max(worst, d.MaxAbs/(d.MaxRef+1))
				t.Logf("%s: max |diff| %.3g (max |ref| %.3g)", key, d.MaxAbs, d.MaxRef)
				if d.Mismatched || d.NonFinite > 0 || d.MaxAbs > 5e-3*(d.MaxRef+1) {
					t.Errorf("%s: %+v", key, d)
				}
			}
			steps := 0
			p.Progress = func(step, n int) { steps = step; require.Equal(t, rn.Steps, n) }
			out, err := RunZImage(context.Background(), b, m, p)
			require.NoError(t, err)
			require.Equal(t, rn.Steps, steps)
			require.Len(t, out.Images, 1)
			f, err := os.Open(filepath.Join(r.Dir, "images", rn.ID+".png"))
			require.NoError(t, err)
			defer f.Close()
			want, err := png.Decode(f)
			require.NoError(t, err)
			require.Equal(t, want.Bounds().Size(), out.Images[0].Rect.Size())
			db := rgbaPSNR(out.Images[0], want)
			t.Logf("%s: worst step latents max|diff|/(max|ref|+1) %.3g; image PSNR %.1f dB vs the fp32 PNG", rn.ID, worst, db)
			require.GreaterOrEqual(t, db, 50.0)
		})
	}
}

// TestZImageNegativeIDs: the CFG run's negative prompt, whose features the
// references hold but not its ids: the tokenizer gives the ids worked out
// by hand from vocab.json and merges.txt, and they give the reference's
// features.
func TestZImageNegativeIDs(t *testing.T) {
	m, r := loadZImageModels(t)
	ids, err := m.Tokenizer.ChatIDs("blurry, low quality")
	require.NoError(t, err)
	require.Equal(t, zimageNegativeIDs, ids)
	b := ref.New()
	rec := engine.NewRec(b)
	x := m.TextEncoder.Encode(rec, model.AllResident{B: b}, zimageNegativeIDs)
	require.NoError(t, rec.Err())
	got, err := b.Read(x)
	require.NoError(t, err)
	want, _ := r.Floats(t, "run.cfg4_s2_96x64.cap_feats.1")
	d := testref.Compare(got, want)
	require.LessOrEqual(t, d.MaxAbs, 1e-4*(d.MaxRef+1), "%+v", d)
}

// TestZImageStreamingBitIdentical: layer streaming under a budget far below
// the weights gives the same bytes as resident weights, keeps the device
// peak under the budget, and releases the text encoder before denoising.
func TestZImageStreamingBitIdentical(t *testing.T) {
	m, r := loadZImageModels(t)
	var rn zimageRun
	for _, x := range zimageRuns(t, r) {
		if x.Guidance > 1 {
			rn = x
		}
	}
	p := zimageParams(t, r, rn)
	p.Offload = OffloadNone
	b := ref.New()
	full, err := RunZImage(context.Background(), b, m, p)
	require.NoError(t, err)

	weights := BlocksBytes(m.Transformer.Blocks())
	p.Offload, p.Budget = OffloadLayer, 12<<20
	require.Less(t, p.Budget, weights+BlocksBytes(m.TextEncoder.EncodeBlocks())+BlocksBytes(m.VAE.Blocks()))
	textOnDevice := false
	p.Progress = func(int, int) {
		for _, bl := range m.TextEncoder.Blocks() {
			textOnDevice = textOnDevice || bl.Resident()
		}
	}
	b2 := ref.New()
	streamed, err := RunZImage(context.Background(), b2, m, p)
	require.NoError(t, err)
	require.False(t, textOnDevice, "text encoder weights on the device while denoising")
	require.Equal(t, full.Images[0].Pix, streamed.Images[0].Pix)
	require.LessOrEqual(t, streamed.PeakDev, p.Budget)
	require.Greater(t, streamed.Uploaded, full.Uploaded, "streaming re-uploads every step")
	t.Logf("resident peak %s, uploaded %s; streamed under %s: peak %s, uploaded %s",
		model.FormatBytes(full.PeakDev), model.FormatBytes(full.Uploaded), model.FormatBytes(p.Budget),
		model.FormatBytes(streamed.PeakDev), model.FormatBytes(streamed.Uploaded))
}

// TestZImageGuide: pos + g*(pos - neg), and cfg_normalization capping the
// result's norm at a multiple of pos's.
func TestZImageGuide(t *testing.T) {
	pos, neg := []float32{3, 4}, []float32{1, 2}
	require.Equal(t, []float32{7, 8}, guide(pos, neg, 2, 0)) // 3+2*2, 4+2*2
	// |(7, 8)| = 10.6 > 1 x |pos| = 5: scaled to norm 5.
	got := guide(pos, neg, 2, 1)
	require.InDelta(t, 5, math.Hypot(float64(got[0]), float64(got[1])), 1e-6)
	require.InDelta(t, 7.0/8, float64(got[0]/got[1]), 1e-6)
	// Under the cap: unchanged.
	require.Equal(t, []float32{7, 8}, guide(pos, neg, 2, 3))
}

// TestZImageCFGTruncation: with cfg_truncation just above 0, only the first
// step (normalised time 0) is guided: its latents match the guided run's,
// the second step's do not. (4 steps: with sigma_min 0 the last step has
// dt = 0, so a 2-step run's second step changes nothing.)
func TestZImageCFGTruncation(t *testing.T) {
	m, r := loadZImageModels(t)
	var rn zimageRun
	for _, x := range zimageRuns(t, r) {
		if x.Guidance > 1 {
			rn = x
		}
	}
	lats := func(trunc float64) [][]float32 {
		p := zimageParams(t, r, rn)
		p.Steps = 4
		p.CFGTruncation = trunc
		var out [][]float32
		p.OnStep = func(_ int, l []float32) { out = append(out, append([]float32(nil), l...)) }
		_, err := RunZImage(context.Background(), ref.New(), m, p)
		require.NoError(t, err)
		return out
	}
	full, trunc := lats(0), lats(1e-6)
	require.Len(t, trunc, 4)
	require.True(t, slices.Equal(full[0], trunc[0]), "step 1 is guided in both runs")
	require.False(t, slices.Equal(full[1], trunc[1]), "step 2 must not be guided with truncation")
}

// TestZImageBadInput: sizes not multiples of 16, a failing tokenizer and a
// budget too small for any block are named errors.
func TestZImageBadInput(t *testing.T) {
	m, r := loadZImageModels(t)
	rn := zimageRuns(t, r)[0]
	p := zimageParams(t, r, rn)
	p.Width = 72
	_, err := RunZImage(context.Background(), ref.New(), m, p)
	require.ErrorContains(t, err, "size 72x64: Z-Image needs width and height that are positive multiples of 16")
	p = zimageParams(t, r, rn)
	m2 := *m
	m2.Tokenizer = PromptTokenizerFunc(func(string) ([]int32, error) { return nil, errors.New("no vocabulary") })
	_, err = RunZImage(context.Background(), ref.New(), &m2, p)
	require.ErrorContains(t, err, "sched: tokenizing the prompt: no vocabulary")
	p = zimageParams(t, r, rn)
	p.Offload, p.Budget = OffloadLayer, 1<<20
	_, err = RunZImage(context.Background(), ref.New(), m, p)
	require.ErrorContains(t, err, "cannot run this model")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = RunZImage(ctx, ref.New(), m, zimageParams(t, r, rn))
	require.ErrorIs(t, err, context.Canceled)
}

// TestZImageDefaultScheduler: without an injected schedule the runner
// builds sched/sampler's flowmatch_euler from the scheduler config, which
// must reproduce the reference run as the reference tables do.
func TestZImageDefaultScheduler(t *testing.T) {
	m, r := loadZImageModels(t)
	rn := zimageRuns(t, r)[1] // g0_s2_64x64
	p := zimageParams(t, r, rn)
	p.Scheduler = nil
	out, err := RunZImage(context.Background(), ref.New(), m, p)
	require.NoError(t, err)
	f, err := os.Open(filepath.Join(r.Dir, "images", rn.ID+".png"))
	require.NoError(t, err)
	defer f.Close()
	want, err := png.Decode(f)
	require.NoError(t, err)
	db := rgbaPSNR(out.Images[0], want)
	t.Logf("%s with %s: PSNR %.1f dB", rn.ID, out.SamplerName, db)
	// The schedule is bit-exact to the reference tables (sched/sampler), so
	// the run must reach what the injected tables reach (62.2 dB).
	require.GreaterOrEqual(t, db, 60.0)
}
