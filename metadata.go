package zimage

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"image"
	"image/png"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// Parameters is what a generated image records about how it was made, in
// the "parameters" text that AUTOMATIC1111's web UI writes and that image
// browsers, Civitai and ComfyUI read back.
type Parameters struct {
	Prompt         string
	NegativePrompt string
	Steps          int
	Sampler        string
	CFGScale       float64
	Seed           uint64
	Width, Height  int
	ModelHash      string
	Model          string
	// DenoisingStrength is an img2img run's strength (0: text-to-image);
	// MaskBlur an inpainting run's mask blur in pixels (A1111 writes it
	// for every inpainting run, 0 included; nil: not inpainting).
	DenoisingStrength float64
	MaskBlur          *int
	// LoRAHashes is A1111's "Lora hashes": "name: shorthash, ..." for the
	// LoRAs applied (their <lora:...> tags stay in Prompt).
	LoRAHashes string
	Version    string
}

// String renders the A1111 layout: the prompt, an optional "Negative
// prompt:" line, then one line of "Key: value" pairs.
func (p Parameters) String() string {
	var b strings.Builder
	b.WriteString(p.Prompt)
	if p.NegativePrompt != "" {
		b.WriteString("\nNegative prompt: ")
		b.WriteString(p.NegativePrompt)
	}
	fmt.Fprintf(&b, "\nSteps: %d, Sampler: %s, CFG scale: %s, Seed: %d, Size: %dx%d",
		p.Steps, p.Sampler, strconv.FormatFloat(p.CFGScale, 'f', -1, 64), p.Seed, p.Width, p.Height)
	if p.ModelHash != "" {
		fmt.Fprintf(&b, ", Model hash: %s", p.ModelHash)
	}
	if p.Model != "" {
		fmt.Fprintf(&b, ", Model: %s", strings.ReplaceAll(p.Model, ",", " "))
	}
	if p.DenoisingStrength > 0 {
		fmt.Fprintf(&b, ", Denoising strength: %s", strconv.FormatFloat(p.DenoisingStrength, 'f', -1, 64))
	}
	// A1111's extra_generation_params follow, in the order it adds them.
	if p.MaskBlur != nil {
		fmt.Fprintf(&b, ", Mask blur: %d", *p.MaskBlur)
	}
	if p.LoRAHashes != "" {
		fmt.Fprintf(&b, ", Lora hashes: %s", quote(p.LoRAHashes))
	}
	if p.Version != "" {
		fmt.Fprintf(&b, ", Version: %s", p.Version)
	}
	return b.String()
}

// quote writes a value as A1111's infotext does: as is, unless it holds a
// comma, colon or newline, then as a JSON string (non-ASCII kept).
func quote(v string) string {
	if !strings.ContainsAny(v, ",:\n") {
		return v
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
	return strings.TrimSuffix(b.String(), "\n")
}

// infotextPair is one "Key: value" of the parameters line; a quoted value
// may hold commas and colons.
var infotextPair = regexp.MustCompile(`\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)`)

// ParseParameters reads the A1111 "parameters" text back.
func ParseParameters(text string) (Parameters, error) {
	var p Parameters
	lines := strings.Split(text, "\n")
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, "Steps: ") {
		return p, fmt.Errorf("zimage: parameters: last line %q does not start with \"Steps: \"", last)
	}
	var prompt, neg []string
	inNeg := false
	for _, l := range lines[:len(lines)-1] {
		if s, ok := strings.CutPrefix(l, "Negative prompt: "); ok && !inNeg {
			inNeg = true
			l = s
		}
		if inNeg {
			neg = append(neg, l)
		} else {
			prompt = append(prompt, l)
		}
	}
	p.Prompt, p.NegativePrompt = strings.Join(prompt, "\n"), strings.Join(neg, "\n")
	for _, m := range infotextPair.FindAllStringSubmatch(last, -1) {
		k, v := strings.TrimSpace(m[1]), strings.TrimSpace(m[2])
		if strings.HasPrefix(v, `"`) {
			var u string
			if json.Unmarshal([]byte(v), &u) == nil {
				v = u
			}
		}
		var err error
		switch k {
		case "Steps":
			p.Steps, err = strconv.Atoi(v)
		case "Sampler":
			p.Sampler = v
		case "CFG scale":
			p.CFGScale, err = strconv.ParseFloat(v, 64)
		case "Seed":
			p.Seed, err = strconv.ParseUint(v, 10, 64)
		case "Size":
			_, err = fmt.Sscanf(v, "%dx%d", &p.Width, &p.Height)
		case "Model hash":
			p.ModelHash = v
		case "Model":
			p.Model = v
		case "Denoising strength":
			p.DenoisingStrength, err = strconv.ParseFloat(v, 64)
		case "Mask blur":
			var n int
			n, err = strconv.Atoi(v)
			p.MaskBlur = &n
		case "Lora hashes":
			p.LoRAHashes = v
		case "Version":
			p.Version = v
		}
		if err != nil {
			return p, fmt.Errorf("zimage: parameters: %s %q: %w", k, v, err)
		}
	}
	return p, nil
}

// EncodePNG writes img as a PNG with text (the A1111 "parameters") in a tEXt
// chunk, or an iTXt chunk when it is not Latin-1 (as PIL does), placed
// before the image data so that readers which stop early still find it.
func EncodePNG(w io.Writer, img image.Image, parameters string) error {
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return fmt.Errorf("zimage: encode png: %w", err)
	}
	data := buf.Bytes()
	// Signature (8) + IHDR chunk (4 length + 4 type + 13 data + 4 crc).
	const afterIHDR = 8 + 25
	if len(data) < afterIHDR {
		return fmt.Errorf("zimage: encode png: short output")
	}
	bw := bufio.NewWriter(w)
	bw.Write(data[:afterIHDR])
	typ, body := textChunk("parameters", parameters)
	writeChunk(bw, typ, body)
	bw.Write(data[afterIHDR:])
	return bw.Flush()
}

func textChunk(key, text string) (typ string, body []byte) {
	latin1 := true
	for _, r := range text {
		if r > 0xff {
			latin1 = false
			break
		}
	}
	if latin1 {
		body = append([]byte(key), 0)
		for _, r := range text {
			body = append(body, byte(r))
		}
		return "tEXt", body
	}
	// iTXt: keyword, NUL, compression flag 0, method 0, empty language tag
	// and translated keyword (each NUL-terminated), UTF-8 text.
	body = append([]byte(key), 0, 0, 0, 0, 0)
	return "iTXt", append(body, text...)
}

func writeChunk(w io.Writer, typ string, body []byte) {
	var hdr [8]byte
	binary.BigEndian.PutUint32(hdr[:4], uint32(len(body)))
	copy(hdr[4:], typ)
	crc := crc32.NewIEEE()
	crc.Write(hdr[4:])
	crc.Write(body)
	w.Write(hdr[:])
	w.Write(body)
	var c [4]byte
	binary.BigEndian.PutUint32(c[:], crc.Sum32())
	w.Write(c[:])
}

// ReadPNGText returns the tEXt/iTXt entries of a PNG stream (uncompressed
// iTXt only), keyed by keyword.
func ReadPNGText(r io.Reader) (map[string]string, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	if len(data) < 8 || string(data[1:4]) != "PNG" {
		return nil, fmt.Errorf("zimage: not a PNG file")
	}
	out := map[string]string{}
	for p := 8; p+12 <= len(data); {
		n := int(binary.BigEndian.Uint32(data[p:]))
		typ := string(data[p+4 : p+8])
		if n < 0 || p+12+n > len(data) {
			return nil, fmt.Errorf("zimage: PNG chunk %q at byte %d runs past the end", typ, p)
		}
		body := data[p+8 : p+8+n]
		switch typ {
		case "tEXt":
			if k, v, ok := bytes.Cut(body, []byte{0}); ok {
				runes := make([]rune, len(v))
				for i, c := range v {
					runes[i] = rune(c)
				}
				out[string(k)] = string(runes)
			}
		case "iTXt":
			if k, rest, ok := bytes.Cut(body, []byte{0}); ok && len(rest) >= 2 && rest[0] == 0 {
				rest = rest[2:]
				if _, rest, ok = bytes.Cut(rest, []byte{0}); ok {
					if _, v, ok := bytes.Cut(rest, []byte{0}); ok {
						out[string(k)] = string(v)
					}
				}
			}
		case "IEND":
			return out, nil
		}
		p += 12 + n
	}
	return out, nil
}
