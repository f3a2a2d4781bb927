package tokenizer

import (
	"unicode"
	"unicode/utf8"
)

// Qwen2's pre-tokenizer pattern (transformers' PRETOKENIZE_REGEX, matched
// with the regex module):
//
//	(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//
// Go's regexp has no lookahead, so qwenMatch restates it: alternatives in
// order, each with the backtracking the regex engine does. Every rune is
// matched by some alternative, so the matches tile the text. \p{L} and
// \p{N} are unicode.IsLetter and IsNumber; \s is unicode.IsSpace, which is
// the regex module's \s (White_Space; unlike re's, without U+001C..U+001F).

// qwenPreTokenize calls emit with each pre-token of s, in order.
func qwenPreTokenize(s string, emit func(string)) {
	for len(s) > 0 {
		n := qwenMatch(s)
		emit(s[:n])
		s = s[n:]
	}
}

// qwenMatch is the byte length of the pattern's match at the start of a
// non-empty s.
func qwenMatch(s string) int {
	r, n := utf8.DecodeRuneInString(s)
	// (?i:'s|'t|'re|'ve|'m|'ll|'d)
	if r == '\'' {
		if k := qwenContraction(s[n:]); k > 0 {
			return n + k
		}
	}
	// [^\r\n\p{L}\p{N}]?\p{L}+: a letter run, or one other rune before it.
	if unicode.IsLetter(r) {
		return n + runLen(s[n:], unicode.IsLetter)
	}
	if r != '\r' && r != '\n' && !unicode.IsNumber(r) {
		if k := runLen(s[n:], unicode.IsLetter); k > 0 {
			return n + k
		}
	}
	// \p{N}: one digit at a time.
	if unicode.IsNumber(r) {
		return n
	}
	//  ?[^\s\p{L}\p{N}]+[\r\n]*
	sp := 0
	if r == ' ' {
		sp = 1
	}
	if k := runLen(s[sp:], isQwenSymbol); k > 0 {
		end := sp + k
		for end < len(s) && (s[end] == '\r' || s[end] == '\n') {
			end++
		}
		return end
	}
	// Only whitespace is left here: r is not a letter, number or symbol.
	// \s*[\r\n]+: through the run's last line break, if it has one.
	run, lastBreak, lastSize := 0, 0, 0
	for run < len(s) {
		c, w := utf8.DecodeRuneInString(s[run:])
		if !unicode.IsSpace(c) {
			break
		}
		run += w
		lastSize = w
		if c == '\r' || c == '\n' {
			lastBreak = run
		}
	}
	if lastBreak > 0 {
		return lastBreak
	}
	// \s+(?!\S): the whole run at the end of the text; before a non-space,
	// all but its last rune (which then leads the next pre-token) ...
	if run == len(s) || run == lastSize {
		return run // ... unless the run is one rune: \s+ takes it.
	}
	return run - lastSize
}

// isQwenSymbol is [^\s\p{L}\p{N}].
func isQwenSymbol(r rune) bool {
	return !unicode.IsSpace(r) && !unicode.IsLetter(r) && !unicode.IsNumber(r)
}

// qwenContraction is the byte length after "'" matched by s|t|re|ve|m|ll|d
// ignoring case, or 0. The regex module's case-insensitive matching (simple
// case folding) also lets "ſ" (U+017F, folding to s) stand for s: the only
// rune besides the ASCII letters that folds to one of these (checked over
// all of Unicode).
func qwenContraction(s string) int {
	lower := func(i int) byte {
		if i < len(s) && s[i] >= 'A' && s[i] <= 'Z' {
			return s[i] + ('a' - 'A')
		}
		if i < len(s) {
			return s[i]
		}
		return 0
	}
	switch lower(0) {
	case 's', 't', 'm', 'd':
		return 1
	case 'r', 'v':
		if lower(1) == 'e' {
			return 2
		}
	case 'l':
		if lower(1) == 'l' {
			return 2
		}
	case 0xC5: // "ſ" is C5 BF
		if len(s) > 1 && s[1] == 0xBF {
			return 2
		}
	}
	return 0
}
