package kernels

import (
	"math"
	"sync"
)

// F16ToF32 converts an IEEE 754 half-precision value to float32 exactly.
func F16ToF32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp != 0:
		return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
	case mant == 0:
		return math.Float32frombits(sign)
	}
	// Subnormal: mant·2⁻²⁴ is exact in float32.
	f := float32(mant) * (1.0 / (1 << 24))
	if sign != 0 {
		f = -f
	}
	return f
}

// F32ToF16 converts f to half precision, rounding to nearest even as
// ggml's GGML_FP32_TO_FP16 (F16C, rounding mode 0) does. Overflow gives
// infinity; NaN stays NaN.
func F32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff {
		if mant != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		if e < -10 {
			return sign
		}
		mant |= 0x800000
		shift := uint32(14 - e)
		h := mant >> shift
		rem := mant & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rem > half || (rem == half && h&1 == 1) {
			h++
		}
		return sign | uint16(h)
	}
	h := uint32(e)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && h&1 == 1) {
		h++ // a carry out of the mantissa correctly bumps the exponent
	}
	return sign | uint16(h)
}

// ToF16 sets dst[i] = F32ToF16(src[i]) for every i < len(src) (with F16C
// on amd64, which rounds alike; only a NaN's payload may differ). It
// panics if dst is shorter than src.
func ToF16(dst []uint16, src []float32) {
	dst = dst[:len(src)]
	i := 0
	if n := len(src) &^ 7; n > 0 {
		if f := active.Load().toHalf; f != nil {
			f(&dst[0], &src[0], n)
			i = n
		}
	}
	for ; i < len(src); i++ {
		dst[i] = F32ToF16(src[i])
	}
}

// BF16ToF32 converts a bfloat16 value to float32 exactly.
func BF16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// f16Table maps every half-precision bit pattern to float32 (256 KiB),
// built on first use: a table load beats the branches of F16ToF32 in the
// portable f16 loops.
var f16Table = sync.OnceValue(func() *[1 << 16]float32 {
	var t [1 << 16]float32
	for i := range t {
		t[i] = F16ToF32(uint16(i))
	}
	return &t
})

// le16 reads a little-endian uint16 from b[0:2].
func le16(b []byte) uint16 { _ = b[1]; return uint16(b[0]) | uint16(b[1])<<8 }

// f16At reads the half-precision value at b[0:2].
func f16At(b []byte) float32 { return F16ToF32(le16(b)) }

func put16(b []byte, v uint16) { _ = b[1]; b[0] = byte(v); b[1] = byte(v >> 8) }
