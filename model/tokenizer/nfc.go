package tokenizer

//go:generate python3 gen_tables.py

import (
	"slices"
	"sort"
)

// Hangul syllables compose and decompose algorithmically (Unicode ch. 3.12).
const (
	hangulSBase  = 0xAC00
	hangulLBase  = 0x1100
	hangulVBase  = 0x1161
	hangulTBase  = 0x11A7
	hangulLCount = 19
	hangulVCount = 21
	hangulTCount = 28
	hangulNCount = hangulVCount * hangulTCount
	hangulSCount = hangulLCount * hangulNCount
)

// nfc returns the Unicode NFC form of s, which ftfy applies last in every
// pass. Go's standard library has no normalizer, so the tables are generated
// from Python's unicodedata (gen_tables.py) to agree with the reference.
func nfc(s []rune) []rune {
	if isNFCQuick(s) {
		return s
	}
	d := make([]rune, 0, len(s)+4)
	for _, r := range s {
		d = decompose(d, r)
	}
	reorder(d)
	return compose(d)
}

// isNFCQuick reports text that NFC leaves unchanged for sure: no rune that
// decomposes, combines or is a Hangul jamo.
func isNFCQuick(s []rune) bool {
	for _, r := range s {
		if r < 0xC0 {
			continue
		}
		if combiningClass(r) != 0 || hasDecomp(r) || (r >= hangulLBase && r < 0x1200) || (r >= hangulSBase && r < hangulSBase+hangulSCount) {
			return false
		}
		if slices.Contains(composeStarters[:], r) {
			return false
		}
	}
	return true
}

func hasDecomp(r rune) bool {
	_, ok := decompOf(r)
	return ok
}

func decompOf(r rune) ([3]rune, bool) {
	i := sort.Search(len(decompTable), func(i int) bool { return decompTable[i][0] >= r })
	if i < len(decompTable) && decompTable[i][0] == r {
		return decompTable[i], true
	}
	return [3]rune{}, false
}

// decompose appends the full canonical decomposition of r to d.
func decompose(d []rune, r rune) []rune {
	if r >= hangulSBase && r < hangulSBase+hangulSCount {
		si := r - hangulSBase
		d = append(d, hangulLBase+si/hangulNCount, hangulVBase+(si%hangulNCount)/hangulTCount)
		if t := si % hangulTCount; t != 0 {
			d = append(d, hangulTBase+t)
		}
		return d
	}
	e, ok := decompOf(r)
	if !ok {
		return append(d, r)
	}
	d = decompose(d, e[1])
	if e[2] != 0 {
		d = decompose(d, e[2])
	}
	return d
}

func combiningClass(r rune) int {
	if r < 0x300 {
		return 0
	}
	i := sort.Search(len(cccTable), func(i int) bool { return cccTable[i][1] >= r })
	if i < len(cccTable) && cccTable[i][0] <= r {
		return int(cccTable[i][2])
	}
	return 0
}

// reorder puts each run of non-starters in canonical order (a stable sort
// by combining class).
func reorder(d []rune) {
	for i := 0; i < len(d); {
		if combiningClass(d[i]) == 0 {
			i++
			continue
		}
		j := i
		for j < len(d) && combiningClass(d[j]) != 0 {
			j++
		}
		slices.SortStableFunc(d[i:j], func(a, b rune) int { return combiningClass(a) - combiningClass(b) })
		i = j
	}
}

// compose applies the canonical composition algorithm (UAX #15) in place.
func compose(d []rune) []rune {
	out := d[:0]
	starter := -1
	lastCC := 0 // class of the last rune kept after the starter
	for _, r := range d {
		cc := combiningClass(r)
		if starter >= 0 && (len(out)-1 == starter || (lastCC != 0 && lastCC < cc)) {
			if c, ok := composePair(out[starter], r); ok {
				out[starter] = c
				continue
			}
		}
		if cc == 0 {
			starter = len(out)
		}
		lastCC = cc
		out = append(out, r)
	}
	return out
}

func composePair(a, b rune) (rune, bool) {
	if a >= hangulLBase && a < hangulLBase+hangulLCount && b >= hangulVBase && b < hangulVBase+hangulVCount {
		return hangulSBase + ((a-hangulLBase)*hangulVCount+(b-hangulVBase))*hangulTCount, true
	}
	if a >= hangulSBase && a < hangulSBase+hangulSCount && (a-hangulSBase)%hangulTCount == 0 && b > hangulTBase && b < hangulTBase+hangulTCount {
		return a + (b - hangulTBase), true
	}
	i := sort.Search(len(composeTable), func(i int) bool {
		e := composeTable[i]
		return e[0] > a || (e[0] == a && e[1] >= b)
	})
	if i < len(composeTable) && composeTable[i][0] == a && composeTable[i][1] == b {
		return composeTable[i][2], true
	}
	return 0, false
}
