package kernels

import "math"

// q8Vec is an activation vector quantized for the 32-element block formats:
// like ggml's block_q8_1, but with d kept as float32 (not rounded to f16)
// and stored apart from the values so the assembly can stream qs.
type q8Vec struct {
	qs []int8    // the values, one per element, in −127..127
	d  []float32 // scale per 32 elements
	s  []float32 // d·Σqs per 32 elements, for the formats with a min (q4_1, q5_1)
	// Σqs per 32 elements, for the formats with an offset (q4_0, q5_0).
	sum []int32
}

// q8KVec is an activation vector quantized as ggml's block_q8_K, split
// into arrays: the k-quant dot products need the per-16 sums (bsums) to
// apply the sub-block mins.
type q8KVec struct {
	qs    []int8
	d     []float32 // scale per 256 elements
	bsums []int16   // Σqs per 16 elements
}

// quantizeQ8 fills v (already sized for len(x)) the way llama.cpp's AVX2
// quantize_row_q8_0 does: d = max|x|/127, q = x·(1/d) rounded half to
// even (the reference C rounds half away from zero; ties are rare and
// either is within the d/2 bound). The assembly quantQ8AVX2 does the same
// float operations and must stay bit-identical (a test checks); the
// explicit float32 conversions keep the compiler from fusing x·(1/d) into
// the rounding addition (it may on arm64, and on amd64 with GOAMD64=v3).
func quantizeQ8(v *q8Vec, x []float32) {
	nb := len(x) / 32
	qs, d, s, sums := v.qs[:nb*32], v.d[:nb], v.s[:nb], v.sum[:nb]
	for b := range nb {
		xb, qb := x[b*32:b*32+32:b*32+32], qs[b*32:b*32+32:b*32+32]
		// max |x| on the bit patterns: for non-negative floats the
		// integer order is the float order, and an integer max compiles
		// to a conditional move (the float max builtin, with its NaN and
		// ±0 rules, took a third of the time).
		var mbits uint32
		for _, f := range xb {
			mbits = max(mbits, math.Float32bits(f)&^(1<<31))
		}
		amax := math.Float32frombits(mbits)
		db := amax / 127
		var id float32
		if db != 0 {
			id = 1 / db
		}
		var sum int32
		for j, f := range xb {
			q := int8(roundEven(float32(f * id)))
			qb[j] = q
			sum += int32(q)
		}
		d[b], s[b], sums[b] = db, db*float32(sum), sum
	}
}

// quantizeQ8K fills v as ggml's quantize_row_q8_K_ref does: the element of
// largest magnitude maps to −127.
func quantizeQ8K(v *q8KVec, x []float32) {
	nb := len(x) / qkK
	qs, d, bs := v.qs[:nb*qkK], v.d[:nb], v.bsums[:nb*16]
	for b := range nb {
		xb, qb := x[b*qkK:b*qkK+qkK:b*qkK+qkK], qs[b*qkK:b*qkK+qkK:b*qkK+qkK]
		// The element of largest magnitude, first of equals, found as in
		// quantizeQ8: a branch-free max of the magnitudes' bits, then a
		// search for the first element that has it.
		var mbits uint32
		for _, f := range xb {
			mbits = max(mbits, math.Float32bits(f)&^(1<<31))
		}
		var mx float32
		for _, f := range xb {
			if math.Float32bits(f)&^(1<<31) == mbits {
				mx = f
				break
			}
		}
		if mbits == 0 {
			d[b] = 0
			clear(qb)
			clear(bs[b*16 : b*16+16])
			continue
		}
		iscale := -127 / mx
		for g := range 16 {
			xg, qg := xb[16*g:16*g+16:16*g+16], qb[16*g:16*g+16:16*g+16]
			var sum int32
			for j, f := range xg {
				q := min(127, roundEven(float32(iscale*f)))
				qg[j] = int8(q)
				sum += q
			}
			bs[b*16+g] = int16(sum)
		}
		d[b] = 1 / iscale
	}
}

// roundEven rounds f (|f| < 2²²) to the nearest integer, ties to even, as
// ggml's nearest_int does: adding 1.5·2²³ leaves the integer in the low
// mantissa bits. Cheaper than a float64 round trip in the hot loops.
func roundEven(f float32) int32 {
	return int32(math.Float32bits(f+12582912)&0x7fffff) - 0x400000
}
