package tokenizer

import (
	"strings"
	"unicode/utf8"
)

// Qwen2 is the byte-level BPE tokenizer of Qwen2/Qwen3 text encoders
// (Z-Image-Turbo's): transformers' Qwen2Tokenizer. Encoding NFC-normalizes
// the text, splits it at added tokens ("<|im_start|>", "<think>", ...; all
// of tokenizer_config.json's added_tokens_decoder, so a prompt that spells
// one gets its id, as in transformers), then splits each piece with the
// Qwen2 pre-tokenizer pattern and runs BPE on each pre-token's UTF-8 bytes.
// No BOS or EOS is added.
//
// A Qwen2 is immutable after LoadQwen2 and safe for concurrent use.
type Qwen2 struct {
	bpeModel
	added      addedSet
	splitAdded bool // false with split_special_tokens: added tokens are plain text
	isAdded    []bool
	pad, eos   int // -1 if none
}

// DefaultMaxSequenceLength is ZImagePipeline's max_sequence_length: prompts
// are cut to this many tokens, chat template included.
const DefaultMaxSequenceLength = 512

// ChatPrompt wraps a prompt in Qwen3's chat template as ZImagePipeline
// applies it (apply_chat_template of one user message with
// add_generation_prompt=True, enable_thinking=True, which adds no think
// block): "<|im_start|>user\n" + prompt + "<|im_end|>\n<|im_start|>assistant\n".
func ChatPrompt(prompt string) string {
	return "<|im_start|>user\n" + prompt + "<|im_end|>\n<|im_start|>assistant\n"
}

// Len is the number of tokens, added ones included (151669 for Qwen3);
// every id Encode returns is below it.
func (q *Qwen2) Len() int { return len(q.tokens) }

// PadID is the pad token's id (151643, "<|endoftext|>"), -1 if the folder
// names none.
func (q *Qwen2) PadID() int { return q.pad }

// EOSID is the eos token's id (151645, "<|im_end|>"), -1 if none.
func (q *Qwen2) EOSID() int { return q.eos }

// TokenID returns the id of a vocabulary or added token, written as in
// vocab.json (byte-mapped) or as the added token's text.
func (q *Qwen2) TokenID(tok string) (int, bool) {
	for _, a := range q.added.toks {
		if a.text == tok {
			return a.id, true
		}
	}
	id, ok := q.vocab[tok]
	return int(id), ok
}

// EncodePrompt tokenizes prompt the way ZImagePipeline does: ChatPrompt,
// then the first maxLen tokens (maxLen < 1: no limit). It returns the valid
// ids, the ones whose attention mask is 1 (Padded makes the padded window),
// and how many tokens were dropped. A cut prompt loses the template's end,
// as in diffusers.
func (q *Qwen2) EncodePrompt(prompt string, maxLen int) (ids []int32, truncated int) {
	all := q.Encode(ChatPrompt(prompt))
	if maxLen > 0 && len(all) > maxLen {
		truncated = len(all) - maxLen
		all = all[:maxLen]
	}
	ids = make([]int32, len(all))
	for i, id := range all {
		ids[i] = int32(id)
	}
	return ids, truncated
}

// Padded returns ids padded on the right with PadID to maxLen, and the
// attention mask (1 for ids, 0 for padding), as the tokenizer's
// padding="max_length" gives them. ids longer than maxLen are returned
// whole, with a mask of ones.
func (q *Qwen2) Padded(ids []int32, maxLen int) (padded, mask []int32) {
	n := max(maxLen, len(ids))
	padded = make([]int32, n)
	mask = make([]int32, n)
	copy(padded, ids)
	for i := range padded {
		if i < len(ids) {
			mask[i] = 1
		} else {
			padded[i] = int32(q.pad)
		}
	}
	return padded, mask
}

// Encode returns the ids of text, without truncation or padding. Invalid
// UTF-8 is read as U+FFFD.
func (q *Qwen2) Encode(text string) []int {
	text = nfcString(text) // prepare_for_tokenization, before the split
	ids := make([]int, 0, len(text)/4+1)
	strip := false // the previous added token strips whitespace after it
	for len(text) > 0 {
		i, a := len(text), (*addedToken)(nil)
		if q.splitAdded {
			i, a = q.added.next(text)
		}
		piece := text[:i]
		if strip {
			piece = strings.TrimLeftFunc(piece, pyIsSpace)
		}
		if a != nil && a.lstrip {
			piece = strings.TrimRightFunc(piece, pyIsSpace)
		}
		ids = q.encodePiece(ids, piece)
		if a == nil {
			break
		}
		ids = append(ids, a.id)
		strip = a.rstrip
		text = text[i+len(a.text):]
	}
	return ids
}

// encodePiece is Qwen2Tokenizer._tokenize: pattern, then BPE on each
// pre-token's bytes.
func (q *Qwen2) encodePiece(ids []int, piece string) []int {
	var word []int32
	qwenPreTokenize(piece, func(tok string) {
		word = word[:0]
		for i := 0; i < len(tok); i++ {
			word = append(word, q.byteID[tok[i]])
		}
		ids = q.appendMerged(ids, word)
	})
	return ids
}

// Decode turns ids into text as transformers' decode does by default:
// special and added tokens stay, as their text; the bytes of the others are
// read as UTF-8 with errors="replace" (each maximal invalid subsequence
// becomes one U+FFFD, as Python does). Ids outside 0..Len()-1 decode as
// U+FFFD.
func (q *Qwen2) Decode(ids []int) string {
	var out, pending []byte
	for _, id := range ids {
		switch {
		case id < 0 || id >= len(q.tokens):
			out = appendPyUTF8(out, pending)
			pending = pending[:0]
			out = utf8.AppendRune(out, utf8.RuneError)
		case q.isAdded[id]:
			out = appendPyUTF8(out, pending)
			pending = pending[:0]
			out = append(out, q.tokens[id]...)
		default:
			pending = q.appendTokenBytes(pending, q.tokens[id])
		}
	}
	return string(appendPyUTF8(out, pending))
}

// nfcString returns the NFC form of s (invalid UTF-8 replaced by U+FFFD).
func nfcString(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	for i := 0; i < len(s); i++ {
		if s[i] >= 0xC0 { // below U+00C0 nothing decomposes or composes
			r := []rune(s)
			if isNFCQuick(r) {
				return s
			}
			return string(nfc(r))
		}
	}
	return s
}

// appendPyUTF8 appends b decoded as Python's bytes.decode("utf-8",
// "replace") does: valid sequences as they are, and U+FFFD for each maximal
// subpart of an invalid one (so "\xe2\x82" gives one U+FFFD, "\xff\xfe"
// two), where Go's strings.ToValidUTF8 would merge a whole invalid run.
func appendPyUTF8(dst, b []byte) []byte {
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		if r != utf8.RuneError || n > 1 {
			dst = append(dst, b[:n]...)
			b = b[n:]
			continue
		}
		dst = utf8.AppendRune(dst, utf8.RuneError)
		b = b[invalidUTF8Len(b):]
	}
	return dst
}

// invalidUTF8Len is the length of the maximal subpart at the start of b
// (Unicode ch. 3.9, table 3-7): the lead byte and the continuation bytes
// that could still complete a well-formed sequence; at least 1.
func invalidUTF8Len(b []byte) int {
	lo, hi := byte(0x80), byte(0xBF)
	need := 0
	switch c := b[0]; {
	case c >= 0xC2 && c <= 0xDF:
		need = 1
	case c == 0xE0:
		need, lo = 2, 0xA0
	case c == 0xED:
		need, hi = 2, 0x9F
	case c >= 0xE1 && c <= 0xEF:
		need = 2
	case c == 0xF0:
		need, lo = 3, 0x90
	case c == 0xF4:
		need, hi = 3, 0x8F
	case c >= 0xF1 && c <= 0xF3:
		need = 3
	}
	n := 1
	for ; n <= need && n < len(b) && b[n] >= lo && b[n] <= hi; n++ {
		lo, hi = 0x80, 0xBF
	}
	return n
}
