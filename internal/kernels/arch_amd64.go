package kernels

import (
	"os"
	"unsafe"

	"golang.org/x/sys/cpu"
)

// asmImpl returns the AVX2+FMA kernel set (F16C comes with every such CPU
// but is checked too), or nil if the CPU lacks it.
func asmImpl() *impl {
	if !cpu.X86.HasAVX2 || !cpu.X86.HasFMA || !cpu.X86.HasF16C {
		return nil
	}
	a := *genericImpl
	a.name = "avx2"
	a.q8_0 = dotQ8_0Asm
	a.q4_0 = dotQ4_0Asm
	a.q8_0x4 = dotQ8_0x4Asm
	a.q4_0x4 = dotQ4_0x4Asm
	a.q4_1 = dotQ4_1Asm
	a.q4_1x4 = dotQ4_1x4Asm
	a.q5_0 = dotQ5_0Asm
	a.q5_1 = dotQ5_1Asm
	a.q4K = dotQ4KAsm
	a.q6K = dotQ6KAsm
	a.q4Kx4 = dotQ4Kx4Asm
	a.q6Kx4 = dotQ6Kx4Asm
	a.q5K = dotQ5KAsm
	a.q5Kx4 = dotQ5Kx4Asm
	a.f32 = dotF32Asm
	a.f16 = dotF16Asm
	a.bf16 = dotBF16Asm
	a.f32x4 = dotF32x4Asm
	a.f16x4 = dotF16x4Asm
	a.bf16x4 = dotBF16x4Asm
	a.quantQ8 = quantizeQ8Asm
	a.q4_0T, a.q8_0T = tilesQ4_0AVX2, tilesQ8_0AVX2
	a.attn = &attnSet{
		scoresF32x1: attnScoresF32x1, scoresF32x4: attnScoresF32x4,
		scoresF16x1: attnScoresF16x1, scoresF16x4: attnScoresF16x4,
		valuesF32x1: attnValuesF32x1, valuesF32x4: attnValuesF32x4,
		valuesF16x1: attnValuesF16x1, valuesF16x4: attnValuesF16x4,
	}
	a.toHalf = toHalfF16C
	if hasVNNI() {
		a.q4_0T, a.q8_0T = tilesQ4_0VNNI, tilesQ8_0VNNI
	}
	return &a
}

// hasVNNI reports whether the tile kernels may use AVX-512 VNNI's
// VPDPBUSD on ymm registers (EVEX encoded, so AVX512VL too).
// NPUMESH_KERNELS=avx2 keeps to AVX2; the results are the same bits.
func hasVNNI() bool {
	return cpu.X86.HasAVX512VNNI && cpu.X86.HasAVX512VL && os.Getenv("NPUMESH_KERNELS") != "avx2"
}

// The tile kernels of asmgen/tile.go, for the row-major and the packed
// layout.
var (
	tilesQ4_0AVX2 = &tileSet{
		r8v1: tileQ4_0_8x1AVX2, r8v4: tileQ4_0_8x4AVX2,
		p8v1: packedQ4_0_8x1AVX2, p8v4: packedQ4_0_8x4AVX2,
		offset: -8,
	}
	tilesQ4_0VNNI = &tileSet{
		r8v1: tileQ4_0_8x1VNNI, r8v4: tileQ4_0_8x4VNNI, r8v8: tileQ4_0_8x8VNNI,
		p8v1: packedQ4_0_8x1VNNI, p8v4: packedQ4_0_8x4VNNI, p8v8: packedQ4_0_8x8VNNI,
		offset: -8,
	}
	tilesQ8_0AVX2 = &tileSet{
		r8v1: tileQ8_0_8x1AVX2, r8v4: tileQ8_0_8x4AVX2,
		p8v1: packedQ8_0_8x1AVX2, p8v4: packedQ8_0_8x4AVX2,
		offset: 0,
	}
	tilesQ8_0VNNI = &tileSet{
		r8v1: tileQ8_0_8x1VNNI, r8v4: tileQ8_0_8x4VNNI, r8v8: tileQ8_0_8x8VNNI,
		p8v1: packedQ8_0_8x1VNNI, p8v4: packedQ8_0_8x4VNNI, p8v8: packedQ8_0_8x8VNNI,
		offset: -128,
	}
)

func quantizeQ8Asm(v *q8Vec, x []float32) {
	nb := len(x) / 32
	if nb == 0 {
		return
	}
	_, _, _, _, _ = x[nb*32-1], v.qs[nb*32-1], v.d[nb-1], v.s[nb-1], v.sum[nb-1]
	quantQ8AVX2(&x[0], &v.qs[0], &v.d[0], &v.s[0], &v.sum[0], nb)
}

func dotQ8_0Asm(w []byte, x *q8Vec) float32 {
	nb := len(x.d)
	if nb == 0 {
		return 0
	}
	_, _ = w[nb*34-1], x.qs[nb*32-1]
	return dotQ8_0AVX2(&w[0], &x.qs[0], &x.d[0], nb)
}

func dotQ4_0Asm(w []byte, x *q8Vec) float32 {
	nb := len(x.d)
	if nb == 0 {
		return 0
	}
	_, _ = w[nb*18-1], x.qs[nb*32-1]
	return dotQ4_0AVX2(&w[0], &x.qs[0], &x.d[0], &x.s[0], nb)
}

// x4Strides checks that xs are four vectors at equal strides (as MatMul's
// scratch lays them out) and returns the strides in bytes of qs and d.
func x4Strides(xs []q8Vec) (xstride, dstride int) {
	xs = xs[:4]
	nb := len(xs[0].d)
	for v := 1; v < 4; v++ {
		if len(xs[v].d) != nb || &xs[v].qs[0] != &xs[0].qs[:v*32*nb+1][v*32*nb] ||
			&xs[v].d[0] != &xs[0].d[:v*nb+1][v*nb] || &xs[v].s[0] != &xs[0].s[:v*nb+1][v*nb] {
			panic("kernels: four-vector kernel needs contiguous vectors")
		}
	}
	return 32 * nb, 4 * nb
}

func dotQ8_0x4Asm(w []byte, xs []q8Vec, out *[4]float32) {
	xstride, dstride := x4Strides(xs)
	nb := len(xs[0].d)
	_ = w[nb*34-1]
	dotQ8_0x4AVX2(&w[0], &xs[0].qs[0], &xs[0].d[0], nb, xstride, dstride, out)
}

func dotQ4_0x4Asm(w []byte, xs []q8Vec, out *[4]float32) {
	xstride, dstride := x4Strides(xs)
	nb := len(xs[0].d)
	_ = w[nb*18-1]
	dotQ4_0x4AVX2(&w[0], &xs[0].qs[0], &xs[0].d[0], &xs[0].s[0], nb, xstride, dstride, out)
}

func dotQ4_1Asm(w []byte, x *q8Vec) float32 {
	nb := len(x.d)
	if nb == 0 {
		return 0
	}
	_, _, _ = w[nb*20-1], x.qs[nb*32-1], x.s[nb-1]
	return dotQ4_1AVX2(&w[0], &x.qs[0], &x.d[0], &x.s[0], nb)
}

func dotQ4_1x4Asm(w []byte, xs []q8Vec, out *[4]float32) {
	xstride, dstride := x4Strides(xs)
	nb := len(xs[0].d)
	_, _ = w[nb*20-1], xs[0].s[nb-1]
	dotQ4_1x4AVX2(&w[0], &xs[0].qs[0], &xs[0].d[0], &xs[0].s[0], nb, xstride, dstride, out)
}

func dotQ5_0Asm(w []byte, x *q8Vec) float32 {
	nb := len(x.d)
	if nb == 0 {
		return 0
	}
	_, _, _ = w[nb*22-1], x.qs[nb*32-1], x.s[nb-1]
	return dotQ5_0AVX2(&w[0], &x.qs[0], &x.d[0], &x.s[0], nb)
}

func dotQ5_1Asm(w []byte, x *q8Vec) float32 {
	nb := len(x.d)
	if nb == 0 {
		return 0
	}
	_, _, _ = w[nb*24-1], x.qs[nb*32-1], x.s[nb-1]
	return dotQ5_1AVX2(&w[0], &x.qs[0], &x.d[0], &x.s[0], nb)
}

// The float kernels run the assembly over the whole multiples of 8 and
// finish the last n%8 elements here, the same way for one and four vectors.

// floatX4 checks that xs are four vectors of n elements at one stride (as
// MatMul passes them) and returns the stride in bytes.
func floatX4(xs [][]float32) int {
	xs = xs[:4]
	n := len(xs[0])
	base := uintptr(unsafe.Pointer(&xs[0][0]))
	stride := uintptr(unsafe.Pointer(&xs[1][0])) - base
	for v := 1; v < 4; v++ {
		if len(xs[v]) != n || uintptr(unsafe.Pointer(&xs[v][0]))-base != uintptr(v)*stride {
			panic("kernels: four-vector kernel needs vectors at one stride")
		}
	}
	return int(stride)
}

func dotF32Asm(w []byte, x []float32) float32 {
	n := len(x)
	if n == 0 {
		return 0
	}
	a, m := f32Row(w, n), n&^7
	var s float32
	if m > 0 {
		s = dotF32AVX2(&a[0], &x[0], m)
	}
	for i := m; i < n; i++ {
		s += a[i] * x[i]
	}
	return s
}

func dotF32x4Asm(w []byte, xs [][]float32, out *[4]float32) {
	stride, n := floatX4(xs), len(xs[0])
	a, m := f32Row(w, n), n&^7
	*out = [4]float32{}
	if m > 0 {
		dotF32x4AVX2(&a[0], &xs[0][0], m, stride, out)
	}
	for v, x := range xs[:4] {
		s := out[v]
		for i := m; i < n; i++ {
			s += a[i] * x[i]
		}
		out[v] = s
	}
}

// half16 converts the 16-bit float at b[0:2] (f16 or bf16).
type half16 func(b []byte) float32

func bf16At(b []byte) float32 { return BF16ToF32(le16(b)) }

func dotHalfAsm(w []byte, x []float32, kern func(*uint16, *float32, int) float32, conv half16) float32 {
	n := len(x)
	if n == 0 {
		return 0
	}
	w = w[:2*n]
	m := n &^ 7
	var s float32
	if m > 0 {
		s = kern((*uint16)(unsafe.Pointer(&w[0])), &x[0], m)
	}
	for i := m; i < n; i++ {
		s += conv(w[2*i:]) * x[i]
	}
	return s
}

func dotHalfx4Asm(w []byte, xs [][]float32, out *[4]float32, kern func(*uint16, *float32, int, int, *[4]float32), conv half16) {
	stride, n := floatX4(xs), len(xs[0])
	w = w[:2*n]
	m := n &^ 7
	*out = [4]float32{}
	if m > 0 {
		kern((*uint16)(unsafe.Pointer(&w[0])), &xs[0][0], m, stride, out)
	}
	for v, x := range xs[:4] {
		s := out[v]
		for i := m; i < n; i++ {
			s += conv(w[2*i:]) * x[i]
		}
		out[v] = s
	}
}

func dotF16Asm(w []byte, x []float32) float32 { return dotHalfAsm(w, x, dotF16AVX2, f16At) }
func dotF16x4Asm(w []byte, xs [][]float32, out *[4]float32) {
	dotHalfx4Asm(w, xs, out, dotF16x4AVX2, f16At)
}
func dotBF16Asm(w []byte, x []float32) float32 { return dotHalfAsm(w, x, dotBF16AVX2, bf16At) }
func dotBF16x4Asm(w []byte, xs [][]float32, out *[4]float32) {
	dotHalfx4Asm(w, xs, out, dotBF16x4AVX2, bf16At)
}

// kStride returns the byte distance between consecutive vectors of xs,
// which must be the same for their qs, d and bsums (MatMul lays the q8_K
// activations out as equal-sized records).
func kStride(xs []q8KVec) int {
	addr := func(v int) (q, d, b uintptr) {
		return uintptr(unsafe.Pointer(&xs[v].qs[0])), uintptr(unsafe.Pointer(&xs[v].d[0])), uintptr(unsafe.Pointer(&xs[v].bsums[0]))
	}
	q0, d0, b0 := addr(0)
	stride := int(uintptr(unsafe.Pointer(&xs[1].qs[0])) - q0)
	for v := 1; v < len(xs); v++ {
		q, d, b := addr(v)
		s := uintptr(v * stride)
		if len(xs[v].d) != len(xs[0].d) || q-q0 != s || d-d0 != s || b-b0 != s {
			panic("kernels: four-vector k-quant kernel needs activation records at one stride")
		}
	}
	return stride
}

func dotQ4KAsm(w []byte, x *q8KVec) float32 {
	nb := len(x.d)
	if nb == 0 {
		return 0
	}
	_, _, _ = w[nb*144-1], x.qs[nb*qkK-1], x.bsums[nb*16-1]
	return dotQ4KAVX2(&w[0], &x.qs[0], &x.d[0], &x.bsums[0], nb)
}

func dotQ4Kx4Asm(w []byte, xs []q8KVec, out *[4]float32) {
	xs = xs[:4]
	stride, nb := kStride(xs), len(xs[0].d)
	_, _, _ = w[nb*144-1], xs[0].qs[nb*qkK-1], xs[0].bsums[nb*16-1]
	dotQ4Kx4AVX2(&w[0], &xs[0].qs[0], &xs[0].d[0], &xs[0].bsums[0], nb, stride, out)
}

func dotQ5KAsm(w []byte, x *q8KVec) float32 {
	nb := len(x.d)
	if nb == 0 {
		return 0
	}
	_, _, _ = w[nb*176-1], x.qs[nb*qkK-1], x.bsums[nb*16-1]
	return dotQ5KAVX2(&w[0], &x.qs[0], &x.d[0], &x.bsums[0], nb)
}

func dotQ5Kx4Asm(w []byte, xs []q8KVec, out *[4]float32) {
	xs = xs[:4]
	stride, nb := kStride(xs), len(xs[0].d)
	_, _, _ = w[nb*176-1], xs[0].qs[nb*qkK-1], xs[0].bsums[nb*16-1]
	dotQ5Kx4AVX2(&w[0], &xs[0].qs[0], &xs[0].d[0], &xs[0].bsums[0], nb, stride, out)
}

func dotQ6KAsm(w []byte, x *q8KVec) float32 {
	nb := len(x.d)
	if nb == 0 {
		return 0
	}
	_, _, _ = w[nb*210-1], x.qs[nb*qkK-1], x.bsums[nb*16-1]
	return dotQ6KAVX2(&w[0], &x.qs[0], &x.d[0], &x.bsums[0], nb)
}

func dotQ6Kx4Asm(w []byte, xs []q8KVec, out *[4]float32) {
	xs = xs[:4]
	stride, nb := kStride(xs), len(xs[0].d)
	_, _, _ = w[nb*210-1], xs[0].qs[nb*qkK-1], xs[0].bsums[nb*16-1]
	dotQ6Kx4AVX2(&w[0], &xs[0].qs[0], &xs[0].d[0], &xs[0].bsums[0], nb, stride, out)
}

// readSum streams p for MeasureBandwidth; len(p) must be a multiple of 16.
func readSum(p []uint64) uint64 {
	if len(p) == 0 {
		return 0
	}
	if !cpu.X86.HasAVX2 {
		return readSumGeneric(p)
	}
	return readSumAVX2((*byte)(unsafe.Pointer(&p[0])), len(p)*8)
}
