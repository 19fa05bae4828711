package kernels

import (
	"fmt"
	"math"

	"github.com/npumesh/npumesh/internal/gguf"
)

// CanQuantize reports whether Quantize can encode typ.
func CanQuantize(typ gguf.Type) bool {
	switch typ {
	case gguf.TypeF32, gguf.TypeF16, gguf.TypeQ8_0, gguf.TypeQ4_0, gguf.TypeQ4_1,
		gguf.TypeQ5_0, gguf.TypeQ5_1, gguf.TypeQ4_K, gguf.TypeQ6_K:
		return true
	}
	return false
}

// Quantize encodes src as type typ into dst, which must be exactly
// RowSize(typ, len(src)) bytes (a panic otherwise). It returns a wrapped
// ErrUnsupported for a type it cannot encode.
//
// q8_0, q4_0, q4_1, q5_0 and q5_1 follow ggml's reference quantizers
// (quantize_row_*_ref) bit for bit, f16 rounds to nearest even like ggml.
// q4_K follows ggml's reference algorithm (bits may still differ where
// float operations are ordered or fused differently); q6_K uses the ggml
// layout with a simpler scale choice than ggml's make_qx_quants. llama.cpp
// reads both.
func Quantize(dst []byte, src []float32, typ gguf.Type) error {
	if !CanQuantize(typ) {
		return fmt.Errorf("quantize: %w: %v", ErrUnsupported, typ)
	}
	if want := rowBytes("Quantize", typ, len(src)); len(dst) != want {
		panic(fmt.Sprintf("kernels.Quantize: %d %v elements need %d bytes, got %d", len(src), typ, want, len(dst)))
	}
	switch typ {
	case gguf.TypeF32:
		for i, v := range src {
			b := math.Float32bits(v)
			dst[4*i], dst[4*i+1], dst[4*i+2], dst[4*i+3] = byte(b), byte(b>>8), byte(b>>16), byte(b>>24)
		}
	case gguf.TypeF16:
		for i, v := range src {
			put16(dst[2*i:], F32ToF16(v))
		}
	case gguf.TypeQ8_0:
		for b := 0; b*32 < len(src); b++ {
			quantQ8_0(dst[b*34:b*34+34], src[b*32:b*32+32])
		}
	case gguf.TypeQ4_0:
		for b := 0; b*32 < len(src); b++ {
			quantQ4_0(dst[b*18:b*18+18], src[b*32:b*32+32])
		}
	case gguf.TypeQ4_1:
		for b := 0; b*32 < len(src); b++ {
			quantQ4_1(dst[b*20:b*20+20], src[b*32:b*32+32])
		}
	case gguf.TypeQ5_0:
		for b := 0; b*32 < len(src); b++ {
			quantQ5_0(dst[b*22:b*22+22], src[b*32:b*32+32])
		}
	case gguf.TypeQ5_1:
		for b := 0; b*32 < len(src); b++ {
			quantQ5_1(dst[b*24:b*24+24], src[b*32:b*32+32])
		}
	case gguf.TypeQ4_K:
		for b := 0; b*qkK < len(src); b++ {
			quantQ4K(dst[b*144:b*144+144], src[b*qkK:b*qkK+qkK])
		}
	case gguf.TypeQ6_K:
		for b := 0; b*qkK < len(src); b++ {
			quantQ6K(dst[b*210:b*210+210], src[b*qkK:b*qkK+qkK])
		}
	}
	return nil
}

// roundf is C's roundf: half away from zero.
func roundf(x float32) float32 { return float32(math.Round(float64(x))) }

// nearestInt is ggml's nearest_int for the k-quants (round half to even
// via the 1.5·2²³ trick); the difference from roundf only matters at ties.
func nearestInt(x float32) int { return int(math.RoundToEven(float64(x))) }

func quantQ8_0(dst []byte, x []float32) {
	dst, x = dst[:34], x[:32]
	var amax float32
	for _, v := range x {
		amax = max(amax, abs32(v))
	}
	d := amax / 127
	var id float32
	if d != 0 {
		id = 1 / d
	}
	put16(dst, F32ToF16(d))
	for j, v := range x {
		dst[2+j] = byte(int8(roundf(float32(v * id))))
	}
}

// signedMax returns the element of largest magnitude, keeping its sign,
// first one on ties (ggml's "max" in the _0 quantizers).
func signedMax(x []float32) float32 {
	var amax, m float32
	for _, v := range x {
		if a := abs32(v); amax < a {
			amax, m = a, v
		}
	}
	return m
}

func quantQ4_0(dst []byte, x []float32) {
	dst, x = dst[:18], x[:32]
	d := signedMax(x) / -8
	var id float32
	if d != 0 {
		id = 1 / d
	}
	put16(dst, F32ToF16(d))
	for j := range 16 {
		x0, x1 := float32(x[j]*id), float32(x[j+16]*id)
		xi0 := min(15, int8(float32(x0+8.5)))
		xi1 := min(15, int8(float32(x1+8.5)))
		dst[2+j] = byte(xi0) | byte(xi1)<<4
	}
}

func minMax(x []float32) (lo, hi float32) {
	lo, hi = float32(math.MaxFloat32), -float32(math.MaxFloat32)
	for _, v := range x {
		lo, hi = min(lo, v), max(hi, v)
	}
	return lo, hi
}

func quantQ4_1(dst []byte, x []float32) {
	dst, x = dst[:20], x[:32]
	lo, hi := minMax(x)
	d := (hi - lo) / 15
	var id float32
	if d != 0 {
		id = 1 / d
	}
	put16(dst, F32ToF16(d))
	put16(dst[2:], F32ToF16(lo))
	for j := range 16 {
		x0, x1 := float32((x[j]-lo)*id), float32((x[j+16]-lo)*id)
		xi0 := min(15, int8(float32(x0+0.5)))
		xi1 := min(15, int8(float32(x1+0.5)))
		dst[4+j] = byte(xi0) | byte(xi1)<<4
	}
}

func quantQ5_0(dst []byte, x []float32) {
	dst, x = dst[:22], x[:32]
	d := signedMax(x) / -16
	var id float32
	if d != 0 {
		id = 1 / d
	}
	put16(dst, F32ToF16(d))
	var qh uint32
	for j := range 16 {
		x0, x1 := float32(x[j]*id), float32(x[j+16]*id)
		xi0 := uint8(min(31, int8(float32(x0+16.5))))
		xi1 := uint8(min(31, int8(float32(x1+16.5))))
		dst[6+j] = xi0&15 | (xi1&15)<<4
		qh |= uint32(xi0&0x10)>>4<<j | uint32(xi1&0x10)>>4<<(j+16)
	}
	dst[2], dst[3], dst[4], dst[5] = byte(qh), byte(qh>>8), byte(qh>>16), byte(qh>>24)
}

func quantQ5_1(dst []byte, x []float32) {
	dst, x = dst[:24], x[:32]
	lo, hi := minMax(x)
	d := (hi - lo) / 31
	var id float32
	if d != 0 {
		id = 1 / d
	}
	put16(dst, F32ToF16(d))
	put16(dst[2:], F32ToF16(lo))
	var qh uint32
	for j := range 16 {
		x0, x1 := float32((x[j]-lo)*id), float32((x[j+16]-lo)*id)
		xi0 := uint8(int8(float32(x0 + 0.5)))
		xi1 := uint8(int8(float32(x1 + 0.5)))
		dst[8+j] = xi0&15 | (xi1&15)<<4
		qh |= uint32(xi0&0x10)>>4<<j | uint32(xi1&0x10)>>4<<(j+16)
	}
	dst[4], dst[5], dst[6], dst[7] = byte(qh), byte(qh>>8), byte(qh>>16), byte(qh>>24)
}

// quantQ4K encodes one q4_K super-block as ggml's quantize_row_q4_K_ref
// does: each 32-element sub-block gets value = scale·q − min with q in
// 0..15, scale and min fitted by weighted least squares over a small
// search (makeQKX2Quants); the eight scales and mins are then rounded to
// 6-bit multiples of the super-block's f16 d and dmin, and the values
// requantized with those.
func quantQ4K(dst []byte, x []float32) {
	dst, x = dst[:144], x[:qkK]
	var L [qkK]uint8
	var weights [32]float32
	var scales, mins [8]float32
	var maxScale, maxMin float32
	for j := range 8 {
		xs := x[32*j : 32*j+32]
		var sumX2 float32
		for _, v := range xs {
			sumX2 += v * v
		}
		avX := float32(math.Sqrt(float64(sumX2 / 32)))
		for l, v := range xs {
			weights[l] = avX + abs32(v)
		}
		scales[j], mins[j] = makeQKX2Quants(15, xs, weights[:], L[32*j:32*j+32])
		maxScale, maxMin = max(maxScale, scales[j]), max(maxMin, mins[j])
	}
	var invScale, invMin float32
	if maxScale > 0 {
		invScale = 63 / maxScale
	}
	if maxMin > 0 {
		invMin = 63 / maxMin
	}
	sc := dst[4:16]
	clear(sc)
	for j := range 8 {
		ls := uint8(min(63, nearestInt(invScale*scales[j])))
		lm := uint8(min(63, nearestInt(invMin*mins[j])))
		if j < 4 {
			sc[j], sc[j+4] = ls, lm
		} else {
			sc[j+4] = ls&0xf | lm&0xf<<4
			sc[j-4] |= ls >> 4 << 6
			sc[j] |= lm >> 4 << 6
		}
	}
	put16(dst, F32ToF16(maxScale/63))
	put16(dst[2:], F32ToF16(maxMin/63))
	d, dmin := f16At(dst), f16At(dst[2:])
	for j := range 8 {
		ls, lm := scaleMinK4(j, sc)
		dd := d * float32(ls)
		if dd == 0 {
			continue
		}
		dm := dmin * float32(lm)
		for l := 32 * j; l < 32*j+32; l++ {
			L[l] = uint8(max(0, min(15, nearestInt((x[l]+dm)/dd))))
		}
	}
	qs := dst[16:144]
	for g := range 4 {
		for l := range 32 {
			qs[32*g+l] = L[64*g+l] | L[64*g+32+l]<<4
		}
	}
}

// makeQKX2Quants is ggml's make_qkx2_quants with its q4_K arguments
// (rmin −1, rdelta 0.1, 20 steps): it fits x ≈ scale·L − min, L in
// 0..nmax, min ≥ 0, minimizing the weighted squared error over a few
// candidate scales, and returns scale and min.
func makeQKX2Quants(nmax int, x, weights []float32, L []uint8) (scale, theMin float32) {
	const rmin, rdelta, nstep = -1, 0.1, 20
	lo, hi := minMax(x)
	lo = min(lo, 0)
	if hi == lo {
		clear(L[:len(x)])
		return 0, -lo
	}
	var sumW, sumX float32
	for i, v := range x {
		sumW += weights[i]
		sumX += weights[i] * v
	}
	iscale := float32(nmax) / (hi - lo)
	scale = 1 / iscale
	var bestErr float32
	for i, v := range x {
		l := max(0, min(nmax, nearestInt(iscale*(v-lo))))
		L[i] = uint8(l)
		diff := scale*float32(l) + lo - v
		bestErr += weights[i] * diff * diff
	}
	var aux [32]uint8
	for is := range nstep + 1 {
		iscale := (rmin + rdelta*float32(is) + float32(nmax)) / (hi - lo)
		var sumL, sumL2, sumXL float32
		for i, v := range x {
			l := max(0, min(nmax, nearestInt(iscale*(v-lo))))
			aux[i] = uint8(l)
			w := weights[i]
			sumL += w * float32(l)
			sumL2 += w * float32(l*l)
			sumXL += w * float32(l) * v
		}
		D := sumW*sumL2 - sumL*sumL
		if D <= 0 {
			continue
		}
		thisScale := (sumW*sumXL - sumX*sumL) / D
		thisMin := (sumL2*sumX - sumL*sumXL) / D
		if thisMin > 0 {
			thisMin, thisScale = 0, sumXL/sumL2
		}
		var cur float32
		for i, v := range x {
			diff := thisScale*float32(aux[i]) + thisMin - v
			cur += weights[i] * diff * diff
		}
		if cur < bestErr {
			copy(L, aux[:len(x)])
			bestErr, scale, lo = cur, thisScale, thisMin
		}
	}
	return scale, -lo
}

// quantQ6K encodes one q6_K super-block: each 16 elements get an int8
// scale (times the f16 super-block d) and 6-bit values q−32 in −32..31,
// laid out as ggml's quantize_row_q6_K_ref does.
func quantQ6K(dst []byte, x []float32) {
	dst, x = dst[:210], x[:qkK]
	var scales [16]float32
	var maxScale, maxAbs float32
	for ib := range 16 {
		m := signedMax(x[16*ib : 16*ib+16])
		scales[ib] = m / -32
		if a := abs32(scales[ib]); a > maxAbs {
			maxAbs, maxScale = a, scales[ib]
		}
	}
	for i := range dst {
		dst[i] = 0
	}
	if maxAbs == 0 {
		return
	}
	iscale := -128 / maxScale
	dh := F32ToF16(1 / iscale)
	d := F16ToF32(dh)
	put16(dst[208:], dh)
	var q [qkK]uint8
	for ib := range 16 {
		s := int8(min(127, nearestInt(iscale*scales[ib])))
		dst[192+ib] = byte(s)
		dd := d * float32(s)
		if dd == 0 {
			for l := 16 * ib; l < 16*ib+16; l++ {
				q[l] = 32
			}
			continue
		}
		for l := 16 * ib; l < 16*ib+16; l++ {
			q[l] = uint8(max(-32, min(31, nearestInt(x[l]/dd))) + 32)
		}
	}
	for n := range 2 {
		ql, qh, qq := dst[64*n:64*n+64], dst[128+32*n:128+32*n+32], q[128*n:128*n+128]
		for l := range 32 {
			q1, q2, q3, q4 := qq[l], qq[l+32], qq[l+64], qq[l+96]
			ql[l] = q1&0xf | (q3&0xf)<<4
			ql[l+32] = q2&0xf | (q4&0xf)<<4
			qh[l] = q1>>4 | (q2>>4)<<2 | (q3>>4)<<4 | (q4>>4)<<6
		}
	}
}

func abs32(x float32) float32 { return math.Float32frombits(math.Float32bits(x) &^ (1 << 31)) }
