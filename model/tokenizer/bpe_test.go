package tokenizer

import (
	"math/rand"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zimage/zimage/internal/testref"
)

// TestMergeHeapMatchesLoop: the heap used for long words gives exactly the
// reference loop's symbols, on random words over a few alphabets.
func TestMergeHeapMatchesLoop(t *testing.T) {
	tok := loadRef(t, "tiny-sd15", "tokenizer")
	rng := rand.New(rand.NewSource(5))
	alphabets := []string{"abcdefghijklmnopqrstuvwxyz", "aeinrst", "ab", ".,!?-*", "一只橘色的猫坐在窗台上", "🐱🚀🎨✨"}
	for i := range 300 {
		alpha := []rune(alphabets[i%len(alphabets)])
		n := 1 + rng.Intn(400)
		var b strings.Builder
		for range n {
			b.WriteRune(alpha[rng.Intn(len(alpha))])
		}
		s := b.String()
		word := func() []int32 {
			w := make([]int32, len(s))
			for i := 0; i < len(s); i++ {
				w[i] = tok.byteID[s[i]]
			}
			w[len(w)-1] = tok.byteEndID[s[len(s)-1]]
			return w
		}
		if got, want := tok.mergeHeap(word()), tok.mergeLoop(word()); !slices.Equal(got, want) {
			t.Fatalf("%q:\nheap %v\nloop %v", s, got, want)
		}
	}
}

// TestQwen2MergeHeapMatchesLoop: the same on the Qwen3 merges, whose long
// words (CJK runs, repeated symbols) take the heap.
func TestQwen2MergeHeapMatchesLoop(t *testing.T) {
	q := loadQwen(t)
	rng := rand.New(rand.NewSource(6))
	alphabets := []string{"abcdefghijklmnopqrstuvwxyz", "aeinrst ", "#!=-", "一只戴着宇航员头盔的柴犬漂浮在太空中", "🐱🚀🎨✨"}
	for i := range 300 {
		alpha := []rune(alphabets[i%len(alphabets)])
		var b strings.Builder
		for range 1 + rng.Intn(300) {
			b.WriteRune(alpha[rng.Intn(len(alpha))])
		}
		s := b.String()
		word := func() []int32 {
			w := make([]int32, len(s))
			for i := 0; i < len(s); i++ {
				w[i] = q.byteID[s[i]]
			}
			return w
		}
		if got, want := q.mergeHeap(word()), q.mergeLoop(word()); !slices.Equal(got, want) {
			t.Fatalf("%q:\nheap %v\nloop %v", s, got, want)
		}
	}
}

// TestLongWord: a 200k-letter word (a pasted blob) tokenizes in well under
// the quadratic loop's minutes.
func TestLongWord(t *testing.T) {
	tok := loadRef(t, "tiny-sd15", "tokenizer")
	rng := rand.New(rand.NewSource(9))
	b := make([]byte, 200_000)
	for i := range b {
		b[i] = byte('a' + rng.Intn(26))
	}
	start := time.Now()
	chunks := tok.EncodeChunks(string(b))
	d := time.Since(start)
	t.Logf("200k letters: %d windows in %v", len(chunks), d)
	var ids []int
	for _, c := range chunks {
		ids = append(ids, c.Unpadded...)
	}
	if got := tok.Decode(ids); got != string(b) {
		t.Fatal("long word does not round-trip")
	}
	if d > 20*time.Second { // ~0.3 s measured; the loop would take ~2 min
		t.Errorf("took %v", d)
	}
}

// BenchmarkLoad measures Load of a real tokenizer folder.
func BenchmarkLoad(b *testing.B) {
	dir := filepath.Join(testref.Dir(b, "tiny-sd15"), "tokenizer")
	for b.Loop() {
		if _, err := Load(dir); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEncode measures a typical prompt.
func BenchmarkEncode(b *testing.B) {
	tok := loadRef(b, "tiny-sd15", "tokenizer")
	for b.Loop() {
		tok.Encode("a highly detailed oil painting of a sprawling medieval city at sunset, with towering cathedrals")
	}
}
