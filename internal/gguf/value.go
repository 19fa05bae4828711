package gguf

import (
	"fmt"
	"math"
)

// Value is one metadata value: a scalar, a string, or an array whose
// elements all have one type (arrays may nest).
type Value struct {
	typ  ValueType
	elem ValueType // element type when typ is Array
	// x is the Go value: uint8 ... float64, bool, string for scalars; for
	// arrays a typed slice ([]uint8 ... []float64, []bool, []string) or
	// []Value for an array of arrays.
	x any
}

// Type is the value's type.
func (v Value) Type() ValueType { return v.typ }

// ElemType is the element type of an array value.
func (v Value) ElemType() ValueType { return v.elem }

// Interface returns the Go value (see ValueOf for the mapping).
func (v Value) Interface() any { return v.x }

// Len is the number of elements of an array, the length of a string, 0 otherwise.
func (v Value) Len() int {
	switch x := v.x.(type) {
	case string:
		return len(x)
	case []Value:
		return len(x)
	case []string:
		return len(x)
	case []bool:
		return len(x)
	case []uint8:
		return len(x)
	case []int8:
		return len(x)
	case []uint16:
		return len(x)
	case []int16:
		return len(x)
	case []uint32:
		return len(x)
	case []int32:
		return len(x)
	case []float32:
		return len(x)
	case []uint64:
		return len(x)
	case []int64:
		return len(x)
	case []float64:
		return len(x)
	}
	return 0
}

// ValueOf makes a Value of x, which may be uint8, int8, uint16, int16,
// uint32, int32, float32, bool, string, uint64, int64, float64, a slice of
// one of those, []Value of arrays of one element type, or a Value.
func ValueOf(x any) (Value, error) {
	switch x := x.(type) {
	case Value:
		return x, nil
	case uint8:
		return Value{typ: Uint8, x: x}, nil
	case int8:
		return Value{typ: Int8, x: x}, nil
	case uint16:
		return Value{typ: Uint16, x: x}, nil
	case int16:
		return Value{typ: Int16, x: x}, nil
	case uint32:
		return Value{typ: Uint32, x: x}, nil
	case int32:
		return Value{typ: Int32, x: x}, nil
	case float32:
		return Value{typ: Float32, x: x}, nil
	case bool:
		return Value{typ: Bool, x: x}, nil
	case string:
		return Value{typ: String, x: x}, nil
	case uint64:
		return Value{typ: Uint64, x: x}, nil
	case int64:
		return Value{typ: Int64, x: x}, nil
	case float64:
		return Value{typ: Float64, x: x}, nil
	case []uint8:
		return Value{typ: Array, elem: Uint8, x: x}, nil
	case []int8:
		return Value{typ: Array, elem: Int8, x: x}, nil
	case []uint16:
		return Value{typ: Array, elem: Uint16, x: x}, nil
	case []int16:
		return Value{typ: Array, elem: Int16, x: x}, nil
	case []uint32:
		return Value{typ: Array, elem: Uint32, x: x}, nil
	case []int32:
		return Value{typ: Array, elem: Int32, x: x}, nil
	case []float32:
		return Value{typ: Array, elem: Float32, x: x}, nil
	case []bool:
		return Value{typ: Array, elem: Bool, x: x}, nil
	case []string:
		return Value{typ: Array, elem: String, x: x}, nil
	case []uint64:
		return Value{typ: Array, elem: Uint64, x: x}, nil
	case []int64:
		return Value{typ: Array, elem: Int64, x: x}, nil
	case []float64:
		return Value{typ: Array, elem: Float64, x: x}, nil
	case []Value:
		for i, e := range x {
			if e.typ != Array {
				return Value{}, fmt.Errorf("array of arrays: element %d is a %s", i, e.typ)
			}
		}
		return Value{typ: Array, elem: Array, x: x}, nil
	}
	return Value{}, fmt.Errorf("no GGUF value type for %T", x)
}

// asUint returns an integer value as uint64 when it is not negative.
func (v Value) asUint() (uint64, bool) {
	switch x := v.x.(type) {
	case uint8:
		return uint64(x), true
	case uint16:
		return uint64(x), true
	case uint32:
		return uint64(x), true
	case uint64:
		return x, true
	case int8:
		return uint64(x), x >= 0
	case int16:
		return uint64(x), x >= 0
	case int32:
		return uint64(x), x >= 0
	case int64:
		return uint64(x), x >= 0
	}
	return 0, false
}

// asInt returns an integer value as int64 when it fits.
func (v Value) asInt() (int64, bool) {
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
		return int64(x), x <= math.MaxInt64
	}
	return 0, false
}
