// Package tokenizer holds the byte-level BPE tokenizers of the text
// encoders. Tokenizer is CLIP's, of the Stable Diffusion text encoders. It
// reproduces transformers' CLIPTokenizer with ftfy installed (the
// tokenization of openai/CLIP and open_clip): special tokens split first,
// then per piece ftfy's text fixes, whitespace cleaning, lowercasing, the
// CLIP pre-tokenization pattern, byte-to-unicode mapping and BPE; BOS + up
// to 75 tokens + EOS, padded to 77. Qwen2 (qwen2.go) is the Qwen2/Qwen3
// tokenizer of Z-Image-Turbo's text encoder; both share the BPE machinery
// of bpe.go and the file readers of files.go.
//
// A Tokenizer is immutable after Load and safe for concurrent use.
package tokenizer

import (
	"strings"
	"unicode/utf8"
)

// Tokenizer is a loaded CLIP tokenizer.
type Tokenizer struct {
	bpeModel
	byteEndID [256]int32 // id of each byte's symbol + "</w>"

	split         addedSet // tokens the text is split at
	bos, eos, pad int
	maxLen        int  // model_max_length: 77 for CLIP
	cleanup       bool // clean_up_tokenization_spaces, for Decode
}

// Encoding is one tokenized context window.
type Encoding struct {
	IDs       []int // MaxLength ids: BOS, tokens, EOS, then the pad id
	Unpadded  []int // BOS .. EOS after truncation
	Truncated int   // tokens dropped to fit the window (0 if none)
}

// PadID is the padding id: EOS for SD 1.x / CLIP-L, 0 ("!") for OpenCLIP.
func (t *Tokenizer) PadID() int { return t.pad }

// EOSID is the id of "<|endoftext|>".
func (t *Tokenizer) EOSID() int { return t.eos }

// BOSID is the id of "<|startoftext|>".
func (t *Tokenizer) BOSID() int { return t.bos }

// MaxLength is the context length, BOS and EOS included (77).
func (t *Tokenizer) MaxLength() int { return t.maxLen }

// Encode tokenizes text into one window the way diffusers' pipelines call
// the tokenizer (max_length padding, truncation): BOS, the first
// MaxLength()-2 tokens, EOS, padding. Truncated says how many were dropped.
func (t *Tokenizer) Encode(text string) Encoding {
	ids := t.tokenize(text)
	n := t.maxLen - 2
	e := Encoding{}
	if len(ids) > n {
		e.Truncated = len(ids) - n
		ids = ids[:n]
	}
	e.Unpadded, e.IDs = t.window(ids)
	return e
}

// EncodeChunks tokenizes text without truncation into as many windows as it
// needs (A1111's long prompts): consecutive MaxLength()-2 token slices, each
// wrapped in BOS/EOS and padded. An empty prompt gives one window.
func (t *Tokenizer) EncodeChunks(text string) []Encoding {
	ids := t.tokenize(text)
	n := t.maxLen - 2
	var out []Encoding
	for first := true; first || len(ids) > 0; first = false {
		k := min(n, len(ids))
		var e Encoding
		e.Unpadded, e.IDs = t.window(ids[:k])
		out = append(out, e)
		ids = ids[k:]
	}
	return out
}

// window wraps tokens in BOS/EOS and pads the copy to MaxLength.
func (t *Tokenizer) window(ids []int) (unpadded, padded []int) {
	padded = make([]int, 0, t.maxLen)
	padded = append(padded, t.bos)
	padded = append(padded, ids...)
	padded = append(padded, t.eos)
	unpadded = padded[:len(padded):len(padded)]
	for len(padded) < t.maxLen {
		padded = append(padded, t.pad)
	}
	return unpadded, padded
}

// tokenize returns the ids of text without BOS/EOS or truncation.
func (t *Tokenizer) tokenize(text string) []int {
	if !utf8.ValidString(text) {
		text = strings.ToValidUTF8(text, "\uFFFD")
	}
	var ids []int
	for len(text) > 0 {
		i, a := t.split.next(text)
		ids = t.tokenizePiece(ids, text[:i])
		if a == nil {
			break
		}
		ids = append(ids, a.id)
		text = text[i+len(a.text):]
	}
	return ids
}

// tokenizePiece is CLIPTokenizer._tokenize with ftfy on text between added
// tokens.
func (t *Tokenizer) tokenizePiece(ids []int, piece string) []int {
	if piece == "" {
		return ids
	}
	s := pyLower(whitespaceClean(fixText(piece)))
	preTokenize(s, func(tok string) {
		if tok == startText || tok == endText {
			// CLIPTokenizer's BPE cache maps these to themselves.
			if id, ok := t.vocab[tok]; ok {
				ids = append(ids, int(id))
				return
			}
		}
		ids = t.bpe(ids, tok)
	})
	return ids
}

// Decode turns ids back into text as transformers' decode does, leaving out
// BOS and EOS (so EOS padding vanishes; "!" padding decodes as "!", so
// decode Unpadded). Unknown ids decode as U+FFFD.
func (t *Tokenizer) Decode(ids []int) string {
	var buf []byte
	for _, id := range ids {
		if id == t.bos || id == t.eos {
			continue
		}
		if id < 0 || id >= len(t.tokens) || t.tokens[id] == "" {
			buf = utf8.AppendRune(buf, utf8.RuneError)
			continue
		}
		buf = t.appendTokenBytes(buf, t.tokens[id])
	}
	s := strings.ToValidUTF8(string(buf), "\uFFFD")
	s = strings.TrimFunc(strings.ReplaceAll(s, "</w>", " "), pyIsSpace)
	if t.cleanup {
		// transformers' clean_up_tokenization, applied in its order.
		for _, p := range [...][2]string{{" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"},
			{" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}} {
			s = strings.ReplaceAll(s, p[0], p[1])
		}
	}
	return s
}

// bpe appends the ids of one pre-token (its UTF-8 bytes) to dst; the last
// symbol carries CLIP's end-of-word "</w>".
func (t *Tokenizer) bpe(dst []int, tok string) []int {
	if len(tok) == 0 {
		return dst
	}
	word := make([]int32, len(tok))
	for i := 0; i < len(tok); i++ {
		word[i] = t.byteID[tok[i]]
	}
	word[len(word)-1] = t.byteEndID[tok[len(tok)-1]]
	return t.appendMerged(dst, word)
}
