package tokenizer

// byteRunes is GPT-2/CLIP's bytes_to_unicode: printable Latin-1 bytes map to
// themselves, the other 68 bytes to U+0100 upwards, so every byte sequence
// becomes printable text that vocab.json can key on.
func byteRunes() [256]rune {
	var m [256]rune
	next := rune(256)
	for b := range 256 {
		if b >= '!' && b <= '~' || b >= 0xA1 && b <= 0xAC || b >= 0xAE && b <= 0xFF {
			m[b] = rune(b)
		} else {
			m[b] = next
			next++
		}
	}
	return m
}

// mergeKey packs a symbol pair for the merge table.
func mergeKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

// merge is one line of merges.txt: its rank (priority) and the vocab id of
// the merged symbol.
type merge struct {
	rank int32
	id   int32
}

// bpe appends the ids of one pre-token (its UTF-8 bytes) to dst. Symbols are
// vocab ids, so each step is a map lookup on an int pair. The loop is CLIP's:
// merge the lowest-ranked adjacent pair everywhere, left to right, until no
// pair has a rank.
func (t *Tokenizer) bpe(dst []int, tok string) []int {
	if len(tok) == 0 {
		return dst
	}
	word := make([]int32, len(tok))
	for i := 0; i < len(tok); i++ {
		word[i] = t.byteID[tok[i]]
	}
	word[len(word)-1] = t.byteEndID[tok[len(tok)-1]] // last symbol carries "</w>"
	for len(word) > 1 {
		best := merge{rank: -1}
		var bestA, bestB int32
		for i := 0; i+1 < len(word); i++ {
			m, ok := t.merges[mergeKey(word[i], word[i+1])]
			if ok && (best.rank < 0 || m.rank < best.rank) {
				best, bestA, bestB = m, word[i], word[i+1]
			}
		}
		if best.rank < 0 {
			break
		}
		out := word[:0]
		for i := 0; i < len(word); i++ {
			if i+1 < len(word) && word[i] == bestA && word[i+1] == bestB {
				out = append(out, best.id)
				i++
				continue
			}
			out = append(out, word[i])
		}
		word = out
	}
	for _, id := range word {
		dst = append(dst, int(id))
	}
	return dst
}
