package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"

	ucli "github.com/urfave/cli/v2"

	"github.com/zimage/zimage/model"
)

func convertCommand() *ucli.Command {
	return &ucli.Command{
		Name:  "convert",
		Usage: "write a model as a quantized GGUF file (Stable Diffusion: stable-diffusion.cpp's layout; Z-Image: the transformer as ComfyUI-GGUF publishes it)",
		Description: "Quantizes the tensors stable-diffusion.cpp's convert would (rows of whole blocks; not biases, embeddings or the\n" +
			"UNet's time and class embeddings) and by default also keeps norm scales and the VAE as stored; --sdcpp\n" +
			"quantizes those too and then writes stable-diffusion.cpp's tensors byte for byte. Everything else keeps\n" +
			"its stored type.",
		Flags: []ucli.Flag{
			&ucli.StringFlag{Name: "model", Aliases: []string{"m"}, Required: true, Usage: "diffusers folder, single-file .safetensors or .gguf"},
			&ucli.StringFlag{Name: "type", Aliases: []string{"t"}, Required: true, Usage: "q8_0, q5_1, q5_0, q4_1, q4_0 or q4_k"},
			&ucli.StringFlag{Name: "output", Aliases: []string{"o"}, Required: true, Usage: "the .gguf file to write"},
			&ucli.BoolFlag{Name: "sdcpp", Usage: "stable-diffusion.cpp's rules: quantize norm scales and the VAE too"},
			&ucli.BoolFlag{Name: "quantize-vectors", Usage: "quantize 1-D tensors (norm scales) whose length is whole blocks"},
			&ucli.BoolFlag{Name: "quantize-vae", Usage: "quantize the VAE's matrices too"},
			&ucli.StringSliceFlag{Name: "keep", Usage: "regular expression of tensor names to keep as stored (repeatable)"},
			&ucli.StringFlag{Name: "tokenizer", Usage: "tokenizer folder for single-file checkpoints"},
			&ucli.StringFlag{Name: "config", Usage: "diffusers folder whose configs override those inferred for a single file"},
			&ucli.StringFlag{Name: "text-encoder", Usage: "Z-Image single transformer file: its text encoder, needed to open it (not written)"},
			&ucli.StringFlag{Name: "vae", Usage: "Z-Image single transformer file: its VAE, needed to open it (not written)"},
			&ucli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress on stderr"},
		},
		Action: runConvert,
	}
}

func runConvert(c *ucli.Context) error {
	typ, err := model.ParseQuantizeType(c.String("type"))
	if err != nil {
		return usagef("--type: %v", err)
	}
	rules := model.QuantizeRules{Type: typ, Vectors: c.Bool("quantize-vectors"), VAE: c.Bool("quantize-vae")}
	if c.Bool("sdcpp") {
		rules = model.SDCppRules(typ)
	}
	for _, k := range c.StringSlice("keep") {
		re, err := regexp.Compile(k)
		if err != nil {
			return usagef("--keep %q: %v", k, err)
		}
		rules.Keep = append(rules.Keep, re)
	}
	out := c.String("output")
	if filepath.Ext(out) != ".gguf" {
		return usagef("--output %q: want a .gguf file", out)
	}
	in := c.String("model")
	if _, err := os.Stat(in); err != nil {
		return usagef("--model: %v", err)
	}
	if abs, _ := filepath.Abs(in); abs != "" {
		if o, _ := filepath.Abs(out); o == abs {
			return usagef("--output %q is the model itself", out)
		}
	}
	ck, err := model.OpenCheckpoint(in, model.OpenOptions{TokenizerDir: c.String("tokenizer"), ConfigDir: c.String("config"),
		TextEncoderPath: c.String("text-encoder"), VAEPath: c.String("vae")})
	if err != nil {
		return err
	}
	defer ck.Close()
	start := time.Now()
	var progress func(done, total int, name string)
	if !c.Bool("quiet") {
		last := time.Time{}
		progress = func(done, total int, name string) {
			if time.Since(last) > time.Second || done == total-1 {
				fmt.Fprintf(c.App.ErrWriter, "\rconvert: %d/%d tensors, %s   ", done+1, total, time.Since(start).Round(time.Second))
				last = time.Now()
			}
		}
	}
	sum, err := model.Convert(ck, out, rules, progress)
	if progress != nil {
		fmt.Fprintln(c.App.ErrWriter)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "%s (%s)\n", sum, time.Since(start).Round(time.Millisecond))
	return nil
}
