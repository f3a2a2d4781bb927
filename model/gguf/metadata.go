package gguf

import (
	"fmt"
	"math"
	"strings"
)

// ValueType is the type of a metadata value (gguf_metadata_value_type).
type ValueType uint32

const (
	TypeUint8   ValueType = 0
	TypeInt8    ValueType = 1
	TypeUint16  ValueType = 2
	TypeInt16   ValueType = 3
	TypeUint32  ValueType = 4
	TypeInt32   ValueType = 5
	TypeFloat32 ValueType = 6
	TypeBool    ValueType = 7
	TypeString  ValueType = 8
	TypeArray   ValueType = 9
	TypeUint64  ValueType = 10
	TypeInt64   ValueType = 11
	TypeFloat64 ValueType = 12
)

var valueTypeNames = [...]string{"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool",
	"string", "array", "uint64", "int64", "float64"}

func (v ValueType) String() string {
	if int(v) < len(valueTypeNames) {
		return valueTypeNames[v]
	}
	return fmt.Sprintf("ValueType(%d)", uint32(v))
}

// size is the encoded size of a scalar of type v (strings: the minimum,
// an empty one; arrays: an empty one), or 0 for an invalid type.
func (v ValueType) size() int {
	switch v {
	case TypeUint8, TypeInt8, TypeBool:
		return 1
	case TypeUint16, TypeInt16:
		return 2
	case TypeUint32, TypeInt32, TypeFloat32:
		return 4
	case TypeUint64, TypeInt64, TypeFloat64, TypeString:
		return 8
	case TypeArray:
		return 4 + 8
	}
	return 0
}

// Value is one metadata value. Scalars hold their Go value (uint8 ...
// float64, bool, string); an array holds a slice of its element type
// ([]uint8 ... []string), or []Value for arrays of arrays.
type Value struct {
	Type ValueType
	Elem ValueType // element type of an array
	x    any
}

// Scalar constructors, for writing files.

func Uint8(v uint8) Value     { return Value{Type: TypeUint8, x: v} }
func Int8(v int8) Value       { return Value{Type: TypeInt8, x: v} }
func Uint16(v uint16) Value   { return Value{Type: TypeUint16, x: v} }
func Int16(v int16) Value     { return Value{Type: TypeInt16, x: v} }
func Uint32(v uint32) Value   { return Value{Type: TypeUint32, x: v} }
func Int32(v int32) Value     { return Value{Type: TypeInt32, x: v} }
func Float32(v float32) Value { return Value{Type: TypeFloat32, x: v} }
func Bool(v bool) Value       { return Value{Type: TypeBool, x: v} }
func String(v string) Value   { return Value{Type: TypeString, x: v} }
func Uint64(v uint64) Value   { return Value{Type: TypeUint64, x: v} }
func Int64(v int64) Value     { return Value{Type: TypeInt64, x: v} }
func Float64(v float64) Value { return Value{Type: TypeFloat64, x: v} }

// Array makes an array value from a slice of one of the scalar Go types
// ([]uint8 ... []float64, []bool, []string) or []Value (arrays of arrays,
// all of the same element type).
func Array(elems any) (Value, error) {
	var et ValueType
	switch s := elems.(type) {
	case []uint8:
		et = TypeUint8
	case []int8:
		et = TypeInt8
	case []uint16:
		et = TypeUint16
	case []int16:
		et = TypeInt16
	case []uint32:
		et = TypeUint32
	case []int32:
		et = TypeInt32
	case []float32:
		et = TypeFloat32
	case []bool:
		et = TypeBool
	case []string:
		et = TypeString
	case []uint64:
		et = TypeUint64
	case []int64:
		et = TypeInt64
	case []float64:
		et = TypeFloat64
	case []Value:
		et = TypeArray
		for i, v := range s {
			if v.Type != TypeArray || (i > 0 && v.Elem != s[0].Elem) {
				return Value{}, fmt.Errorf("gguf: array of arrays: element %d is %s, want arrays of one element type", i, v.describe())
			}
		}
	default:
		return Value{}, fmt.Errorf("gguf: array of %T is not a metadata type", elems)
	}
	return Value{Type: TypeArray, Elem: et, x: elems}, nil
}

// Any returns the Go value (see Value).
func (v Value) Any() any { return v.x }

// String returns a string value.
func (v Value) String() (string, bool) { s, ok := v.x.(string); return s, ok }

// Uint returns an integer value of any width that is non-negative.
func (v Value) Uint() (uint64, bool) {
	switch x := v.x.(type) {
	case uint8:
		return uint64(x), true
	case uint16:
		return uint64(x), true
	case uint32:
		return uint64(x), true
	case uint64:
		return x, true
	}
	if i, ok := v.Int(); ok && i >= 0 {
		return uint64(i), true
	}
	return 0, false
}

// Int returns an integer value of any width that fits int64.
func (v Value) Int() (int64, bool) {
	switch x := v.x.(type) {
	case int8:
		return int64(x), true
	case int16:
		return int64(x), true
	case int32:
		return int64(x), true
	case int64:
		return x, true
	case uint8:
		return int64(x), true
	case uint16:
		return int64(x), true
	case uint32:
		return int64(x), true
	case uint64:
		if x <= math.MaxInt64 {
			return int64(x), true
		}
	}
	return 0, false
}

// Float returns a float32 or float64 value.
func (v Value) Float() (float64, bool) {
	switch x := v.x.(type) {
	case float32:
		return float64(x), true
	case float64:
		return x, true
	}
	return 0, false
}

// Bool returns a boolean value.
func (v Value) Bool() (bool, bool) { b, ok := v.x.(bool); return b, ok }

// Len is the number of elements of an array (0 for scalars).
func (v Value) Len() int {
	switch s := v.x.(type) {
	case []uint8:
		return len(s)
	case []int8:
		return len(s)
	case []uint16:
		return len(s)
	case []int16:
		return len(s)
	case []uint32:
		return len(s)
	case []int32:
		return len(s)
	case []float32:
		return len(s)
	case []bool:
		return len(s)
	case []string:
		return len(s)
	case []uint64:
		return len(s)
	case []int64:
		return len(s)
	case []float64:
		return len(s)
	case []Value:
		return len(s)
	}
	return 0
}

// Ints returns an array of integers (any width, each fitting int64).
func (v Value) Ints() ([]int64, bool) {
	if v.Type != TypeArray || v.Elem == TypeArray || v.Elem == TypeString || v.Elem == TypeBool ||
		v.Elem == TypeFloat32 || v.Elem == TypeFloat64 {
		return nil, false
	}
	n := v.Len()
	out := make([]int64, n)
	for i := range n {
		x, ok := v.Index(i).Int()
		if !ok {
			return nil, false
		}
		out[i] = x
	}
	return out, true
}

// Strings returns an array of strings.
func (v Value) Strings() ([]string, bool) { s, ok := v.x.([]string); return s, ok }

// Index returns element i of an array as a Value (arrays of arrays: the
// inner array).
func (v Value) Index(i int) Value {
	switch s := v.x.(type) {
	case []uint8:
		return Uint8(s[i])
	case []int8:
		return Int8(s[i])
	case []uint16:
		return Uint16(s[i])
	case []int16:
		return Int16(s[i])
	case []uint32:
		return Uint32(s[i])
	case []int32:
		return Int32(s[i])
	case []float32:
		return Float32(s[i])
	case []bool:
		return Bool(s[i])
	case []string:
		return String(s[i])
	case []uint64:
		return Uint64(s[i])
	case []int64:
		return Int64(s[i])
	case []float64:
		return Float64(s[i])
	case []Value:
		return s[i]
	}
	return Value{}
}

// describe renders a value for messages, bounded in length.
func (v Value) describe() string {
	if v.Type == TypeArray {
		return fmt.Sprintf("array of %d %s", v.Len(), v.Elem)
	}
	s := fmt.Sprintf("%s %v", v.Type, v.x)
	if str, ok := v.x.(string); ok {
		s = "string " + quoteShort(str)
	}
	return s
}

func quoteShort(s string) string {
	if len(s) > 40 {
		return fmt.Sprintf("%q...", s[:40])
	}
	return fmt.Sprintf("%q", s)
}

// KV is one metadata key/value pair.
type KV struct {
	Key   string
	Value Value
}

// Metadata is a file's key/value pairs in file order.
type Metadata []KV

// Get returns the value under key.
func (m Metadata) Get(key string) (Value, bool) {
	for _, kv := range m {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return Value{}, false
}

// String returns the string under key ("" when absent or not a string).
func (m Metadata) String(key string) string {
	v, _ := m.Get(key)
	s, _ := v.String()
	return s
}

// Describe is a short human summary of the metadata (the keys that say
// what a model is).
func (m Metadata) Describe() string {
	var parts []string
	for _, k := range []string{"general.architecture", "general.name", "general.type", "general.basename"} {
		if s := m.String(k); s != "" {
			parts = append(parts, k+"="+quoteShort(s))
		}
	}
	return strings.Join(parts, ", ")
}
