package tokenizer

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zimage/zimage/internal/testref"
)

// tokenizerDirs lists the tokenizer folders of a reference model.
func tokenizerDirs(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for _, name := range []string{"tokenizer", "tokenizer_2"} {
		if _, err := os.Stat(filepath.Join(dir, name, vocabFile)); err == nil {
			out = append(out, name)
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s: no tokenizer folder", dir)
	}
	return out
}

func loadRef(t testing.TB, model, name string) *Tokenizer {
	t.Helper()
	tok, err := Load(filepath.Join(testref.Dir(t, model), name))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func jsonInts(t *testing.T, v any, what string) []int {
	t.Helper()
	arr, ok := v.([]any)
	if !ok {
		t.Fatalf("%s: not a list", what)
	}
	out := make([]int, len(arr))
	for i, x := range arr {
		f, ok := x.(float64)
		if !ok {
			t.Fatalf("%s[%d]: not a number", what, i)
		}
		out[i] = int(f)
	}
	return out
}

// TestReferencePrompts checks every prompt of refs.json, for every tokenizer
// of the three reference models, against the ftfy ids (exact), the padded
// tok_ftfy tensors, the pad id and the truncation count.
func TestReferencePrompts(t *testing.T) {
	for _, model := range testref.Models {
		t.Run(model, func(t *testing.T) {
			refs := testref.Open(t, model)
			prompts, ok := refs.JSON["prompts"].([]any)
			if !ok || len(prompts) == 0 {
				t.Fatal("refs.json: no prompts")
			}
			for _, name := range tokenizerDirs(t, refs.Dir) {
				tok := loadRef(t, model, name)
				for _, p := range prompts {
					pm := p.(map[string]any)
					idx := int(pm["index"].(float64))
					text := pm["text"].(string)
					ref, ok := pm["tokenizers"].(map[string]any)[name].(map[string]any)
					if !ok {
						t.Fatalf("refs.json prompt %d: no entry for %s", idx, name)
					}
					want := jsonInts(t, ref["ids_unpadded_ftfy"], "ids_unpadded_ftfy")
					e := tok.Encode(text)
					if !slices.Equal(e.Unpadded, want) {
						t.Errorf("%s prompt %d (%s) %q:\n got %v\nwant %v", name, idx, pm["kind"], text, e.Unpadded, want)
					}
					if pad := int(ref["pad_token_id"].(float64)); tok.PadID() != pad {
						t.Errorf("%s: pad id %d, want %d", name, tok.PadID(), pad)
					}
					n := int(ref["n_tokens_untruncated_ftfy"].(float64))
					if wantTrunc := max(0, n-tok.MaxLength()); e.Truncated != wantTrunc {
						t.Errorf("%s prompt %d: truncated %d, want %d", name, idx, e.Truncated, wantTrunc)
					}
					if got := len(e.Unpadded) + e.Truncated; got != n {
						t.Errorf("%s prompt %d: %d tokens before truncation, want %d", name, idx, got, n)
					}
					key := "tok_ftfy." + name + "." + itoa(idx) + ".input_ids"
					ids, _ := refs.Ints(t, key)
					got := make([]int64, len(e.IDs))
					for i, id := range e.IDs {
						got[i] = int64(id)
					}
					if !slices.Equal(got, ids) {
						t.Errorf("%s: got %v\nwant %v", key, got, ids)
					}
					// Without ftfy the ids differ only where refs.json says so.
					if ref["ftfy_differs"] == false {
						plain := jsonInts(t, ref["ids_unpadded"], "ids_unpadded")
						if !slices.Equal(plain, want) {
							t.Errorf("%s prompt %d: refs.json says ftfy does not matter but ids differ", name, idx)
						}
					}
				}
			}
		})
	}
}

func itoa(i int) string {
	var b [20]byte
	n := len(b)
	for {
		n--
		b[n] = byte('0' + i%10)
		i /= 10
		if i == 0 {
			return string(b[n:])
		}
	}
}

// TestBangSplit: in the OpenCLIP tokenizers "!" is a special token, so the
// text splits at every "!" and "!!!" or "!?" never merge; CLIP-L merges them.
func TestBangSplit(t *testing.T) {
	open := loadRef(t, "tiny-sdxl-turbo", "tokenizer_2")
	clipL := loadRef(t, "tiny-sdxl-turbo", "tokenizer")
	if open.PadID() != 0 || clipL.PadID() != clipL.EOSID() || clipL.EOSID() != 49407 || open.BOSID() != 49406 {
		t.Fatalf("pad ids: OpenCLIP %d, CLIP-L %d (eos %d)", open.PadID(), clipL.PadID(), clipL.EOSID())
	}
	got := open.Encode("wow!!! ok!?").Unpadded
	want := []int{open.BOSID(), int(open.vocab["wow</w>"]), 0, 0, 0, int(open.vocab["ok</w>"]), 0, int(open.vocab["?</w>"]), open.EOSID()}
	if !slices.Equal(got, want) {
		t.Errorf("OpenCLIP: got %v, want %v", got, want)
	}
	got = clipL.Encode("wow!!! ok!?").Unpadded
	want = []int{clipL.BOSID(), int(clipL.vocab["wow</w>"]), int(clipL.vocab["!!!</w>"]), int(clipL.vocab["ok</w>"]), int(clipL.vocab["!?</w>"]), clipL.EOSID()}
	if !slices.Equal(got, want) {
		t.Errorf("CLIP-L: got %v, want %v", got, want)
	}
	// "!" (id 0) carries no "</w>", so no space follows it, as in transformers.
	if got := open.Decode(open.Encode("wow!!! ok!?").Unpadded); got != "wow!!!ok!?" {
		t.Errorf("OpenCLIP decode: %q", got)
	}
	// Padding: "!" ids after EOS for OpenCLIP, EOS for CLIP-L.
	e := open.Encode("a cat")
	if len(e.IDs) != 77 || e.IDs[3] != open.EOSID() || e.IDs[4] != 0 || e.IDs[76] != 0 {
		t.Errorf("OpenCLIP padding: %v", e.IDs)
	}
	e = clipL.Encode("a cat")
	if e.IDs[4] != 49407 || e.IDs[76] != 49407 {
		t.Errorf("CLIP-L padding: %v", e.IDs)
	}
}

// TestSpecialTokensInText: typed special tokens become their ids, as in
// transformers (exact spelling is split first; other spellings are matched
// by the pattern after lowercasing).
func TestSpecialTokensInText(t *testing.T) {
	tok := loadRef(t, "tiny-sd15", "tokenizer")
	cat := int(tok.vocab["cat</w>"])
	for _, text := range []string{"cat<|endoftext|>cat", "cat <|ENDOFTEXT|> cat"} {
		got := tok.Encode(text).Unpadded
		want := []int{49406, cat, 49407, cat, 49407}
		if !slices.Equal(got, want) {
			t.Errorf("%q: got %v, want %v", text, got, want)
		}
	}
}

// TestTruncation: 100 words give BOS + 75 + EOS and 25 dropped; chunks keep
// all of them.
func TestTruncation(t *testing.T) {
	tok := loadRef(t, "tiny-sd15", "tokenizer")
	words := strings.Repeat("cat ", 100)
	e := tok.Encode(words)
	if e.Truncated != 25 || len(e.Unpadded) != 77 || len(e.IDs) != 77 || e.Unpadded[76] != tok.EOSID() {
		t.Fatalf("truncated %d, unpadded %d tokens, last %d", e.Truncated, len(e.Unpadded), e.Unpadded[len(e.Unpadded)-1])
	}
	if e := tok.Encode(strings.Repeat("cat ", 75)); e.Truncated != 0 || len(e.Unpadded) != 77 {
		t.Errorf("75 words: truncated %d, %d tokens", e.Truncated, len(e.Unpadded))
	}
	chunks := tok.EncodeChunks(words)
	if len(chunks) != 2 || len(chunks[0].Unpadded) != 77 || len(chunks[1].Unpadded) != 27 {
		t.Fatalf("chunks: %d", len(chunks))
	}
	for _, c := range chunks {
		if len(c.IDs) != 77 || c.IDs[0] != tok.BOSID() || c.Unpadded[len(c.Unpadded)-1] != tok.EOSID() || c.Truncated != 0 {
			t.Errorf("chunk %v", c.IDs)
		}
	}
	if !slices.Equal(chunks[0].IDs, e.IDs) {
		t.Error("first chunk differs from the truncated encoding")
	}
	if c := tok.EncodeChunks(""); len(c) != 1 || !slices.Equal(c[0].Unpadded, []int{tok.BOSID(), tok.EOSID()}) {
		t.Errorf("empty prompt chunks: %v", c)
	}
}

// TestDecode checks transformers' decode behaviour on a few cases.
func TestDecode(t *testing.T) {
	tok := loadRef(t, "tiny-sd15", "tokenizer")
	for in, want := range map[string]string{
		"A photo of an Astronaut":     "a photo of an astronaut",
		"café, naïve":                 "café, naïve",
		"don't stop":                  "don 't stop", // "'t" is its own word
		"🐱 rocket":                    "🐱 rocket",
		"  spaced\t\tout  ":           "spaced out",
		"ﬁne “quotes” ＦＵＬＬ":           "fine \" quotes \" full",
		"one &amp; two, P&EACUTE;REZ": "one & two, pérez",
	} {
		if got := tok.Decode(tok.Encode(in).IDs); got != want {
			t.Errorf("Decode(Encode(%q)) = %q, want %q", in, got, want)
		}
	}
	if got := tok.Decode([]int{-1, 1 << 30}); got != "\uFFFD\uFFFD" {
		t.Errorf("bad ids: %q", got)
	}
}

// TestLoadTime loads a real tokenizer folder and reports the time.
func TestLoadTime(t *testing.T) {
	dir := filepath.Join(testref.Dir(t, "tiny-sd15"), "tokenizer")
	start := time.Now()
	tok, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	d := time.Since(start)
	t.Logf("Load: %v (%d merges, %d tokens)", d, len(tok.merges), len(tok.tokens))
	if len(tok.merges) != clipMerges || len(tok.tokens) != 49408 {
		t.Errorf("%d merges, %d tokens; want %d, 49408", len(tok.merges), len(tok.tokens), clipMerges)
	}
}
