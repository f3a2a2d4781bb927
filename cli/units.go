package cli

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"unicode"
)

var byteSizeRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(i?)(B?)$`)

// ParseByteSize reads sizes such as "512MB", "4GB", "3.5GiB", "1024" (bytes).
// Decimal units (MB, GB) are powers of 1000 and binary ones (MiB, GiB)
// powers of 1024, as the units say; a bare "4G" is read as binary because
// that is what people mean of video memory.
func ParseByteSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	t = strings.Map(func(r rune) rune {
		if r == 'b' {
			return 'B'
		}
		if r != 'i' {
			return unicode.ToUpper(r)
		}
		return r
	}, t)
	m := byteSizeRE.FindStringSubmatch(t)
	if m == nil {
		return 0, fmt.Errorf("%q is not a size: want a number with an optional unit such as 512MB, 4GB or 3.5GiB", s)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a size: %w", s, err)
	}
	exp := strings.Index("KMGT", m[2]) + 1
	base := 1000.0
	if m[3] == "i" || (m[2] != "" && m[4] == "") {
		base = 1024
	}
	for i := 0; i < exp && m[2] != ""; i++ {
		v *= base
	}
	if v < 1 || v > 1<<50 {
		return 0, fmt.Errorf("%q is out of range", s)
	}
	return int64(v), nil
}
