package tokenizer

import "testing"

func TestWriteByteLevelRoundTrip(t *testing.T) {
	for _, pad := range []string{"<|endoftext|>", "!"} {
		dir := t.TempDir()
		n, err := WriteByteLevel(dir, pad)
		if err != nil {
			t.Fatal(err)
		}
		if n != 514 {
			t.Fatalf("vocabulary size %d, want 514", n)
		}
		tok, err := Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		enc := tok.Encode("A lighthouse, at dusk!")
		// BOS, one token per byte of each lower-cased word and punctuation mark, EOS.
		want := 1 + len("alighthouse,atdusk!") + 1
		if len(enc.Unpadded) != want || enc.Unpadded[0] != 512 || enc.Unpadded[want-1] != 513 {
			t.Fatalf("pad %q: ids %v, want %d ids from BOS 512 to EOS 513", pad, enc.Unpadded, want)
		}
		if got := tok.Decode(enc.Unpadded[1 : want-1]); got != "a lighthouse , at dusk !" && got != "a lighthouse, at dusk!" {
			t.Fatalf("decode = %q", got)
		}
	}
}
