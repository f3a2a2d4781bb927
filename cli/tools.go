package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	ucli "github.com/urfave/cli/v2"

	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/model"
	"github.com/zimage/zimage/model/tokenizer"
)

func devicesCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "devices",
		Usage: "list Vulkan devices and their properties",
		Flags: []ucli.Flag{&ucli.BoolFlag{Name: "json", Usage: "print JSON"}},
		Action: func(c *ucli.Context) error {
			infos, err := vk.ListDevices()
			if err != nil {
				return err
			}
			if c.Bool("json") {
				enc := json.NewEncoder(c.App.Writer)
				enc.SetIndent("", "  ")
				return enc.Encode(infos)
			}
			for _, d := range infos {
				fmt.Fprintln(c.App.Writer, d.String())
				fmt.Fprintf(c.App.Writer, "    driver %s, max storage buffer %d MiB, max allocation %d MiB, shared memory %d KiB, fp16 arithmetic %v\n",
					d.Driver, d.MaxStorageBufferRange>>20, d.MaxAllocationSize>>20, d.MaxSharedMemory>>10, d.FP16Arithmetic)
			}
			if len(infos) == 0 {
				fmt.Fprintln(c.App.Writer, "no Vulkan devices (install mesa-vulkan-drivers for lavapipe, or your GPU's Vulkan driver)")
			}
			return nil
		},
	}
}

func infoCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "info",
		Usage:     "show a checkpoint's architecture, components, parameters, dtypes and memory estimate, or what a LoRA file targets",
		ArgsUsage: "PATH",
		Flags: []ucli.Flag{
			&ucli.StringFlag{Name: "tokenizer", Usage: "tokenizer folder for single-file checkpoints"},
			&ucli.StringFlag{Name: "config", Usage: "diffusers folder whose configs override the inferred ones"},
			&ucli.StringFlag{Name: "text-encoder", Usage: "Z-Image: the Qwen3 text encoder a single transformer file lacks (a Z-Image diffusers folder, its text_encoder folder or a .safetensors file)"},
			&ucli.StringFlag{Name: "vae", Usage: "Z-Image: the VAE a single transformer file lacks (a Z-Image diffusers folder, its vae folder or a .safetensors file)"},
			&ucli.StringFlag{Name: "weights", Usage: "estimate with the weights quantized at load time (as generate --weights): q8_0, q5_1, q5_0, q4_1, q4_0 or q4_k"},
			&ucli.BoolFlag{Name: "json", Usage: "print JSON"},
		},
		Action: func(c *ucli.Context) error {
			if c.Args().Len() != 1 {
				return usagef("info: want one PATH (a diffusers folder, a .safetensors or a .gguf file, or a LoRA .safetensors), got %d arguments", c.Args().Len())
			}
			var quant *model.QuantizeRules
			if v := c.String("weights"); v != "" {
				typ, err := model.ParseQuantizeType(v)
				if err != nil {
					return usagef("--weights: %v", err)
				}
				quant = &model.QuantizeRules{Type: typ}
			}
			for _, f := range []string{"text-encoder", "vae"} {
				if p := c.String(f); p != "" {
					if _, err := os.Stat(p); err != nil {
						return usagef("--%s: %v", f, err)
					}
				}
			}
			if isLoRAFile(c.Args().First()) {
				return loraInfo(c, c.Args().First())
			}
			ck, err := model.OpenCheckpoint(c.Args().First(), model.OpenOptions{TokenizerDir: c.String("tokenizer"), ConfigDir: c.String("config"),
				TextEncoderPath: c.String("text-encoder"), VAEPath: c.String("vae"), Quantize: quant})
			if err != nil {
				return err
			}
			defer ck.Close()
			info := ck.Info()
			if c.Bool("json") {
				enc := json.NewEncoder(c.App.Writer)
				enc.SetIndent("", "  ")
				return enc.Encode(info)
			}
			fmt.Fprint(c.App.Writer, info.String())
			return nil
		},
	}
}

type tokenizeResult struct {
	Tokenizer string `json:"tokenizer"`
	IDs       []int  `json:"ids"`
	Truncated int    `json:"truncated"`
	limit     int    // the tokenizer's context, for the message
}

func tokenizeCommand() *ucli.Command {
	return &ucli.Command{
		Name:      "tokenize",
		Usage:     "print the token ids of a prompt for each of a model's tokenizers",
		ArgsUsage: "PROMPT",
		Flags: []ucli.Flag{
			&ucli.StringFlag{Name: "model", Aliases: []string{"m"}, Required: true, Usage: "diffusers folder or single-file checkpoint"},
			&ucli.StringFlag{Name: "tokenizer", Usage: "tokenizer folder for single-file checkpoints"},
			&ucli.BoolFlag{Name: "json", Usage: "print a JSON array, one object per tokenizer"},
		},
		Action: func(c *ucli.Context) error {
			if c.Args().Len() != 1 {
				return usagef("tokenize: want the prompt as one argument (quote it), got %d arguments", c.Args().Len())
			}
			ck, err := model.OpenCheckpoint(c.String("model"), model.OpenOptions{TokenizerDir: c.String("tokenizer")})
			if err != nil {
				return err
			}
			defer ck.Close()
			if err := ck.RequireTokenizers(); err != nil {
				return err
			}
			var out []tokenizeResult
			if q := ck.Qwen; q != nil {
				tok, err := tokenizer.LoadQwen2(q.TokenizerDir)
				if err != nil {
					return err
				}
				// The ids ZImagePipeline feeds Qwen3: the chat-templated
				// prompt, cut at its 512-token maximum.
				ids, truncated := tok.EncodePrompt(c.Args().First(), tokenizer.DefaultMaxSequenceLength)
				res := tokenizeResult{Tokenizer: "tokenizer", Truncated: truncated, limit: tokenizer.DefaultMaxSequenceLength}
				for _, id := range ids {
					res.IDs = append(res.IDs, int(id))
				}
				out = append(out, res)
			}
			for i, te := range ck.TextEncoders {
				tok, err := tokenizer.Load(te.TokenizerDir)
				if err != nil {
					return err
				}
				enc := tok.Encode(c.Args().First())
				name := "tokenizer"
				if i > 0 {
					name = fmt.Sprintf("tokenizer_%d", i+1)
				}
				out = append(out, tokenizeResult{Tokenizer: name, IDs: enc.Unpadded, Truncated: enc.Truncated, limit: 77})
			}
			if c.Bool("json") {
				return json.NewEncoder(c.App.Writer).Encode(out)
			}
			for _, r := range out {
				ids := make([]string, len(r.IDs))
				for i, id := range r.IDs {
					ids[i] = fmt.Sprint(id)
				}
				fmt.Fprintf(c.App.Writer, "%s: %s\n", r.Tokenizer, strings.Join(ids, " "))
				if r.Truncated > 0 {
					fmt.Fprintf(c.App.Writer, "%s: truncated: %d tokens beyond the %d-token context were dropped\n", r.Tokenizer, r.Truncated, r.limit)
				}
			}
			return nil
		},
	}
}

func makeModelCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "make-model",
		Usage: "write a random-weight model (diffusers folder) for demos, tests and benchmarks: its pictures are noise",
		Flags: []ucli.Flag{
			&ucli.StringFlag{Name: "arch", Value: "sd-turbo", Usage: "sd-turbo, sd15, sdxl-turbo or z-image-turbo"},
			&ucli.StringFlag{Name: "config", Usage: "diffusers folder whose configs give the shapes (e.g. a real model's, for full-size benchmarks); default: tiny built-in shapes"},
			&ucli.Uint64Flag{Name: "seed", Value: 1, Usage: "seed of the random weights"},
			&ucli.StringFlag{Name: "output", Aliases: []string{"o"}, Required: true, Usage: "folder to write"},
		},
		Action: func(c *ucli.Context) error {
			arch := c.String("arch")
			ok := false
			for _, a := range model.SyntheticArchs() {
				ok = ok || a == arch
			}
			if !ok {
				return usagef("--arch %q: want one of %s", arch, strings.Join(model.SyntheticArchs(), ", "))
			}
			spec := model.SyntheticSpec{Arch: arch, ConfigDir: c.String("config"), Seed: c.Uint64("seed")}
			if err := model.WriteSyntheticModel(c.String("output"), spec); err != nil {
				return err
			}
			fmt.Fprintf(c.App.ErrWriter, "wrote a random-weight %s model to %s (its images are noise)\n", arch, c.String("output"))
			return nil
		},
	}
}
