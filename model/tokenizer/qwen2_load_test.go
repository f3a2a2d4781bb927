package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// syntheticQwen is a small Qwen2-style folder: the 256 byte symbols, a few
// merges (one starting with "#", as Qwen's "# #"), and added tokens after
// the vocabulary, so that these tests run without the reference models.
type syntheticQwen struct {
	vocab  map[string]int
	merges []string
	added  map[string]any // added_tokens_decoder
	config map[string]any // tokenizer_config.json without added_tokens_decoder
}

func newSyntheticQwen() *syntheticQwen {
	s := &syntheticQwen{vocab: map[string]int{}, added: map[string]any{}}
	for _, r := range byteRunes() {
		s.vocab[string(r)] = len(s.vocab)
	}
	for _, m := range []string{"c a", "ca t", "Ġ d", "Ġd o", "Ġdo g", "# #", "! !"} {
		s.merges = append(s.merges, m)
		s.vocab[strings.ReplaceAll(m, " ", "")] = len(s.vocab)
	}
	for _, a := range []string{"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>"} {
		s.added[itoa(len(s.vocab)+len(s.added))] = map[string]any{"content": a, "special": a != "<think>"}
	}
	s.config = map[string]any{"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>",
		"pad_token": "<|endoftext|>", "bos_token": nil, "unk_token": nil,
		"additional_special_tokens": []string{"<|im_start|>", "<|im_end|>"}}
	return s
}

func (s *syntheticQwen) write(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	cfg := map[string]any{"added_tokens_decoder": s.added}
	for k, v := range s.config {
		cfg[k] = v
	}
	v, err := json.Marshal(s.vocab)
	require.NoError(t, err)
	c, err := json.Marshal(cfg)
	require.NoError(t, err)
	files := map[string]string{
		vocabFile:  string(v),
		mergesFile: "#version: 0.2\n" + strings.Join(s.merges, "\n") + "\n",
		configFile: string(c),
	}
	for name, data := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644))
	}
	return dir
}

func TestSyntheticQwen2(t *testing.T) {
	s := newSyntheticQwen()
	q, err := LoadQwen2(s.write(t))
	require.NoError(t, err)
	v := func(tok string) int { return int(q.vocab[tok]) }
	n := len(s.vocab)
	assert.Equal(t, n+4, q.Len())
	assert.Equal(t, n, q.PadID())
	assert.Equal(t, n+2, q.EOSID())
	assert.True(t, q.ordered)
	got := q.Encode("cat dog ## <|im_end|><think>!!!")
	want := []int{v("cat"), v("Ġdog"), v("Ġ"), v("##"), v("Ġ"), n + 2, n + 3, v("!!"), v("!")}
	assert.Equal(t, want, got)
	assert.Equal(t, "cat dog ## <|im_end|><think>!!!", q.Decode(got))
	ids, truncated := q.EncodePrompt("cat", 4)
	assert.Equal(t, []int32{int32(n + 1), int32(v("u")), int32(v("s")), int32(v("e"))}, ids)
	// 20 in all: <|im_start|>, u s e r, \n, cat, <|im_end|>, \n, <|im_start|>, a s s i s t a n t, \n
	assert.Equal(t, 16, truncated)
}

// TestQwen2AddedTokenOptions: lstrip/rstrip strip the whitespace beside a
// token and split_special_tokens turns the matching off, as in transformers.
func TestQwen2AddedTokenOptions(t *testing.T) {
	s := newSyntheticQwen()
	n := len(s.vocab)
	s.added[itoa(n+3)] = map[string]any{"content": "<think>", "lstrip": true, "rstrip": true}
	q, err := LoadQwen2(s.write(t))
	require.NoError(t, err)
	v := func(tok string) int { return int(q.vocab[tok]) }
	assert.Equal(t, []int{v("a"), n + 3, v("b"), v("Ġ")}, q.Encode("a \t<think>\n b "))
	assert.Equal(t, []int{v("a"), v("Ġ"), n + 2, v("Ġ"), v("b")}, q.Encode("a <|im_end|> b"))

	s.config["split_special_tokens"] = true
	q, err = LoadQwen2(s.write(t))
	require.NoError(t, err)
	for _, id := range q.Encode("<|im_end|><think>") {
		assert.Less(t, id, n)
	}
}

// TestQwen2DuplicateMerge: a pair listed twice takes its last rank (a
// Python dict) and turns the heap off.
func TestQwen2DuplicateMerge(t *testing.T) {
	s := newSyntheticQwen()
	s.merges = append(s.merges, "c a")
	q, err := LoadQwen2(s.write(t))
	require.NoError(t, err)
	assert.False(t, q.ordered)
	assert.Equal(t, int32(len(s.merges)-1), q.merges[mergeKey(q.vocab["c"], q.vocab["a"])].rank)
	assert.Equal(t, []int{int(q.vocab["cat"])}, q.Encode("cat"))
	long := strings.Repeat("cat", 40) // past shortWord: the loop must serve it
	assert.Len(t, q.Encode(long), 40)
}

func TestQwen2LoadErrors(t *testing.T) {
	file := func(name, data string) func(dir string) {
		return func(dir string) {
			if data == "" {
				os.Remove(filepath.Join(dir, name))
				return
			}
			write(dir, name, data)
		}
	}
	cases := []struct {
		name string
		edit func(s *syntheticQwen) // before writing the folder
		file func(dir string)       // after
		want []string               // all in the error
	}{
		{"no vocab", nil, file(vocabFile, ""), []string{vocabFile}},
		{"no merges", nil, file(mergesFile, ""), []string{mergesFile}},
		{"no config", nil, file(configFile, ""), []string{configFile}},
		{"malformed vocab", nil, file(vocabFile, `{"a": 0,`), []string{vocabFile}},
		{"vocab ids", nil, file(vocabFile, `{"a": 0, "b": 5}`), []string{vocabFile, "outside"}},
		{"not byte-level", nil, file(vocabFile, `{"a": 0}`), []string{vocabFile, "byte symbol"}},
		{"merges line", nil, file(mergesFile, "#version: 0.2\nc a\nx\n"), []string{mergesFile + " line 3"}},
		{"merges symbol", nil, file(mergesFile, "q z\n"), []string{mergesFile + " line 1", "not in vocab.json"}},
		{"malformed config", nil, file(configFile, `{"added_tokens_decoder": [1]}`), []string{configFile}},
		{"added id not a number", func(s *syntheticQwen) {
			s.added["x"] = map[string]any{"content": "<x>"}
		}, nil, []string{configFile, `"x"`, "token id"}},
		{"added id leaves a gap", func(s *syntheticQwen) {
			s.added["100000"] = map[string]any{"content": "<x>"}
		}, nil, []string{configFile, "without a token"}},
		{"added id on another vocab token", func(s *syntheticQwen) {
			s.added["0"] = map[string]any{"content": "<x>"}
		}, nil, []string{configFile, `"<x>"`, "gives id 0"}},
		{"added without content", func(s *syntheticQwen) {
			s.added[itoa(len(s.vocab)+len(s.added))] = map[string]any{"special": true}
		}, nil, []string{configFile, "content"}},
		{"added twice", func(s *syntheticQwen) {
			s.added[itoa(len(s.vocab)+len(s.added))] = map[string]any{"content": "<think>"}
		}, nil, []string{configFile, "two ids"}},
		{"single_word", func(s *syntheticQwen) {
			s.added[itoa(len(s.vocab))] = map[string]any{"content": "<|endoftext|>", "single_word": true}
		}, nil, []string{configFile, "single_word"}},
		{"unknown eos", func(s *syntheticQwen) { s.config["eos_token"] = "</s>" }, nil, []string{configFile, "eos_token", `"</s>"`}},
		{"unknown additional", func(s *syntheticQwen) {
			s.config["additional_special_tokens"] = []string{"<|im_start|>", "<|box|>"}
		}, nil, []string{configFile, "additional_special_tokens[1]", `"<|box|>"`}},
		{"other class", func(s *syntheticQwen) { s.config["tokenizer_class"] = "CLIPTokenizer" }, nil, []string{configFile, "CLIPTokenizer"}},
	}
	for _, c := range cases {
		s := newSyntheticQwen()
		if c.edit != nil {
			c.edit(s)
		}
		dir := s.write(t)
		if c.file != nil {
			c.file(dir)
		}
		_, err := LoadQwen2(dir)
		if !assert.Error(t, err, c.name) {
			continue
		}
		assert.True(t, strings.HasPrefix(err.Error(), "tokenizer: "), "%s: %v", c.name, err)
		for _, w := range c.want {
			assert.Contains(t, err.Error(), w, c.name)
		}
	}
}
