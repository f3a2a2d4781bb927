package model

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/zimage/zimage/model/safetensors"
	"github.com/zimage/zimage/model/tokenizer"
)

// SyntheticSpec describes a random-weight model for WriteSyntheticModel.
type SyntheticSpec struct {
	// Arch is "sd-turbo", "sd15", "sdxl-turbo" or "z-image-turbo".
	Arch string
	// ConfigDir, when set, is a diffusers folder whose config.json files give
	// the shapes (for example a real model's configs, to benchmark the full
	// size); otherwise zimage's tiny built-in shapes are used.
	ConfigDir string
	Seed      uint64
}

// SyntheticArchs lists the architectures WriteSyntheticModel knows.
func SyntheticArchs() []string { return []string{"sd-turbo", "sd15", "sdxl-turbo", "z-image-turbo"} }

// WriteSyntheticModel writes a complete diffusers folder with seeded random
// weights and a byte-level vocabulary zimage writes itself: a model that
// loads and runs like a real one, for demos, tests and benchmarks where no
// trained weights can be downloaded. Its pictures are noise. Stable
// Diffusion models get F16 weights and a CLIP vocabulary; Z-Image gets
// BF16 weights under the real model's key names (the transformer and the
// text encoder sharded with an index, as the real folder stores them; a
// full-size one is about 20 GB) and a Qwen2 vocabulary, written as they
// are made so that memory stays flat.
func WriteSyntheticModel(dir string, spec SyntheticSpec) error {
	if spec.Arch == "z-image-turbo" {
		return writeZImageModel(dir, spec)
	}
	tpl, ok := tinyTemplates[spec.Arch]
	if !ok {
		return fmt.Errorf("model: synthetic arch %q: want one of %s", spec.Arch, strings.Join(SyntheticArchs(), ", "))
	}
	configs := map[string][]byte{}
	for comp, js := range tpl.configs {
		configs[comp] = []byte(js)
		if spec.ConfigDir != "" {
			name := "config.json"
			if comp == "scheduler" {
				name = "scheduler_config.json"
			}
			b, err := os.ReadFile(filepath.Join(spec.ConfigDir, comp, name))
			if err != nil {
				return fmt.Errorf("model: synthetic model config: %w", err)
			}
			configs[comp] = b
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("model: %w", err)
	}
	// Text encoders use zimage's byte-level vocabulary whatever the config
	// says, so the embedding table is sized to it.
	for i, enc := range tpl.encoders {
		vocab, err := tokenizer.WriteByteLevel(filepath.Join(dir, tpl.tokenizers[i]), tpl.pads[i])
		if err != nil {
			return err
		}
		var cfg map[string]any
		if err := json.Unmarshal(configs[enc], &cfg); err != nil {
			return fmt.Errorf("model: %s config: %w", enc, err)
		}
		cfg["vocab_size"] = vocab
		if configs[enc], err = json.MarshalIndent(cfg, "", "  "); err != nil {
			return err
		}
	}
	for comp, js := range configs {
		name := "config.json"
		if comp == "scheduler" {
			name = "scheduler_config.json"
		}
		if err := os.MkdirAll(filepath.Join(dir, comp), 0o755); err != nil {
			return fmt.Errorf("model: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, comp, name), js, 0o644); err != nil {
			return fmt.Errorf("model: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "model_index.json"), []byte(tpl.index), 0o644); err != nil {
		return fmt.Errorf("model: %w", err)
	}
	for comp, js := range configs {
		var blocks []*Block
		src := NewSyntheticSource(comp, spec.Seed)
		file := "diffusion_pytorch_model.fp16.safetensors"
		switch {
		case comp == "unet":
			var cfg UNetConfig
			if err := json.Unmarshal(js, &cfg); err != nil {
				return fmt.Errorf("model: unet config: %w", err)
			}
			u, err := LoadUNet(src, &cfg)
			if err != nil {
				return err
			}
			blocks = u.Blocks()
		case comp == "vae":
			var cfg VAEConfig
			if err := json.Unmarshal(js, &cfg); err != nil {
				return fmt.Errorf("model: vae config: %w", err)
			}
			// Both halves, as the files users have hold them: img2img and
			// inpainting need the encoder.
			enc, err := LoadVAEEncoder(src, &cfg)
			if err != nil {
				return err
			}
			v, err := LoadVAEDecoder(src, &cfg)
			if err != nil {
				return err
			}
			blocks = append(enc.Blocks(), v.Blocks()...)
		case strings.HasPrefix(comp, "text_encoder"):
			var cfg CLIPTextConfig
			if err := json.Unmarshal(js, &cfg); err != nil {
				return fmt.Errorf("model: %s config: %w", comp, err)
			}
			m, err := LoadCLIPText(src, &cfg)
			if err != nil {
				return err
			}
			blocks, file = m.Blocks(), "model.fp16.safetensors"
		default:
			continue
		}
		var tensors []safetensors.WriteTensor
		for _, b := range blocks {
			for _, p := range b.Params {
				// The stored entry, not the one a network derives from it
				// (the encoder's downsamplers pad 3x3 kernels to 4x4).
				e := src.Entry(p.Key)
				tensors = append(tensors, safetensors.WriteTensor{Name: p.Key, DType: safetensors.F16, Shape: e.Shape, Data: e.Bytes()})
			}
		}
		meta := map[string]string{"format": "pt", "zimage": "synthetic random weights"}
		if err := safetensors.WriteFile(filepath.Join(dir, comp, file), tensors, meta); err != nil {
			return fmt.Errorf("model: write %s: %w", comp, err)
		}
	}
	return nil
}

type synthTemplate struct {
	index      string
	configs    map[string]string // component -> config JSON
	encoders   []string
	tokenizers []string
	pads       []string
}

// Tiny shapes: every width divisible by the 32 GroupNorm groups, two UNet
// levels (three for SDXL, with its [1,2,1] transformer depths), a four-level
// VAE so that the latent is 1/8 of the image, as in the real models.
const (
	tinyVAE = `{"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": 4,
 "block_out_channels": [32, 32, 32, 64], "layers_per_block": 1, "norm_num_groups": 32,
 "down_block_types": ["DownEncoderBlock2D","DownEncoderBlock2D","DownEncoderBlock2D","DownEncoderBlock2D"],
 "up_block_types": ["UpDecoderBlock2D","UpDecoderBlock2D","UpDecoderBlock2D","UpDecoderBlock2D"],
 "scaling_factor": %s, "sample_size": 64}`
	tinyCLIP = `{"architectures": ["%s"], "hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 3,
 "num_attention_heads": 4, "max_position_embeddings": 77, "vocab_size": 514, "hidden_act": "%s",
 "layer_norm_eps": 1e-05, "projection_dim": 32, "bos_token_id": 512, "eos_token_id": 513, "pad_token_id": 1}`
	tinyEuler = `{"_class_name": "%s", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
 "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "timestep_spacing": "%s", "steps_offset": 1,
 "set_alpha_to_one": false, "skip_prk_steps": true, "clip_sample": false, "interpolation_type": "linear"}`
	tinySDIndex = `{"_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "%s"],
 "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
 "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}`
)

func tinySDUNet(linear bool, heads string, cross int) string {
	return fmt.Sprintf(`{"_class_name": "UNet2DConditionModel", "in_channels": 4, "out_channels": 4,
 "block_out_channels": [32, 64], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
 "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "mid_block_type": "UNetMidBlock2DCrossAttn",
 "layers_per_block": 2, "attention_head_dim": %s, "cross_attention_dim": %d, "use_linear_projection": %t,
 "norm_num_groups": 32, "norm_eps": 1e-05, "flip_sin_to_cos": true, "freq_shift": 0, "downsample_padding": 1,
 "sample_size": 8, "transformer_layers_per_block": 1}`, heads, cross, linear)
}

var tinyTemplates = map[string]synthTemplate{
	"sd-turbo": {
		index: fmt.Sprintf(tinySDIndex, "EulerDiscreteScheduler"),
		configs: map[string]string{
			"unet":         tinySDUNet(true, "[2, 4]", 32),
			"vae":          fmt.Sprintf(tinyVAE, "0.18215"),
			"text_encoder": fmt.Sprintf(tinyCLIP, "CLIPTextModel", "gelu"),
			"scheduler":    fmt.Sprintf(tinyEuler, "EulerDiscreteScheduler", "trailing"),
		},
		encoders: []string{"text_encoder"}, tokenizers: []string{"tokenizer"}, pads: []string{"!"},
	},
	"sd15": {
		index: fmt.Sprintf(tinySDIndex, "PNDMScheduler"),
		configs: map[string]string{
			"unet":         tinySDUNet(false, "2", 32),
			"vae":          fmt.Sprintf(tinyVAE, "0.18215"),
			"text_encoder": fmt.Sprintf(tinyCLIP, "CLIPTextModel", "quick_gelu"),
			"scheduler":    fmt.Sprintf(tinyEuler, "PNDMScheduler", "leading"),
		},
		encoders: []string{"text_encoder"}, tokenizers: []string{"tokenizer"}, pads: []string{"<|endoftext|>"},
	},
	"sdxl-turbo": {
		index: `{"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": true,
 "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
 "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
 "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
 "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}`,
		configs: map[string]string{
			"unet": `{"_class_name": "UNet2DConditionModel", "in_channels": 4, "out_channels": 4,
 "block_out_channels": [32, 32, 64], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
 "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "mid_block_type": "UNetMidBlock2DCrossAttn",
 "layers_per_block": 2, "attention_head_dim": [2, 2, 4], "cross_attention_dim": 64, "use_linear_projection": true,
 "transformer_layers_per_block": [1, 2, 1], "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
 "projection_class_embeddings_input_dim": 80, "norm_num_groups": 32, "norm_eps": 1e-05, "flip_sin_to_cos": true,
 "freq_shift": 0, "downsample_padding": 1, "sample_size": 8}`,
			"vae":            fmt.Sprintf(tinyVAE, "0.13025"),
			"text_encoder":   fmt.Sprintf(tinyCLIP, "CLIPTextModel", "quick_gelu"),
			"text_encoder_2": fmt.Sprintf(tinyCLIP, "CLIPTextModelWithProjection", "gelu"),
			"scheduler":      fmt.Sprintf(tinyEuler, "EulerAncestralDiscreteScheduler", "trailing"),
		},
		encoders:   []string{"text_encoder", "text_encoder_2"},
		tokenizers: []string{"tokenizer", "tokenizer_2"}, pads: []string{"<|endoftext|>", "!"},
	},
}
