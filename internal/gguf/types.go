package gguf

import "fmt"

// Type is a ggml tensor element type, numbered as in ggml.h. Quantized
// types store blocks of BlockSize elements in TypeSize bytes.
type Type uint32

// The ggml tensor types. Gaps in the numbering are types ggml has removed;
// they are rejected as unknown.
const (
	TypeF32     Type = 0
	TypeF16     Type = 1
	TypeQ4_0    Type = 2
	TypeQ4_1    Type = 3
	TypeQ5_0    Type = 6
	TypeQ5_1    Type = 7
	TypeQ8_0    Type = 8
	TypeQ8_1    Type = 9
	TypeQ2_K    Type = 10
	TypeQ3_K    Type = 11
	TypeQ4_K    Type = 12
	TypeQ5_K    Type = 13
	TypeQ6_K    Type = 14
	TypeQ8_K    Type = 15
	TypeIQ2_XXS Type = 16
	TypeIQ2_XS  Type = 17
	TypeIQ3_XXS Type = 18
	TypeIQ1_S   Type = 19
	TypeIQ4_NL  Type = 20
	TypeIQ3_S   Type = 21
	TypeIQ2_S   Type = 22
	TypeIQ4_XS  Type = 23
	TypeI8      Type = 24
	TypeI16     Type = 25
	TypeI32     Type = 26
	TypeI64     Type = 27
	TypeF64     Type = 28
	TypeIQ1_M   Type = 29
	TypeBF16    Type = 30
	TypeTQ1_0   Type = 34
	TypeTQ2_0   Type = 35
	TypeMXFP4   Type = 39
)

type typeTraits struct {
	name      string
	blockSize uint64 // elements per block
	typeSize  uint64 // bytes per block
}

// qk is ggml's QK_K, the super-block size of the k-quants.
const qk = 256

// types holds the block geometry of every type ggml can still read; the
// sizes are those of the block_* structs in ggml-common.h.
var types = map[Type]typeTraits{
	TypeF32:     {"F32", 1, 4},
	TypeF16:     {"F16", 1, 2},
	TypeQ4_0:    {"Q4_0", 32, 2 + 16},
	TypeQ4_1:    {"Q4_1", 32, 2 + 2 + 16},
	TypeQ5_0:    {"Q5_0", 32, 2 + 4 + 16},
	TypeQ5_1:    {"Q5_1", 32, 2 + 2 + 4 + 16},
	TypeQ8_0:    {"Q8_0", 32, 2 + 32},
	TypeQ8_1:    {"Q8_1", 32, 2 + 2 + 32},
	TypeQ2_K:    {"Q2_K", qk, qk/16 + qk/4 + 2 + 2},
	TypeQ3_K:    {"Q3_K", qk, qk/8 + qk/4 + 12 + 2},
	TypeQ4_K:    {"Q4_K", qk, 2 + 2 + 12 + qk/2},
	TypeQ5_K:    {"Q5_K", qk, 2 + 2 + 12 + qk/8 + qk/2},
	TypeQ6_K:    {"Q6_K", qk, qk/2 + qk/4 + qk/16 + 2},
	TypeQ8_K:    {"Q8_K", qk, 4 + qk + qk/16*2},
	TypeIQ2_XXS: {"IQ2_XXS", qk, 2 + qk/8*2},
	TypeIQ2_XS:  {"IQ2_XS", qk, 2 + qk/8*2 + qk/32},
	TypeIQ3_XXS: {"IQ3_XXS", qk, 2 + 3*qk/8},
	TypeIQ1_S:   {"IQ1_S", qk, 2 + qk/8 + qk/16},
	TypeIQ4_NL:  {"IQ4_NL", 32, 2 + 16},
	TypeIQ3_S:   {"IQ3_S", qk, 2 + qk/4 + qk/32 + qk/8 + qk/64},
	TypeIQ2_S:   {"IQ2_S", qk, 2 + qk/4 + qk/32 + qk/32},
	TypeIQ4_XS:  {"IQ4_XS", qk, 2 + 2 + qk/64 + qk/2},
	TypeI8:      {"I8", 1, 1},
	TypeI16:     {"I16", 1, 2},
	TypeI32:     {"I32", 1, 4},
	TypeI64:     {"I64", 1, 8},
	TypeF64:     {"F64", 1, 8},
	TypeIQ1_M:   {"IQ1_M", qk, qk/8 + qk/16 + qk/32},
	TypeBF16:    {"BF16", 1, 2},
	TypeTQ1_0:   {"TQ1_0", qk, (qk-4*qk/64)/5 + qk/64 + 2},
	TypeTQ2_0:   {"TQ2_0", qk, qk/4 + 2},
	TypeMXFP4:   {"MXFP4", 32, 1 + 16},
}

// Known reports whether t is a type this package knows the geometry of.
func (t Type) Known() bool { _, ok := types[t]; return ok }

// BlockSize is the number of elements in one block of t (1 for plain
// types), or 0 for an unknown type.
func (t Type) BlockSize() uint64 { return types[t].blockSize }

// TypeSize is the number of bytes of one block of t, or 0 for an unknown type.
func (t Type) TypeSize() uint64 { return types[t].typeSize }

// String returns ggml's name of t ("F32", "Q4_K", ...).
func (t Type) String() string {
	if tr, ok := types[t]; ok {
		return tr.name
	}
	return fmt.Sprintf("Type(%d)", uint32(t))
}

// ValueType is the type of a metadata value.
type ValueType uint32

// The metadata value types of the GGUF specification.
const (
	Uint8   ValueType = 0
	Int8    ValueType = 1
	Uint16  ValueType = 2
	Int16   ValueType = 3
	Uint32  ValueType = 4
	Int32   ValueType = 5
	Float32 ValueType = 6
	Bool    ValueType = 7
	String  ValueType = 8
	Array   ValueType = 9
	Uint64  ValueType = 10
	Int64   ValueType = 11
	Float64 ValueType = 12
)

var valueTypeNames = [...]string{"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string", "array", "uint64", "int64", "float64"}

func (v ValueType) String() string {
	if int(v) < len(valueTypeNames) {
		return valueTypeNames[v]
	}
	return fmt.Sprintf("ValueType(%d)", uint32(v))
}

// size is the encoded size of a scalar of type v, 0 for string and array
// (variable) and for unknown types.
func (v ValueType) size() uint64 {
	switch v {
	case Uint8, Int8, Bool:
		return 1
	case Uint16, Int16:
		return 2
	case Uint32, Int32, Float32:
		return 4
	case Uint64, Int64, Float64:
		return 8
	}
	return 0
}

// minSize is the smallest encoding of one value of type v: it bounds how
// many elements an array of the remaining bytes can hold.
func (v ValueType) minSize() uint64 {
	switch v {
	case String:
		return 8 // the length
	case Array:
		return 4 + 8 // element type and count
	}
	return v.size()
}

func (v ValueType) known() bool { return v <= Float64 }
