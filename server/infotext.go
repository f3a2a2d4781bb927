package server

import (
	"encoding/json"
	"regexp"
	"strings"
)

// infotextPair matches one "Key: value" of an A1111 parameters line; a
// value with commas or colons is JSON-quoted there.
var infotextPair = regexp.MustCompile(`\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)`)

// parseInfotext reads A1111 "parameters" text into the dictionary that
// A1111's png-info returns: "Prompt", "Negative prompt" and each key of
// the last line with its value as text; "Size" also as "Size-1" and
// "Size-2" (width, height).
func parseInfotext(text string) map[string]any {
	out := map[string]any{}
	if strings.TrimSpace(text) == "" {
		return out
	}
	lines := strings.Split(strings.TrimSpace(text), "\n")
	last := lines[len(lines)-1]
	if len(infotextPair.FindAllStringSubmatch(last, -1)) < 3 {
		// No parameters line: all of it is the prompt (A1111 does the same).
		lines = append(lines, "")
		last = ""
	}
	var prompt, neg []string
	inNeg := false
	for _, l := range lines[:len(lines)-1] {
		if s, ok := strings.CutPrefix(strings.TrimSpace(l), "Negative prompt:"); ok && !inNeg {
			inNeg, l = true, strings.TrimSpace(s)
		}
		if inNeg {
			neg = append(neg, l)
		} else {
			prompt = append(prompt, l)
		}
	}
	out["Prompt"] = strings.Join(prompt, "\n")
	out["Negative prompt"] = strings.Join(neg, "\n")
	for _, m := range infotextPair.FindAllStringSubmatch(last, -1) {
		k, v := strings.TrimSpace(m[1]), strings.TrimSpace(m[2])
		if strings.HasPrefix(v, `"`) {
			var u string
			if json.Unmarshal([]byte(v), &u) == nil {
				v = u
			}
		}
		out[k] = v
		if k == "Size" {
			if w, h, ok := strings.Cut(v, "x"); ok {
				out["Size-1"], out["Size-2"] = w, h
			}
		}
	}
	return out
}
