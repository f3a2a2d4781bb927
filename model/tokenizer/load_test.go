package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// synthetic files make a small CLIP-style tokenizer (the 512 byte symbols, a
// few merges, the two specials) so that these tests run without the
// reference models.
type synthetic struct {
	vocab   map[string]int
	merges  []string
	config  string // tokenizer_config.json, "" for none
	special string // special_tokens_map.json, "" for none
}

func newSynthetic(pad string) *synthetic {
	s := &synthetic{vocab: map[string]int{}}
	br := byteRunes()
	for _, r := range br {
		s.vocab[string(r)] = len(s.vocab)
	}
	for _, r := range br {
		s.vocab[string(r)+"</w>"] = len(s.vocab)
	}
	for _, m := range []string{"c a", "ca t</w>", "d o", "do g</w>", "! !", "!! !</w>"} {
		s.merges = append(s.merges, m)
		s.vocab[strings.ReplaceAll(m, " ", "")] = len(s.vocab)
	}
	s.vocab["<|startoftext|>"] = len(s.vocab)
	s.vocab["<|endoftext|>"] = len(s.vocab)
	s.config = `{"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "` + pad +
		`", "unk_token": "<|endoftext|>", "model_max_length": 77}`
	return s
}

func (s *synthetic) write(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	v, err := json.Marshal(s.vocab)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		vocabFile:  string(v),
		mergesFile: "#version: 0.2\n" + strings.Join(s.merges, "\n") + "\n",
	}
	if s.config != "" {
		files[configFile] = s.config
	}
	if s.special != "" {
		files[specialFile] = s.special
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestSyntheticTokenizer(t *testing.T) {
	for _, pad := range []string{"<|endoftext|>", "!"} {
		tok, err := Load(newSynthetic(pad).write(t))
		if err != nil {
			t.Fatal(err)
		}
		v := func(s string) int { return int(tok.vocab[s]) }
		got := tok.Encode("Cat DOG!!! cats").Unpadded
		var want []int
		wantText := "cat dog!!! cats"
		if pad == "!" { // "!" splits: no "!!!" merge, and no "</w>" after "!"
			want = []int{tok.BOSID(), v("cat</w>"), v("dog</w>"), v("!"), v("!"), v("!"), v("ca"), v("t"), v("s</w>"), tok.EOSID()}
			wantText = "cat dog!!!cats"
		} else {
			want = []int{tok.BOSID(), v("cat</w>"), v("dog</w>"), v("!!!</w>"), v("ca"), v("t"), v("s</w>"), tok.EOSID()}
		}
		if !slices.Equal(got, want) {
			t.Errorf("pad %q: got %v, want %v", pad, got, want)
		}
		if tok.PadID() != v(pad) {
			t.Errorf("pad id %d, want %d", tok.PadID(), v(pad))
		}
		if got := tok.Decode(got); got != wantText {
			t.Errorf("pad %q: decode %q, want %q", pad, got, wantText)
		}
	}
}

// TestSpecialTokensMapWins: special_tokens_map.json overrides
// tokenizer_config.json, as in transformers.
func TestSpecialTokensMapWins(t *testing.T) {
	s := newSynthetic("<|endoftext|>")
	s.special = `{"pad_token": {"content": "!", "lstrip": false}}`
	tok, err := Load(s.write(t))
	if err != nil {
		t.Fatal(err)
	}
	if tok.PadID() != int(tok.vocab["!"]) {
		t.Errorf("pad id %d, want that of \"!\"", tok.PadID())
	}
	s.config = ""
	s.special = `{"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}`
	if tok, err = Load(s.write(t)); err != nil || tok.PadID() != tok.EOSID() || tok.MaxLength() != 77 {
		t.Errorf("defaults: %v", err)
	}
}

func TestLoadErrors(t *testing.T) {
	cases := []struct {
		name string
		edit func(s *synthetic, dir string)
		want string // in the error
	}{
		{"no vocab", func(s *synthetic, dir string) { os.Remove(filepath.Join(dir, vocabFile)) }, vocabFile},
		{"no merges", func(s *synthetic, dir string) { os.Remove(filepath.Join(dir, mergesFile)) }, mergesFile},
		{"no configs", func(s *synthetic, dir string) { os.Remove(filepath.Join(dir, configFile)) }, specialFile},
		{"bad vocab json", func(s *synthetic, dir string) { write(dir, vocabFile, `{"a": 0,`) }, vocabFile},
		{"vocab ids", func(s *synthetic, dir string) { write(dir, vocabFile, `{"a": 0, "b": 5}`) }, "outside"},
		{"not byte-level", func(s *synthetic, dir string) { write(dir, vocabFile, `{"a": 0}`) }, "byte symbol"},
		{"merges header", func(s *synthetic, dir string) { write(dir, mergesFile, "c a\n") }, "#version"},
		{"merges line", func(s *synthetic, dir string) { write(dir, mergesFile, "#version: 0.2\nc a\nx\n") }, "merges.txt line 3"},
		{"merges order", func(s *synthetic, dir string) { write(dir, mergesFile, "#version: 0.2\nca t</w>\nc a\n") }, "before a line makes it"},
		{"merges symbol", func(s *synthetic, dir string) { write(dir, mergesFile, "#version: 0.2\nq z\n") }, "not in vocab.json"},
		{"bad config", func(s *synthetic, dir string) { write(dir, configFile, `{"pad_token": [1]}`) }, configFile},
		{"special not in vocab", func(s *synthetic, dir string) {
			write(dir, configFile, `{"bos_token": "<s>", "eos_token": "<|endoftext|>"}`)
		}, `"<s>"`},
		{"no eos", func(s *synthetic, dir string) { write(dir, configFile, `{"bos_token": "<|startoftext|>"}`) }, "eos_token"},
	}
	for _, c := range cases {
		s := newSynthetic("!")
		dir := s.write(t)
		c.edit(s, dir)
		_, err := Load(dir)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "tokenizer: ") {
			t.Errorf("%s: error %v, want one naming %q", c.name, err, c.want)
		}
	}
}

func write(dir, name, data string) {
	os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644)
}

// TestParseFlatVocab: the fast vocab.json reader agrees with encoding/json
// and refuses what it does not handle.
func TestParseFlatVocab(t *testing.T) {
	for _, in := range []string{
		`{"a": 1, "b\"c": 2, "\u00e9": 3, "\\": 4}`,
		" {\n\t\"x\" : 0 ,\r\n\"y\":7}\n",
		`{}`,
	} {
		got, ok := parseFlatVocab([]byte(in))
		var want map[string]int32
		if err := json.Unmarshal([]byte(in), &want); err != nil || !ok || len(got) != len(want) {
			t.Fatalf("%q: ok %v, %v vs %v", in, ok, got, want)
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%q: %q = %d, want %d", in, k, got[k], v)
			}
		}
	}
	for _, in := range []string{`{"a": 1,}`, `{"a": 1.5}`, `{"a": -1}`, `["a"]`, `{"a": 1} x`, `{"a" 1}`, `{"a": 1, "a": 2}`, `{"a`} {
		if _, ok := parseFlatVocab([]byte(in)); ok {
			t.Errorf("%q accepted", in)
		}
	}
}
