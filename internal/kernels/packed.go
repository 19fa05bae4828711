package kernels

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	"github.com/npumesh/npumesh/internal/gguf"
)

// The packed (interleaved) weight layout re-arranges a q4_0 or q8_0
// matrix once, at load time, so that the tile kernels read everything
// with plain vector loads instead of transposing ggml's row-major blocks
// on every pass:
//
// Rows are taken in groups of 8 (a last partial group is padded with zero
// rows: zero scale, zero quants — compute them and discard the results).
// For group g and block b (32 weights per row per block), the packed block
// lives at byte offset (g*nb + b) * B8 where nb = cols/32 and:
//   - q4_0, B8 = 144: bytes [0,16) are the eight fp16 scales d of rows
//     8g..8g+7 in row order; then 4 chunks of 32 bytes: chunk c (c = 0..3),
//     row j occupies bytes 16 + 32c + 4j .. +3 and holds that row's block
//     quant bytes qs[4c..4c+3]. So the low nibbles of chunk c are weights
//     4c..4c+3 of each row and the high nibbles weights 16+4c..16+4c+3 —
//     one 32-byte load per chunk, no shuffles.
//   - q8_0, B8 = 272: 16 bytes of the eight fp16 scales, then 8 chunks of
//     32 bytes, chunk c row j = qs[4c..4c+3] of row j.
//
// Packed size is ceil(rows/8)*nb*B8 bytes: as many bytes per row as the
// row-major matrix, plus the padding rows of a last partial group.

// packedFn is a tileFn for the packed layout: it multiplies the eight
// rows of one packed group (p, nb blocks of B8 bytes) by V q8 activation
// records (x, xstride bytes apart; see q8TileVecs) and writes row r of
// vector v to out[v·ostride/4 + r].
type packedFn func(p *byte, x *byte, nb, xstride int, out *float32, ostride int)

// packedB8 returns B8, the bytes of one packed block of typ (eight rows
// by 32 weights), and panics, naming fn, for a type without a packed
// layout.
func packedB8(fn string, typ gguf.Type) int {
	switch typ {
	case gguf.TypeQ4_0:
		return 144
	case gguf.TypeQ8_0:
		return 272
	}
	panic(fmt.Sprintf("kernels.%s: no packed layout for %v weights (q4_0 and q8_0 only; check CanPack when loading)", fn, typ))
}

// tilesFor returns im's tile kernels for typ, nil if it has none.
func tilesFor(im *impl, typ gguf.Type) *tileSet {
	switch typ {
	case gguf.TypeQ4_0:
		return im.q4_0T
	case gguf.TypeQ8_0:
		return im.q8_0T
	}
	return nil
}

// CanPack reports whether typ has packed kernels in the kernel set in
// use: q4_0 and q8_0 with the amd64 tile kernels; false with
// NPUMESH_KERNELS=generic (or after SetGeneric(true)) and on other
// architectures. Where it is false, PackInto and MatMulPacked still work
// for q4_0 and q8_0, through a portable path that unpacks each group of
// rows again before the row kernels: correct, but slower than MatMul on
// the row-major matrix, so a loader should keep that one instead.
func CanPack(typ gguf.Type) bool {
	ts := tilesFor(active.Load(), typ)
	return ts != nil && ts.p8v1 != nil
}

// PackedSize is the number of bytes PackInto writes for a rows×cols
// matrix of typ: ceil(rows/8)·(cols/32)·B8. It panics if typ has no
// packed layout (anything but q4_0 and q8_0) or cols is not a whole
// number of blocks.
func PackedSize(typ gguf.Type, rows, cols int) int {
	return packedSize("PackedSize", typ, rows, cols)
}

func packedSize(fn string, typ gguf.Type, rows, cols int) int {
	b8 := packedB8(fn, typ)
	rowBytes(fn, typ, cols) // whole blocks
	if rows < 0 || cols < 0 {
		panic(fmt.Sprintf("kernels.%s: negative size rows=%d cols=%d", fn, rows, cols))
	}
	return (rows + 7) / 8 * (cols / 32) * b8
}

// PackInto writes w (rows×cols of typ in ggml's row-major layout) to dst
// in the packed layout (see above; the padding rows of a last partial
// group are written as zeros). Panics on wrong lengths like MatMul does:
// w must be exactly rows·RowSize(typ, cols) bytes and dst exactly
// PackedSize(typ, rows, cols).
func PackInto(dst, w []byte, typ gguf.Type, rows, cols int) {
	const fn = "PackInto"
	size := packedSize(fn, typ, rows, cols)
	rb := rowBytes(fn, typ, cols)
	switch {
	case len(w) != rows*rb:
		panic(fmt.Sprintf("kernels.%s: %d×%d %v matrix is %d bytes, got %d", fn, rows, cols, typ, rows*rb, len(w)))
	case len(dst) != size:
		panic(fmt.Sprintf("kernels.%s: packed %d×%d %v matrix is %d bytes, got %d", fn, rows, cols, typ, size, len(dst)))
	}
	nb, b8 := cols/32, packedB8(fn, typ)
	bsize, chunks := b8/8, (b8-16)/32
	le := binary.LittleEndian
	for g := 0; 8*g < rows; g++ {
		grp := dst[g*nb*b8 : (g+1)*nb*b8]
		for j := range 8 {
			r := 8*g + j
			if r >= rows {
				for b := range nb {
					blk := grp[b*b8 : (b+1)*b8]
					le.PutUint16(blk[2*j:], 0)
					for c := range chunks {
						le.PutUint32(blk[16+32*c+4*j:], 0)
					}
				}
				continue
			}
			row := w[r*rb : (r+1)*rb]
			for b := range nb {
				src, blk := row[b*bsize:(b+1)*bsize], grp[b*b8:(b+1)*b8]
				le.PutUint16(blk[2*j:], le.Uint16(src))
				for c := range chunks {
					le.PutUint32(blk[16+32*c+4*j:], le.Uint32(src[2+4*c:]))
				}
			}
		}
	}
}

// unpackGroup writes the first m rows of the packed group grp (nb blocks
// of typ) to rows, row-major: PackInto's inverse.
func unpackGroup(rows, grp []byte, typ gguf.Type, m, nb int) {
	b8 := packedB8("MatMulPacked", typ)
	bsize, chunks := b8/8, (b8-16)/32
	rb := nb * bsize
	le := binary.LittleEndian
	for j := range m {
		row := rows[j*rb : (j+1)*rb]
		for b := range nb {
			dst, blk := row[b*bsize:(b+1)*bsize], grp[b*b8:(b+1)*b8]
			le.PutUint16(dst, le.Uint16(blk[2*j:]))
			for c := range chunks {
				le.PutUint32(dst[2+4*c:], le.Uint32(blk[16+32*c+4*j:]))
			}
		}
	}
}

// MatMulPacked is MatMul for a packed matrix: same arguments, same
// results bit for bit, with p the packed matrix (PackInto) in place of
// w. With the tile kernels (CanPack) it runs their packed forms, which
// compute the same integer block sums and float operations as MatMul's;
// without, it unpacks each group of eight rows into a scratch buffer and
// runs the same row kernels as MatMul. It panics like MatMul, and if typ
// has no packed layout or len(p) is not PackedSize(typ, rows, cols).
func MatMulPacked(dst []float32, p []byte, typ gguf.Type, rows, cols int, x []float32, n int, pool *Pool) {
	matMulPacked("MatMulPacked", []PackedPart{{Dst: dst, P: p, Rows: rows}}, typ, cols, x, n, pool)
}

// PackedPart is one matrix of a MatMulPackedMulti: P is a packed Rows×cols
// matrix (PackInto) and Dst receives its n×Rows results.
type PackedPart struct {
	Dst  []float32
	P    []byte
	Rows int
}

// MatMulPackedMulti is MatMulPacked for several packed matrices of typ
// with cols columns that multiply the same x (a layer's query, key and
// value projections; its gate and up projections). Each part's results are
// MatMulPacked's bit for bit, but x is quantized once and all the parts'
// rows are split over the pool in one loop, so the threads meet once
// instead of once per matrix. It panics as MatMulPacked does for any part.
func MatMulPackedMulti(parts []PackedPart, typ gguf.Type, cols int, x []float32, n int, pool *Pool) {
	matMulPacked("MatMulPackedMulti", parts, typ, cols, x, n, pool)
}

// tailWork is the least work (weight bytes times vectors, up to vecTile)
// of one chunk of a packed product, whose chunks shrink toward its end
// (Pool.ForGuided). With fixed chunks (chunkRows: up to four a thread,
// a megabyte or more of the larger matrices) the thread that finished
// first waited for the other's last chunk: CPU profiles of a batch-1
// decode step (1.1B q4_0) had the two threads in the kernel 89% of their
// time, and 92% with chunks down to 64 KiB.
const tailWork = 64 << 10

func matMulPacked(fn string, parts []PackedPart, typ gguf.Type, cols int, x []float32, n int, pool *Pool) {
	b8 := packedB8(fn, typ)
	if n < 0 {
		panic(fmt.Sprintf("kernels.%s: negative size n=%d", fn, n))
	}
	rb := rowBytes(fn, typ, cols)
	// The parts' rows follow each other in one index space, each part from
	// a multiple of 8, so that every chunk starts on a group of eight rows.
	live := make([]PackedPart, 0, len(parts))
	var offs []int
	total := 0
	for _, pt := range parts {
		if pt.Rows < 0 {
			panic(fmt.Sprintf("kernels.%s: negative size rows=%d", fn, pt.Rows))
		}
		size := packedSize(fn, typ, pt.Rows, cols)
		if empty(fn, "packed ", typ, pt.Rows, cols, n, size, len(pt.P), pt.Dst, x) {
			continue
		}
		live, offs = append(live, pt), append(offs, total)
		total += (pt.Rows + 7) &^ 7
	}
	if len(live) == 0 {
		return
	}
	im := active.Load()
	nb := cols / 32
	// Chunks of whole groups of eight rows, shrinking toward the end.
	least := (tailWork/(rb*min(n, vecTile)) + 7) &^ 7
	if total*rb*n < serialBytes {
		pool = nil
	}
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	loops := make([]func(lo, hi int), len(live))
	if ts := tilesFor(im, typ); ts != nil && ts.p8v1 != nil {
		xt := sc.q8TileVecs(im.quantQ8, x, n, cols, ts.offset, pool)
		for i, pt := range live {
			loops[i] = packedLoop(pt.Dst, pt.P, nb*b8, pt.Rows, xt, n, ts)
		}
		pool.ForGuided(total, 8, least, overParts(live, offs, loops))
		return
	}
	// The portable path: MatMul's row kernels on unpacked copies.
	one, four := im.q4_0, im.q4_0x4
	if typ == gguf.TypeQ8_0 {
		one, four = im.q8_0, im.q8_0x4
	}
	vs := sc.q8Vecs(im.quantQ8, x, n, cols, pool)
	sc.out4 = grow(sc.out4, 4*total)
	for i, pt := range live {
		dst, p, rows := pt.Dst, pt.P, pt.Rows
		outs := sc.out4[4*offs[i]:]
		loops[i] = func(lo, hi int) {
			buf := make([]byte, 8*rb)
			for r := lo; r < hi; r += 8 {
				m := min(8, hi-r)
				unpackGroup(buf, p[r/8*nb*b8:(r/8+1)*nb*b8], typ, m, nb)
				// dst[r:] and outs[4r:]: row k of the group is row r+k.
				rowsLoop(dst[r:], buf, rb, rows, vs, outs[4*r:], one, four)(0, m)
			}
		}
	}
	pool.ForGuided(total, 8, least, overParts(live, offs, loops))
}

// overParts returns the body of a loop over the joint row index of parts
// (part i's rows from offs[i]): it runs loops[i] on the rows of each part
// that [lo,hi) covers, in the part's own numbering.
func overParts(parts []PackedPart, offs []int, loops []func(lo, hi int)) func(lo, hi int) {
	return func(lo, hi int) {
		for i, pt := range parts {
			l, h := max(lo, offs[i]), min(hi, offs[i]+pt.Rows)
			if l < h {
				loops[i](l-offs[i], h-offs[i])
			}
		}
	}
}

// packedLoop is tileLoop for a packed matrix (gb bytes per group of
// eight rows): the same kernels' packed forms over the rows [lo,hi) (lo a
// multiple of 8), eight, four, then one vector at a time. A last group
// of fewer than eight rows needs no copy: its padding lanes are computed
// into a scratch and dropped.
func packedLoop(dst []float32, p []byte, gb, rows int, x q8Tile, n int, ts *tileSet) func(lo, hi int) {
	nb := x.cols / 32
	xstride := x.stride
	_, _, _ = p[(rows+7)/8*gb-1], x.rec[n*xstride/4-1], dst[n*rows-1]
	recAt := func(i int) *byte { return (*byte)(unsafe.Pointer(&x.rec[i*xstride/4])) }
	return func(lo, hi int) {
		// group runs the kernels over vectors [i0,i1) for the packed
		// group at g8, writing vector i's eight results to out[(i−i0)·os:].
		group := func(g8 *byte, out []float32, os, i0, i1 int) {
			_ = out[(i1-i0-1)*os+7]
			at := func(i int) *float32 { return &out[(i-i0)*os] }
			i := i0
			for ; i+8 <= i1; i += 8 {
				if ts.p8v8 != nil {
					ts.p8v8(g8, recAt(i), nb, xstride, at(i), 4*os)
					continue
				}
				ts.p8v4(g8, recAt(i), nb, xstride, at(i), 4*os)
				ts.p8v4(g8, recAt(i+4), nb, xstride, at(i+4), 4*os)
			}
			for ; i+4 <= i1; i += 4 {
				ts.p8v4(g8, recAt(i), nb, xstride, at(i), 4*os)
			}
			for ; i < i1; i++ {
				ts.p8v1(g8, recAt(i), nb, xstride, at(i), 4*os)
			}
		}
		for i0 := 0; i0 < n; i0 += vecTile {
			i1 := min(i0+vecTile, n)
			for r := lo; r < hi; r += 8 {
				g8 := &p[r/8*gb]
				if r+8 <= hi {
					group(g8, dst[i0*rows+r:], rows, i0, i1)
					continue
				}
				m := hi - r
				tmp := make([]float32, 8*(i1-i0))
				group(g8, tmp, 8, i0, i1)
				for i := i0; i < i1; i++ {
					copy(dst[i*rows+r:i*rows+hi], tmp[8*(i-i0):8*(i-i0)+m])
				}
			}
		}
	}
}
