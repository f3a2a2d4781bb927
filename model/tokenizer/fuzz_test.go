package tokenizer

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/zimage/zimage/internal/testref"
)

// fuzzTokenizers are the real CLIP-L and OpenCLIP tokenizers when the
// reference models are present, and the synthetic ones always.
func fuzzTokenizers(f *testing.F) []*Tokenizer {
	var toks []*Tokenizer
	for _, pad := range []string{"<|endoftext|>", "!"} {
		tok, err := Load(newSynthetic(pad).write(f))
		if err != nil {
			f.Fatal(err)
		}
		toks = append(toks, tok)
	}
	if root, ok := testref.Root(); ok {
		for _, dir := range []string{"tiny-sdxl-turbo/tokenizer", "tiny-sdxl-turbo/tokenizer_2"} {
			tok, err := Load(filepath.Join(root, dir))
			if err != nil {
				f.Fatal(err)
			}
			toks = append(toks, tok)
		}
	}
	return toks
}

// FuzzEncode: any input encodes without panic into well-formed windows;
// Encode is the first chunk of EncodeChunks with the rest counted as
// truncated; words of ASCII letters round-trip through Decode (lowercased).
func FuzzEncode(f *testing.F) {
	for _, s := range []string{
		"", "a photo of an astronaut", "A RED Fox, Jumping!? Over the LAZY dog... (4K, HDR)",
		"一只橘色的猫坐在窗台上，午后阳光", "🐱 a cat 🚀", "don't stop 3.14", "x<|endoftext|>y<|ENDOFTEXT|>",
		"&amp;&#65;&EACUTE; \x1b[31m\x00\x85\r\n", "ΟΔΟΣ İ cafe\u0301 ｶﾞ ﬁ", "\xff\xfe invalid utf8",
		strings.Repeat("word ", 200), strings.Repeat("!", 100),
	} {
		f.Add(s)
	}
	toks := fuzzTokenizers(f)
	f.Fuzz(func(t *testing.T, text string) {
		for _, tok := range toks {
			checkEncoding(t, tok, text)
			words := strings.FieldsFunc(text, func(r rune) bool { return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') })
			plain := strings.Join(words, " ")
			var ids []int
			for _, c := range tok.EncodeChunks(plain) {
				ids = append(ids, c.Unpadded...)
			}
			if got, want := tok.Decode(ids), strings.ToLower(plain); got != want {
				t.Fatalf("pad %d: Decode(Encode(%q)) = %q", tok.PadID(), plain, got)
			}
		}
	})
}

func checkEncoding(t *testing.T, tok *Tokenizer, text string) {
	e := tok.Encode(text)
	chunks := tok.EncodeChunks(text)
	n := tok.MaxLength()
	var all []int
	for i, c := range chunks {
		if len(c.IDs) != n || len(c.Unpadded) < 2 || len(c.Unpadded) > n || c.Truncated != 0 {
			t.Fatalf("%q chunk %d: %d ids, %d unpadded", text, i, len(c.IDs), len(c.Unpadded))
		}
		if c.Unpadded[0] != tok.BOSID() || c.Unpadded[len(c.Unpadded)-1] != tok.EOSID() || !slices.Equal(c.IDs[:len(c.Unpadded)], c.Unpadded) {
			t.Fatalf("%q chunk %d: not BOS..EOS: %v", text, i, c.IDs)
		}
		for _, id := range c.IDs[len(c.Unpadded):] {
			if id != tok.PadID() {
				t.Fatalf("%q chunk %d: padding %v", text, i, c.IDs)
			}
		}
		for _, id := range c.IDs {
			if id < 0 || id >= len(tok.tokens) {
				t.Fatalf("%q: id %d out of range", text, id)
			}
		}
		if i < len(chunks)-1 && len(c.Unpadded) != n {
			t.Fatalf("%q: chunk %d not full", text, i)
		}
		all = append(all, c.Unpadded[1:len(c.Unpadded)-1]...)
	}
	if !slices.Equal(e.IDs, chunks[0].IDs) || e.Truncated != len(all)-(len(chunks[0].Unpadded)-2) {
		t.Fatalf("%q: Encode (truncated %d) is not the first of %d chunks holding %d tokens", text, e.Truncated, len(chunks), len(all))
	}
}
