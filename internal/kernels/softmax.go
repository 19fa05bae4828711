package kernels

// Softmax sets x to softmax(scale·x): e^(scale·(x_i − max x)), divided by
// their sum. The maximum and the sum are taken in eight lanes, x[8i+j] in
// lane j, folded as lanes8 says, and the rest past the last multiple of
// eight after that, so the assembly passes (amd64) and the portable loops
// give the same bits. A NaN anywhere makes every result NaN (through the
// sum).
func Softmax(x []float32, scale float32) {
	if len(x) == 0 {
		return
	}
	m := len(x) &^ 7
	mx := x[0]
	if v, ok := whole8(x, maxF32AVX2, maxGeneric); ok {
		mx = v
	}
	for _, v := range x[m:] {
		mx = maxRule(v, mx)
	}
	if m > 0 && active.Load() != genericImpl {
		shiftScaleAVX2(&x[0], m, mx, scale)
	} else {
		shiftScaleGeneric(x[:m], mx, scale)
	}
	shiftScaleGeneric(x[m:], mx, scale)
	Exp(x)
	sum, _ := whole8(x, sumF32AVX2, sumGeneric)
	for _, v := range x[m:] {
		sum += v
	}
	inv := 1 / sum
	for i := range x {
		x[i] *= inv
	}
}

// whole8 reduces the whole eights of x (len(x)&^7 floats) in eight lanes:
// with the assembly pass when the assembly kernels are active, else with
// its portable twin. ok is false, and the result 0, when x has fewer than
// eight.
func whole8(x []float32, asm func(*float32, int) float32, generic func([]float32) float32) (r float32, ok bool) {
	m := len(x) &^ 7
	if m == 0 {
		return 0, false
	}
	if active.Load() != genericImpl {
		return asm(&x[0], m), true
	}
	return generic(x[:m]), true
}

// maxRule is VMAXPS's maximum: v if v > m, else m (so m if either is NaN).
func maxRule(v, m float32) float32 {
	if v > m {
		return v
	}
	return m
}

// lanes8 folds eight lanes into one as the assembly does: lane j with
// j+4, then j with j+2, then 0 with 1; op(v, a) is the new a.
func lanes8(l *[8]float32, op func(v, a float32) float32) float32 {
	for j := range 4 {
		l[j] = op(l[j+4], l[j])
	}
	l[0], l[1] = op(l[2], l[0]), op(l[3], l[1])
	return op(l[1], l[0])
}

// maxGeneric is maxF32AVX2: len(x) a multiple of 8, at least 8.
func maxGeneric(x []float32) float32 {
	var l [8]float32
	for j := range l {
		l[j] = x[0]
	}
	for i := 0; i < len(x); i += 8 {
		for j, v := range (*[8]float32)(x[i : i+8]) {
			l[j] = maxRule(v, l[j])
		}
	}
	return lanes8(&l, maxRule)
}

// sumGeneric is sumF32AVX2: len(x) a multiple of 8, at least 8.
func sumGeneric(x []float32) float32 {
	var l [8]float32
	for i := 0; i < len(x); i += 8 {
		for j, v := range (*[8]float32)(x[i : i+8]) {
			l[j] += v
		}
	}
	return lanes8(&l, func(v, a float32) float32 { return a + v })
}

// shiftScaleGeneric sets x[i] = (x[i]−sub)·mul.
func shiftScaleGeneric(x []float32, sub, mul float32) {
	for i, v := range x {
		x[i] = (v - sub) * mul
	}
}
