package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
)

// This file reads what the CLIP and Qwen2 tokenizer folders share:
// vocab.json, merges.txt and token entries of the JSON configs.

func readVocab(path string) (map[string]int32, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: vocabulary: %w", err)
	}
	vocab, ok := parseFlatVocab(raw)
	if !ok {
		// Unusual layout: let encoding/json parse it or say what is wrong.
		vocab = nil
		if err := json.Unmarshal(raw, &vocab); err != nil {
			return nil, fmt.Errorf("tokenizer: %s: want a JSON object of token to id: %w", path, err)
		}
	}
	if len(vocab) == 0 {
		return nil, fmt.Errorf("tokenizer: %s: empty vocabulary", path)
	}
	seen := make([]bool, len(vocab))
	for tok, id := range vocab {
		if id < 0 || int(id) >= len(vocab) {
			return nil, fmt.Errorf("tokenizer: %s: token %q has id %d, outside 0..%d", path, tok, id, len(vocab)-1)
		}
		if seen[id] {
			return nil, fmt.Errorf("tokenizer: %s: id %d given to two tokens", path, id)
		}
		seen[id] = true
	}
	return vocab, nil
}

// parseFlatVocab reads {"token": id, ...} about 4x faster than
// encoding/json; ok is false on anything it does not expect.
func parseFlatVocab(b []byte) (map[string]int32, bool) {
	vocab := make(map[string]int32, bytes.Count(b, []byte(`":`)))
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return nil, false
	}
	i = skipSpace(b, i+1)
	for i < len(b) && b[i] != '}' {
		if b[i] != '"' {
			return nil, false
		}
		j, esc := i+1, false
		for j < len(b) && b[j] != '"' {
			if b[j] == '\\' {
				esc = true
				j++
			}
			j++
		}
		if j >= len(b) {
			return nil, false
		}
		key := string(b[i+1 : j])
		if esc {
			if json.Unmarshal(b[i:j+1], &key) != nil {
				return nil, false
			}
		}
		i = skipSpace(b, j+1)
		if i >= len(b) || b[i] != ':' {
			return nil, false
		}
		i = skipSpace(b, i+1)
		n, start := 0, i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' && i-start < 9 {
			n = n*10 + int(b[i]-'0')
			i++
		}
		if i == start {
			return nil, false
		}
		if _, dup := vocab[key]; dup {
			return nil, false
		}
		vocab[key] = int32(n)
		i = skipSpace(b, i)
		if i < len(b) && b[i] == ',' {
			if i = skipSpace(b, i+1); i < len(b) && b[i] != '"' {
				return nil, false // trailing comma
			}
		} else if i >= len(b) || b[i] != '}' {
			return nil, false
		}
	}
	if i >= len(b) || skipSpace(b, i+1) != len(b) {
		return nil, false
	}
	return vocab, true
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
		i++
	}
	return i
}

// mergeRules says how a tokenizer reads merges.txt.
type mergeRules struct {
	limit     int     // merge lines used; 0 for all
	header    bool    // the "#version" first line is required (else optional)
	skipBlank bool    // blank lines are skipped (else an error)
	made      []int32 // symbols there before the first line: the byte symbols
}

// readMerges fills the merge table. Every part and result of a merge must be
// in the vocabulary (BPE here works on ids), and each part a byte symbol or
// the result of an earlier line, as BPE training writes them. A pair listed
// twice takes its last rank, as transformers' dict does, and turns off
// mergeHeap (whose argument needs each pair once).
func (m *bpeModel) readMerges(path string, r mergeRules) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("tokenizer: merges: %w", err)
	}
	lines := bytes.Split(bytes.TrimSpace(raw), []byte("\n"))
	first := 1 // line number of lines[0]
	if bytes.HasPrefix(lines[0], []byte("#version")) {
		lines, first = lines[1:], 2
	} else if r.header {
		return fmt.Errorf("tokenizer: %s: first line %q, want a \"#version\" header", path, firstLine(lines))
	}
	if r.limit > 0 && len(lines) > r.limit {
		lines = lines[:r.limit]
	}
	m.merges = make(map[uint64]merge, len(lines))
	m.ordered = true
	made := make([]bool, len(m.tokens))
	for _, id := range r.made {
		made[id] = true
	}
	var joined []byte
	rank := int32(0)
	for i, line := range lines {
		line = bytes.TrimSuffix(line, []byte("\r"))
		if r.skipBlank && len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		a, b, ok := bytes.Cut(line, []byte(" "))
		if !ok || len(a) == 0 || len(b) == 0 || bytes.IndexByte(b, ' ') >= 0 {
			return fmt.Errorf("tokenizer: %s line %d: %q, want two symbols separated by one space", path, first+i, line)
		}
		joined = append(append(joined[:0], a...), b...)
		ida, oka := m.vocab[string(a)]
		idb, okb := m.vocab[string(b)]
		idm, okm := m.vocab[string(joined)]
		if !oka || !okb || !okm {
			return fmt.Errorf("tokenizer: %s line %d: merge %q of %q and %q not in %s", path, first+i, joined, a, b, vocabFile)
		}
		if !made[ida] || !made[idb] {
			return fmt.Errorf("tokenizer: %s line %d: merge of %q and %q uses a symbol before a line makes it", path, first+i, a, b)
		}
		made[idm] = true
		k := mergeKey(ida, idb)
		if _, dup := m.merges[k]; dup {
			m.ordered = false
		}
		m.merges[k] = merge{rank: rank, id: idm}
		rank++
	}
	return nil
}

func firstLine(lines [][]byte) string {
	if len(lines) == 0 {
		return ""
	}
	l := lines[0]
	if len(l) > 40 {
		l = l[:40]
	}
	return string(l)
}

// tokenContent reads a token given as a string or as {"content": "..."}.
func tokenContent(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var s string
	if raw[0] == '"' {
		err := json.Unmarshal(raw, &s)
		return s, err
	}
	var obj struct {
		Content *string `json:"content"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil {
		return "", err
	}
	if obj.Content == nil {
		return "", errors.New(`want a string or an object with "content"`)
	}
	return *obj.Content, nil
}

// sortAdded puts longer tokens first, so that a token containing another one
// wins where both start.
func sortAdded(toks []addedToken) {
	sort.Slice(toks, func(i, j int) bool {
		if len(toks[i].text) != len(toks[j].text) {
			return len(toks[i].text) > len(toks[j].text)
		}
		return toks[i].text < toks[j].text
	})
}
