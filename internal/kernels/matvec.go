package kernels

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/npumesh/npumesh/internal/gguf"
)

// impl is one complete set of row kernels. Every one-vector kernel is
// set (the assembly set starts as a copy of the portable one and replaces
// what it has); the four-vector forms are optional.
type impl struct {
	name                         string
	q8_0, q4_0, q4_1, q5_0, q5_1 func(w []byte, x *q8Vec) float32
	q4K, q5K, q6K                func(w []byte, x *q8KVec) float32
	f32, f16, bf16               func(w []byte, x []float32) float32
	// quantQ8 quantizes activations for the 32-element formats; every
	// implementation gives the same bits as quantizeQ8.
	quantQ8 func(v *q8Vec, x []float32)

	// Optional four-vector forms for MatMul: out[v] must equal the
	// one-vector kernel on xs[v] bit for bit. xs holds four vectors that
	// lie at equal strides in one scratch buffer.
	q8_0x4, q4_0x4, q4_1x4 func(w []byte, xs []q8Vec, out *[4]float32)
	q4Kx4, q5Kx4, q6Kx4    func(w []byte, xs []q8KVec, out *[4]float32)
	f32x4, f16x4, bf16x4   func(w []byte, xs [][]float32, out *[4]float32)

	// Optional tile kernels (several rows × several vectors per pass),
	// which MatVec and MatMul then use instead of the row kernels.
	q8_0T, q4_0T *tileSet

	// Optional attention kernels (attn.go); nil runs the portable loops.
	attn *attnSet
	// Optional: n (a multiple of 8) floats to half floats, as F32ToF16.
	toHalf func(dst *uint16, src *float32, n int)
}

var genericImpl = &impl{
	name: "generic",
	q8_0: dotQ8_0Generic, q4_0: dotQ4_0Generic, q4_1: dotQ4_1Generic, q5_0: dotQ5_0Generic, q5_1: dotQ5_1Generic,
	q4K: dotQ4KGeneric, q5K: dotQ5KGeneric, q6K: dotQ6KGeneric,
	f32: dotF32Generic, f16: dotF16Generic, bf16: dotBF16Generic,
	quantQ8: quantizeQ8,
}

// active is the kernel set in use: the platform's assembly set (asmImpl,
// nil where there is none or the CPU lacks the features) unless the
// environment says NPUMESH_KERNELS=generic or SetGeneric(true) was called.
var active atomic.Pointer[impl]

// asmKernels is asmImpl, built once.
var asmKernels = sync.OnceValue(asmImpl)

func init() {
	active.Store(genericImpl)
	if a := asmKernels(); a != nil && os.Getenv("NPUMESH_KERNELS") != "generic" {
		active.Store(a)
	}
}

// SetGeneric forces the portable kernels (on) or restores the best
// kernels for this CPU (off). It is meant for tests and benchmarks that
// compare the two, and takes effect for products started afterwards.
func SetGeneric(on bool) {
	if a := asmKernels(); !on && a != nil {
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
	qs   []int8
	d, s []float32
	sum  []int32
	q8   []q8Vec
	// q8_K activations are records of qs, d and bsums, so that the
	// four-vector kernels step from one vector to the next by one stride.
	krec []uint64
	q8K  []q8KVec
	// The tile kernels' activation records.
	rec []uint32
	// The float vectors of an F32/F16/BF16 product.
	fx [][]float32
	// Per row, the four results of a four-vector kernel.
	out4 []float32
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// chunkWork is the least work (weight bytes times vectors, up to
// vecTile) that one chunk of a parallel product covers.
const chunkWork = 512 << 10

// chunkRows is the rows per chunk of a parallel product: a few chunks per
// thread (so that a thread the shared machine slows takes fewer), a
// multiple of the thread count (so that none is left with an extra one),
// and chunks of at least chunkWork. Small chunks cost more than their
// dispatch: two threads taking alternate 32 KiB chunks of one matrix
// streamed it at 13-17 GB/s where halves went at 30-35 (q4_0, 4096×4096,
// this 2-core machine), so each thread should read long runs of rows.
func chunkRows(rows, rb, n, threads int) int {
	work := rows * rb * min(n, vecTile)
	per := min(max(work/(threads*chunkWork), 1), 4)
	return max(1, (rows+threads*per-1)/(threads*per))
}

// serialBytes is the product size (weight bytes × vectors) below which
// the caller does it alone: waking a sleeping worker costs microseconds,
// about what a product of this size takes on one core.
const serialBytes = 64 << 10

func matMul(fn string, dst []float32, w []byte, typ gguf.Type, rows, cols int, x []float32, n int, pool *Pool) {
	if !CanMatVec(typ) {
		panic(fmt.Sprintf("kernels.%s: no kernel for %v weights (check CanMatVec when loading)", fn, typ))
	}
	if rows < 0 || n < 0 {
		panic(fmt.Sprintf("kernels.%s: negative size rows=%d n=%d", fn, rows, n))
	}
	rb := rowBytes(fn, typ, cols)
	if empty(fn, "", typ, rows, cols, n, rows*rb, len(w), dst, x) {
		return
	}
	im := active.Load()
	var fdot func([]byte, []float32) float32
	var fdot4 func([]byte, [][]float32, *[4]float32)
	var qdot func([]byte, *q8Vec) float32
	var kdot func([]byte, *q8KVec) float32
	var qdot4 func([]byte, []q8Vec, *[4]float32)
	var kdot4 func([]byte, []q8KVec, *[4]float32)
	var tiles *tileSet
	switch typ {
	case gguf.TypeF32:
		fdot, fdot4 = im.f32, im.f32x4
	case gguf.TypeF16:
		fdot, fdot4 = im.f16, im.f16x4
	case gguf.TypeBF16:
		fdot, fdot4 = im.bf16, im.bf16x4
	case gguf.TypeQ8_0:
		qdot, qdot4, tiles = im.q8_0, im.q8_0x4, im.q8_0T
	case gguf.TypeQ4_0:
		qdot, qdot4, tiles = im.q4_0, im.q4_0x4, im.q4_0T
	case gguf.TypeQ4_1:
		qdot, qdot4 = im.q4_1, im.q4_1x4
	case gguf.TypeQ5_0:
		qdot = im.q5_0
	case gguf.TypeQ5_1:
		qdot = im.q5_1
	case gguf.TypeQ4_K:
		kdot, kdot4 = im.q4K, im.q4Kx4
	case gguf.TypeQ5_K:
		kdot, kdot4 = im.q5K, im.q5Kx4
	case gguf.TypeQ6_K:
		kdot, kdot4 = im.q6K, im.q6Kx4
	}
	grain := chunkRows(rows, rb, n, pool.Threads())
	if rows*rb*n < serialBytes {
		pool = nil
	}
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	if tiles != nil {
		// Chunks of whole eight-row groups.
		grain = (grain + 7) &^ 7
		xt := sc.q8TileVecs(im.quantQ8, x, n, cols, tiles.offset, pool)
		pool.For(rows, grain, tileLoop(dst, w, rb, rows, xt, n, tiles))
		return
	}
	sc.out4 = grow(sc.out4, 4*rows)
	if fdot != nil {
		sc.fx = grow(sc.fx, n)
		xs := sc.fx
		for i := range xs {
			xs[i] = x[i*cols : (i+1)*cols]
		}
		if pool == nil {
			// Called here, the closures do not escape: small products
			// (attention's, thousands per step) allocate nothing.
			rowsLoop(dst, w, rb, rows, xs, sc.out4, func(row []byte, v *[]float32) float32 { return fdot(row, *v) }, fdot4)(0, rows)
		} else {
			pool.For(rows, grain, rowsLoop(dst, w, rb, rows, xs, sc.out4, func(row []byte, v *[]float32) float32 { return fdot(row, *v) }, fdot4))
		}
		clear(xs) // do not keep the caller's activations reachable from the pool
		return
	}
	if qdot != nil {
		pool.For(rows, grain, rowsLoop(dst, w, rb, rows, sc.q8Vecs(im.quantQ8, x, n, cols, pool), sc.out4, qdot, qdot4))
		return
	}
	pool.For(rows, grain, rowsLoop(dst, w, rb, rows, sc.q8KVecs(x, n, cols, pool), sc.out4, kdot, kdot4))
}

// quantGrain is how many of n activation vectors of cols elements one
// chunk of their quantization takes: about 16K elements, and no more than
// a thread's share, so that a decode batch (8 vectors of 2048) is split
// over the threads instead of quantized by the caller while they wait.
func quantGrain(n, cols int, pool *Pool) int {
	return max(1, min(16384/max(cols, 1), (n+pool.Threads()-1)/pool.Threads()))
}

// empty checks a product's lengths (the matrix is want bytes, got given;
// label names its layout in the message), panicking as MatVec documents,
// and reports whether there is nothing left to compute: no rows or
// vectors, or no columns (dst is then zeroed).
func empty(fn, label string, typ gguf.Type, rows, cols, n, want, got int, dst, x []float32) bool {
	switch {
	case got != want:
		panic(fmt.Sprintf("kernels.%s: %s%d×%d %v matrix is %d bytes, got %d", fn, label, rows, cols, typ, want, got))
	case len(x) < n*cols:
		panic(fmt.Sprintf("kernels.%s: x has %d elements, want %d vectors of %d", fn, len(x), n, cols))
	case len(dst) < n*rows:
		panic(fmt.Sprintf("kernels.%s: dst has %d elements, want %d vectors of %d", fn, len(dst), n, rows))
	}
	if rows == 0 || n == 0 {
		return true
	}
	if cols == 0 {
		clear(dst[:n*rows])
		return true
	}
	return false
}

// vecTile is how many activation vectors a batched product takes per pass
// over a chunk of rows: 16 vectors of 4096 q8 values (64 KiB) stay in L1
// and L2 while the rows stream past them, and a batch of more than 16
// reads the chunk's rows once per pass (from L2 or L3 after the first).
const vecTile = 16

// rowsLoop returns the body of a parallel product: for the rows [lo,hi)
// and each tile of vectors, one (or, with four, four at a time) row
// kernel per row and vector. Each dst element is computed by the same
// kernel whatever n and the tiling, so MatMul equals repeated MatVec.
// outs holds four results per row for the four-vector kernel (a slice of
// the scratch, so that no chunk allocates).
func rowsLoop[V any](dst []float32, w []byte, rb, rows int, vs []V, outs []float32, one func([]byte, *V) float32, four func([]byte, []V, *[4]float32)) func(lo, hi int) {
	return func(lo, hi int) {
		for i0 := 0; i0 < len(vs); i0 += vecTile {
			i1 := min(i0+vecTile, len(vs))
			for r := lo; r < hi; r++ {
				row := w[r*rb : (r+1)*rb]
				out := (*[4]float32)(outs[4*r : 4*r+4])
				i := i0
				for ; four != nil && i+4 <= i1; i += 4 {
					four(row, vs[i:i+4], out)
					for v, o := range out {
						dst[(i+v)*rows+r] = o
					}
				}
				for ; i < i1; i++ {
					dst[i*rows+r] = one(row, &vs[i])
				}
			}
		}
	}
}

// q8Vecs quantizes the n vectors of x (cols each) to q8 (32-element
// blocks), spreading a batch over pool.
func (sc *scratch) q8Vecs(quant func(*q8Vec, []float32), x []float32, n, cols int, pool *Pool) []q8Vec {
	nb := cols / 32
	sc.qs = grow(sc.qs, n*cols)
	sc.d, sc.s, sc.sum, sc.q8 = grow(sc.d, n*nb), grow(sc.s, n*nb), grow(sc.sum, n*nb), grow(sc.q8, n)
	for i := range n {
		sc.q8[i] = q8Vec{qs: sc.qs[i*cols : (i+1)*cols], d: sc.d[i*nb : (i+1)*nb], s: sc.s[i*nb : (i+1)*nb], sum: sc.sum[i*nb : (i+1)*nb]}
	}
	pool.For(n, quantGrain(n, cols, pool), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			quant(&sc.q8[i], x[i*cols:(i+1)*cols])
		}
	})
	return sc.q8
}

// q8KVecs quantizes the n vectors of x (cols each) to q8_K records,
// spreading a batch over pool.
func (sc *scratch) q8KVecs(x []float32, n, cols int, pool *Pool) []q8KVec {
	nb := cols / qkK
	rec := (cols + 4*nb + 32*nb + 31) &^ 31 // bytes per vector
	sc.krec, sc.q8K = grow(sc.krec, n*rec/8), grow(sc.q8K, n)
	base := unsafe.Pointer(unsafe.SliceData(sc.krec))
	for i := range n {
		r := unsafe.Add(base, i*rec)
		sc.q8K[i] = q8KVec{
			qs:    unsafe.Slice((*int8)(r), cols),
			d:     unsafe.Slice((*float32)(unsafe.Add(r, cols)), nb),
			bsums: unsafe.Slice((*int16)(unsafe.Add(r, cols+4*nb)), 16*nb),
		}
	}
	pool.For(n, quantGrain(n, cols, pool), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			quantizeQ8K(&sc.q8K[i], x[i*cols:(i+1)*cols])
		}
	})
	return sc.q8K
}
