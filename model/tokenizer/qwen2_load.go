package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
)

// qwenConfig holds what LoadQwen2 reads from tokenizer_config.json (and
// special_tokens_map.json, which overrides the named tokens, as in
// transformers). Named tokens are strings or {"content": ...} objects.
type qwenConfig struct {
	Class        string                     `json:"tokenizer_class"`
	EOS          json.RawMessage            `json:"eos_token"`
	Pad          json.RawMessage            `json:"pad_token"`
	BOS          json.RawMessage            `json:"bos_token"`
	Unk          json.RawMessage            `json:"unk_token"`
	Additional   []json.RawMessage          `json:"additional_special_tokens"`
	Added        map[string]json.RawMessage `json:"added_tokens_decoder"`
	SplitSpecial *bool                      `json:"split_special_tokens"`
}

// addedEntry is one added_tokens_decoder value (transformers' AddedToken).
type addedEntry struct {
	Content    *string `json:"content"`
	LStrip     bool    `json:"lstrip"`
	RStrip     bool    `json:"rstrip"`
	SingleWord bool    `json:"single_word"`
}

// LoadQwen2 reads a Qwen2Tokenizer folder: vocab.json, merges.txt and
// tokenizer_config.json (added tokens, special tokens), plus
// special_tokens_map.json if present.
func LoadQwen2(dir string) (*Qwen2, error) {
	q := &Qwen2{splitAdded: true, pad: -1, eos: -1}
	vocabPath := filepath.Join(dir, vocabFile)
	vocab, err := readVocab(vocabPath)
	if err != nil {
		return nil, err
	}
	q.vocab = vocab
	q.tokens = make([]string, len(vocab)) // ids are 0..len-1, checked by readVocab
	for tok, id := range vocab {
		q.tokens[id] = tok
	}
	if s, ok := q.initBytes(); !ok {
		return nil, fmt.Errorf("tokenizer: %s: byte symbol %q missing: not a byte-level BPE vocabulary", vocabPath, s)
	}
	// All merges.txt lines count (transformers skips only a first
	// "#version" line and blank ones: merges such as "# #" are real).
	if err := q.readMerges(filepath.Join(dir, mergesFile), mergeRules{skipBlank: true, made: q.byteID[:]}); err != nil {
		return nil, err
	}
	if err := q.readConfig(dir); err != nil {
		return nil, err
	}
	return q, nil
}

// readConfig sets the added tokens from added_tokens_decoder and resolves
// the named special tokens.
func (q *Qwen2) readConfig(dir string) error {
	cfgPath := filepath.Join(dir, configFile)
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		return fmt.Errorf("tokenizer: %w", err)
	}
	var c qwenConfig
	if err := json.Unmarshal(raw, &c); err != nil {
		return fmt.Errorf("tokenizer: %s: %w", cfgPath, err)
	}
	if c.Class != "" && c.Class != "Qwen2Tokenizer" && c.Class != "Qwen2TokenizerFast" {
		return fmt.Errorf("tokenizer: %s: tokenizer_class %q, want Qwen2Tokenizer", cfgPath, c.Class)
	}
	if c.SplitSpecial != nil && *c.SplitSpecial {
		q.splitAdded = false
	}
	names := map[string]string{} // eos_token, pad_token, ... -> text
	var additional []string
	if err := c.names(cfgPath, names, &additional); err != nil {
		return err
	}
	specPath := filepath.Join(dir, specialFile)
	if raw, err := os.ReadFile(specPath); err == nil {
		var s qwenConfig
		if err := json.Unmarshal(raw, &s); err != nil {
			return fmt.Errorf("tokenizer: %s: %w", specPath, err)
		}
		if err := s.names(specPath, names, &additional); err != nil {
			return err
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("tokenizer: %w", err)
	}

	toks, err := addedTokens(cfgPath, c.Added, q.tokens)
	if err != nil {
		return err
	}
	// Grow the id space over the added tokens; they must leave no gap.
	last := len(q.tokens) - 1
	for _, a := range toks {
		last = max(last, a.id)
	}
	q.isAdded = make([]bool, last+1)
	for len(q.tokens) <= last {
		q.tokens = append(q.tokens, "")
	}
	// Decode writes added tokens as text; ids inside the vocabulary keep
	// their byte mapping, as transformers' decode does for them.
	for _, a := range toks {
		q.tokens[a.id] = a.text
		q.isAdded[a.id] = a.id >= len(q.vocab)
	}
	for id, s := range q.tokens {
		if s == "" {
			return fmt.Errorf("tokenizer: %s: added_tokens_decoder leaves id %d without a token (%s has ids 0..%d)", cfgPath, id, vocabFile, len(q.vocab)-1)
		}
	}
	// Named special tokens not among the added ones split the text too, with
	// their vocabulary id (transformers adds them to the added tokens).
	byText := map[string]int{}
	for _, a := range toks {
		byText[a.text] = a.id
	}
	keys := []string{"eos_token", "pad_token", "bos_token", "unk_token"}
	for i := range additional {
		keys = append(keys, "additional_special_tokens["+strconv.Itoa(i)+"]")
		names[keys[len(keys)-1]] = additional[i]
	}
	for _, key := range keys {
		s := names[key]
		if s == "" {
			continue
		}
		if _, ok := byText[s]; ok {
			continue
		}
		id, ok := q.vocab[s]
		if !ok {
			return fmt.Errorf("tokenizer: %s: %s %q is neither in added_tokens_decoder nor in %s", cfgPath, key, s, vocabFile)
		}
		byText[s] = int(id)
		toks = append(toks, addedToken{text: s, id: int(id)})
	}
	if s := names["eos_token"]; s != "" {
		q.eos = byText[s]
	}
	if s := names["pad_token"]; s != "" {
		q.pad = byText[s]
	}
	q.added = newAddedSet(toks)
	return nil
}

// names reads the named special tokens of one config file into names
// (a later file overrides) and its additional_special_tokens.
func (c *qwenConfig) names(path string, names map[string]string, additional *[]string) error {
	for _, f := range []struct {
		key string
		raw json.RawMessage
	}{{"eos_token", c.EOS}, {"pad_token", c.Pad}, {"bos_token", c.BOS}, {"unk_token", c.Unk}} {
		s, err := tokenContent(f.raw)
		if err != nil {
			return fmt.Errorf("tokenizer: %s: %s: %w", path, f.key, err)
		}
		if s != "" {
			names[f.key] = s
		}
	}
	if c.Additional != nil {
		*additional = (*additional)[:0]
		for i, raw := range c.Additional {
			s, err := tokenContent(raw)
			if err != nil || s == "" {
				return fmt.Errorf("tokenizer: %s: additional_special_tokens[%d]: want a non-empty string or {\"content\": ...}", path, i)
			}
			*additional = append(*additional, s)
		}
	}
	return nil
}

// addedTokens reads added_tokens_decoder: ids as keys, AddedToken objects
// as values. An id inside the vocabulary must name the same text.
func addedTokens(path string, dec map[string]json.RawMessage, vocabTokens []string) ([]addedToken, error) {
	keys := make([]string, 0, len(dec))
	for k := range dec {
		keys = append(keys, k)
	}
	sort.Strings(keys) // deterministic errors
	seen := map[string]int{}
	var toks []addedToken
	for _, k := range keys {
		id, err := strconv.Atoi(k)
		if err != nil || id < 0 || id > 1<<24 {
			return nil, fmt.Errorf("tokenizer: %s: added_tokens_decoder key %q: want a token id from 0 to %d", path, k, 1<<24)
		}
		var e addedEntry
		if err := json.Unmarshal(dec[k], &e); err != nil || e.Content == nil || *e.Content == "" {
			return nil, fmt.Errorf("tokenizer: %s: added_tokens_decoder %q: want an object with a non-empty \"content\"", path, k)
		}
		s := *e.Content
		if e.SingleWord {
			return nil, fmt.Errorf("tokenizer: %s: added_tokens_decoder %q (%q): single_word tokens are not supported", path, k, s)
		}
		if id < len(vocabTokens) && vocabTokens[id] != s {
			return nil, fmt.Errorf("tokenizer: %s: added_tokens_decoder %q is %q, but %s gives id %d to %q", path, k, s, vocabFile, id, vocabTokens[id])
		}
		if other, dup := seen[s]; dup {
			return nil, fmt.Errorf("tokenizer: %s: added_tokens_decoder gives %q two ids, %d and %d", path, s, other, id)
		}
		seen[s] = id
		toks = append(toks, addedToken{text: s, id: id, lstrip: e.LStrip, rstrip: e.RStrip})
	}
	return toks, nil
}
