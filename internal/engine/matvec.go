package engine

import (
	"math"
	"sync"
)

// matrix is a row-major weight matrix as GGUF stores it: rows of cols
// contiguous elements (ggml ne[0] = cols, ne[1] = rows). Exactly one of f32
// and f16 is set; both normally alias the file's mapping.
type matrix struct {
	rows, cols int
	f32        []float32
	f16        []uint16
}

// parallelMin is the number of multiply-adds below which a matrix-vector
// product stays on the calling goroutine: starting goroutines costs a few
// microseconds, more than a small product takes.
const parallelMin = 1 << 16

// matVec sets out = m·x, splitting the rows across up to threads goroutines.
// Each row is summed by one goroutine in a fixed order, so the result does
// not depend on threads.
func matVec(out []float32, m *matrix, x []float32, threads int) {
	out = out[:m.rows]
	x = x[:m.cols]
	if threads <= 1 || m.rows*m.cols < parallelMin || m.rows < 2*threads {
		m.rowsDot(out, x, 0, m.rows)
		return
	}
	chunk := (m.rows + threads - 1) / threads
	var wg sync.WaitGroup
	for lo := 0; lo < m.rows; lo += chunk {
		hi := min(lo+chunk, m.rows)
		wg.Go(func() { m.rowsDot(out, x, lo, hi) })
	}
	wg.Wait()
}

// rowsDot computes out[r] = m[r]·x for r in [lo, hi).
func (m *matrix) rowsDot(out, x []float32, lo, hi int) {
	n := m.cols
	if m.f32 != nil {
		for r := lo; r < hi; r++ {
			out[r] = dotF32(m.f32[r*n:(r+1)*n], x)
		}
		return
	}
	for r := lo; r < hi; r++ {
		out[r] = dotF16(m.f16[r*n:(r+1)*n], x)
	}
}

// matmulBatch sets dst = x·mᵀ for n activation rows: dst holds n rows of
// m.rows values and x n rows of m.cols values (the shape of
// kernels.MatMul, which will replace it). Each weight row is read once
// for all n rows (the row loop is outside the batch loop), so a step's
// cost in memory traffic does not grow with the batch. Row r of sequence
// j is dot(m[r], x[j]) summed exactly as matVec sums it, so batching never
// changes a result. The weight rows are split across up to threads
// goroutines.
func matmulBatch(dst []float32, m *matrix, x []float32, n, threads int) {
	if n == 1 {
		matVec(dst, m, x, threads)
		return
	}
	dst = dst[:n*m.rows]
	x = x[:n*m.cols]
	if threads <= 1 || n*m.rows*m.cols < parallelMin || m.rows < 2*threads {
		m.rowsDotBatch(dst, x, n, 0, m.rows)
		return
	}
	chunk := (m.rows + threads - 1) / threads
	var wg sync.WaitGroup
	for lo := 0; lo < m.rows; lo += chunk {
		hi := min(lo+chunk, m.rows)
		wg.Go(func() { m.rowsDotBatch(dst, x, n, lo, hi) })
	}
	wg.Wait()
}

// rowsDotBatch computes rows [lo, hi) of matmulBatch. F16 rows are
// converted once into a buffer and then multiplied as F32, which gives
// exactly dotF16's products and sums.
func (m *matrix) rowsDotBatch(dst, x []float32, n, lo, hi int) {
	cols, rows := m.cols, m.rows
	var buf []float32
	if m.f32 == nil {
		buf = make([]float32, cols)
	}
	for r := lo; r < hi; r++ {
		var w []float32
		if m.f32 != nil {
			w = m.f32[r*cols : (r+1)*cols]
		} else {
			m.row(buf, r)
			w = buf
		}
		for j := range n {
			dst[j*rows+r] = dotF32(w, x[j*cols:(j+1)*cols])
		}
	}
}

// row copies row r into dst as float32 (embedding lookup).
func (m *matrix) row(dst []float32, r int) {
	n := m.cols
	if m.f32 != nil {
		copy(dst, m.f32[r*n:(r+1)*n])
		return
	}
	tab := f16Table()
	for i, h := range m.f16[r*n : (r+1)*n] {
		dst[i] = tab[h]
	}
}

// dotF32 sums with four accumulators, which lets the CPU overlap the
// additions (about twice as fast as one running sum in pure Go). The order
// differs from llama2.c's single sum, which moves logits by ~1e-6; the
// greedy reference text is still reproduced exactly (a test checks).
func dotF32(w, x []float32) float32 {
	x = x[:len(w)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(w); i += 4 {
		w4, x4 := w[i:i+4:i+4], x[i:i+4:i+4]
		s0 += w4[0] * x4[0]
		s1 += w4[1] * x4[1]
		s2 += w4[2] * x4[2]
		s3 += w4[3] * x4[3]
	}
	for ; i < len(w); i++ {
		s0 += w[i] * x[i]
	}
	return (s0 + s1) + (s2 + s3)
}

func dotF16(w []uint16, x []float32) float32 {
	tab := f16Table()
	x = x[:len(w)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(w); i += 4 {
		w4, x4 := w[i:i+4:i+4], x[i:i+4:i+4]
		s0 += tab[w4[0]] * x4[0]
		s1 += tab[w4[1]] * x4[1]
		s2 += tab[w4[2]] * x4[2]
		s3 += tab[w4[3]] * x4[3]
	}
	for ; i < len(w); i++ {
		s0 += tab[w[i]] * x[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// f16Table maps every half-precision bit pattern to its float32 value; a
// 256 KiB lookup is much faster than converting bits on every multiply.
var f16Table = sync.OnceValue(func() *[1 << 16]float32 {
	var t [1 << 16]float32
	for i := range t {
		t[i] = f16ToF32(uint16(i))
	}
	return &t
})

// f16ToF32 converts IEEE 754 half precision to single precision exactly.
func f16ToF32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	var bits uint32
	switch {
	case exp == 0x1f: // inf, nan
		bits = sign | 0x7f800000 | mant<<13
	case exp == 0 && mant == 0:
		bits = sign
	case exp == 0: // subnormal: normalize the mantissa
		e := uint32(127 - 15 + 1)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		bits = sign | e<<23 | (mant&0x3ff)<<13
	default:
		bits = sign | (exp+127-15)<<23 | mant<<13
	}
	return math.Float32frombits(bits)
}
