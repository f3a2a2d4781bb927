package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	ucli "github.com/urfave/cli/v2"

	"github.com/zimage/zimage"
	"github.com/zimage/zimage/model/lora"
	"github.com/zimage/zimage/model/safetensors"
)

// loraFlags are the LoRA settings of every command that loads a model
// (generate, serve); generate adds --lora.
func loraFlags() []ucli.Flag {
	return []ucli.Flag{
		&ucli.StringFlag{Name: "lora-dir", Usage: "folder of LoRA files that <lora:NAME:MULT> tags in prompts name (NAME.safetensors in any subfolder, or the ss_output_name in a file's metadata)"},
		&ucli.BoolFlag{Name: "lora-ignore-unknown", Usage: "apply the modules of a LoRA that match this model and skip keys that match none (else such a LoRA is refused as one for another model)"},
		&ucli.StringFlag{Name: "lora-mode", Value: "auto", Usage: "how LoRAs are applied: auto (merged into resident weights on GPUs, and on CPU devices where that costs the run less than the forward-pass terms; streamed or quantized weights take them in the forward pass), merge, forward"},
	}
}

// loraSettings are loraFlags, validated.
type loraSettings struct {
	dir  string
	opts []zimage.Option
}

func loraFromFlags(c *ucli.Context) (loraSettings, error) {
	var s loraSettings
	if d := c.String("lora-dir"); d != "" {
		if st, err := os.Stat(d); err != nil || !st.IsDir() {
			return s, usagef("--lora-dir %s: not a folder", d)
		}
		s.dir = d
		s.opts = append(s.opts, zimage.WithLoRADir(d))
	}
	mode, err := zimage.ParseLoRAMode(c.String("lora-mode"))
	if err != nil {
		return s, usagef("--lora-mode %q: want auto, merge or forward", c.String("lora-mode"))
	}
	s.opts = append(s.opts, zimage.WithLoRAMode(mode), zimage.WithLoRAIgnoreUnknown(c.Bool("lora-ignore-unknown")))
	return s, nil
}

// lorasFromFlags reads the repeatable --lora FILE[:MULT].
func lorasFromFlags(c *ucli.Context) ([]zimage.LoRA, error) {
	var out []zimage.LoRA
	for _, v := range c.StringSlice("lora") {
		path, mult, err := lora.ParseFlag(v)
		if err != nil {
			return nil, usagef("--lora %q: want FILE or FILE:MULT", v)
		}
		st, err := os.Stat(path)
		if err != nil {
			return nil, usagef("--lora %s: %v (want FILE or FILE:MULT, MULT a number such as 0.8)", v, err)
		}
		if st.IsDir() {
			return nil, usagef("--lora %s: a folder; want a LoRA file (for prompt tags use --lora-dir)", v)
		}
		out = append(out, zimage.LoRA{Path: path, Multiplier: mult})
	}
	return out, nil
}

// checkPromptLoRAs finds every <lora:NAME:...> tag of the prompt in the
// LoRA folder before anything loads, so that a mistyped name is a usage
// error that costs nothing.
func checkPromptLoRAs(prompt, dir string) error {
	_, tags, _, err := lora.ParsePrompt(prompt)
	if err != nil {
		return usagef("--prompt: %v", err)
	}
	if len(tags) == 0 {
		return nil
	}
	if dir == "" {
		return usagef("--prompt: %s needs --lora-dir, the folder to find LoRA files in (or pass the file with --lora FILE:MULT)", tags[0].Text)
	}
	d, err := lora.OpenDir(dir)
	if err != nil {
		return usagef("--lora-dir: %v", err)
	}
	var missing []string
	for _, t := range tags {
		if _, err := d.Find(t.Name); err != nil {
			missing = append(missing, t.Name)
		}
	}
	if len(missing) > 0 {
		return usagef("--prompt: no LoRA named %s in --lora-dir %s (have: %s)", strings.Join(missing, ", "), dir, listNames(d.Names()))
	}
	return nil
}

// listNames shows a few names of a folder for an error message.
func listNames(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	if len(names) > 8 {
		return strings.Join(names[:8], ", ") + ", ..."
	}
	return strings.Join(names, ", ")
}

// isLoRAFile reports whether path is a .safetensors file whose tensor
// names are a LoRA's (read from the header alone).
func isLoRAFile(path string) bool {
	if !strings.EqualFold(filepath.Ext(path), ".safetensors") {
		return false
	}
	st, err := safetensors.Open(path)
	if err != nil {
		return false // OpenCheckpoint reports it
	}
	defer st.Close()
	return lora.IsLoRA(st.Names())
}

// loraInfo prints what a LoRA file adapts: format, architecture, modules
// per network, ranks, alphas, hash and training metadata.
func loraInfo(c *ucli.Context, path string) error {
	f, err := lora.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	in, err := lora.Inspect(f)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		enc := json.NewEncoder(c.App.Writer)
		enc.SetIndent("", "  ")
		return enc.Encode(in)
	}
	fmt.Fprint(c.App.Writer, in.String())
	return nil
}
