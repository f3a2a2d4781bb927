package tokenizer

import (
	"container/heap"
	"strings"
	"unicode/utf8"
)

// byteRunes is GPT-2's bytes_to_unicode, shared by CLIP and Qwen2:
// printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100
// upwards, so every byte sequence becomes printable text that vocab.json can
// key on.
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

// bpeModel is the byte-level BPE that CLIP and Qwen2 share: vocab.json,
// merges.txt keyed by id pairs, and the byte symbols. Symbols are vocab ids,
// so each BPE step is a map lookup on an int pair; this equals merging
// strings because every merge result is in the vocabulary (readMerges
// checks it) and ids name strings one to one.
type bpeModel struct {
	vocab  map[string]int32
	tokens []string // id -> vocab string (byte-mapped), or an added token's text
	merges map[uint64]merge

	byteID   [256]int32 // id of each byte's symbol
	runeByte [512]int16 // byte of each byte-mapped rune, -1 if none

	// ordered: each merge only uses symbols that earlier lines make and no
	// pair repeats, as BPE training writes them. mergeHeap relies on it.
	ordered bool
}

// initBytes fills byteID and runeByte from the vocabulary; it reports the
// first byte symbol the vocabulary lacks.
func (m *bpeModel) initBytes() (missing string, ok bool) {
	br := byteRunes()
	for b := range 256 {
		id, ok := m.vocab[string(br[b])]
		if !ok {
			return string(br[b]), false
		}
		m.byteID[b] = id
	}
	for i := range m.runeByte {
		m.runeByte[i] = -1
	}
	for b, r := range br {
		m.runeByte[r] = int16(b)
	}
	return "", true
}

// shortWord is the length up to which merge runs the plain quadratic loop;
// longer words (a long CJK run, a pasted blob) take the heap, O(n log n).
const shortWord = 64

// appendMerged runs BPE on a word of byte-symbol ids (reusing its storage)
// and appends the resulting ids to dst.
func (m *bpeModel) appendMerged(dst []int, word []int32) []int {
	if len(word) > shortWord && m.ordered {
		word = m.mergeHeap(word)
	} else {
		word = m.mergeLoop(word)
	}
	for _, id := range word {
		dst = append(dst, int(id))
	}
	return dst
}

// mergeLoop is transformers' GPT-2-style bpe: merge the lowest-ranked
// adjacent pair everywhere, left to right, until no pair has a rank. The
// rank of each adjacent pair is kept between rounds and looked up again only
// beside a merge, so a word costs a number of map lookups linear in its
// length instead of quadratic.
func (m *bpeModel) mergeLoop(word []int32) []int32 {
	n := len(word)
	if n < 2 {
		return word
	}
	var pairBuf [shortWord]merge
	var srcBuf [shortWord + 1]int32
	pairs, src := pairBuf[:0], srcBuf[:0]
	if n > shortWord {
		pairs, src = make([]merge, 0, n-1), make([]int32, 0, n)
	}
	pairs, src = pairs[:n-1], src[:n]
	for i := range pairs {
		pairs[i] = m.pair(word[i], word[i+1])
	}
	for n > 1 {
		best := -1
		for i, p := range pairs[:n-1] {
			if p.rank >= 0 && (best < 0 || p.rank < pairs[best].rank) {
				best = i
			}
		}
		if best < 0 {
			break
		}
		a, b, id := word[best], word[best+1], pairs[best].id
		out := 0
		for i := 0; i < n; out++ {
			if i+1 < n && word[i] == a && word[i+1] == b {
				word[out], src[out] = id, -1 // a new symbol
				i += 2
			} else {
				word[out], src[out] = word[i], int32(i)
				i++
			}
		}
		n = out
		// A pair of two old neighbours keeps its rank; src[j] >= j, so
		// pairs[src[j]] is still the old entry when it is read.
		for j := 0; j+1 < n; j++ {
			if src[j] >= 0 && src[j+1] >= 0 {
				pairs[j] = pairs[src[j]]
			} else {
				pairs[j] = m.pair(word[j], word[j+1])
			}
		}
	}
	return word[:n]
}

// pair is the merge of two symbols; rank -1 if there is none.
func (m *bpeModel) pair(a, b int32) merge {
	if mg, ok := m.merges[mergeKey(a, b)]; ok {
		return mg
	}
	return merge{rank: -1}
}

// mergeHeap gives mergeLoop's result with a priority queue of pairs ordered
// by (rank, position). It is the same when the merges are ordered (see
// bpeModel.ordered): a pair formed by a merge then ranks after it, so all
// occurrences of one pair go left to right before any later rank.
func (m *bpeModel) mergeHeap(word []int32) []int32 {
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
		if mg, ok := m.merges[mergeKey(word[i], word[next[i]])]; ok {
			heap.Push(h, pairAt{rank: mg.rank, pos: i, a: word[i], b: word[next[i]], id: mg.id})
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

// appendTokenBytes appends the bytes a vocabulary token stands for: each
// byte-mapped rune gives its byte, any other rune (an added token's text)
// its UTF-8.
func (m *bpeModel) appendTokenBytes(buf []byte, tok string) []byte {
	for _, r := range tok {
		if r >= 0 && int(r) < len(m.runeByte) && m.runeByte[r] >= 0 {
			buf = append(buf, byte(m.runeByte[r]))
		} else {
			buf = utf8.AppendRune(buf, r)
		}
	}
	return buf
}

// addedToken is a token matched verbatim in the text before any other
// processing ("<|endoftext|>", "<|im_start|>", OpenCLIP's "!").
type addedToken struct {
	text   string
	id     int
	lstrip bool // strip whitespace left of it (transformers' AddedToken.lstrip)
	rstrip bool // and right of it
}

// addedSet finds added tokens in text: at the first position where one
// starts, the longest, as transformers' trie does when no token is a prefix
// of another starting later.
type addedSet struct {
	toks  []addedToken // longest first
	first [256]bool    // first bytes of the tokens
}

func newAddedSet(toks []addedToken) addedSet {
	s := addedSet{toks: toks}
	sortAdded(s.toks)
	for _, a := range toks {
		s.first[a.text[0]] = true
	}
	return s
}

// next returns the byte offset of the first added token in text and the
// token, or len(text) and nil.
func (s *addedSet) next(text string) (int, *addedToken) {
	for i := 0; i < len(text); i++ {
		if !s.first[text[i]] {
			continue
		}
		for k := range s.toks {
			if strings.HasPrefix(text[i:], s.toks[k].text) {
				return i, &s.toks[k]
			}
		}
	}
	return len(text), nil
}
