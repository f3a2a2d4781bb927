package gguf

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"sort"
	"unicode/utf8"
)

// Limits on what a header may declare. Each count is also bounded by the
// bytes left in the file (every entry takes some), so a hostile header
// cannot make the reader allocate more than a small multiple of the file.
const (
	// MaxDims is ggml's GGML_MAX_DIMS.
	MaxDims = 4
	// MaxNameLen bounds tensor names. The spec says 64 bytes, but
	// stable-diffusion.cpp (GGML_MAX_NAME 128) and ComfyUI-GGUF (127)
	// write longer LDM names; anything past this is corruption.
	MaxNameLen = 1024
	// MaxKeyLen is the spec's limit on metadata keys.
	MaxKeyLen = 65535
	// MaxArrayDepth bounds arrays of arrays (the spec allows nesting; ggml
	// itself reads none).
	MaxArrayDepth = 4
	// DefaultAlignment applies when general.alignment is absent.
	DefaultAlignment = 32
)

// Magic is the file's first four bytes.
const Magic = "GGUF"

// Kind classifies a FormatError.
type Kind uint8

const (
	KindShortFile Kind = iota + 1 // the file ends inside the header, or before a tensor's data ends
	KindMagic                     // not "GGUF"
	KindVersion                   // version other than 2 or 3 (or a big-endian file)
	KindCount                     // tensor, key or array count impossible for the file's size
	KindString                    // string length past the file or over its limit, empty key, bad UTF-8 in a name
	KindMetadata                  // invalid value type, bool other than 0/1, general.alignment wrong
	KindDuplicate                 // a key or tensor name appears twice
	KindType                      // unknown tensor type
	KindShape                     // too many dims, element count overflow, row not whole blocks
	KindAlignment                 // tensor offset not a multiple of the alignment
	KindOffsets                   // tensor data runs past the end of the file
	KindOverlap                   // two tensors share bytes
	KindHole                      // bytes of the data section belong to no tensor (beyond alignment padding)
)

var kindNames = [...]string{"", "short file", "magic", "version", "count", "string", "metadata",
	"duplicate", "type", "shape", "alignment", "offsets", "overlap", "hole"}

func (k Kind) String() string {
	if int(k) < len(kindNames) && k != 0 {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// FormatError reports a malformed file. Field names the header field or
// metadata key being read; Tensor the tensor, when the problem is one
// tensor's. Match it with errors.As and switch on Kind.
type FormatError struct {
	Path   string
	Field  string
	Tensor string
	Kind   Kind
	Reason string
}

func (e *FormatError) Error() string {
	switch {
	case e.Tensor != "":
		return fmt.Sprintf("gguf: %s: tensor %q: %s", e.Path, e.Tensor, e.Reason)
	case e.Field != "":
		return fmt.Sprintf("gguf: %s: %s: %s", e.Path, e.Field, e.Reason)
	}
	return fmt.Sprintf("gguf: %s: %s", e.Path, e.Reason)
}

// reader walks the header with bounds checks; field and tensor name what
// is being read, for errors.
type reader struct {
	path   string
	mem    []byte
	pos    int
	field  string
	tensor string
}

func (r *reader) fail(kind Kind, format string, args ...any) error {
	return &FormatError{Path: r.path, Field: r.field, Tensor: r.tensor, Kind: kind, Reason: fmt.Sprintf(format, args...)}
}

func (r *reader) left() int { return len(r.mem) - r.pos }

func (r *reader) take(n int) ([]byte, error) {
	if n < 0 || n > r.left() {
		return nil, r.fail(KindShortFile, "the %d-byte file ends at byte %d, %d bytes short", len(r.mem), len(r.mem), n-r.left())
	}
	b := r.mem[r.pos : r.pos+n]
	r.pos += n
	return b, nil
}

func (r *reader) u32() (uint32, error) {
	b, err := r.take(4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b), nil
}

func (r *reader) u64() (uint64, error) {
	b, err := r.take(8)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b), nil
}

// str reads a length-prefixed string of at most limit bytes.
func (r *reader) str(limit int) (string, error) {
	n, err := r.u64()
	if err != nil {
		return "", err
	}
	if n > uint64(r.left()) {
		return "", r.fail(KindString, "string of %d bytes runs past the end of the file (%d bytes left)", n, r.left())
	}
	if n > uint64(limit) {
		return "", r.fail(KindString, "string of %d bytes exceeds the %d-byte limit", n, limit)
	}
	b, _ := r.take(int(n))
	return string(b), nil
}

// count reads a uint64 count of entries that each take at least min bytes.
func (r *reader) count(what string, min int) (int, error) {
	n, err := r.u64()
	if err != nil {
		return 0, err
	}
	if n > uint64(r.left()/min) {
		return 0, r.fail(KindCount, "%d %s cannot fit the %d bytes left in the file (each takes at least %d): truncated or corrupt", n, what, r.left(), min)
	}
	return int(n), nil
}

func parse(path string, mem []byte) (*File, error) {
	r := &reader{path: path, mem: mem, field: "header"}
	magic, err := r.take(4)
	if err != nil {
		return nil, &FormatError{Path: path, Kind: KindShortFile, Reason: fmt.Sprintf("file is %d bytes, shorter than the 24-byte GGUF header", len(mem))}
	}
	if string(magic) != Magic {
		return nil, r.fail(KindMagic, "magic %q, want %q: not a GGUF file", magic, Magic)
	}
	r.field = "version"
	ver, err := r.u32()
	if err != nil {
		return nil, err
	}
	switch {
	case ver == 2 || ver == 3:
	case bits.ReverseBytes32(ver) == 2 || bits.ReverseBytes32(ver) == 3:
		return nil, r.fail(KindVersion, "big-endian GGUF (version %d byte-swapped); only little-endian files are read", bits.ReverseBytes32(ver))
	case ver == 1:
		return nil, r.fail(KindVersion, "version 1 (32-bit counts, before GGUF v2) is not supported; re-save the file with current tools")
	default:
		return nil, r.fail(KindVersion, "version %d, want 2 or 3", ver)
	}
	f := &File{Path: path, Version: int(ver), mem: mem, Alignment: DefaultAlignment}
	// A tensor info takes at least 8 (name length) + 4 (n_dims) + 4 (type)
	// + 8 (offset) bytes; a key/value at least 8 (key length) + 4 (type) +
	// 1 (the smallest value).
	r.field = "tensor_count"
	nt, err := r.count("tensors", 24)
	if err != nil {
		return nil, err
	}
	r.field = "metadata_kv_count"
	nkv, err := r.count("metadata key/values", 13)
	if err != nil {
		return nil, err
	}
	seen := make(map[string]bool, min(nkv, 1024)) // counts are bounded by the file, not by memory
	for i := range nkv {
		r.field = fmt.Sprintf("metadata key %d", i)
		key, err := r.str(MaxKeyLen)
		if err != nil {
			return nil, err
		}
		if key == "" {
			return nil, r.fail(KindString, "empty key")
		}
		r.field = fmt.Sprintf("metadata %q", key)
		if seen[key] {
			return nil, r.fail(KindDuplicate, "key appears twice")
		}
		seen[key] = true
		vt, err := r.u32()
		if err != nil {
			return nil, err
		}
		v, err := r.value(ValueType(vt), 0)
		if err != nil {
			return nil, err
		}
		f.Metadata = append(f.Metadata, KV{Key: key, Value: v})
	}
	r.field = "general.alignment"
	if v, ok := f.Metadata.Get("general.alignment"); ok {
		a, isU32 := v.x.(uint32)
		switch {
		case !isU32:
			return nil, r.fail(KindMetadata, "is %s, want uint32", v.describe())
		case a == 0 || a&(a-1) != 0:
			return nil, r.fail(KindMetadata, "%d is not a power of two", a)
		}
		f.Alignment = int(a)
	}
	r.field = ""
	list := make([]*Tensor, 0, min(nt, 1<<14))
	names := make(map[string]bool, min(nt, 1<<14))
	for i := range nt {
		r.field, r.tensor = fmt.Sprintf("tensor info %d", i), ""
		t, err := r.tensorInfo()
		if err != nil {
			return nil, err
		}
		if names[t.Name] {
			return nil, r.fail(KindDuplicate, "name appears twice")
		}
		names[t.Name] = true
		t.file = f
		list = append(list, t)
	}
	r.field, r.tensor = "", ""
	// The data section starts at the next multiple of the alignment; a
	// file without tensors may end right after its metadata.
	f.dataStart = int64(alignUp(uint64(r.pos), uint64(f.Alignment)))
	if nt > 0 && f.dataStart > int64(len(mem)) {
		return nil, r.fail(KindShortFile, "the file ends at byte %d, before its data section starts at %d", len(mem), f.dataStart)
	}
	if err := f.checkLayout(list); err != nil {
		return nil, err
	}
	f.index(list)
	return f, nil
}

func alignUp(n, a uint64) uint64 { return (n + a - 1) / a * a }

// value reads one metadata value of type vt.
func (r *reader) value(vt ValueType, depth int) (Value, error) {
	switch vt {
	case TypeArray:
		if depth >= MaxArrayDepth {
			return Value{}, r.fail(KindMetadata, "arrays nested deeper than %d", MaxArrayDepth)
		}
		et, err := r.u32()
		if err != nil {
			return Value{}, err
		}
		elem := ValueType(et)
		if elem.size() == 0 {
			return Value{}, r.fail(KindMetadata, "array of invalid value type %d", et)
		}
		n, err := r.count("array elements", elem.size())
		if err != nil {
			return Value{}, err
		}
		return r.array(elem, n, depth)
	case TypeString:
		s, err := r.str(math.MaxInt)
		return String(s), err
	}
	size := vt.size()
	if size == 0 {
		return Value{}, r.fail(KindMetadata, "invalid value type %d", uint32(vt))
	}
	b, err := r.take(size)
	if err != nil {
		return Value{}, err
	}
	return scalar(vt, b, r)
}

// scalar decodes a fixed-size value.
func scalar(vt ValueType, b []byte, r *reader) (Value, error) {
	le := binary.LittleEndian
	switch vt {
	case TypeUint8:
		return Uint8(b[0]), nil
	case TypeInt8:
		return Int8(int8(b[0])), nil
	case TypeUint16:
		return Uint16(le.Uint16(b)), nil
	case TypeInt16:
		return Int16(int16(le.Uint16(b))), nil
	case TypeUint32:
		return Uint32(le.Uint32(b)), nil
	case TypeInt32:
		return Int32(int32(le.Uint32(b))), nil
	case TypeFloat32:
		return Float32(math.Float32frombits(le.Uint32(b))), nil
	case TypeBool:
		if b[0] > 1 {
			return Value{}, r.fail(KindMetadata, "bool byte %d, want 0 or 1", b[0])
		}
		return Bool(b[0] == 1), nil
	case TypeUint64:
		return Uint64(le.Uint64(b)), nil
	case TypeInt64:
		return Int64(int64(le.Uint64(b))), nil
	case TypeFloat64:
		return Float64(math.Float64frombits(le.Uint64(b))), nil
	}
	return Value{}, r.fail(KindMetadata, "invalid value type %d", uint32(vt))
}

// array reads n elements of type elem into a typed slice.
func (r *reader) array(elem ValueType, n, depth int) (Value, error) {
	switch elem {
	case TypeString:
		out := make([]string, n)
		for i := range out {
			s, err := r.str(math.MaxInt)
			if err != nil {
				return Value{}, err
			}
			out[i] = s
		}
		return Array(out)
	case TypeArray:
		out := make([]Value, n)
		for i := range out {
			v, err := r.value(TypeArray, depth+1)
			if err != nil {
				return Value{}, err
			}
			if i > 0 && v.Elem != out[0].Elem {
				return Value{}, r.fail(KindMetadata, "array of arrays mixes %s and %s elements", out[0].Elem, v.Elem)
			}
			out[i] = v
		}
		return Array(out)
	}
	// Fixed-size elements: the count check guarantees the bytes exist.
	// They decode straight into a typed slice, no bigger than the bytes
	// (8x for bools), whatever count a hostile file claims.
	size := elem.size()
	b, err := r.take(n * size)
	if err != nil {
		return Value{}, err
	}
	le := binary.LittleEndian
	switch elem {
	case TypeUint8:
		return Array(decodeAll(b, 1, func(b []byte) uint8 { return b[0] }))
	case TypeInt8:
		return Array(decodeAll(b, 1, func(b []byte) int8 { return int8(b[0]) }))
	case TypeUint16:
		return Array(decodeAll(b, 2, le.Uint16))
	case TypeInt16:
		return Array(decodeAll(b, 2, func(b []byte) int16 { return int16(le.Uint16(b)) }))
	case TypeUint32:
		return Array(decodeAll(b, 4, le.Uint32))
	case TypeInt32:
		return Array(decodeAll(b, 4, func(b []byte) int32 { return int32(le.Uint32(b)) }))
	case TypeFloat32:
		return Array(decodeAll(b, 4, func(b []byte) float32 { return math.Float32frombits(le.Uint32(b)) }))
	case TypeUint64:
		return Array(decodeAll(b, 8, le.Uint64))
	case TypeInt64:
		return Array(decodeAll(b, 8, func(b []byte) int64 { return int64(le.Uint64(b)) }))
	case TypeFloat64:
		return Array(decodeAll(b, 8, func(b []byte) float64 { return math.Float64frombits(le.Uint64(b)) }))
	case TypeBool:
		out := make([]bool, n)
		for i, c := range b {
			if c > 1 {
				return Value{}, r.fail(KindMetadata, "bool byte %d at array index %d, want 0 or 1", c, i)
			}
			out[i] = c == 1
		}
		return Array(out)
	}
	return Value{}, r.fail(KindMetadata, "invalid value type %d", uint32(elem))
}

// decodeAll decodes consecutive size-byte elements.
func decodeAll[T any](b []byte, size int, dec func([]byte) T) []T {
	out := make([]T, len(b)/size)
	for i := range out {
		out[i] = dec(b[i*size:])
	}
	return out
}

// tensorInfo reads one tensor's name, dims, type and offset, and checks
// that the dims make a tensor of that type whose size fits in 63 bits.
func (r *reader) tensorInfo() (*Tensor, error) {
	name, err := r.str(MaxNameLen)
	if err != nil {
		return nil, err
	}
	if !utf8.ValidString(name) {
		return nil, r.fail(KindString, "name %q is not valid UTF-8", name)
	}
	r.tensor = name
	nd, err := r.u32()
	if err != nil {
		return nil, err
	}
	if nd > MaxDims {
		return nil, r.fail(KindShape, "%d dimensions, at most %d", nd, MaxDims)
	}
	t := &Tensor{Name: name, Dims: make([]uint64, nd)}
	for i := range t.Dims {
		if t.Dims[i], err = r.u64(); err != nil {
			return nil, err
		}
	}
	typ, err := r.u32()
	if err != nil {
		return nil, err
	}
	t.Type = Type(typ)
	if !t.Type.Known() {
		return nil, r.fail(KindType, "unknown tensor type %d", typ)
	}
	if t.Offset, err = r.u64(); err != nil {
		return nil, err
	}
	n := uint64(1)
	for _, d := range t.Dims {
		if d > math.MaxInt64 || uint64(int(d)) != d {
			return nil, r.fail(KindShape, "dimension %d of dims %v does not fit int", d, t.Dims)
		}
		hi, lo := bits.Mul64(n, d)
		if hi != 0 || lo > math.MaxInt64 {
			return nil, r.fail(KindShape, "dims %v have more elements than fit in 63 bits", t.Dims)
		}
		n = lo
	}
	bs := uint64(t.Type.BlockSize())
	if len(t.Dims) > 0 && t.Dims[0]%bs != 0 {
		return nil, r.fail(KindShape, "rows of %d elements (ne[0]) are not whole %d-element blocks of %s", t.Dims[0], bs, t.Type)
	}
	if len(t.Dims) == 0 && bs != 1 {
		return nil, r.fail(KindShape, "a scalar cannot be a %d-element block of %s", bs, t.Type)
	}
	hi, size := bits.Mul64(n/bs, uint64(t.Type.BlockBytes()))
	if hi != 0 || size > math.MaxInt64 {
		return nil, r.fail(KindShape, "dims %v of %s need more bytes than fit in 63 bits", t.Dims, t.Type)
	}
	t.Size = int64(size)
	return t, nil
}

// checkLayout requires every tensor to start on the alignment and to lie
// inside the file, and the tensors to follow each other with nothing but
// alignment padding between them (ggml's reader requires the same, in
// tensor-info order; any order is accepted here).
func (f *File) checkLayout(list []*Tensor) error {
	fail := func(kind Kind, t *Tensor, format string, args ...any) error {
		name := ""
		if t != nil {
			name = t.Name
		}
		return &FormatError{Path: f.Path, Tensor: name, Kind: kind, Reason: fmt.Sprintf(format, args...)}
	}
	dataLen := uint64(len(f.mem)) - uint64(min(f.dataStart, int64(len(f.mem))))
	align := uint64(f.Alignment)
	for _, t := range list {
		switch {
		case t.Offset%align != 0:
			return fail(KindAlignment, t, "data offset %d is not a multiple of the %d-byte alignment", t.Offset, align)
		case t.Offset > dataLen || uint64(t.Size) > dataLen-t.Offset:
			return fail(KindOffsets, t, "data [%d, %d) runs past the end of the %d-byte data section (file truncated?)",
				t.Offset, t.Offset+uint64(t.Size), dataLen)
		}
	}
	sorted := append([]*Tensor(nil), list...)
	sort.SliceStable(sorted, func(i, j int) bool {
		if sorted[i].Offset != sorted[j].Offset {
			return sorted[i].Offset < sorted[j].Offset
		}
		return sorted[i].Size < sorted[j].Size
	})
	var cursor uint64 // end of the previous tensor, padded
	var prev *Tensor
	for _, t := range sorted {
		switch {
		case t.Offset < cursor: // offsets are aligned, so this starts before prev ends
			return fail(KindOverlap, t, "data [%d, %d) overlaps tensor %q, which ends at %d",
				t.Offset, t.Offset+uint64(t.Size), prev.Name, prev.Offset+uint64(prev.Size))
		case t.Offset > cursor:
			return fail(KindHole, t, "data starts at %d, leaving bytes [%d, %d) of the data section unused", t.Offset, cursor, t.Offset)
		}
		cursor = alignUp(t.Offset+uint64(t.Size), align)
		prev = t
	}
	end := uint64(0)
	if prev != nil {
		end = prev.Offset + uint64(prev.Size)
	}
	if len(list) > 0 && dataLen > alignUp(end, align) {
		return fail(KindHole, nil, "%d bytes after the last tensor's data (at %d of the %d-byte data section)",
			dataLen-end, end, dataLen)
	}
	return nil
}
