package kernels

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"github.com/npumesh/npumesh/internal/gguf"
)

// impl is one complete set of row kernels. Every field is set: the
// assembly set starts as a copy of the portable one and replaces what it
// has.
type impl struct {
	name                         string
	q8_0, q4_0, q4_1, q5_0, q5_1 func(w []byte, x *q8Vec) float32
	q4K, q5K, q6K                func(w []byte, x *q8KVec) float32
	f32, f16, bf16               func(w []byte, x []float32) float32
}

var genericImpl = &impl{
	name: "generic",
	q8_0: dotQ8_0Generic, q4_0: dotQ4_0Generic, q4_1: dotQ4_1Generic, q5_0: dotQ5_0Generic, q5_1: dotQ5_1Generic,
	q4K: dotQ4KGeneric, q5K: dotQ5KGeneric, q6K: dotQ6KGeneric,
	f32: dotF32Generic, f16: dotF16Generic, bf16: dotBF16Generic,
}

// active is the kernel set in use: the platform's assembly set (asmImpl,
// nil where there is none or the CPU lacks the features) unless the
// environment says NPUMESH_KERNELS=generic or SetGeneric(true) was called.
var active atomic.Pointer[impl]

func init() {
	active.Store(genericImpl)
	if a := asmImpl(); a != nil && os.Getenv("NPUMESH_KERNELS") != "generic" {
		active.Store(a)
	}
}

// SetGeneric forces the portable kernels (on) or restores the best
// kernels for this CPU (off). It is meant for tests and benchmarks that
// compare the two, and takes effect for products started afterwards.
func SetGeneric(on bool) {
	if a := asmImpl(); !on && a != nil {
		active.Store(a)
		return
	}
	active.Store(genericImpl)
}

// Implementation names the kernel set in use: "avx2" or "generic".
func Implementation() string { return active.Load().name }

// CanMatVec reports whether MatVec and MatMul accept weights of typ.
func CanMatVec(typ gguf.Type) bool {
	switch typ {
	case gguf.TypeF32, gguf.TypeF16, gguf.TypeBF16, gguf.TypeQ8_0, gguf.TypeQ4_0, gguf.TypeQ4_1,
		gguf.TypeQ5_0, gguf.TypeQ5_1, gguf.TypeQ4_K, gguf.TypeQ5_K, gguf.TypeQ6_K:
		return true
	}
	return false
}

// MatVec computes dst[r] = W[r,:]·x for r in [0,rows), where w holds the
// rows×cols matrix W row-major in ggml's encoding of typ (exactly
// rows·RowSize(typ, cols) bytes). For quantized types x is first quantized
// to 8 bits per block (q8_0 or q8_K, as llama.cpp does), so the result
// differs from the exact product by that rounding: at most
// Σ|W[r,i]|·max|x_block|/254 per row.
//
// The rows are split over pool (nil runs on the caller). MatVec panics if
// CanMatVec(typ) is false or a length does not match; see the package
// comment.
func MatVec(dst []float32, w []byte, typ gguf.Type, rows, cols int, x []float32, pool *Pool) {
	matMul("MatVec", dst, w, typ, rows, cols, x, 1, pool)
}

// MatMul computes n products at once: dst[i·rows+r] = W[r,:]·x[i·cols:(i+1)·cols]
// for i in [0,n). Each weight row is read from memory once for all n
// vectors, which is what makes batched decoding cheaper than n MatVecs.
// Results equal those of n separate MatVec calls bit for bit.
func MatMul(dst []float32, w []byte, typ gguf.Type, rows, cols int, x []float32, n int, pool *Pool) {
	matMul("MatMul", dst, w, typ, rows, cols, x, n, pool)
}

// scratch holds the quantized activations of one product; reused through
// scratchPool so a decode step does not allocate them per call.
type scratch struct {
	qs    []int8
	d, s  []float32
	bsums []int16
	q8    []q8Vec
	q8K   []q8KVec
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// rowGrain is how many weight bytes one chunk of a parallel product
// covers: large enough that handing out chunks costs nothing measurable,
// small enough that two to a few dozen threads balance.
const rowGrain = 32 << 10

func matMul(fn string, dst []float32, w []byte, typ gguf.Type, rows, cols int, x []float32, n int, pool *Pool) {
	if !CanMatVec(typ) {
		panic(fmt.Sprintf("kernels.%s: no kernel for %v weights (check CanMatVec when loading)", fn, typ))
	}
	if rows < 0 || n < 0 {
		panic(fmt.Sprintf("kernels.%s: negative size rows=%d n=%d", fn, rows, n))
	}
	rb := rowBytes(fn, typ, cols)
	switch {
	case len(w) != rows*rb:
		panic(fmt.Sprintf("kernels.%s: %d×%d %v matrix is %d bytes, got %d", fn, rows, cols, typ, rows*rb, len(w)))
	case len(x) < n*cols:
		panic(fmt.Sprintf("kernels.%s: x has %d elements, want %d vectors of %d", fn, len(x), n, cols))
	case len(dst) < n*rows:
		panic(fmt.Sprintf("kernels.%s: dst has %d elements, want %d vectors of %d", fn, len(dst), n, rows))
	}
	if rows == 0 || n == 0 {
		return
	}
	im := active.Load()
	grain := max(1, rowGrain/max(rb, 1)/n)

	var fdot func([]byte, []float32) float32
	var qdot func([]byte, *q8Vec) float32
	var kdot func([]byte, *q8KVec) float32
	switch typ {
	case gguf.TypeF32:
		fdot = im.f32
	case gguf.TypeF16:
		fdot = im.f16
	case gguf.TypeBF16:
		fdot = im.bf16
	case gguf.TypeQ8_0:
		qdot = im.q8_0
	case gguf.TypeQ4_0:
		qdot = im.q4_0
	case gguf.TypeQ4_1:
		qdot = im.q4_1
	case gguf.TypeQ5_0:
		qdot = im.q5_0
	case gguf.TypeQ5_1:
		qdot = im.q5_1
	case gguf.TypeQ4_K:
		kdot = im.q4K
	case gguf.TypeQ5_K:
		kdot = im.q5K
	case gguf.TypeQ6_K:
		kdot = im.q6K
	}

	if fdot != nil {
		pool.parallel(rows, grain, func(lo, hi int) {
			for r := lo; r < hi; r++ {
				row := w[r*rb : (r+1)*rb]
				for i := range n {
					dst[i*rows+r] = fdot(row, x[i*cols:(i+1)*cols])
				}
			}
		})
		return
	}

	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	sc.qs = grow(sc.qs, n*cols)
	if qdot != nil {
		nb := cols / 32
		sc.d, sc.s, sc.q8 = grow(sc.d, n*nb), grow(sc.s, n*nb), grow(sc.q8, n)
		for i := range n {
			v := &sc.q8[i]
			*v = q8Vec{qs: sc.qs[i*cols : (i+1)*cols], d: sc.d[i*nb : (i+1)*nb], s: sc.s[i*nb : (i+1)*nb]}
			quantizeQ8(v, x[i*cols:(i+1)*cols])
		}
		vs := sc.q8
		pool.parallel(rows, grain, func(lo, hi int) {
			for r := lo; r < hi; r++ {
				row := w[r*rb : (r+1)*rb]
				for i := range vs {
					dst[i*rows+r] = qdot(row, &vs[i])
				}
			}
		})
		return
	}
	nb := cols / qkK
	sc.d, sc.bsums, sc.q8K = grow(sc.d, n*nb), grow(sc.bsums, n*nb*16), grow(sc.q8K, n)
	for i := range n {
		v := &sc.q8K[i]
		*v = q8KVec{qs: sc.qs[i*cols : (i+1)*cols], d: sc.d[i*nb : (i+1)*nb], bsums: sc.bsums[i*nb*16 : (i+1)*nb*16]}
		quantizeQ8K(v, x[i*cols:(i+1)*cols])
	}
	vs := sc.q8K
	pool.parallel(rows, grain, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			row := w[r*rb : (r+1)*rb]
			for i := range vs {
				dst[i*rows+r] = kdot(row, &vs[i])
			}
		}
	})
}
