package kernels

// tileFn multiplies a tile of R weight rows (rb bytes apart, from w) by V
// q8 activation vectors (qs at xq, xstride bytes apart; block scales at
// xd and block offsets at xo, dstride bytes apart) over nb ≥ 1 blocks,
// and writes row r of vector v to out[v·ostride/4 + r]. R and V are the
// function's; see asmgen/tile.go.
type tileFn func(w *byte, rb int, xq *int8, xd, xo *float32, nb, xstride, dstride int, out *float32, ostride int)

// tileSet is the tile kernels of one weight type. r1v8 and r1v4 serve
// batches, r1v1 single vectors; r4v1 (optional) would take single vectors
// four rows at a time, but reading four rows side by side from DRAM was
// slower in the engine than one row's stream (docs/performance.md), so
// none is generated at present.
type tileSet struct {
	r1v1, r4v1, r1v4, r1v8 tileFn
	// offset multiplies each activation block's Σq into the block
	// offsets xo that the kernels add (scaled); 0 when they take none.
	offset int32
}

// q8Tile is the activation side of a tile product: n vectors of cols
// q8 values (qs), and per 32-element block a scale (d) and an offset
// (xo). Vector i's qs start at i·stride bytes (stride = cols+64: at a
// stride of cols, a multiple of 4 KiB in most models, the eight vectors
// of a tile would all map to one L1 set).
type q8Tile struct {
	qs     []int8
	d, xo  []float32
	cols   int
	stride int
}

// q8TileVecs quantizes x for the tile kernels: the same q8 values and
// scales as q8Vecs, plus, when offset ≠ 0, xo[b] = offset·Σqs over block b
// (exact in float32: |Σqs| ≤ 32·127).
func (sc *scratch) q8TileVecs(quant func(*q8Vec, []float32), x []float32, n, cols int, offset int32, pool *Pool) q8Tile {
	nb := cols / 32
	stride := cols + 64
	sc.qs = grow(sc.qs, n*stride)
	sc.d, sc.s, sc.sum, sc.q8 = grow(sc.d, n*nb), grow(sc.s, n*nb), grow(sc.sum, n*nb), grow(sc.q8, n)
	sc.xo = grow(sc.xo, n*nb)
	for i := range n {
		sc.q8[i] = q8Vec{qs: sc.qs[i*stride : i*stride+cols], d: sc.d[i*nb : (i+1)*nb], s: sc.s[i*nb : (i+1)*nb], sum: sc.sum[i*nb : (i+1)*nb]}
	}
	pool.parallel(n, max(1, 16384/cols), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			quant(&sc.q8[i], x[i*cols:(i+1)*cols])
			if offset != 0 {
				for b, s := range sc.q8[i].sum {
					sc.xo[i*nb+b] = float32(offset * s)
				}
			}
		}
	})
	return q8Tile{qs: sc.qs, d: sc.d, xo: sc.xo, cols: cols, stride: stride}
}

// tileLoop returns the body of a parallel tile product over the rows
// [lo,hi): vectors eight, then four, then one at a time (single vectors
// four rows at a time). Every dst element is computed by the same
// sequence of operations whatever the tile, so MatMul equals MatVec.
func tileLoop(dst []float32, w []byte, rb, rows int, x q8Tile, n int, ts *tileSet) func(lo, hi int) {
	cols, xstride := x.cols, x.stride
	nb := cols / 32
	dstride, ostride := 4*nb, 4*rows
	// The kernels read whole rows, vectors and dst tiles; the indexing
	// below checks the first element of each, these the extents.
	_, _, _, _, _ = w[rows*rb-1], x.qs[(n-1)*xstride+cols-1], x.d[n*nb-1], x.xo[n*nb-1], dst[n*rows-1]
	return func(lo, hi int) {
		for i0 := 0; i0 < n; i0 += vecTile {
			i1 := min(i0+vecTile, n)
			i := i0
			for ; i+8 <= i1; i += 8 {
				for r := lo; r < hi; r++ {
					ts.r1v8(&w[r*rb], rb, &x.qs[i*xstride], &x.d[i*nb], &x.xo[i*nb], nb, xstride, dstride, &dst[i*rows+r], ostride)
				}
			}
			for ; i+4 <= i1; i += 4 {
				for r := lo; r < hi; r++ {
					ts.r1v4(&w[r*rb], rb, &x.qs[i*xstride], &x.d[i*nb], &x.xo[i*nb], nb, xstride, dstride, &dst[i*rows+r], ostride)
				}
			}
			for ; i < i1; i++ {
				r := lo
				for ; ts.r4v1 != nil && r+4 <= hi; r += 4 {
					ts.r4v1(&w[r*rb], rb, &x.qs[i*xstride], &x.d[i*nb], &x.xo[i*nb], nb, xstride, dstride, &dst[i*rows+r], ostride)
				}
				for ; r < hi; r++ {
					ts.r1v1(&w[r*rb], rb, &x.qs[i*xstride], &x.d[i*nb], &x.xo[i*nb], nb, xstride, dstride, &dst[i*rows+r], ostride)
				}
			}
		}
	}
}
