package lora

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zimage/zimage/engine"
	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/internal/testref"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/model/safetensors"
)

// BenchmarkSDXLTurboAttentionLoRA: the full-size SDXL-Turbo UNet (seeded
// random F16 weights) with rank-32 kohya LoRAs (SGM names) on every
// attention projection (attn1/attn2 to_q, to_k, to_v, to_out.0: 560
// modules), on the Vulkan device. One pass, so run it as
//
//	go test ./model/lora -run '^$' -bench SDXLTurbo -benchtime 1x
//
// It reports the time to open a LoRA and apply it (merged into the resident
// weights, or attached for the forward pass), to switch to another LoRA,
// to remove it, and one UNet call without LoRA, merged and in the forward
// pass at a small latent (ZIMAGE_BENCH_LATENT, default 16: 128x128 pixels).
// The attention weights are read from a real safetensors file (written to
// a temporary folder first), so restoring merged weights costs what it
// costs with a checkpoint in the page cache; the other weights are
// synthesized on upload.
func BenchmarkSDXLTurboAttentionLoRA(b *testing.B) {
	const rank = 32
	latent := 16
	if s := os.Getenv("ZIMAGE_BENCH_LATENT"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v <= 0 {
			b.Fatalf("ZIMAGE_BENCH_LATENT=%q: want a positive integer", s)
		}
		latent = v
	}
	cfg := fullSizeConfig(b, "stabilityai-sdxl-turbo")
	dir := b.TempDir()
	u := attentionFromFile(b, cfg, filepath.Join(dir, "attn.safetensors"))
	pathA := filepath.Join(dir, "a.safetensors")
	pathB := filepath.Join(dir, "b.safetensors")
	n := writeAttentionLoRA(b, u, pathA, rank, 1)
	writeAttentionLoRA(b, u, pathB, rank, 2)
	b.Logf("UNet %.0f MB of F16 weights; LoRAs: %d modules, rank %d, %.0f MB each", float64(u.Bytes())/1e6, n, rank, fileMB(b, pathA))

	dev, err := vk.Open(vk.DefaultOptions())
	if errors.Is(err, vk.ErrNoDevice) {
		b.Skip("no Vulkan device")
	}
	if err != nil {
		b.Fatal(err)
	}
	defer dev.Close()
	res := model.AllResident{B: dev}
	t0 := time.Now()
	for _, bl := range u.Blocks() {
		if err := res.Need(bl); err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("weights uploaded in %.1f s", time.Since(t0).Seconds())
	target := SDTarget(u)

	timed := func(what string, f func() error) time.Duration {
		b.Helper()
		start := time.Now()
		if err := f(); err != nil {
			b.Fatalf("%s: %v", what, err)
		}
		if err := dev.Flush(); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	var fa, fb *File
	open := func(p string, f **File) func() error {
		return func() error {
			var err error
			*f, err = Open(p)
			return err
		}
	}
	defer func() { fa.Close(); fb.Close() }()
	var a *Applier
	results := map[string]time.Duration{}
	for _, mode := range []Mode{Merge, InForward} {
		ms := Modes{Default: mode}
		fa.Close()
		fb.Close()
		a = NewApplier(dev, target, Options{}) // nothing cached
		results[mode.String()+" load+apply"] = timed("load+apply", func() error {
			if err := open(pathA, &fa)(); err != nil {
				return err
			}
			return a.Apply([]Spec{{File: fa, TE: 1, UNet: 1}}, ms)
		})
		if err := open(pathB, &fb)(); err != nil {
			b.Fatal(err)
		}
		results[mode.String()+" switch"] = timed("switch", func() error { return a.Apply([]Spec{{File: fb, TE: 1, UNet: 1}}, ms) })
		st := a.Stats()
		b.Logf("%s: %d merged, %d in-forward modules, %.0f MB of forward-pass tensors", mode, st.Merged, st.InForward, float64(st.ForwardBytes)/1e6)
		results[mode.String()+" remove"] = timed("remove", a.Clear)
		b.Logf("%s: restored %.0f MB of base weights in all", mode, float64(a.Stats().Restored)/1e6)
	}

	// UNet calls without LoRA, merged and in the forward pass, after a
	// warm-up round that compiles the pipelines (the forward-pass terms use
	// a few more); the rounds interleave and the fastest call of each way
	// counts, since the machine's load drifts over minutes.
	step, free := unetStep(b, dev, u, latent)
	defer free()
	spec := []Spec{{File: fa, TE: 1, UNet: 1}}
	ways := []struct {
		name  string
		apply func() error
	}{
		{"base", a.Clear},
		{"in-forward", func() error { return a.Apply(spec, Modes{Default: InForward}) }},
		{"merged", func() error { return a.Apply(spec, Modes{Default: Merge}) }},
	}
	best := map[string]time.Duration{}
	for round := range 3 {
		for _, w := range ways {
			if err := w.apply(); err != nil {
				b.Fatal(err)
			}
			if err := dev.Flush(); err != nil {
				b.Fatal(err)
			}
			d := step()
			b.Logf("round %d: %s %.2f s", round, w.name, d.Seconds())
			if round > 0 && (best[w.name] == 0 || d < best[w.name]) {
				best[w.name] = d
			}
		}
	}
	base, merged, inForward := best["base"], best["merged"], best["in-forward"]
	if err := a.Close(); err != nil {
		b.Fatal(err)
	}
	for _, k := range []string{"merge load+apply", "merge switch", "merge remove", "in-forward load+apply", "in-forward switch", "in-forward remove"} {
		b.ReportMetric(results[k].Seconds(), strings.ReplaceAll(k, " ", "-")+"-s")
	}
	b.ReportMetric(base.Seconds(), "step-base-s")
	b.ReportMetric(merged.Seconds(), "step-merged-s")
	b.ReportMetric(inForward.Seconds(), "step-inforward-s")
	b.Logf("UNet call at %dx%d latent: %.2f s without LoRA, %.2f s merged (%+.1f%%), %.2f s in the forward pass (%+.1f%%)",
		latent, latent, base.Seconds(), merged.Seconds(), 100*(merged.Seconds()/base.Seconds()-1),
		inForward.Seconds(), 100*(inForward.Seconds()/base.Seconds()-1))
}

func fullSizeConfig(b *testing.B, name string) *model.UNetConfig {
	root, ok := testref.Root()
	path := filepath.Join(root, "..", "real_configs", "reconstructed", name, "unet", "config.json")
	raw, err := os.ReadFile(path)
	if !ok || err != nil {
		b.Skipf("config %s not available", path)
	}
	var c model.UNetConfig
	if err := json.Unmarshal(raw, &c); err != nil {
		b.Fatalf("%s: %v", path, err)
	}
	return &c
}

func isAttention(path string) bool {
	return strings.Contains(path, ".attn1.") || strings.Contains(path, ".attn2.")
}

// attentionFromFile loads the UNet with synthetic weights, except the
// attention projections, which it writes to path (same values) and reads
// back from there.
func attentionFromFile(b *testing.B, cfg *model.UNetConfig, path string) *model.UNet {
	syn := model.NewSyntheticSource("unet", 1)
	u0, err := model.LoadUNet(syn, cfg)
	if err != nil {
		b.Fatal(err)
	}
	var ts []safetensors.WriteTensor
	for _, m := range u0.Modules() {
		if isAttention(m.Path) {
			p := m.Weight()
			ts = append(ts, safetensors.WriteTensor{Name: p.Key, DType: safetensors.F16, Shape: p.Shape})
		}
	}
	hdr, _, err := safetensors.EncodeHeader(ts, nil)
	if err != nil {
		b.Fatal(err)
	}
	fh, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriter(fh)
	w.Write(hdr)
	for _, t := range ts {
		w.Write(syn.Entry(t.Name).Bytes())
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := fh.Close(); err != nil {
		b.Fatal(err)
	}
	st, err := safetensors.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	src := model.NewSyntheticSource("unet", 1)
	for _, t := range st.Tensors() {
		src.AddTensor(t.Name, t, path)
	}
	u, err := model.LoadUNet(src, cfg)
	if err != nil {
		b.Fatal(err)
	}
	return u
}

// writeAttentionLoRA writes a kohya LoRA (F16, SGM names as kohya writes
// SDXL files, alpha = rank/2) for every attention projection of u.
func writeAttentionLoRA(b *testing.B, u *model.UNet, path string, rank int, seed uint64) int {
	rng := rand.New(rand.NewPCG(seed, 7))
	ldm := u.LDMNames()
	f16 := func(n int, std float64) []byte {
		out := make([]byte, 2*n)
		for i := range n {
			binary.LittleEndian.PutUint16(out[2*i:], model.F16Bits(float32(rng.NormFloat64()*std)))
		}
		return out
	}
	var ts []safetensors.WriteTensor
	n := 0
	for _, m := range u.Modules() {
		if !isAttention(m.Path) {
			continue
		}
		key := "lora_unet_" + strings.ReplaceAll(ldm[m.Path], ".", "_")
		in, out := m.In(), m.Out()
		ts = append(ts,
			safetensors.WriteTensor{Name: key + ".lora_down.weight", DType: safetensors.F16, Shape: []int{rank, in}, Data: f16(rank*in, 1/math.Sqrt(float64(in)))},
			safetensors.WriteTensor{Name: key + ".lora_up.weight", DType: safetensors.F16, Shape: []int{out, rank}, Data: f16(out*rank, 0.01)},
			safetensors.WriteTensor{Name: key + ".alpha", DType: safetensors.F16, Shape: []int{}, Data: f16bits(float32(rank) / 2)})
		n++
	}
	md := map[string]string{"ss_network_module": "networks.lora", "ss_network_dim": fmt.Sprint(rank), "ss_base_model_version": "sdxl_base_v1-0"}
	if err := safetensors.WriteFile(path, ts, md); err != nil {
		b.Fatal(err)
	}
	return n
}

func f16bits(v float32) []byte {
	out := make([]byte, 2)
	binary.LittleEndian.PutUint16(out, model.F16Bits(v))
	return out
}

func fileMB(b *testing.B, path string) float64 {
	st, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	return float64(st.Size()) / 1e6
}

// unetStep returns a function that runs one UNet call (batch 1, 77 context
// tokens) at a latent x latent sample and returns its wall time, and one
// that frees the inputs.
func unetStep(b *testing.B, dev engine.Backend, u *model.UNet, latent int) (func() time.Duration, func()) {
	rng := rand.New(rand.NewPCG(1, 2))
	c := u.Config
	cross := c.CrossAttentionDim.At(0)
	pooled := c.ProjectionClassEmbedInputDim - 6*c.AdditionTimeEmbedDim
	rec := engine.NewRec(dev)
	x := rec.Write("sample", testref.Normal(rng, c.InChannels*latent*latent), 1, c.InChannels, latent, latent)
	ctx := rec.Write("ctx", testref.Normal(rng, 77*cross), 1, 77, cross)
	te := rec.Write("text_embeds", testref.Normal(rng, pooled), 1, pooled)
	px := float64(8 * latent)
	added := &model.AddedCond{TextEmbeds: te, TimeIDs: [][6]float64{{px, px, 0, 0, px, px}}}
	if err := rec.Err(); err != nil {
		b.Fatal(err)
	}
	return func() time.Duration {
		start := time.Now()
		out := u.Forward(rec, model.AllResident{B: dev}, x, 999, ctx, added)
		if err := rec.Err(); err != nil {
			b.Fatal(err)
		}
		if _, err := dev.Read(out); err != nil {
			b.Fatal(err)
		}
		rec.Free(out)
		return time.Since(start)
	}, func() { rec.Free(x, ctx, te) }
}
