package tokenizer

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// WriteByteLevel writes a minimal CLIP tokenizer folder to dir: the 256
// byte symbols (plain and with "</w>"), no merges, and the special tokens.
// It is a real, loadable CLIP BPE vocabulary — every text tokenizes, one
// token per byte — for models zimage builds itself (demo and benchmark
// models) without shipping CLIP's 49408-token vocabulary. padToken is
// "<|endoftext|>" (CLIP-L style) or "!" (OpenCLIP style). It returns the
// vocabulary size.
func WriteByteLevel(dir, padToken string) (int, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, fmt.Errorf("tokenizer: %w", err)
	}
	vocab := map[string]int{}
	br := byteRunes()
	for b := range 256 {
		vocab[string(br[b])] = b
	}
	for b := range 256 {
		vocab[string(br[b])+"</w>"] = 256 + b
	}
	vocab["<|startoftext|>"] = 512
	vocab["<|endoftext|>"] = 513
	special := map[string]any{
		"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
		"unk_token": "<|endoftext|>", "pad_token": padToken,
	}
	config := map[string]any{
		"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": true,
		"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
		"unk_token": "<|endoftext|>", "pad_token": padToken,
	}
	files := map[string]any{"vocab.json": vocab, "special_tokens_map.json": special, "tokenizer_config.json": config}
	for name, v := range files {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return 0, err
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return 0, fmt.Errorf("tokenizer: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "merges.txt"), []byte("#version: 0.2\n"), 0o644); err != nil {
		return 0, fmt.Errorf("tokenizer: %w", err)
	}
	return len(vocab), nil
}
