package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"sort"
	"strconv"
	"unicode/utf8"
)

// MaxHeaderLen bounds the JSON header, as the reference implementation does
// (100 MB): a larger length is a corrupt or hostile file, not a model.
const MaxHeaderLen = 100_000_000

// Kind classifies a FormatError.
type Kind uint8

const (
	KindShortFile    Kind = iota + 1 // fewer than 8 bytes
	KindHeaderLength                 // header length past the file, or over MaxHeaderLen
	KindJSON                         // not UTF-8, not JSON, not an object, wrong value types
	KindDType                        // dtype missing or unknown
	KindShape                        // shape missing, not non-negative integers, or overflowing
	KindSize                         // shape x dtype size differs from the data_offsets span
	KindOffsets                      // data_offsets missing, malformed, reversed or out of range
	KindOverlap                      // two tensors share bytes
	KindHole                         // bytes of the data section belong to no tensor
	KindDuplicate                    // a tensor name (or entry field) appears twice
	KindMetadata                     // __metadata__ is not a map of strings
)

var kindNames = [...]string{"", "short file", "header length", "json", "dtype", "shape", "size",
	"offsets", "overlap", "hole", "duplicate", "metadata"}

func (k Kind) String() string {
	if int(k) < len(kindNames) && k != 0 {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// FormatError reports a malformed file; Tensor is empty for header-level
// problems. Match it with errors.As and switch on Kind.
type FormatError struct {
	Path   string
	Tensor string
	Kind   Kind
	Reason string
}

func (e *FormatError) Error() string {
	if e.Tensor != "" {
		return fmt.Sprintf("safetensors: %s: tensor %q: %s", e.Path, e.Tensor, e.Reason)
	}
	return fmt.Sprintf("safetensors: %s: %s", e.Path, e.Reason)
}

func parse(path string, mem []byte) (*File, error) {
	n := binary.LittleEndian.Uint64(mem[:8])
	if n > MaxHeaderLen {
		return nil, &FormatError{Path: path, Kind: KindHeaderLength,
			Reason: fmt.Sprintf("header length %d exceeds the %d-byte limit", n, MaxHeaderLen)}
	}
	if n > uint64(len(mem)-8) {
		return nil, &FormatError{Path: path, Kind: KindHeaderLength,
			Reason: fmt.Sprintf("header length %d runs past the end of the %d-byte file", n, len(mem))}
	}
	f := &File{Path: path, mem: mem, HeaderLen: int64(n), Size: int64(len(mem)), dataStart: int64(8 + n)}
	list, meta, err := parseHeader(path, mem[8:8+n], uint64(len(mem))-8-n)
	if err != nil {
		return nil, err
	}
	f.Metadata = meta
	f.index(list)
	return f, nil
}

// parseHeader scans the JSON with a token decoder rather than unmarshalling
// into a map, because encoding/json silently keeps the last of two
// duplicate names.
func parseHeader(path string, hdr []byte, dataLen uint64) ([]*Tensor, map[string]string, error) {
	fail := func(kind Kind, tensor, format string, args ...any) error {
		return &FormatError{Path: path, Tensor: tensor, Kind: kind, Reason: fmt.Sprintf(format, args...)}
	}
	if !utf8.Valid(hdr) {
		return nil, nil, fail(KindJSON, "", "header is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(hdr))
	dec.UseNumber()
	if err := expectDelim(dec, '{'); err != nil {
		return nil, nil, fail(KindJSON, "", "header is not a JSON object: %v", err)
	}
	var (
		list []*Tensor
		meta map[string]string
		seen = map[string]bool{}
	)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, fail(KindJSON, "", "header is not valid JSON: %v", err)
		}
		name, _ := tok.(string) // object keys are always strings
		if seen[name] {
			if name == "__metadata__" {
				return nil, nil, fail(KindDuplicate, "", "__metadata__ appears twice")
			}
			return nil, nil, fail(KindDuplicate, name, "name appears twice in the header")
		}
		seen[name] = true
		if name == "__metadata__" {
			if meta, err = readMetadata(dec); err != nil {
				return nil, nil, fail(KindMetadata, "", "__metadata__: %v", err)
			}
			continue
		}
		t, err := readEntry(dec, dataLen)
		if err != nil {
			var ee *entryError
			if errors.As(err, &ee) {
				return nil, nil, fail(ee.kind, name, "%s", ee.msg)
			}
			return nil, nil, fail(KindJSON, name, "entry is not valid JSON: %v", err)
		}
		t.Name = name
		list = append(list, t)
	}
	if err := expectDelim(dec, '}'); err != nil {
		return nil, nil, fail(KindJSON, "", "header is not valid JSON: %v", err)
	}
	// The writer may pad the header with spaces (to align the data section);
	// anything else after the object is garbage.
	for _, c := range hdr[dec.InputOffset():] {
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			return nil, nil, fail(KindJSON, "", "unexpected bytes after the header object at offset %d", dec.InputOffset())
		}
	}
	if err := checkTiling(path, list, dataLen); err != nil {
		return nil, nil, err
	}
	return list, meta, nil
}

// checkTiling requires the tensors to cover the data section exactly, in
// some order: sorted by offsets, each starts where the previous ended.
func checkTiling(path string, list []*Tensor, dataLen uint64) error {
	sorted := append([]*Tensor(nil), list...)
	sort.SliceStable(sorted, func(i, j int) bool {
		if sorted[i].Begin != sorted[j].Begin {
			return sorted[i].Begin < sorted[j].Begin
		}
		return sorted[i].End < sorted[j].End
	})
	var cursor int64
	prev := ""
	for _, t := range sorted {
		switch {
		case t.Begin < cursor:
			return &FormatError{Path: path, Tensor: t.Name, Kind: KindOverlap,
				Reason: fmt.Sprintf("data_offsets [%d, %d] overlap tensor %q, which ends at %d", t.Begin, t.End, prev, cursor)}
		case t.Begin > cursor:
			return &FormatError{Path: path, Tensor: t.Name, Kind: KindHole,
				Reason: fmt.Sprintf("data_offsets [%d, %d] leave bytes [%d, %d) of the data section unused", t.Begin, t.End, cursor, t.Begin)}
		}
		cursor, prev = t.End, t.Name
	}
	if uint64(cursor) != dataLen {
		return &FormatError{Path: path, Kind: KindHole,
			Reason: fmt.Sprintf("tensors cover %d bytes of the %d-byte data section", cursor, dataLen)}
	}
	return nil
}

type entryError struct {
	kind Kind
	msg  string
}

func (e *entryError) Error() string { return e.msg }

func entryErr(kind Kind, format string, args ...any) error {
	return &entryError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// readEntry reads one tensor's {dtype, shape, data_offsets} object. Unknown
// fields are skipped; repeated ones are errors.
func readEntry(dec *json.Decoder, dataLen uint64) (*Tensor, error) {
	if err := expectDelim(dec, '{'); err != nil {
		return nil, entryErr(KindJSON, "entry is not a JSON object: %v", err)
	}
	t := &Tensor{}
	var haveDType, haveShape, haveOffsets bool
	var offsets []uint64
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		field, _ := tok.(string)
		switch field {
		case "dtype":
			if haveDType {
				return nil, entryErr(KindDuplicate, "field dtype appears twice")
			}
			haveDType = true
			tok, err := dec.Token()
			if err != nil {
				return nil, err
			}
			s, ok := tok.(string)
			if !ok {
				return nil, entryErr(KindDType, "dtype is %v, not a string", tokenText(tok))
			}
			t.DType = DType(s)
		case "shape":
			if haveShape {
				return nil, entryErr(KindDuplicate, "field shape appears twice")
			}
			haveShape = true
			dims, err := readUints(dec, KindShape, "shape")
			if err != nil {
				return nil, err
			}
			t.Shape = make([]int, len(dims))
			for i, d := range dims {
				if uint64(int(d)) != d { // only possible where int is 32 bits
					return nil, entryErr(KindShape, "shape %v has a dimension beyond int", dims)
				}
				t.Shape[i] = int(d)
			}
		case "data_offsets":
			if haveOffsets {
				return nil, entryErr(KindDuplicate, "field data_offsets appears twice")
			}
			haveOffsets = true
			if offsets, err = readUints(dec, KindOffsets, "data_offsets"); err != nil {
				return nil, err
			}
		default:
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return nil, err
			}
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return nil, err
	}
	switch {
	case !haveDType:
		return nil, entryErr(KindDType, "dtype is missing")
	case t.DType.Size() == 0:
		return nil, entryErr(KindDType, "unknown dtype %q", string(t.DType))
	case !haveShape:
		return nil, entryErr(KindShape, "shape is missing")
	case !haveOffsets:
		return nil, entryErr(KindOffsets, "data_offsets is missing")
	case len(offsets) != 2:
		return nil, entryErr(KindOffsets, "data_offsets has %d values, want [begin, end]", len(offsets))
	case offsets[0] > offsets[1]:
		return nil, entryErr(KindOffsets, "data_offsets [%d, %d] are reversed", offsets[0], offsets[1])
	case offsets[1] > dataLen:
		return nil, entryErr(KindOffsets, "data_offsets [%d, %d] run past the %d-byte data section", offsets[0], offsets[1], dataLen)
	}
	t.Begin, t.End = int64(offsets[0]), int64(offsets[1])
	n := uint64(1)
	for _, d := range t.Shape {
		hi, lo := bits.Mul64(n, uint64(d))
		if hi != 0 || lo > math.MaxInt64 {
			return nil, entryErr(KindShape, "shape %v has more elements than fit in 63 bits", t.Shape)
		}
		n = lo
	}
	hi, need := bits.Mul64(n, uint64(t.DType.Size()))
	if hi != 0 || need != uint64(t.End-t.Begin) {
		return nil, entryErr(KindSize, "shape %v of %s needs %d elements x %d bytes, data_offsets span %d bytes",
			t.Shape, t.DType, n, t.DType.Size(), t.End-t.Begin)
	}
	return t, nil
}

// readUints reads a JSON array of non-negative integers.
func readUints(dec *json.Decoder, kind Kind, what string) ([]uint64, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return nil, entryErr(kind, "%s is %v, not an array", what, tokenText(tok))
	}
	out := []uint64{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		num, ok := tok.(json.Number)
		if !ok {
			return nil, entryErr(kind, "%s holds %v, not an integer", what, tokenText(tok))
		}
		v, err := strconv.ParseUint(string(num), 10, 63)
		if err != nil {
			return nil, entryErr(kind, "%s holds %s, not a non-negative integer below 2^63", what, num)
		}
		out = append(out, v)
	}
	if _, err := dec.Token(); err != nil { // ']'
		return nil, err
	}
	return out, nil
}

// readMetadata reads a JSON object whose values are all strings (null is
// taken as no metadata).
func readMetadata(dec *json.Decoder) (map[string]string, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if tok == nil {
		return nil, nil
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("is %v, not an object of strings", tokenText(tok))
	}
	meta := map[string]string{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, _ := tok.(string)
		if _, dup := meta[key]; dup {
			return nil, fmt.Errorf("key %q appears twice", key)
		}
		tok, err = dec.Token()
		if err != nil {
			return nil, err
		}
		s, ok := tok.(string)
		if !ok {
			return nil, fmt.Errorf("value of %q is %v, not a string", key, tokenText(tok))
		}
		meta[key] = s
	}
	if _, err := dec.Token(); err != nil { // '}'
		return nil, err
	}
	return meta, nil
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err == io.EOF {
		return fmt.Errorf("unexpected end of header, want %q", want)
	}
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("found %v, want %q", tokenText(tok), want)
	}
	return nil
}

// tokenText renders a JSON token for messages, bounded in length.
func tokenText(tok any) string {
	var s string
	switch v := tok.(type) {
	case nil:
		return "null"
	case json.Delim:
		switch v {
		case '{':
			return "an object"
		case '[':
			return "an array"
		}
		return fmt.Sprintf("%q", v)
	case string:
		s = strconv.Quote(v)
	default:
		s = fmt.Sprint(v)
	}
	if len(s) > 40 {
		s = s[:40] + "..."
	}
	return s
}
