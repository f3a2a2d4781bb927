package tokenizer

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/zimage/zimage/internal/testref"
)

// FuzzQwen2 checks, for any input, on the synthetic tokenizer and (when the
// reference models are present) the real Qwen3 one: no panic; every id in
// 0..Len()-1; Decode(Encode(s)) is NFC(s) (invalid UTF-8 read as U+FFFD);
// encoding is deterministic and stable (encoding the decoded text again
// gives the same ids, so NFC and the split are idempotent); EncodePrompt
// keeps at most maxLen tokens and counts the rest.
//
//	go test ./model/tokenizer -run '^$' -fuzz FuzzQwen2 -fuzztime 60s
func FuzzQwen2(f *testing.F) {
	for _, s := range []string{
		"", "a red cat sitting on a wooden chair", "I'M YOU'RE it'S 'ſ", "2024: 3.14", "a    b\t\tc  ",
		"line1\r\nline2\n\n  \n end   ", "cafe\u0301 \u212b \u1100\u1161\u11a8 x\u0301\u0301", "🐱 👍🏽 👨\u200d👩\u200d👧",
		"你好，世界！「引用」。", "x<|im_end|>y<think></think><|endoftext|>", "<|im_end|>\u0338 <|im_end|",
		"\x00\x1c\u00a0\u3000\u2028\u0085", "\xff\xfe\xe2\x82 invalid", strings.Repeat("柴犬", 100),
		strings.Repeat("!", 200), "Poster \"Z-IMAGE TURBO\" — café, naïve façade, 4K!!  tabs\tand\nnew line",
	} {
		f.Add(s)
	}
	var toks []*Qwen2
	q, err := LoadQwen2(newSyntheticQwen().write(f))
	if err != nil {
		f.Fatal(err)
	}
	toks = append(toks, q)
	if root, ok := testref.Root(); ok {
		q, err := LoadQwen2(filepath.Join(root, zimageModel, "tokenizer"))
		if err != nil {
			f.Fatal(err)
		}
		toks = append(toks, q)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want := s
		if !utf8.ValidString(want) {
			want = strings.ToValidUTF8(want, "\uFFFD")
		}
		want = nfcString(want)
		for _, q := range toks {
			ids := q.Encode(s)
			for _, id := range ids {
				if id < 0 || id >= q.Len() {
					t.Fatalf("%+q: id %d outside 0..%d", s, id, q.Len()-1)
				}
			}
			got := q.Decode(ids)
			if got != want {
				t.Fatalf("Decode(Encode(%+q)) = %+q, want NFC %+q", s, got, want)
			}
			if again := q.Encode(s); !slices.Equal(again, ids) {
				t.Fatalf("%+q: two encodings differ", s)
			}
			if again := q.Encode(got); !slices.Equal(again, ids) {
				t.Fatalf("%+q: re-encoding the decoded text gives %v, want %v", s, again, ids)
			}
			all := q.Encode(ChatPrompt(s))
			for _, maxLen := range []int{8, 512} {
				p, truncated := q.EncodePrompt(s, maxLen)
				if len(p) > maxLen || len(p)+truncated != len(all) {
					t.Fatalf("%+q: EncodePrompt(%d) kept %d, dropped %d of %d", s, maxLen, len(p), truncated, len(all))
				}
				for i := range p {
					if int(p[i]) != all[i] {
						t.Fatalf("%+q: EncodePrompt is not a prefix of the templated ids", s)
					}
				}
			}
		}
	})
}
