package kernels

import "math"

// RMSNorm sets out[i] = w[i]·(x[i]/rms(x)), rms(x) = sqrt(Σx²/n + eps),
// with n = len(x); out and w must be at least as long as x, and out may
// be x. The sum of squares is taken in eight lanes (as Softmax's sum) and
// the rest in order after them, so the assembly (amd64) and the portable
// loops give the same bits.
func RMSNorm(out, x, w []float32, eps float32) {
	n := len(x)
	if n == 0 {
		return
	}
	out, w = out[:n], w[:n]
	m := n &^ 7
	ss, _ := whole8(x, sumSqF32AVX2, sumSqGeneric)
	for _, v := range x[m:] {
		ss += v * v
	}
	ss = ss/float32(n) + eps
	inv := float32(1 / math.Sqrt(float64(ss)))
	i := 0
	if m > 0 && active.Load() != genericImpl {
		normScaleAVX2(&out[0], &x[0], &w[0], m, inv)
		i = m
	}
	for ; i < n; i++ {
		out[i] = w[i] * (inv * x[i])
	}
}

// sumSqGeneric is sumSqF32AVX2: len(x) a multiple of 8, at least 8.
func sumSqGeneric(x []float32) float32 {
	var l [8]float32
	for i := 0; i < len(x); i += 8 {
		for j, v := range (*[8]float32)(x[i : i+8]) {
			l[j] += v * v
		}
	}
	return lanes8(&l, func(v, a float32) float32 { return a + v })
}
