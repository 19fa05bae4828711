package kernels

import "math"

// q8Vec is an activation vector quantized for the 32-element block formats:
// like ggml's block_q8_1, but with d kept as float32 (not rounded to f16)
// and stored apart from the values so the assembly can stream qs.
type q8Vec struct {
	qs []int8    // the values, one per element, in −127..127
	d  []float32 // scale per 32 elements
	s  []float32 // d·Σqs per 32 elements, for the formats with a min (q4_1, q5_1)
}

// q8KVec is an activation vector quantized as ggml's block_q8_K, split
// into arrays: the k-quant dot products need the per-16 sums (bsums) to
// apply the sub-block mins.
type q8KVec struct {
	qs    []int8
	d     []float32 // scale per 256 elements
	bsums []int16   // Σqs per 16 elements
}

// quantizeQ8 fills v (already sized for len(x)) the way ggml's
// quantize_row_q8_0_ref does: d = max|x|/127, q = round(x/d).
func quantizeQ8(v *q8Vec, x []float32) {
	nb := len(x) / 32
	qs, d, s := v.qs[:nb*32], v.d[:nb], v.s[:nb]
	for b := range nb {
		xb, qb := x[b*32:b*32+32:b*32+32], qs[b*32:b*32+32:b*32+32]
		var amax float32
		for _, f := range xb {
			amax = max(amax, abs32(f))
		}
		db := amax / 127
		var id float32
		if db != 0 {
			id = 1 / db
		}
		var sum int32
		for j, f := range xb {
			q := int8(roundf(float32(f * id)))
			qb[j] = q
			sum += int32(q)
		}
		d[b], s[b] = db, db*float32(sum)
	}
}

// quantizeQ8K fills v as ggml's quantize_row_q8_K_ref does: the element of
// largest magnitude maps to −127.
func quantizeQ8K(v *q8KVec, x []float32) {
	nb := len(x) / qkK
	qs, d, bs := v.qs[:nb*qkK], v.d[:nb], v.bsums[:nb*16]
	for b := range nb {
		xb, qb := x[b*qkK:b*qkK+qkK:b*qkK+qkK], qs[b*qkK:b*qkK+qkK:b*qkK+qkK]
		var amax, mx float32
		for _, f := range xb {
			if a := abs32(f); a > amax {
				amax, mx = a, f
			}
		}
		if amax == 0 {
			d[b] = 0
			clear(qb)
			clear(bs[b*16 : b*16+16])
			continue
		}
		iscale := -127 / mx
		for j, f := range xb {
			qb[j] = int8(min(127, int(math.RoundToEven(float64(float32(iscale*f))))))
		}
		for g := range 16 {
			var sum int16
			for _, q := range qb[16*g : 16*g+16] {
				sum += int16(q)
			}
			bs[b*16+g] = sum
		}
		d[b] = 1 / iscale
	}
}
