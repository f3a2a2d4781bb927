package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/zimage/zimage/internal/testref"
)

const zimageModel = "tiny-z-image-turbo"

func loadQwen(t testing.TB) *Qwen2 {
	t.Helper()
	q, err := LoadQwen2(filepath.Join(testref.Dir(t, zimageModel), "tokenizer"))
	require.NoError(t, err)
	return q
}

// TestQwen2ReferencePrompts checks every prompt of refs.json's tokenizer
// section against the padded input_ids and attention_mask ZImagePipeline
// computed (exact), the template text and the truncation count.
func TestQwen2ReferencePrompts(t *testing.T) {
	refs := testref.Open(t, zimageModel)
	q := loadQwen(t)
	var sec struct {
		Len       int `json:"len"`
		PadID     int `json:"pad_token_id"`
		MaxLength int `json:"max_sequence_length"`
		Prompts   []struct {
			Name, Prompt, Templated string
			Untruncated             int `json:"n_tokens_untruncated"`
			Valid                   int `json:"n_valid"`
		}
	}
	b, err := json.Marshal(refs.JSON["tokenizer"])
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &sec))
	require.NotEmpty(t, sec.Prompts, "refs.json: no tokenizer prompts")
	assert.Equal(t, sec.Len, q.Len())
	assert.Equal(t, sec.PadID, q.PadID())
	assert.Equal(t, DefaultMaxSequenceLength, sec.MaxLength)
	for _, p := range sec.Prompts {
		assert.Equal(t, p.Templated, ChatPrompt(p.Prompt), p.Name)
		ids, truncated := q.EncodePrompt(p.Prompt, sec.MaxLength)
		assert.Len(t, ids, p.Valid, p.Name)
		assert.Equal(t, p.Untruncated-p.Valid, truncated, p.Name)
		padded, mask := q.Padded(ids, sec.MaxLength)
		wantIDs, shape := refs.Ints(t, p.Name+".input_ids")
		wantMask, _ := refs.Ints(t, p.Name+".attention_mask")
		require.Equal(t, []int{1, sec.MaxLength}, shape, p.Name)
		assert.Equal(t, wantIDs, widen(padded), "%s %q", p.Name, p.Prompt)
		assert.Equal(t, wantMask, widen(mask), p.Name)
	}
}

func widen(v []int32) []int64 {
	out := make([]int64, len(v))
	for i, x := range v {
		out[i] = int64(x)
	}
	return out
}

// TestQwen2Truncation: a long prompt keeps its first maxLen tokens (the
// template's end is cut, as in diffusers); maxLen < 1 keeps everything.
func TestQwen2Truncation(t *testing.T) {
	q := loadQwen(t)
	prompt := strings.Repeat("a sprawling medieval city at sunset, ", 100)
	all, n := q.EncodePrompt(prompt, 0)
	require.Zero(t, n)
	require.Greater(t, len(all), 512)
	im, _ := q.TokenID("<|im_end|>")
	assert.Equal(t, int32(im), all[len(all)-5], "the untruncated prompt ends with the template")
	for _, maxLen := range []int{1, 8, 512, len(all) - 1, len(all), len(all) + 3} {
		ids, truncated := q.EncodePrompt(prompt, maxLen)
		assert.Len(t, ids, min(maxLen, len(all)))
		assert.Equal(t, len(all)-len(ids), truncated)
		assert.Equal(t, all[:len(ids)], ids)
		padded, mask := q.Padded(ids, maxLen)
		assert.Len(t, padded, maxLen)
		assert.Len(t, mask, maxLen)
	}
	padded, mask := q.Padded([]int32{5, 6}, 4)
	assert.Equal(t, []int32{5, 6, 151643, 151643}, padded)
	assert.Equal(t, []int32{1, 1, 0, 0}, mask)
}

// qwenFixture is testdata/qwen2.json (gen_qwen2.py): texts with Python's
// pre-tokens and ids, and id lists with Python's decoded text.
type qwenFixture struct {
	Added []string `json:"added"`
	Cases []struct {
		Text      string   `json:"text"`
		PreTokens []string `json:"pretokens"`
		IDs       []int    `json:"ids"`
	} `json:"cases"`
	Decode []struct {
		IDs  []int  `json:"ids"`
		Text string `json:"text"`
	} `json:"decode"`
}

func readQwenFixture(t *testing.T) *qwenFixture {
	raw, err := os.ReadFile("testdata/qwen2.json")
	require.NoError(t, err)
	var fx qwenFixture
	require.NoError(t, json.Unmarshal(raw, &fx))
	require.Greater(t, len(fx.Cases), 300)
	require.NotEmpty(t, fx.Added)
	return &fx
}

// TestQwen2PreTokenizeFixture compares NFC, the added-token split and the
// pattern scanner with Python's unicodedata and the regex module running
// PRETOKENIZE_REGEX, on edge cases and 300 random strings. It needs no
// reference model.
func TestQwen2PreTokenizeFixture(t *testing.T) {
	fx := readQwenFixture(t)
	var toks []addedToken
	for i, s := range fx.Added {
		toks = append(toks, addedToken{text: s, id: i})
	}
	added := newAddedSet(toks)
	fails := 0
	for _, c := range fx.Cases {
		got := []string{}
		text := nfcString(c.Text)
		for len(text) > 0 {
			i, a := added.next(text)
			qwenPreTokenize(text[:i], func(s string) { got = append(got, s) })
			if a == nil {
				break
			}
			got = append(got, a.text)
			text = text[i+len(a.text):]
		}
		if !assert.Equal(t, c.PreTokens, got, "%+q", c.Text) {
			if fails++; fails > 10 {
				t.Fatal("too many failures")
			}
		}
	}
}

// TestQwen2Fixture: ids and decoded text of the fixture, exact.
func TestQwen2Fixture(t *testing.T) {
	fx := readQwenFixture(t)
	q := loadQwen(t)
	fails := 0
	for _, c := range fx.Cases {
		ok := assert.Equal(t, c.IDs, q.Encode(c.Text), "%+q", c.Text)
		ok = assert.Equal(t, nfcString(c.Text), q.Decode(c.IDs), "decode %+q", c.Text) && ok
		if !ok {
			if fails++; fails > 10 {
				t.Fatal("too many failures")
			}
		}
	}
	for _, d := range fx.Decode {
		assert.Equal(t, d.Text, q.Decode(d.IDs), "%v", d.IDs)
	}
}

// TestQwen2SpecialTokens: a prompt that spells an added token gets its id,
// special or not; near misses and NFC-altered spellings stay text.
func TestQwen2SpecialTokens(t *testing.T) {
	q := loadQwen(t)
	id := func(s string) int {
		v, ok := q.TokenID(s)
		require.True(t, ok, s)
		return v
	}
	assert.Equal(t, 151645, q.EOSID())
	assert.Equal(t, 151643, q.PadID())
	assert.Equal(t, 151669, q.Len())
	assert.Equal(t, []int{id("a"), 151645, id("b")}, q.Encode("a<|im_end|>b"))
	assert.Equal(t, []int{151667, id("x"), 151668}, q.Encode("<think>x</think>"))
	assert.Equal(t, []int{151643, 151643}, q.Encode("<|endoftext|><|endoftext|>"))
	for _, s := range []string{"<|im_end|", "<|IM_END|>", "<|im_end|>\u0338"} {
		for _, v := range q.Encode(s) {
			assert.Less(t, v, 151643, "%q", s)
		}
	}
	assert.Equal(t, "<|im_start|>user\nhi", q.Decode(q.Encode("<|im_start|>user\nhi")))
	assert.Equal(t, "\uFFFD\uFFFD", q.Decode([]int{-1, 151669}))
}

// TestQwen2LoadTime loads the real vocabulary and reports the time.
func TestQwen2LoadTime(t *testing.T) {
	dir := filepath.Join(testref.Dir(t, zimageModel), "tokenizer")
	start := time.Now()
	q, err := LoadQwen2(dir)
	require.NoError(t, err)
	t.Logf("LoadQwen2: %v (%d merges, %d tokens)", time.Since(start), len(q.merges), q.Len())
	assert.Len(t, q.merges, 151387)
	assert.True(t, q.ordered)
}

// BenchmarkQwen2EncodePrompt tokenizes a prompt of 512 tokens (template
// included).
func BenchmarkQwen2EncodePrompt(b *testing.B) {
	q := loadQwen(b)
	words := strings.Fields("a highly detailed oil painting of a sprawling medieval city at sunset, with towering " +
		"cathedrals, narrow cobblestone streets, 4K, volumetric light — 一只戴着宇航员头盔的柴犬")
	var s strings.Builder
	for i := 0; ; i++ {
		s.WriteString(words[i%len(words)] + " ")
		if ids, _ := q.EncodePrompt(s.String(), 0); len(ids) >= 512 {
			break
		}
	}
	prompt := s.String()
	ids, _ := q.EncodePrompt(prompt, 0)
	b.ReportMetric(float64(len(ids)), "tokens")
	b.SetBytes(int64(len(prompt)))
	for b.Loop() {
		q.EncodePrompt(prompt, DefaultMaxSequenceLength)
	}
}
