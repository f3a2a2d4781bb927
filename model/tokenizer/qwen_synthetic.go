package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// qwenSyntheticMerges are the merges of WriteQwenByteLevel's vocabulary: a
// few frequent English pairs, enough that the BPE has work to do, written
// by zimage (not taken from Qwen's vocabulary). "Ġ" is the byte-level
// symbol of a space.
var qwenSyntheticMerges = []string{
	"Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "Ġt he", "e r", "Ġ s", "a t",
	"Ġ w", "Ġ o", "e n", "Ġ c", "i s", "a n", "o r", "e s", "Ġ b", "e d",
	"Ġ f", "i t", "a l", "Ġ p", "a r", "Ġ m", "o u", "Ġ d", "l e", "i c",
}

// QwenChatTokens are the special tokens of the Qwen chat format, in the
// order of their ids after the vocabulary, as in Qwen's own files.
var QwenChatTokens = []string{"<|endoftext|>", "<|im_start|>", "<|im_end|>"}

// qwenChatTemplate renders a conversation as Qwen's template does for plain
// messages (no tools, no thinking blocks): each message as
// "<|im_start|>role\ncontent<|im_end|>\n", then "<|im_start|>assistant\n"
// when a generation prompt is asked for. Z-Image's pipeline formats one
// user message this way.
const qwenChatTemplate = "{%- for message in messages %}" +
	"{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}" +
	"{%- endfor %}" +
	"{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"

// WriteQwenByteLevel writes a small Qwen2Tokenizer folder to dir in the
// Hugging Face format (vocab.json, merges.txt, tokenizer_config.json): the
// 256 byte-level symbols with ids in GPT-2's order (the printable bytes
// first), qwenSyntheticMerges, and the chat tokens as added special tokens
// right after the vocabulary (<|endoftext|> pads, <|im_end|> ends). Every
// text tokenizes with it, so models zimage builds itself (demo and
// benchmark models) run without Qwen's 151,643-token vocabulary. It
// returns the tokenizer's length (vocabulary plus added tokens), the
// smallest embedding table it needs.
func WriteQwenByteLevel(dir string) (int, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, fmt.Errorf("tokenizer: %w", err)
	}
	br := byteRunes()
	vocab := map[string]int{}
	for pass := range 2 {
		for b := range 256 {
			if (br[b] == rune(b)) == (pass == 0) {
				vocab[string(br[b])] = len(vocab)
			}
		}
	}
	merges := "#version: 0.2\n"
	for _, m := range qwenSyntheticMerges {
		a, b, ok := strings.Cut(m, " ")
		if _, okA := vocab[a]; !ok || !okA {
			return 0, fmt.Errorf("tokenizer: synthetic merge %q: %q is not a symbol yet", m, a)
		}
		if _, okB := vocab[b]; !okB {
			return 0, fmt.Errorf("tokenizer: synthetic merge %q: %q is not a symbol yet", m, b)
		}
		vocab[a+b] = len(vocab)
		merges += m + "\n"
	}
	added := map[string]any{}
	for i, tok := range QwenChatTokens {
		added[strconv.Itoa(len(vocab)+i)] = map[string]any{
			"content": tok, "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true,
		}
	}
	config := map[string]any{
		"tokenizer_class":              "Qwen2Tokenizer",
		"add_bos_token":                false,
		"add_prefix_space":             false,
		"added_tokens_decoder":         added,
		"additional_special_tokens":    QwenChatTokens[1:],
		"bos_token":                    nil,
		"chat_template":                qwenChatTemplate,
		"clean_up_tokenization_spaces": false,
		"eos_token":                    "<|im_end|>",
		"errors":                       "replace",
		"model_max_length":             131072,
		"pad_token":                    "<|endoftext|>",
		"split_special_tokens":         false,
		"unk_token":                    nil,
	}
	for name, v := range map[string]any{"vocab.json": vocab, "tokenizer_config.json": config} {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false) // "<|im_start|>" as written, not "\u003c|im_start|\u003e"
		enc.SetIndent("", "  ")
		if err := enc.Encode(v); err != nil {
			return 0, err
		}
		if err := os.WriteFile(filepath.Join(dir, name), b.Bytes(), 0o644); err != nil {
			return 0, fmt.Errorf("tokenizer: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "merges.txt"), []byte(merges), 0o644); err != nil {
		return 0, fmt.Errorf("tokenizer: %w", err)
	}
	return len(vocab) + len(QwenChatTokens), nil
}
