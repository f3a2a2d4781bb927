package model

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"

	"github.com/zimage/zimage/model/safetensors"
	"github.com/zimage/zimage/model/tokenizer"
)

// Tiny Z-Image shapes, those of ../shared/testmodels/tiny-z-image-turbo:
// a 384-wide DiT of three 128-wide heads (so the head size and the RoPE
// axes are the real ones), 2 main, 2 noise-refiner and 2 context-refiner
// blocks; a 2-layer Qwen3 of hidden 64 with 4 query heads sharing one
// key/value head; a FLUX-structured VAE with 16 latent channels. vocab_size
// 0 is set to the synthetic tokenizer's length.
const (
	tinyZImageTransformer = `{"_class_name": "ZImageTransformer2DModel", "all_f_patch_size": [1], "all_patch_size": [2],
 "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512], "cap_feat_dim": 64, "dim": 384, "in_channels": 16,
 "n_heads": 3, "n_kv_heads": 3, "n_layers": 2, "n_refiner_layers": 2, "norm_eps": 1e-05, "qk_norm": true,
 "rope_theta": 256.0, "t_scale": 1000.0}`
	tinyZImageQwen = `{"architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
 "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 32, "hidden_act": "silu", "hidden_size": 64,
 "intermediate_size": 192, "max_position_embeddings": 40960, "model_type": "qwen3", "num_attention_heads": 4,
 "num_hidden_layers": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-06, "rope_scaling": null,
 "rope_theta": 1000000, "sliding_window": null, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
 "use_sliding_window": false, "vocab_size": 0}`
	tinyZImageVAE = `{"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [32, 64, 128, 128],
 "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
 "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
 "force_upcast": true, "in_channels": 3, "latent_channels": 16, "latents_mean": null, "latents_std": null,
 "layers_per_block": 2, "mid_block_add_attention": true, "norm_num_groups": 32, "out_channels": 3,
 "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159, "use_post_quant_conv": false,
 "use_quant_conv": false}`
)

// zimageShardBytes is the shard size used when the configs give no shard
// index to follow (transformers' default max_shard_size).
const zimageShardBytes = 5 << 30

// writeZImageModel writes a random-weight ZImagePipeline folder: configs
// (the tiny ones, or spec.ConfigDir's verbatim), zimage's own Qwen
// tokenizer, and BF16 weights under the real key names, the transformer
// and the text encoder sharded as the real model stores them.
func writeZImageModel(dir string, spec SyntheticSpec) error {
	return writeZImageModelWith(dir, spec, synthWriter(spec.Seed))
}

// writeZImageModelWith is writeZImageModel with the weight bytes from gen
// (nil: sparse files, every size right and no data, for tests of the full
// size that must not write 20 GB).
func writeZImageModelWith(dir string, spec SyntheticSpec, gen func(w io.Writer, s tensorSpec, dt safetensors.DType) error) error {
	read := func(rel, tiny string) ([]byte, error) {
		if spec.ConfigDir == "" {
			if tiny != "" {
				return []byte(tiny), nil
			}
			return familyConfigs.ReadFile("configs/zimage/" + rel)
		}
		b, err := os.ReadFile(filepath.Join(spec.ConfigDir, rel))
		if err != nil {
			return nil, fmt.Errorf("model: synthetic model config: %w", err)
		}
		return b, nil
	}
	files := map[string][]byte{}
	for rel, tiny := range map[string]string{
		"model_index.json": "", "scheduler/scheduler_config.json": "", "transformer/config.json": tinyZImageTransformer,
		"text_encoder/config.json": tinyZImageQwen, "vae/config.json": tinyZImageVAE,
	} {
		b, err := read(rel, tiny)
		if err != nil {
			return err
		}
		files[rel] = b
	}
	var idx ModelIndex
	if err := json.Unmarshal(files["model_index.json"], &idx); err != nil || !isZImageIndex(&idx) {
		return fmt.Errorf("model: synthetic z-image-turbo: model_index.json is not a ZImagePipeline's (%v)", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("model: %w", err)
	}
	vocab, err := tokenizer.WriteQwenByteLevel(filepath.Join(dir, "tokenizer"))
	if err != nil {
		return err
	}
	// The embedding table must cover the tokenizer; a larger one (the real
	// model's 151,936 rows) stays as configured.
	var teRaw map[string]any
	if err := json.Unmarshal(files["text_encoder/config.json"], &teRaw); err != nil {
		return fmt.Errorf("model: text_encoder config: %w", err)
	}
	if v, _ := teRaw["vocab_size"].(float64); int(v) < vocab {
		teRaw["vocab_size"] = vocab
		if files["text_encoder/config.json"], err = json.MarshalIndent(teRaw, "", "  "); err != nil {
			return err
		}
	}
	for rel, b := range files {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("model: %w", err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return fmt.Errorf("model: %w", err)
		}
	}

	var tcfg ZImageConfig
	var qcfg Qwen3Config
	var vcfg VAEConfig
	for rel, v := range map[string]any{"transformer/config.json": &tcfg, "text_encoder/config.json": &qcfg, "vae/config.json": &vcfg} {
		if err := json.Unmarshal(files[rel], v); err != nil {
			return fmt.Errorf("model: %s: %w", rel, err)
		}
	}
	ts, err := zimageTransformerSpecs(&tcfg)
	if err != nil {
		return err
	}
	qs, err := qwen3Specs(&qcfg)
	if err != nil {
		return err
	}
	vs, err := vaeSpecs(&vcfg)
	if err != nil {
		return err
	}
	for _, c := range []struct {
		name, base string
		specs      specList
		sharded    bool
	}{
		{"transformer", "diffusion_pytorch_model", ts, true},
		{"text_encoder", "model", qs, true},
		{"vae", "diffusion_pytorch_model", vs, false},
	} {
		shards := 1
		if c.sharded {
			shards = shardCount(spec.ConfigDir, c.name, c.base, specBytesOf(c.specs, safetensors.BF16))
		}
		if err := writeSpecFiles(filepath.Join(dir, c.name), c.base, c.specs, safetensors.BF16, shards, gen); err != nil {
			return fmt.Errorf("model: write %s: %w", c.name, err)
		}
	}
	return nil
}

func specBytesOf(l specList, dt safetensors.DType) int64 {
	var n int64
	for _, s := range l {
		e := int64(dt.Size())
		for _, d := range s.Shape {
			e *= int64(d)
		}
		n += e
	}
	return n
}

// shardCount follows the shard index in the config folder when there is
// one (the real model: three shards each), else shards of at most 5 GiB,
// and at least two, so that tiny models exercise the sharded layout too.
func shardCount(configDir, component, base string, bytes int64) int {
	if configDir != "" {
		var idx struct {
			WeightMap map[string]string `json:"weight_map"`
		}
		b, err := os.ReadFile(filepath.Join(configDir, component, base+".safetensors.index.json"))
		if err == nil && json.Unmarshal(b, &idx) == nil && len(idx.WeightMap) > 0 {
			files := map[string]bool{}
			for _, f := range idx.WeightMap {
				files[f] = true
			}
			return len(files)
		}
	}
	return max(2, int((bytes+zimageShardBytes-1)/zimageShardBytes))
}

// writeSpecFiles writes the tensors of specs, dtype dt, as
// <base>.safetensors or, for shards > 1, as <base>-0000i-of-0000n.safetensors
// beside <base>.safetensors.index.json (as transformers names them), the
// tensors in order and split by bytes. gen streams each tensor's bytes;
// nil leaves the data sections as holes (sparse files of the full size).
func writeSpecFiles(cdir, base string, specs specList, dt safetensors.DType, shards int, gen func(w io.Writer, s tensorSpec, dt safetensors.DType) error) error {
	if err := os.MkdirAll(cdir, 0o755); err != nil {
		return err
	}
	total := specBytesOf(specs, dt)
	parts := make([]specList, shards)
	var at int64
	for _, s := range specs {
		i := min(int(at*int64(shards)/max(total, 1)), shards-1)
		parts[i] = append(parts[i], s)
		at += specBytesOf(specList{s}, dt)
	}
	var nonEmpty []specList
	for _, p := range parts {
		if len(p) > 0 {
			nonEmpty = append(nonEmpty, p)
		}
	}
	weightMap := map[string]string{}
	for i, part := range nonEmpty {
		name := base + ".safetensors"
		if shards > 1 {
			name = fmt.Sprintf("%s-%05d-of-%05d.safetensors", base, i+1, len(nonEmpty))
		}
		if err := writeSpecFile(filepath.Join(cdir, name), part, dt, gen); err != nil {
			return err
		}
		for _, s := range part {
			weightMap[s.Key] = name
		}
	}
	if shards == 1 {
		return nil
	}
	b, err := json.MarshalIndent(map[string]any{"metadata": map[string]any{"total_size": total}, "weight_map": weightMap}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(cdir, base+".safetensors.index.json"), b, 0o644)
}

// writeSpecFile writes one safetensors file, streaming the data so that
// memory stays flat whatever the tensors' size.
func writeSpecFile(path string, specs specList, dt safetensors.DType, gen func(w io.Writer, s tensorSpec, dt safetensors.DType) error) (err error) {
	ws := make([]safetensors.WriteTensor, len(specs))
	for i, s := range specs {
		ws[i] = safetensors.WriteTensor{Name: s.Key, DType: dt, Shape: s.Shape}
	}
	hdr, dataLen, err := safetensors.EncodeHeader(ws, map[string]string{"format": "pt", "zimage": "synthetic random weights"})
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	if _, err := f.Write(hdr); err != nil {
		return err
	}
	if gen == nil {
		return f.Truncate(int64(len(hdr)) + dataLen)
	}
	bw := bufio.NewWriterSize(f, 4<<20)
	for _, s := range specs {
		if err := gen(bw, s, dt); err != nil {
			return fmt.Errorf("%s: %w", s.Key, err)
		}
	}
	return bw.Flush()
}

// synthWriter streams seeded random values for a tensor, with
// NewSyntheticSource's distribution: matrices uniform with variance
// 1/fan_in, 1-D "weight" tensors (norm gains) near 1, other vectors
// (biases) near 0. Values depend only on seed and key; they are made in
// chunks, so a 389M-element embedding table takes no more memory than a
// bias.
func synthWriter(seed uint64) func(w io.Writer, s tensorSpec, dt safetensors.DType) error {
	const chunk = 1 << 16
	buf := make([]byte, 4*chunk)
	return func(w io.Writer, s tensorSpec, dt safetensors.DType) error {
		h := fnv.New64a()
		h.Write([]byte(s.Key))
		r := rand.New(rand.NewPCG(seed, h.Sum64()))
		n, fanIn := 1, 1
		for i, d := range s.Shape {
			n *= d
			if i > 0 {
				fanIn *= d
			}
		}
		center, amp := float32(0), float32(0.02)
		switch {
		case len(s.Shape) >= 2:
			amp = float32(math.Sqrt(3 / float64(fanIn)))
		case strings.HasSuffix(s.Key, "weight"):
			center, amp = 1, 0.05
		}
		size := dt.Size()
		for done := 0; done < n; {
			m := min(chunk, n-done)
			for i := 0; i < m; i += 2 {
				// Two 24-bit uniforms per draw: plenty for 16-bit weights.
				u := r.Uint64()
				for j := range min(2, m-i) {
					x := float32((u>>(32*j))&0xffffff) / (1 << 24)
					v := center + amp*(2*x-1)
					switch dt {
					case safetensors.BF16:
						binary.LittleEndian.PutUint16(buf[2*(i+j):], BF16Bits(v))
					case safetensors.F16:
						binary.LittleEndian.PutUint16(buf[2*(i+j):], F16Bits(v))
					default:
						binary.LittleEndian.PutUint32(buf[4*(i+j):], math.Float32bits(v))
					}
				}
			}
			if _, err := w.Write(buf[:m*size]); err != nil {
				return err
			}
			done += m
		}
		return nil
	}
}

// BF16Bits converts a float32 to bfloat16 bits, rounding to nearest even
// (NaN stays NaN).
func BF16Bits(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 {
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}
