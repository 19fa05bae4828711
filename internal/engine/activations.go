package engine

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/npumesh/npumesh/internal/kernels"
)

// ActType is how hidden states cross a pipeline link.
type ActType int

// Activation encodings. F16 halves the bytes of F32 with a relative error
// of at most 2^-11 per value; Q8 is ggml's q8_0 layout (blocks of 32 int8
// with an f16 scale, 34 bytes per 32 values), with an error of at most
// half a step, max|x|/254, per block.
const (
	ActF16 ActType = iota
	ActF32
	ActQ8
)

func (t ActType) String() string {
	switch t {
	case ActF16:
		return "f16"
	case ActF32:
		return "f32"
	case ActQ8:
		return "q8"
	}
	return fmt.Sprintf("ActType(%d)", int(t))
}

// ParseActType parses "f16" (also ""), "f32" or "q8".
func ParseActType(s string) (ActType, error) {
	switch s {
	case "", "f16":
		return ActF16, nil
	case "f32":
		return ActF32, nil
	case "q8", "q8_0":
		return ActQ8, nil
	}
	return 0, fmt.Errorf("activation type %q: want f16, f32 or q8", s)
}

// ActBytes is the encoded size of n values.
func (t ActType) ActBytes(n int) int {
	switch t {
	case ActF32:
		return 4 * n
	case ActQ8:
		return (n + 31) / 32 * 34
	}
	return 2 * n
}

// EncodeActivations appends x, encoded as t, to dst.
func EncodeActivations(dst []byte, x []float32, t ActType) []byte {
	switch t {
	case ActF32:
		for _, v := range x {
			dst = binary.LittleEndian.AppendUint32(dst, math.Float32bits(v))
		}
	case ActQ8:
		for i := 0; i < len(x); i += 32 {
			blk := x[i:min(i+32, len(x))]
			var amax float32
			for _, v := range blk {
				amax = max(amax, float32(math.Abs(float64(v))))
			}
			d := amax / 127
			dst = binary.LittleEndian.AppendUint16(dst, kernels.F32ToF16(d))
			inv := float32(0)
			if d != 0 {
				inv = 1 / d
			}
			for j := range 32 {
				var q int8
				if j < len(blk) {
					q = int8(max(-127, min(127, math.Round(float64(blk[j]*inv)))))
				}
				dst = append(dst, byte(q))
			}
		}
	default:
		for _, v := range x {
			dst = binary.LittleEndian.AppendUint16(dst, kernels.F32ToF16(v))
		}
	}
	return dst
}

// DecodeActivations decodes n values of type t from b into dst (grown as
// needed) and returns it. b must be exactly t.ActBytes(n) long.
func DecodeActivations(dst []float32, b []byte, n int, t ActType) ([]float32, error) {
	if n < 0 || len(b) != t.ActBytes(n) {
		return dst, fmt.Errorf("%v activations: %d bytes for %d values, want %d", t, len(b), n, t.ActBytes(max(n, 0)))
	}
	dst = grow(dst, n)
	switch t {
	case ActF32:
		for i := range dst {
			dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
	case ActQ8:
		for i := 0; i < n; i += 32 {
			blk := b[i/32*34:]
			d := kernels.F16ToF32(binary.LittleEndian.Uint16(blk))
			for j := i; j < min(i+32, n); j++ {
				dst[j] = d * float32(int8(blk[2+j-i]))
			}
		}
	default:
		for i := range dst {
			dst[i] = kernels.F16ToF32(binary.LittleEndian.Uint16(b[2*i:]))
		}
	}
	return dst, nil
}
