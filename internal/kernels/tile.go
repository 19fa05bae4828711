package kernels

import (
	"math"
	"unsafe"
)

// tileSet is the tile kernels of one weight type (asmgen/tile.go): eight
// rows by 1, 4 or 8 activation vectors per pass. r8v8 may be nil (two
// r8v4 calls then).
type tileSet struct {
	r8v1, r8v4, r8v8 tileFn
	// p8v1, p8v4 and p8v8 are the same kernels for the packed layout
	// (PackInto); p8v8 may be nil.
	p8v1, p8v4, p8v8 packedFn
	// offset multiplies each activation block's Σq into the integer
	// block offsets that the kernels add to their sums: −8 for q4_0, −128
	// for q8_0's VNNI form (which multiplies w+128), else 0.
	offset int32
}

// tileFn multiplies eight weight rows (rb bytes apart, from w) by V q8
// activation records (x, xstride bytes apart; see q8TileVecs) over nb
// blocks and writes row r of vector v to out[v·ostride/4 + r].
type tileFn func(w *byte, rb int, x *byte, nb, xstride int, out *float32, ostride int)

// q8Tile is the activation side of a tile product: n records of stride
// bytes, each holding per block the scale d (float32) and offset·Σqs
// (int32), then the cols q8 values.
type q8Tile struct {
	rec    []uint32
	cols   int
	stride int // bytes
}

// q8TileVecs quantizes x for the tile kernels: the same q8 values and
// scales as q8Vecs, with offset·Σqs per block (tileSet.offset; exact:
// |Σqs| ≤ 32·127). Records are 64 bytes longer than their contents so
// that eight of them do not map to one L1 set.
func (sc *scratch) q8TileVecs(quant func(*q8Vec, []float32), x []float32, n, cols int, offset int32, pool *Pool) q8Tile {
	nb := cols / 32
	stride := 8*nb + cols + 64
	sc.rec = grow(sc.rec, n*stride/4)
	sc.d, sc.s, sc.sum, sc.q8 = grow(sc.d, n*nb), grow(sc.s, n*nb), grow(sc.sum, n*nb), grow(sc.q8, n)
	base := unsafe.Pointer(unsafe.SliceData(sc.rec))
	for i := range n {
		sc.q8[i] = q8Vec{qs: unsafe.Slice((*int8)(unsafe.Add(base, i*stride+8*nb)), cols), d: sc.d[i*nb : (i+1)*nb], s: sc.s[i*nb : (i+1)*nb], sum: sc.sum[i*nb : (i+1)*nb]}
	}
	pool.For(n, quantGrain(n, cols, pool), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			quant(&sc.q8[i], x[i*cols:(i+1)*cols])
			pairs := sc.rec[i*stride/4 : i*stride/4+2*nb]
			for b, d := range sc.q8[i].d {
				pairs[2*b] = math.Float32bits(d)
				pairs[2*b+1] = uint32(offset * sc.q8[i].sum[b])
			}
		}
	})
	return q8Tile{rec: sc.rec, cols: cols, stride: stride}
}

// tileLoop returns the body of a parallel tile product over the rows
// [lo,hi) (lo a multiple of 8): rows eight at a time (a last group of
// fewer rows in a padded copy), vectors eight, four, then one at a time. Each row's lane goes through the same operations
// whatever the group and the vector count, so MatMul equals MatVec.
func tileLoop(dst []float32, w []byte, rb, rows int, x q8Tile, n int, ts *tileSet) func(lo, hi int) {
	nb := x.cols / 32
	xstride := x.stride
	_, _, _ = w[rows*rb-1], x.rec[n*xstride/4-1], dst[n*rows-1]
	recAt := func(i int) *byte { return (*byte)(unsafe.Pointer(&x.rec[i*xstride/4])) }
	return func(lo, hi int) {
		// group runs the kernels over vectors [i0,i1) for the eight rows
		// at w8, writing vector i's eight results to out[(i−i0)·os:].
		group := func(w8 *byte, out []float32, os, i0, i1 int) {
			_ = out[(i1-i0-1)*os+7]
			at := func(i int) *float32 { return &out[(i-i0)*os] }
			i := i0
			for ; i+8 <= i1; i += 8 {
				if ts.r8v8 != nil {
					ts.r8v8(w8, rb, recAt(i), nb, xstride, at(i), 4*os)
					continue
				}
				ts.r8v4(w8, rb, recAt(i), nb, xstride, at(i), 4*os)
				ts.r8v4(w8, rb, recAt(i+4), nb, xstride, at(i+4), 4*os)
			}
			for ; i+4 <= i1; i += 4 {
				ts.r8v4(w8, rb, recAt(i), nb, xstride, at(i), 4*os)
			}
			for ; i < i1; i++ {
				ts.r8v1(w8, rb, recAt(i), nb, xstride, at(i), 4*os)
			}
		}
		for i0 := 0; i0 < n; i0 += vecTile {
			i1 := min(i0+vecTile, n)
			r := lo
			for ; r+8 <= hi; r += 8 {
				group(&w[r*rb], dst[i0*rows+r:], rows, i0, i1)
			}
			if r == hi {
				continue
			}
			// Fewer than eight rows: copy them, repeating the last, and
			// keep their lanes.
			m := hi - r
			pad := make([]byte, 8*rb)
			for k := range 8 {
				src := r + min(k, m-1)
				copy(pad[k*rb:(k+1)*rb], w[src*rb:(src+1)*rb])
			}
			tmp := make([]float32, 8*(i1-i0))
			group(&pad[0], tmp, 8, i0, i1)
			for i := i0; i < i1; i++ {
				copy(dst[i*rows+r:i*rows+hi], tmp[8*(i-i0):8*(i-i0)+m])
			}
		}
	}
}
