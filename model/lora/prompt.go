package lora

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/zimage/zimage/model/safetensors"
)

// Tag is one AUTOMATIC1111 extra-network tag of a prompt: <lora:NAME>,
// <lora:NAME:M>, <lora:NAME:TE:UNET>, with te=/unet= as named items.
type Tag struct {
	Text  string   // the tag as written
	Type  string   // "lora" (or A1111's alias "lyco"); other types are other extra networks
	Items []string // the text after the type, split on ':'
	// For LoRA tags:
	Name     string
	TE, UNet float64
}

// TagError reports a LoRA tag that cannot be read.
type TagError struct {
	Tag    string
	Reason string
}

func (e *TagError) Error() string { return fmt.Sprintf("lora: prompt tag %s: %s", e.Tag, e.Reason) }

// extraNet is A1111's re.compile(r"<(\w+):([^>]+)>"); Python's \w on str
// is Unicode letters, digits and the underscore.
var extraNet = regexp.MustCompile(`<([\p{L}\p{N}_]+):([^>]+)>`)

// ParsePrompt removes every extra-network tag from a positive prompt
// exactly as A1111 does (modules/extra_networks.py parse_prompt): only the
// tag goes, the spaces and commas around it stay and are tokenized. It
// returns the stripped prompt, the LoRA tags in order, and tags of other
// extra networks (hypernet, ...), which A1111 also strips and then skips.
// A1111 does not parse negative prompts: pass those through unchanged.
func ParsePrompt(prompt string) (stripped string, loras, other []Tag, err error) {
	for _, m := range extraNet.FindAllStringSubmatch(prompt, -1) {
		t := Tag{Text: m[0], Type: m[1], Items: strings.Split(m[2], ":")}
		if t.Type != "lora" && t.Type != "lyco" {
			other = append(other, t)
			continue
		}
		if err := t.parseLoRA(); err != nil {
			return "", nil, nil, err
		}
		loras = append(loras, t)
	}
	return extraNet.ReplaceAllLiteralString(prompt, ""), loras, other, nil
}

// parseLoRA reads the name and multipliers as A1111's
// extra_networks_lora.py does: items with one '=' are named, the others
// positional; name = positional[0]; te = positional[1] or 1, then te=;
// unet = positional[2] or te, then unet=.
func (t *Tag) parseLoRA() error {
	var pos []string
	named := map[string]string{}
	for _, it := range t.Items {
		if k, v, ok := strings.Cut(it, "="); ok && !strings.Contains(v, "=") {
			named[k] = v
		} else {
			pos = append(pos, it)
		}
	}
	if len(pos) == 0 || pos[0] == "" {
		return &TagError{Tag: t.Text, Reason: "no LoRA name"}
	}
	t.Name = pos[0]
	num := func(what, s string) (float64, error) {
		v, err := pyFloat(s)
		if err != nil {
			return 0, &TagError{Tag: t.Text, Reason: fmt.Sprintf("%s multiplier %q is not a number", what, s)}
		}
		return v, nil
	}
	var err error
	t.TE = 1
	if len(pos) > 1 {
		if t.TE, err = num("te", pos[1]); err != nil {
			return err
		}
	}
	if s, ok := named["te"]; ok {
		if t.TE, err = num("te", s); err != nil {
			return err
		}
	}
	t.UNet = t.TE
	if len(pos) > 2 {
		if t.UNet, err = num("unet", pos[2]); err != nil {
			return err
		}
	}
	if s, ok := named["unet"]; ok {
		if t.UNet, err = num("unet", s); err != nil {
			return err
		}
	}
	return nil
}

// pyFloat parses like Python's float(): surrounding whitespace and
// underscores between digits are allowed; we also refuse NaN and Inf,
// which no multiplier can be.
func pyFloat(s string) (float64, error) {
	s = strings.TrimSpace(s)
	if strings.ContainsAny(s, "xXpP") {
		return 0, fmt.Errorf("not a decimal number")
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '_' && i > 0 && i+1 < len(s) && isDigit(s[i-1]) && isDigit(s[i+1]) {
			continue
		}
		b.WriteByte(s[i])
	}
	v, err := strconv.ParseFloat(b.String(), 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("not a finite number")
	}
	return v, nil
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// ParseFlag reads a --lora value, FILE or FILE:MULT (the multiplier sets
// both the text-encoder and the UNet multiplier). A final ":..." that is
// not a number is part of the path.
func ParseFlag(s string) (path string, mult float64, err error) {
	if s == "" {
		return "", 0, fmt.Errorf("lora: empty --lora value, want FILE or FILE:MULT")
	}
	if i := strings.LastIndexByte(s, ':'); i > 0 {
		if v, err := pyFloat(s[i+1:]); err == nil {
			return s[:i], v, nil
		}
	}
	return s, 1, nil
}

// UnknownLoRAError reports a tag name that no file in the LoRA folder has.
type UnknownLoRAError struct {
	Name string
	Dir  string // "" when no folder was given
}

func (e *UnknownLoRAError) Error() string {
	if e.Dir == "" {
		return fmt.Sprintf("lora: <lora:%s:...>: no LoRA folder given (--lora-dir) to find %q in", e.Name, e.Name)
	}
	return fmt.Sprintf("lora: <lora:%s:...>: no LoRA named %q in %s (looked for %s.safetensors in every subfolder, and at ss_output_name in the files' metadata)", e.Name, e.Name, e.Dir, e.Name)
}

// Dir finds LoRA files by the names prompt tags use, as A1111's Lora
// folder does: every .safetensors (and, to refuse them by name, .pt and
// .ckpt) file below the folder, named by its file name without extension,
// or by the ss_output_name alias in its metadata.
type Dir struct {
	Path    string
	byName  map[string]string
	aliases map[string]string // read on the first miss
}

// OpenDir lists the LoRA files below path. Where two files share a name
// the first in path order wins.
func OpenDir(path string) (*Dir, error) {
	d := &Dir{Path: path, byName: map[string]string{}}
	err := filepath.WalkDir(path, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() {
			return nil
		}
		ext := strings.ToLower(filepath.Ext(p))
		if ext != ".safetensors" && ext != ".pt" && ext != ".ckpt" {
			return nil
		}
		name := strings.TrimSuffix(filepath.Base(p), filepath.Ext(p))
		if _, dup := d.byName[name]; !dup {
			d.byName[name] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("lora: LoRA folder: %w", err)
	}
	return d, nil
}

// Names lists the LoRA names, sorted.
func (d *Dir) Names() []string {
	out := make([]string, 0, len(d.byName))
	for n := range d.byName {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Find returns the file a tag's name refers to. d may be nil (no folder).
func (d *Dir) Find(name string) (string, error) {
	if d == nil {
		return "", &UnknownLoRAError{Name: name}
	}
	if p, ok := d.byName[name]; ok {
		return p, nil
	}
	if d.aliases == nil {
		d.aliases = map[string]string{}
		for _, n := range d.Names() {
			p := d.byName[n]
			if !strings.EqualFold(filepath.Ext(p), ".safetensors") {
				continue
			}
			st, err := safetensors.Open(p)
			if err != nil {
				continue // unreadable files are reported when named directly
			}
			if a := st.Metadata["ss_output_name"]; a != "" {
				if _, dup := d.aliases[a]; !dup {
					d.aliases[a] = p
				}
			}
			st.Close()
		}
	}
	if p, ok := d.aliases[name]; ok {
		return p, nil
	}
	return "", &UnknownLoRAError{Name: name, Dir: d.Path}
}

// Hash is A1111's hash of a LoRA file: the sshs_model_hash metadata when
// present, else the "addnet" hash (AddnetHash).
func (f *File) Hash() (string, error) {
	if h := f.Metadata["sshs_model_hash"]; h != "" {
		return h, nil
	}
	return AddnetHash(f.Path)
}

// ShortHash is the hash's first 12 characters, as A1111 shows it.
func ShortHash(hash string) string { return hash[:min(len(hash), 12)] }

// AddnetHash is the sha256 (hex) of a safetensors file's bytes after the
// 8-byte length and the JSON header: it does not change when only the
// metadata does.
func AddnetHash(path string) (string, error) {
	fh, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("lora: hash: %w", err)
	}
	defer fh.Close()
	var n [8]byte
	if _, err := io.ReadFull(fh, n[:]); err != nil {
		return "", fmt.Errorf("lora: hash %s: %w", path, err)
	}
	if _, err := fh.Seek(8+int64(binary.LittleEndian.Uint64(n[:])), io.SeekStart); err != nil {
		return "", fmt.Errorf("lora: hash %s: %w", path, err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, fh); err != nil {
		return "", fmt.Errorf("lora: hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Named is a LoRA as a prompt named it, with its short hash.
type Named struct {
	Name      string // the name in the tag (or the file name for --lora)
	ShortHash string
}

// HashesInfotext is A1111's "Lora hashes" value: "name: shorthash, ..."
// in the order the LoRAs were named, names without ':' and ','. (A1111
// then quotes the value in the parameters text, as it does any value with
// commas.)
func HashesInfotext(items []Named) string {
	parts := make([]string, 0, len(items))
	for _, it := range items {
		if it.ShortHash == "" || it.Name == "" {
			continue
		}
		n := strings.NewReplacer(":", "", ",", "").Replace(it.Name)
		parts = append(parts, n+": "+it.ShortHash)
	}
	return strings.Join(parts, ", ")
}
