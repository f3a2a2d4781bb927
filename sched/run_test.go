package sched

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/ref"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/model/tokenizer"
)

// loadModels opens a reference model folder as the runner sees it.
func loadModels(t testing.TB, dir string) *Models {
	t.Helper()
	ck, err := model.OpenCheckpoint(dir, model.OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ck.Close() })
	m := &Models{Scheduler: ck.Scheduler, ForceZerosForEmptyPrompt: ck.ForceZerosForEmptyPrompt, SDXL: ck.Arch == model.SDXL}
	for _, te := range ck.TextEncoders {
		tok, err := tokenizer.Load(te.TokenizerDir)
		if err != nil {
			t.Fatal(err)
		}
		net, err := model.LoadCLIPText(te.Source, te.Config)
		if err != nil {
			t.Fatal(err)
		}
		m.Encoders = append(m.Encoders, TextEncoder{Tokenizer: tok, Net: net})
	}
	if m.UNet, err = model.LoadUNet(ck.UNet.Source, ck.UNet.Config); err != nil {
		t.Fatal(err)
	}
	if m.VAE, err = model.LoadVAEDecoder(ck.VAE.Source, ck.VAE.Config); err != nil {
		t.Fatal(err)
	}
	if m.Encoder, err = model.LoadVAEEncoder(ck.VAE.Source, ck.VAE.Config); err != nil {
		t.Fatal(err)
	}
	return m
}

func paramsFor(t *testing.T, dir string, rn testref.Run) Params {
	t.Helper()
	noise, err := LoadNoise(filepath.Join(dir, "noise", rn.ID+".safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	p := Params{Prompt: rn.Prompt, Width: rn.Width, Height: rn.Height, Steps: rn.Steps, Guidance: rn.Guidance,
		Batch: 1, Noise: noise}
	if rn.NegativePrompt != nil {
		p.NegativePrompt = *rn.NegativePrompt
	}
	return p
}

// TestRunStepLatents replays every reference run on the reference backend
// and checks the latents after each step. Bound: the reference's own
// fp16-vs-fp32 difference of that tensor (refs.json fp16_vs_fp32), or
// 1e-4 * (max|ref| + 1) where none is recorded; our weights are the same
// F16 values and our math F32, so we sit far inside the fp16 run's error.
func TestRunStepLatents(t *testing.T) {
	for _, name := range testref.Models {
		t.Run(name, func(t *testing.T) {
			r := testref.Open(t, name)
			m := loadModels(t, r.Dir)
			for _, rn := range r.Runs(t) {
				if testing.Short() && rn.Steps > 1 {
					continue
				}
				p := paramsFor(t, r.Dir, rn)
				var fails []string
				p.OnStep = func(step int, lat []float32) {
					key := fmt.Sprintf("run.%s.step%d.latents", rn.ID, step)
					want, _ := r.Floats(t, key)
					d := testref.Compare(lat, want)
					bound := r.Fp16Bound(key)
					if bound == 0 {
						bound = 1e-4 * (d.MaxRef + 1)
					}
					t.Logf("%s: max |diff| %.3g (bound %.3g)", key, d.MaxAbs, bound)
					if d.Mismatched || d.NonFinite > 0 || d.MaxAbs > bound {
						fails = append(fails, fmt.Sprintf("%s: %+v, bound %.3g", key, d, bound))
					}
				}
				if _, err := Run(context.Background(), ref.New(), m, p); err != nil {
					t.Fatalf("%s: %v", rn.ID, err)
				}
				for _, f := range fails {
					t.Error(f)
				}
			}
		})
	}
}

// TestOffloadBitIdentical: streaming weights block by block under a budget
// must not change a single output byte, and the allocator's peak must stay
// under the budget.
func TestOffloadBitIdentical(t *testing.T) {
	r := testref.Open(t, "tiny-sdxl-turbo")
	m := loadModels(t, r.Dir)
	var rn testref.Run
	for _, x := range r.Runs(t) {
		if x.ID == "s4_g7.5_64x64" {
			rn = x
		}
	}
	p := paramsFor(t, r.Dir, rn)
	p.Offload = OffloadNone
	full, err := Run(context.Background(), ref.New(), m, p)
	if err != nil {
		t.Fatal(err)
	}
	// A budget well below the weights (the UNet alone is larger) forces
	// streaming in every stage.
	unet := BlocksBytes(m.UNet.Blocks())
	budget := unet/2 + unetActivationBytes(m.UNet, 2, 8, 8) + LargestBlock(allBlocks(m))
	b := ref.New(ref.WithBudget(budget))
	p.Offload, p.Budget = OffloadLayer, budget
	streamed, err := Run(context.Background(), b, m, p)
	if err != nil {
		t.Fatal(err)
	}
	if streamed.Uploaded <= unet {
		t.Errorf("uploaded %d bytes, want more than the UNet's %d (blocks re-uploaded every step)", streamed.Uploaded, unet)
	}
	if streamed.PeakDev > budget {
		t.Errorf("peak %d bytes over the %d budget", streamed.PeakDev, budget)
	}
	if string(full.Images[0].Pix) != string(streamed.Images[0].Pix) {
		t.Error("offloaded run differs from the resident run")
	}
	t.Logf("budget %s (UNet weights %s): peak %s, uploaded %s", model.FormatBytes(budget), model.FormatBytes(unet),
		model.FormatBytes(streamed.PeakDev), model.FormatBytes(streamed.Uploaded))
	if b.MemStats().InUse != 0 {
		t.Errorf("%d bytes still allocated after the run", b.MemStats().InUse)
	}
}

func TestImpossibleBudgetFailsUpFront(t *testing.T) {
	r := testref.Open(t, "tiny-sd-turbo")
	m := loadModels(t, r.Dir)
	p := paramsFor(t, r.Dir, r.Runs(t)[0])
	p.Offload, p.Budget = OffloadLayer, 4096
	b := ref.New(ref.WithBudget(p.Budget))
	_, err := Run(context.Background(), b, m, p)
	if err == nil {
		t.Fatal("a 4 KiB budget was accepted")
	}
	t.Log(err)
	if b.MemStats().Peak != 0 {
		t.Errorf("allocated %d bytes before failing", b.MemStats().Peak)
	}
}

func TestCancelBetweenSteps(t *testing.T) {
	r := testref.Open(t, "tiny-sd15")
	m := loadModels(t, r.Dir)
	var rn testref.Run
	for _, x := range r.Runs(t) {
		if x.Steps > 1 {
			rn = x
		}
	}
	p := paramsFor(t, r.Dir, rn)
	ctx, cancel := context.WithCancel(context.Background())
	p.OnStep = func(step int, _ []float32) {
		if step == 0 {
			cancel()
		}
	}
	b := ref.New()
	_, err := Run(ctx, b, m, p)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	// Without a budget the weights stay resident for the next run; every
	// activation must be gone.
	var weights int64
	for _, bl := range allBlocks(m) {
		if bl.Resident() {
			weights += bl.Bytes()
		}
	}
	if in := b.MemStats().InUse; in != weights {
		t.Errorf("%d bytes allocated after cancellation, want only the %d bytes of resident weights", in, weights)
	}
}

var _ engine.Backend = (*ref.Backend)(nil)

// TestLongPrompts: a prompt over 75 tokens is truncated (and says how much)
// by default, and encoded whole in several 77-token windows on request.
func TestLongPrompts(t *testing.T) {
	r := testref.Open(t, "tiny-sd15")
	m := loadModels(t, r.Dir)
	long := strings.Repeat("a very detailed painting of a lighthouse, ", 12) // about 100 tokens
	p := Params{Prompt: long, NegativePrompt: "blurry", Width: 64, Height: 64, Steps: 1, Guidance: 5, Batch: 1, Seed: 7}
	short, err := Run(context.Background(), ref.New(), m, p)
	if err != nil {
		t.Fatal(err)
	}
	if short.Truncated[0] < 20 {
		t.Fatalf("truncated %d tokens, want the ~25 beyond the window", short.Truncated[0])
	}
	p.LongPrompts = true
	whole, err := Run(context.Background(), ref.New(), m, p)
	if err != nil {
		t.Fatal(err)
	}
	if whole.Truncated[0] != 0 {
		t.Errorf("long-prompt mode still truncated %d tokens", whole.Truncated[0])
	}
	if string(whole.Images[0].Pix) == string(short.Images[0].Pix) {
		t.Error("the dropped tokens changed nothing: long-prompt mode did not use them")
	}
}

func allBlocks(m *Models) []*model.Block {
	var all []*model.Block
	for _, e := range m.Encoders {
		all = append(all, e.Net.Blocks()...)
	}
	all = append(append(all, m.UNet.Blocks()...), m.VAE.Blocks()...)
	if m.Encoder != nil {
		all = append(all, m.Encoder.Blocks()...)
	}
	if m.TAESD != nil {
		all = append(all, m.TAESD.Blocks()...)
	}
	return all
}

// TestWeightsStayResidentAcrossRuns: without a budget the second run
// uploads nothing.
func TestWeightsStayResidentAcrossRuns(t *testing.T) {
	r := testref.Open(t, "tiny-sd-turbo")
	m := loadModels(t, r.Dir)
	p := paramsFor(t, r.Dir, r.Runs(t)[0])
	b := ref.New()
	first, err := Run(context.Background(), b, m, p)
	if err != nil {
		t.Fatal(err)
	}
	second, err := Run(context.Background(), b, m, p)
	if err != nil {
		t.Fatal(err)
	}
	if first.Uploaded == 0 || second.Uploaded != 0 {
		t.Errorf("uploaded %d then %d bytes, want everything once and nothing the second time", first.Uploaded, second.Uploaded)
	}
	if string(first.Images[0].Pix) != string(second.Images[0].Pix) {
		t.Error("the second run differs")
	}
}
