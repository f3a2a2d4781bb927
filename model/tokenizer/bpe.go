package tokenizer

import "container/heap"

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

// shortWord is the length up to which bpe runs the plain quadratic loop;
// longer words (no real prompt has them, but a pasted blob might) take the
// heap, O(n log n).
const shortWord = 64

// bpe appends the ids of one pre-token (its UTF-8 bytes) to dst. Symbols are
// vocab ids, so each step is a map lookup on an int pair.
func (t *Tokenizer) bpe(dst []int, tok string) []int {
	if len(tok) == 0 {
		return dst
	}
	word := make([]int32, len(tok))
	for i := 0; i < len(tok); i++ {
		word[i] = t.byteID[tok[i]]
	}
	word[len(word)-1] = t.byteEndID[tok[len(tok)-1]] // last symbol carries "</w>"
	if len(word) > shortWord {
		word = t.mergeHeap(word)
	} else {
		word = t.mergeLoop(word)
	}
	for _, id := range word {
		dst = append(dst, int(id))
	}
	return dst
}

// mergeLoop is CLIPTokenizer.bpe: merge the lowest-ranked adjacent pair
// everywhere, left to right, until no pair has a rank.
func (t *Tokenizer) mergeLoop(word []int32) []int32 {
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
	return word
}

// mergeHeap gives mergeLoop's result with a priority queue of pairs ordered
// by (rank, position). It is the same because Load checks that a merge only
// uses symbols made by earlier lines, so a pair formed by a merge ranks after
// it, and all occurrences of one pair go left to right before any later rank.
func (t *Tokenizer) mergeHeap(word []int32) []int32 {
	n := len(word)
	next := make([]int, n) // -1 at the end
	prev := make([]int, n) // -1 at the start
	for i := range word {
		next[i], prev[i] = i+1, i-1
	}
	next[n-1] = -1
	h := &pairHeap{}
	push := func(i int) {
		if i < 0 || next[i] < 0 {
			return
		}
		if m, ok := t.merges[mergeKey(word[i], word[next[i]])]; ok {
			heap.Push(h, pairAt{rank: m.rank, pos: i, a: word[i], b: word[next[i]], id: m.id})
		}
	}
	for i := 0; i+1 < n; i++ {
		push(i)
	}
	for h.Len() > 0 {
		p := heap.Pop(h).(pairAt)
		j := next[p.pos]
		if word[p.pos] != p.a || j < 0 || word[j] != p.b {
			continue // stale: a neighbour changed since it was pushed
		}
		word[p.pos] = p.id
		word[j] = -1 // removed
		next[p.pos] = next[j]
		if next[j] >= 0 {
			prev[next[j]] = p.pos
		}
		push(prev[p.pos])
		push(p.pos)
	}
	out := word[:0]
	for i := 0; i >= 0; i = next[i] {
		out = append(out, word[i])
	}
	return out
}

// pairAt is a mergeable pair starting at symbol pos.
type pairAt struct {
	rank, id int32
	pos      int
	a, b     int32
}

type pairHeap []pairAt

func (h pairHeap) Len() int { return len(h) }
func (h pairHeap) Less(i, j int) bool {
	return h[i].rank < h[j].rank || h[i].rank == h[j].rank && h[i].pos < h[j].pos
}
func (h pairHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *pairHeap) Push(x any)   { *h = append(*h, x.(pairAt)) }
func (h *pairHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
