package tokenizer

import (
	"html"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"
)

// This file turns one piece of prompt text (between special tokens) into the
// pre-tokens that BPE sees, as transformers' CLIPTokenizer does with ftfy
// installed: ftfy.fix_text, whitespace_clean, str.lower, then the CLIP
// pattern
//
//	<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
//
// (regex module, IGNORECASE). Of ftfy only the deterministic fixers are
// implemented; its mojibake repair (fix_encoding and friends) is not.

// fixText applies ftfy.fix_text's default deterministic fixers. Like ftfy it
// works line by line, and turns HTML unescaping off for good once a line
// contains "<".
func fixText(s string) string {
	if isPlainASCII(s) {
		return s // nothing below changes printable ASCII without '&'
	}
	var b strings.Builder
	unescape := true
	for len(s) > 0 {
		line := s
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			line = s[:i+1]
		}
		s = s[len(line):]
		if strings.Contains(line, "<") {
			unescape = false
		}
		b.WriteString(fixLine(line, unescape))
	}
	return b.String()
}

// isPlainASCII reports printable ASCII (plus space) without '&' or ESC.
func isPlainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7F || c == '&' {
			return false
		}
	}
	return true
}

// fixLine is ftfy.fix_and_explain: the fixers in ftfy's order, repeated
// until the text stops changing (so "&amp;amp;" ends as "&").
func fixLine(s string, unescape bool) string {
	for range 16 {
		orig := s
		if unescape {
			s = unescapeHTML(s)
		}
		r := []rune(s)
		r = fixC1Controls(r)
		r = mapRunes(r, ligature)
		r = mapRunes(r, widthForm)
		r = mapRunes(r, uncurlQuote)
		r = fixLineBreaks(r)
		r = removeTerminalEscapes(r)
		r = mapRunes(r, removeControl)
		s = string(nfc(r))
		if s == orig {
			break
		}
	}
	return s
}

// mapRunes replaces each rune by f's string (ok) or keeps it.
func mapRunes(r []rune, f func(rune) (string, bool)) []rune {
	var out []rune
	for i, c := range r {
		rep, ok := f(c)
		if !ok {
			if out != nil {
				out = append(out, c)
			}
			continue
		}
		if out == nil {
			out = append(make([]rune, 0, len(r)+4), r[:i]...)
		}
		out = append(out, []rune(rep)...)
	}
	if out == nil {
		return r
	}
	return out
}

// unescapeHTML decodes entities matching &#?[0-9A-Za-z]{1,24}; the way
// ftfy.fixes.unescape_html does: named HTML5 entities with their semicolon
// (and all-caps spellings of lowercase names, "&EACUTE;"), and numeric
// character references.
func unescapeHTML(s string) string {
	if !strings.Contains(s, "&") {
		return s
	}
	var b strings.Builder
	for {
		i := strings.IndexByte(s, '&')
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i])
		s = s[i:]
		n := entityLen(s)
		if n == 0 {
			b.WriteByte('&')
			s = s[1:]
			continue
		}
		b.WriteString(decodeEntity(s[:n]))
		s = s[n:]
	}
}

// entityLen is the length of the &#?[0-9A-Za-z]{1,24}; match at s, or 0.
func entityLen(s string) int {
	i := 1
	if i < len(s) && s[i] == '#' {
		i++
	}
	start := i
	for i < len(s) && i-start < 24 && isASCIIAlnum(s[i]) {
		i++
	}
	if i == start || i >= len(s) || s[i] != ';' {
		return 0
	}
	return i + 1
}

func isASCIIAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func decodeEntity(e string) string {
	if e == "&semi;" {
		return ";"
	}
	if strings.HasPrefix(e, "&#") {
		// ftfy keeps the reference when html.unescape decodes only part of it.
		if d := html.UnescapeString(e); !strings.Contains(d, ";") {
			return d
		}
		return e
	}
	// html.UnescapeString also accepts legacy names without ';' as a prefix
	// ("&ampx;" -> "&x;"); ftfy only takes whole entities, whose values never
	// hold ';' (&semi; aside).
	if d := html.UnescapeString(e); !strings.Contains(d, ";") {
		return d
	}
	name := e[1 : len(e)-1]
	lower := strings.ToLower(name)
	if name != strings.ToUpper(lower) || name == lower {
		return e
	}
	d := html.UnescapeString("&" + lower + ";")
	if strings.Contains(d, ";") {
		return e
	}
	return pyUpper(d)
}

// pyUpper is str.upper for entity values: Go's simple mapping plus the one
// full mapping whose lowercase form differs afterwards (ß -> SS).
func pyUpper(s string) string {
	return strings.ReplaceAll(strings.ToUpper(s), "ß", "SS")
}

// fixC1Controls reads U+0080..U+009F as the Windows-1252 bytes they were
// (ftfy's "sloppy" codec keeps the five undefined ones).
func fixC1Controls(r []rune) []rune {
	for i, c := range r {
		if c >= 0x80 && c <= 0x9F {
			r[i] = cp1252[c-0x80]
		}
	}
	return r
}

var cp1252 = [32]rune{
	0x20AC, 0x81, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x8D, 0x017D, 0x8F,
	0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D, 0x017E, 0x0178,
}

// ligature is ftfy's LIGATURES map (Latin ligatures and digraphs).
func ligature(c rune) (string, bool) {
	switch c {
	case 'Ĳ':
		return "IJ", true
	case 'ĳ':
		return "ij", true
	case 'ŉ':
		return "ʼn", true
	case 'Ǳ':
		return "DZ", true
	case 'ǲ':
		return "Dz", true
	case 'ǳ':
		return "dz", true
	case 'Ǆ':
		return "DŽ", true
	case 'ǅ':
		return "Dž", true
	case 'ǆ':
		return "dž", true
	case 'Ǉ':
		return "LJ", true
	case 'ǈ':
		return "Lj", true
	case 'ǉ':
		return "lj", true
	case 'Ǌ':
		return "NJ", true
	case 'ǋ':
		return "Nj", true
	case 'ǌ':
		return "nj", true
	case 'ﬀ':
		return "ff", true
	case 'ﬁ':
		return "fi", true
	case 'ﬂ':
		return "fl", true
	case 'ﬃ':
		return "ffi", true
	case 'ﬄ':
		return "ffl", true
	case 'ﬅ':
		return "ſt", true
	case 'ﬆ':
		return "st", true
	}
	return "", false
}

// widthForm is ftfy's fix_character_width: fullwidth and halfwidth forms to
// their NFKC form, and the ideographic space to a space.
func widthForm(c rune) (string, bool) {
	if c != 0x3000 && (c < 0xFF01 || c > 0xFFEF) {
		return "", false
	}
	i := sort.Search(len(widthTable), func(i int) bool { return widthTable[i].r >= c })
	if i < len(widthTable) && widthTable[i].r == c {
		return widthTable[i].s, true
	}
	return "", false
}

func uncurlQuote(c rune) (string, bool) {
	switch {
	case c == 0x02BC || c >= 0x2018 && c <= 0x201B:
		return "'", true
	case c >= 0x201C && c <= 0x201F:
		return `"`, true
	}
	return "", false
}

// fixLineBreaks maps \r\n, \r, U+2028, U+2029 and U+0085 to \n.
func fixLineBreaks(r []rune) []rune {
	out := r[:0]
	for i := 0; i < len(r); i++ {
		c := r[i]
		switch c {
		case '\r':
			if i+1 < len(r) && r[i+1] == '\n' {
				i++
			}
			c = '\n'
		case 0x2028, 0x2029, 0x85:
			c = '\n'
		}
		out = append(out, c)
	}
	return out
}

// removeTerminalEscapes drops ANSI sequences \x1b[ [0-9;]* [A-Za-z].
func removeTerminalEscapes(r []rune) []rune {
	out := r[:0]
	for i := 0; i < len(r); i++ {
		if r[i] == 0x1B && i+1 < len(r) && r[i+1] == '[' {
			j := i + 2
			for j < len(r) && (r[j] >= '0' && r[j] <= '9' || r[j] == ';') {
				j++
			}
			if j < len(r) && (r[j] >= 'a' && r[j] <= 'z' || r[j] >= 'A' && r[j] <= 'Z') {
				i = j
				continue
			}
		}
		out = append(out, r[i])
	}
	return out
}

// removeControl is ftfy's CONTROL_CHARS: controls other than \t \n \f \r,
// deprecated format characters, the BOM and interlinear annotation marks.
func removeControl(c rune) (string, bool) {
	switch {
	case c <= 0x08, c == 0x0B, c >= 0x0E && c <= 0x1F, c == 0x7F,
		c >= 0x206A && c <= 0x206F, c == 0xFEFF, c >= 0xFFF9 && c <= 0xFFFC:
		return "", true
	}
	return "", false
}

// pyIsSpace is Python's str.isspace, which the \s of re and regex follow:
// Go's unicode.IsSpace plus the separators U+001C..U+001F.
func pyIsSpace(c rune) bool {
	return unicode.IsSpace(c) || c >= 0x1C && c <= 0x1F
}

// whitespaceClean is CLIP's whitespace_clean: runs of whitespace become one
// space, and the ends are stripped.
func whitespaceClean(s string) string {
	var b strings.Builder
	pending := false
	for _, c := range s {
		if pyIsSpace(c) {
			pending = b.Len() > 0
			continue
		}
		if pending {
			b.WriteByte(' ')
			pending = false
		}
		b.WriteRune(c)
	}
	return b.String()
}

// pyLower is Python's str.lower: Go's simple mapping plus the full mapping
// of U+0130 and the Final_Sigma rule for U+03A3.
func pyLower(s string) string {
	r := []rune(s)
	out := make([]rune, 0, len(r))
	for i, c := range r {
		switch c {
		case 0x130:
			out = append(out, 'i', 0x307)
		case 0x3A3:
			if finalSigma(r, i) {
				out = append(out, 0x3C2)
			} else {
				out = append(out, 0x3C3)
			}
		default:
			out = append(out, unicode.ToLower(c))
		}
	}
	return string(out)
}

// finalSigma: cased, case-ignorable*, Σ, and no case-ignorable* cased after.
func finalSigma(r []rune, i int) bool {
	j := i - 1
	for j >= 0 && caseIgnorable(r[j]) {
		j--
	}
	if j < 0 || !cased(r[j]) {
		return false
	}
	j = i + 1
	for j < len(r) && caseIgnorable(r[j]) {
		j++
	}
	return j == len(r) || !cased(r[j])
}

func cased(c rune) bool {
	return unicode.In(c, unicode.Lu, unicode.Ll, unicode.Lt, unicode.Other_Lowercase, unicode.Other_Uppercase)
}

func caseIgnorable(c rune) bool {
	switch c {
	case '\'', '.', ':', 0xB7, 0x387, 0x55F, 0x5F4, 0x2018, 0x2019, 0x2024, 0x2027, 0xFE13, 0xFE52, 0xFE55, 0xFF07, 0xFF0E, 0xFF1A:
		return true // Word_Break MidLetter, MidNumLet, Single_Quote
	}
	return unicode.In(c, unicode.Mn, unicode.Me, unicode.Cf, unicode.Lm, unicode.Sk)
}

// Special-token spellings the CLIP pattern matches as single pre-tokens.
const (
	startText = "<|startoftext|>"
	endText   = "<|endoftext|>"
)

// preTokenize splits cleaned, lowercased text with the CLIP pattern.
func preTokenize(s string, emit func(string)) {
	for i := 0; i < len(s); {
		c, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case c == '<' && strings.HasPrefix(s[i:], startText):
			n = len(startText)
		case c == '<' && strings.HasPrefix(s[i:], endText):
			n = len(endText)
		case c == '\'' && contraction(s[i+1:]) > 0:
			n += contraction(s[i+1:])
		case unicode.IsLetter(c):
			n = runLen(s[i:], unicode.IsLetter)
		case unicode.IsNumber(c):
			// one digit per pre-token
		case matchesNothing(c):
			i += n
			continue
		default:
			n = runLen(s[i:], func(c rune) bool { return !matchesNothing(c) && !unicode.IsLetter(c) && !unicode.IsNumber(c) })
		}
		emit(s[i : i+n])
		i += n
	}
}

// matchesNothing reports runes no alternative of the pattern matches, which
// findall skips: \s (White_Space, as unicode.IsSpace) and U+0345. Under
// IGNORECASE the regex module lets U+0345 (a mark whose case folding is the
// letter ι) escape [^\s\p{L}\p{N}] while [\p{L}] still rejects it; the
// only such rune (checked over all of Unicode).
func matchesNothing(c rune) bool {
	return unicode.IsSpace(c) || c == 0x345
}

// contraction is the byte length after "'" matched by s|t|re|ve|m|ll|d, or
// 0. IGNORECASE lets "ſ" (long s, case-folding to s) stand for s.
func contraction(s string) int {
	for _, p := range []string{"s", "t", "re", "ve", "m", "ll", "d", "ſ"} {
		if strings.HasPrefix(s, p) {
			return len(p)
		}
	}
	return 0
}

func runLen(s string, in func(rune) bool) int {
	n := 0
	for n < len(s) {
		c, w := utf8.DecodeRuneInString(s[n:])
		if !in(c) {
			break
		}
		n += w
	}
	return n
}
