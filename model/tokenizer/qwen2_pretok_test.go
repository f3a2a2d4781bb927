package tokenizer

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestQwenPreTokenize: the scanner on tricky cases, each checked against
// the regex module running PRETOKENIZE_REGEX (the expectations were printed
// by it; testdata/qwen2.json holds many more).
func TestQwenPreTokenize(t *testing.T) {
	for _, c := range []struct {
		name, in string
		want     []string
	}{
		{"contractions in upper case", "I'M YOU'RE WE'VE THEY'LL HE'D IT'S DON'T", []string{"I", "'M", " YOU", "'RE", " WE", "'VE", " THEY", "'LL", " HE", "'D", " IT", "'S", " DON", "'T"}},
		{"mixed-case contractions", "it'S we'Re they'lL", []string{"it", "'S", " we", "'Re", " they", "'lL"}},
		{"contraction near misses", "'sa 'x '' x'ſ O'Neil", []string{"'s", "a", " '", "x", " ''", " x", "'ſ", " O", "'Neil"}},
		{"digits one by one", "2024: 3.14, x²½", []string{"2", "0", "2", "4", ":", " ", "3", ".", "1", "4", ",", " x", "²", "½"}},
		{"runs of spaces before a word", "a    b", []string{"a", "   ", " b"}},
		{"tab before a word", "a\t\tb", []string{"a", "\t", "\tb"}},
		{"CR LF", "line1\r\nline2\r\n\r\nend", []string{"line", "1", "\r\n", "line", "2", "\r\n\r\n", "end"}},
		{"spaces around a line break", "a  \n  b", []string{"a", "  \n", " ", " b"}},
		{"trailing spaces", "end   ", []string{"end", "   "}},
		{"one trailing space", "end ", []string{"end", " "}},
		{"only spaces", "   ", []string{"   "}},
		{"space before punctuation", "wow !! really?!\n", []string{"wow", " !!", " really", "?!\n"}},
		{"symbol before letters", "#tag @user (x)", []string{"#tag", " @", "user", " (", "x", ")"}},
		{"combining marks", "x\u0301y \u0301\u0301z q\u0307", []string{"x", "\u0301y", " \u0301\u0301", "z", " q", "\u0307"}},
		{"emoji", "a 🐱 👍🏽 👨\u200d👩\u200d👧!", []string{"a", " 🐱", " 👍🏽", " 👨\u200d👩\u200d👧!"}},
		{"CJK punctuation", "你好，世界！「引用」。", []string{"你好", "，世界", "！「", "引用", "」。"}},
		{"ideographic space", "猫\u3000犬", []string{"猫", "\u3000犬"}},
		{"non-breaking spaces", "a\u00a0\u00a0b", []string{"a", "\u00a0", "\u00a0b"}},
		{"control characters", "a\x00b \x1c\x1d c", []string{"a", "\x00b", " \x1c\x1d", " c"}},
		{"empty", "", nil},
	} {
		var got []string
		qwenPreTokenize(c.in, func(s string) { got = append(got, s) })
		assert.Equal(t, c.want, got, c.name)
	}
}

// TestNFCString: composition, reordering and Hangul as unicodedata does,
// and invalid UTF-8 read as U+FFFD.
func TestNFCString(t *testing.T) {
	for in, want := range map[string]string{
		"plain ascii":             "plain ascii",
		"cafe\u0301":              "caf\u00e9",
		"\u212b \u2126":           "\u00c5 \u03a9",
		"s\u0307\u0323":           "\u1e69",
		"\u1100\u1161\u11a8":      "\uac01",
		"x\u0301":                 "x\u0301",
		">\u0338":                 "\u226f",
		"\xff\xfeok":              "\ufffdok",
		"\u4e00\u53ea \U0001f431": "\u4e00\u53ea \U0001f431",
	} {
		assert.Equal(t, want, nfcString(in), "%+q", in)
	}
}

// TestPyUTF8: bytes.decode("utf-8", "replace") gives one U+FFFD per
// maximal subpart of an invalid sequence (expectations from Python).
func TestPyUTF8(t *testing.T) {
	for in, want := range map[string]string{
		"\xe2\x82":             "\ufffd",
		"\xe2\x82A":            "\ufffdA",
		"\xf0\x80\x80":         "\ufffd\ufffd\ufffd",
		"\xed\xa0\x80":         "\ufffd\ufffd\ufffd",
		"\xf4\x90\x80\x80":     "\ufffd\ufffd\ufffd\ufffd",
		"\xc0\xaf":             "\ufffd\ufffd",
		"\xf0\x9f\x90":         "\ufffd",
		"\xf0\x9f\x90\xb1\xff": "\U0001f431\ufffd",
		"\xe0\x80\x80":         "\ufffd\ufffd\ufffd",
		"\xe0\xa0":             "\ufffd",
		"\xf5\x80":             "\ufffd\ufffd",
		"ok \u00e9":            "ok \u00e9",
	} {
		assert.Equal(t, want, string(appendPyUTF8(nil, []byte(in))), "%+q", in)
	}
}
