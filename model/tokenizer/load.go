package tokenizer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
)

// Files of a Hugging Face CLIPTokenizer folder.
const (
	vocabFile   = "vocab.json"
	mergesFile  = "merges.txt"
	configFile  = "tokenizer_config.json"
	specialFile = "special_tokens_map.json"
)

// clipMerges is how many merges.txt lines CLIP uses: 49152 - 256 - 2, as
// transformers' CLIPTokenizer slices the file.
const clipMerges = 49152 - 256 - 2

// Load reads a CLIP tokenizer folder: vocab.json, merges.txt and at least
// one of tokenizer_config.json / special_tokens_map.json (for the special
// and pad tokens; the latter wins where both name a token, as in
// transformers).
func Load(dir string) (*Tokenizer, error) {
	t := &Tokenizer{maxLen: 77, cleanup: true}
	vocab, err := readVocab(filepath.Join(dir, vocabFile))
	if err != nil {
		return nil, err
	}
	t.vocab = vocab
	t.tokens = make([]string, len(vocab)) // ids are 0..len-1, checked by readVocab
	for tok, id := range vocab {
		t.tokens[id] = tok
	}
	br := byteRunes()
	for b := range 256 {
		s := string(br[b])
		id, ok := vocab[s]
		idEnd, okEnd := vocab[s+"</w>"]
		if !ok || !okEnd {
			return nil, fmt.Errorf("tokenizer: %s: byte symbol %q (or with </w>) missing: not a CLIP byte-level vocabulary", filepath.Join(dir, vocabFile), s)
		}
		t.byteID[b], t.byteEndID[b] = id, idEnd
	}
	for i := range t.runeByte {
		t.runeByte[i] = -1
	}
	for b, r := range br {
		t.runeByte[r] = int16(b)
	}
	if err := t.readMerges(filepath.Join(dir, mergesFile)); err != nil {
		return nil, err
	}
	if err := t.readSpecial(dir); err != nil {
		return nil, err
	}
	return t, nil
}

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

// readMerges fills the merge table. Every part and result of a merge must be
// in the vocabulary (BPE here works on ids), and each part a byte symbol or
// the result of an earlier line (as BPE training writes them; mergeHeap
// relies on it).
func (t *Tokenizer) readMerges(path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("tokenizer: merges: %w", err)
	}
	raw = bytes.TrimSpace(raw)
	lines := bytes.Split(raw, []byte("\n"))
	if len(lines) > 0 && bytes.HasPrefix(lines[0], []byte("#version")) {
		lines = lines[1:]
	} else {
		return fmt.Errorf("tokenizer: %s: first line %q, want a \"#version\" header", path, firstLine(lines))
	}
	if len(lines) > clipMerges {
		lines = lines[:clipMerges]
	}
	t.merges = make(map[uint64]merge, len(lines))
	made := make([]bool, len(t.tokens))
	for b := range 256 {
		made[t.byteID[b]], made[t.byteEndID[b]] = true, true
	}
	var joined []byte
	for i, line := range lines {
		line = bytes.TrimSuffix(line, []byte("\r"))
		a, b, ok := bytes.Cut(line, []byte(" "))
		if !ok || len(a) == 0 || len(b) == 0 || bytes.IndexByte(b, ' ') >= 0 {
			return fmt.Errorf("tokenizer: %s line %d: %q, want two symbols separated by one space", path, i+2, line)
		}
		joined = append(append(joined[:0], a...), b...)
		ida, oka := t.vocab[string(a)]
		idb, okb := t.vocab[string(b)]
		idm, okm := t.vocab[string(joined)]
		if !oka || !okb || !okm {
			return fmt.Errorf("tokenizer: %s line %d: merge %q of %q and %q not in %s", path, i+2, joined, a, b, vocabFile)
		}
		if !made[ida] || !made[idb] {
			return fmt.Errorf("tokenizer: %s line %d: merge of %q and %q uses a symbol before a line makes it", path, i+2, a, b)
		}
		made[idm] = true
		k := mergeKey(ida, idb)
		if _, dup := t.merges[k]; !dup { // the first (lowest) rank wins
			t.merges[k] = merge{rank: int32(i), id: idm}
		}
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

// specialConfig holds the fields read from tokenizer_config.json and
// special_tokens_map.json. Tokens are strings or {"content": ...} objects.
type specialConfig struct {
	BOS        json.RawMessage            `json:"bos_token"`
	EOS        json.RawMessage            `json:"eos_token"`
	Pad        json.RawMessage            `json:"pad_token"`
	Unk        json.RawMessage            `json:"unk_token"`
	Additional []json.RawMessage          `json:"additional_special_tokens"`
	MaxLength  *float64                   `json:"model_max_length"`
	Cleanup    *bool                      `json:"clean_up_tokenization_spaces"`
	Added      map[string]json.RawMessage `json:"added_tokens_decoder"`
}

// readSpecial sets the special tokens and the added tokens that split the
// text before BPE. As in transformers, every special token (bos, eos, unk,
// pad, additional) and every added_tokens_decoder entry splits: with
// pad_token "!" (OpenCLIP tokenizers) each "!" becomes its own token.
func (t *Tokenizer) readSpecial(dir string) error {
	var cfgs []specialConfig
	var paths []string
	for _, name := range []string{configFile, specialFile} { // later wins
		p := filepath.Join(dir, name)
		raw, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("tokenizer: %w", err)
		}
		var c specialConfig
		if err := json.Unmarshal(raw, &c); err != nil {
			return fmt.Errorf("tokenizer: %s: %w", p, err)
		}
		cfgs = append(cfgs, c)
		paths = append(paths, p)
	}
	if len(cfgs) == 0 {
		return fmt.Errorf("tokenizer: %s: neither %s nor %s found (needed for the start, end and pad tokens)", dir, configFile, specialFile)
	}
	names := map[string]string{}
	added := map[string]int32{}
	for i, c := range cfgs {
		for _, f := range []struct {
			key string
			raw json.RawMessage
		}{{"bos_token", c.BOS}, {"eos_token", c.EOS}, {"pad_token", c.Pad}, {"unk_token", c.Unk}} {
			s, err := tokenContent(f.raw)
			if err != nil {
				return fmt.Errorf("tokenizer: %s: %s: %w", paths[i], f.key, err)
			}
			if s != "" {
				names[f.key] = s
			}
		}
		for _, raw := range c.Additional {
			s, err := tokenContent(raw)
			if err != nil {
				return fmt.Errorf("tokenizer: %s: additional_special_tokens: %w", paths[i], err)
			}
			if s != "" {
				added[s] = -1
			}
		}
		for idStr, raw := range c.Added {
			id, err := strconv.Atoi(idStr)
			s, err2 := tokenContent(raw)
			if err != nil || err2 != nil || s == "" || id < 0 {
				return fmt.Errorf("tokenizer: %s: added_tokens_decoder entry %q: want a non-negative id and a content string", paths[i], idStr)
			}
			added[s] = int32(id)
		}
		if c.MaxLength != nil && *c.MaxLength >= 3 && *c.MaxLength <= 1<<20 {
			t.maxLen = int(*c.MaxLength)
		}
		if c.Cleanup != nil {
			t.cleanup = *c.Cleanup
		}
	}
	for _, key := range []string{"bos_token", "eos_token"} {
		if names[key] == "" {
			return fmt.Errorf("tokenizer: %s: no %s in %s or %s", dir, key, configFile, specialFile)
		}
	}
	if names["pad_token"] == "" {
		names["pad_token"] = names["eos_token"] // transformers' CLIP default
	}
	for _, key := range []string{"bos_token", "eos_token", "pad_token", "unk_token"} {
		if s := names[key]; s != "" {
			if _, ok := added[s]; !ok {
				added[s] = -1
			}
		}
	}
	t.split = t.split[:0]
	for s, id := range added {
		if id < 0 {
			v, ok := t.vocab[s]
			if !ok {
				return fmt.Errorf("tokenizer: %s: special token %q is not in %s", dir, s, vocabFile)
			}
			id = v
		}
		t.split = append(t.split, addedToken{text: s, id: int(id)})
		t.tokensFor(int(id), s)
	}
	// Longest first, so that a token containing another one wins.
	sort.Slice(t.split, func(i, j int) bool {
		if len(t.split[i].text) != len(t.split[j].text) {
			return len(t.split[i].text) > len(t.split[j].text)
		}
		return t.split[i].text < t.split[j].text
	})
	id := func(key string) int {
		for _, a := range t.split {
			if a.text == names[key] {
				return a.id
			}
		}
		return -1
	}
	t.bos, t.eos, t.pad = id("bos_token"), id("eos_token"), id("pad_token")
	return nil
}

// tokensFor records an added token's text for Decode when the vocabulary
// does not have it.
func (t *Tokenizer) tokensFor(id int, s string) {
	for id >= len(t.tokens) {
		t.tokens = append(t.tokens, "")
	}
	if t.tokens[id] == "" {
		t.tokens[id] = s
	}
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
