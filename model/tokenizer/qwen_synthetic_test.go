package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestWriteQwenByteLevel checks the folder against what a Qwen2Tokenizer
// loader requires: contiguous ids, every byte symbol (the first 188 ids
// the printable bytes, as in Qwen's vocabulary), merges over existing
// symbols whose results are in the vocabulary, the chat tokens as added
// tokens right after it, and the named tokens.
func TestWriteQwenByteLevel(t *testing.T) {
	dir := t.TempDir()
	n, err := WriteQwenByteLevel(dir)
	require.NoError(t, err)

	var vocab map[string]int
	b, err := os.ReadFile(filepath.Join(dir, "vocab.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &vocab))
	ids := make([]string, len(vocab))
	for tok, id := range vocab {
		require.True(t, id >= 0 && id < len(vocab), "id %d", id)
		require.Empty(t, ids[id], "id %d twice", id)
		ids[id] = tok
	}
	br := byteRunes()
	for b := range 256 {
		_, ok := vocab[string(br[b])]
		assert.True(t, ok, "byte %d", b)
	}
	assert.Equal(t, 0, vocab["!"])
	assert.Equal(t, 187, vocab["ÿ"])
	assert.Equal(t, 188, vocab["Ā"]) // byte 0

	m, err := os.ReadFile(filepath.Join(dir, "merges.txt"))
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(m)), "\n")
	require.Equal(t, "#version: 0.2", lines[0])
	require.Len(t, lines[1:], len(vocab)-256)
	for i, line := range lines[1:] {
		a, c, ok := strings.Cut(line, " ")
		require.True(t, ok, line)
		assert.Less(t, vocab[a], 256+i, line)
		assert.Less(t, vocab[c], 256+i, line)
		assert.Equal(t, 256+i, vocab[a+c], line)
	}

	var cfg struct {
		Class      string                    `json:"tokenizer_class"`
		EOS        string                    `json:"eos_token"`
		Pad        string                    `json:"pad_token"`
		Additional []string                  `json:"additional_special_tokens"`
		Added      map[string]map[string]any `json:"added_tokens_decoder"`
		Template   string                    `json:"chat_template"`
	}
	b, err = os.ReadFile(filepath.Join(dir, "tokenizer_config.json"))
	require.NoError(t, err)
	assert.Contains(t, string(b), `"<|im_start|>"`, "written unescaped")
	require.NoError(t, json.Unmarshal(b, &cfg))
	assert.Equal(t, "Qwen2Tokenizer", cfg.Class)
	assert.Equal(t, "<|im_end|>", cfg.EOS)
	assert.Equal(t, "<|endoftext|>", cfg.Pad)
	assert.Equal(t, []string{"<|im_start|>", "<|im_end|>"}, cfg.Additional)
	require.Len(t, cfg.Added, 3)
	for i, tok := range QwenChatTokens {
		id := len(vocab) + i
		entry := cfg.Added[strconv.Itoa(id)]
		require.NotNil(t, entry, "id %d", id)
		assert.Equal(t, tok, entry["content"])
		assert.Equal(t, true, entry["special"])
	}
	assert.Equal(t, len(vocab)+3, n)
	for _, s := range []string{"<|im_start|>", "message.role", "<|im_end|>", "add_generation_prompt", "<|im_start|>assistant"} {
		assert.Contains(t, cfg.Template, s)
	}

	// The Qwen2 tokenizer loads it; prompts in any script round-trip
	// through the chat template, and the merges apply.
	q, err := LoadQwen2(dir)
	require.NoError(t, err)
	assert.Equal(t, n, q.Len())
	_, inVocab := vocab["<|endoftext|>"]
	assert.False(t, inVocab, "an added token, not in vocab.json")
	assert.Equal(t, len(vocab), q.PadID())
	assert.Equal(t, len(vocab)+2, q.EOSID())
	for _, p := range []string{"a red cat sitting on the chair", "一只橘色的猫坐在窗台上", "tabs\tand\nnew <|im_end|> lines", ""} {
		ids, truncated := q.EncodePrompt(p, 512)
		assert.Zero(t, truncated)
		back := make([]int, len(ids))
		for i, id := range ids {
			require.Less(t, int(id), n)
			back[i] = int(id)
		}
		assert.Equal(t, ChatPrompt(p), q.Decode(back))
	}
	assert.Equal(t, []int{vocab["Ġthe"]}, q.Encode(" the"))
}
