package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
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
	if s, ok := t.initBytes(); !ok {
		return nil, fmt.Errorf("tokenizer: %s: byte symbol %q missing: not a byte-level vocabulary", filepath.Join(dir, vocabFile), s)
	}
	made := append([]int32(nil), t.byteID[:]...)
	br := byteRunes()
	for b := range 256 {
		s := string(br[b]) + "</w>"
		id, ok := vocab[s]
		if !ok {
			return nil, fmt.Errorf("tokenizer: %s: byte symbol %q missing: not a CLIP byte-level vocabulary", filepath.Join(dir, vocabFile), s)
		}
		t.byteEndID[b] = id
		made = append(made, id)
	}
	if err := t.readMerges(filepath.Join(dir, mergesFile), mergeRules{limit: clipMerges, header: true, made: made}); err != nil {
		return nil, err
	}
	if err := t.readSpecial(dir); err != nil {
		return nil, err
	}
	return t, nil
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
	t.split.toks = nil
	for s, id := range added {
		if id < 0 {
			v, ok := t.vocab[s]
			if !ok {
				return fmt.Errorf("tokenizer: %s: special token %q is not in %s", dir, s, vocabFile)
			}
			id = v
		}
		t.split.toks = append(t.split.toks, addedToken{text: s, id: int(id)})
		t.tokensFor(int(id), s)
	}
	t.split = newAddedSet(t.split.toks)
	id := func(key string) int {
		for _, a := range t.split.toks {
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
