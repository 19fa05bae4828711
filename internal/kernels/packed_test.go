package kernels

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/npumesh/npumesh/internal/gguf"
)

var packedTypes = []gguf.Type{gguf.TypeQ4_0, gguf.TypeQ8_0}

// packedTestSets returns the kernel sets MatMulPacked is tested on: the
// portable one and, where there are assembly kernels, tileVariants (the
// row kernels, the AVX2 and, if the CPU has it, the VNNI tile kernels).
// Tests store them in active directly, so NPUMESH_KERNELS=generic does
// not hide the assembly forms.
func packedTestSets() []tileVariant {
	sets := []tileVariant{{"generic", genericImpl}}
	if a := asmKernels(); a != nil {
		sets = append(sets, tileVariants(a)...)
	}
	return sets
}

func pack(typ gguf.Type, w []byte, rows, cols int) []byte {
	p := make([]byte, PackedSize(typ, rows, cols))
	PackInto(p, w, typ, rows, cols)
	return p
}

// TestPackLayout checks PackInto byte by byte against the layout's
// definition, padding rows included, and unpackGroup against PackInto.
func TestPackLayout(t *testing.T) {
	r := rand.New(rand.NewPCG(41, 42))
	for _, typ := range packedTypes {
		const rows, cols = 19, 96
		nb := cols / 32
		bs := int(typ.TypeSize())
		b8 := map[gguf.Type]int{gguf.TypeQ4_0: 144, gguf.TypeQ8_0: 272}[typ]
		rb, _ := RowSize(typ, cols)
		w := randomRows(r, typ, rows, cols)
		if got, want := PackedSize(typ, rows, cols), 3*nb*b8; got != want {
			t.Fatalf("%v: PackedSize(%d, %d) = %d, want %d", typ, rows, cols, got, want)
		}
		p := bytes.Repeat([]byte{0xa5}, PackedSize(typ, rows, cols))
		PackInto(p, w, typ, rows, cols)
		for g := range 3 {
			for b := range nb {
				blk := p[(g*nb+b)*b8 : (g*nb+b+1)*b8]
				for j := range 8 {
					var src []byte // row 8g+j's block b, zeros for padding
					if row := 8*g + j; row < rows {
						src = w[row*rb+b*bs : row*rb+(b+1)*bs]
					} else {
						src = make([]byte, bs)
					}
					if !bytes.Equal(blk[2*j:2*j+2], src[:2]) {
						t.Fatalf("%v group %d block %d row %d: scale % x, want % x", typ, g, b, j, blk[2*j:2*j+2], src[:2])
					}
					for c := range (bs - 2) / 4 {
						if got, want := blk[16+32*c+4*j:16+32*c+4*j+4], src[2+4*c:2+4*c+4]; !bytes.Equal(got, want) {
							t.Fatalf("%v group %d block %d row %d chunk %d: % x, want % x", typ, g, b, j, c, got, want)
						}
					}
				}
			}
		}
		back := make([]byte, 8*rb)
		for g := range 3 {
			m := min(8, rows-8*g)
			unpackGroup(back, p[g*nb*b8:(g+1)*nb*b8], typ, m, nb)
			if !bytes.Equal(back[:m*rb], w[8*g*rb:(8*g+m)*rb]) {
				t.Fatalf("%v: group %d does not unpack to its rows", typ, g)
			}
		}
	}
}

// TestMatMulPackedEqualsMatMul: on every kernel set, MatMulPacked on the
// packed matrix gives MatMul's bits on the row-major one, for row counts
// that are and are not multiples of 8, serial and pooled.
func TestMatMulPackedEqualsMatMul(t *testing.T) {
	defer active.Store(active.Load())
	r := rand.New(rand.NewPCG(43, 44))
	pool := NewPool(3)
	defer pool.Close()
	check := func(t *testing.T, typ gguf.Type, rows, cols, n int, w, p []byte) {
		t.Helper()
		x := randomVec(r, n*cols)
		want := make([]float32, n*rows)
		MatMul(want, w, typ, rows, cols, x, n, nil)
		for _, pl := range []*Pool{nil, pool} {
			got := make([]float32, n*rows+1)
			got[n*rows] = 42 // must stay
			MatMulPacked(got, p, typ, rows, cols, x, n, pl)
			for i := range want {
				if got[i] != want[i] {
					t.Fatalf("%v %d×%d n=%d pool=%v: dst[%d] = %g, MatMul %g", typ, rows, cols, n, pl != nil, i, got[i], want[i])
				}
			}
			if got[n*rows] != 42 {
				t.Fatalf("%v %d×%d n=%d: wrote past dst[%d]", typ, rows, cols, n, n*rows)
			}
		}
	}
	for _, set := range packedTestSets() {
		t.Run(set.name, func(t *testing.T) {
			active.Store(set.im)
			for _, typ := range packedTypes {
				for _, cols := range []int{32, 96, 4096, 5632} {
					for _, rows := range []int{1, 8, 13, 43} {
						w := randomRows(r, typ, rows, cols)
						p := pack(typ, w, rows, cols)
						for _, n := range []int{1, 3, 4, 8, 13, 21} {
							check(t, typ, rows, cols, n, w, p)
						}
					}
				}
				// Every vector count, across vecTile.
				const rows, cols = 21, 96
				w := randomRows(r, typ, rows, cols)
				p := pack(typ, w, rows, cols)
				for n := 1; n <= 40; n++ {
					check(t, typ, rows, cols, n, w, p)
				}
			}
		})
	}
}

// TestMatMulPackedMultiEqualsEach: on every kernel set, each part of a
// MatMulPackedMulti gets what MatMulPacked gives it alone, bit for bit,
// with parts whose rows are and are not multiples of 8 (and an empty one),
// serially and on a pool.
func TestMatMulPackedMultiEqualsEach(t *testing.T) {
	defer active.Store(active.Load())
	r := rand.New(rand.NewPCG(45, 46))
	pool := NewPool(3)
	defer pool.Close()
	for _, set := range packedTestSets() {
		t.Run(set.name, func(t *testing.T) {
			active.Store(set.im)
			for _, typ := range packedTypes {
				for _, cols := range []int{96, 2048} {
					rowsOf := []int{64, 13, 0, 16, 43}
					for _, n := range []int{1, 3, 8, 21} {
						x := randomVec(r, n*cols)
						var parts []PackedPart
						var want [][]float32
						for _, rows := range rowsOf {
							p := pack(typ, randomRows(r, typ, rows, cols), rows, cols)
							w := make([]float32, n*rows)
							MatMulPacked(w, p, typ, rows, cols, x, n, nil)
							want = append(want, w)
							dst := make([]float32, n*rows+1)
							dst[n*rows] = 42 // must stay
							parts = append(parts, PackedPart{Dst: dst, P: p, Rows: rows})
						}
						for _, pl := range []*Pool{nil, pool} {
							MatMulPackedMulti(parts, typ, cols, x, n, pl)
							for i, pt := range parts {
								for j, v := range want[i] {
									if pt.Dst[j] != v {
										t.Fatalf("%v cols=%d n=%d pool=%v part %d (%d rows): dst[%d] = %g, alone %g", typ, cols, n, pl != nil, i, pt.Rows, j, pt.Dst[j], v)
									}
								}
								if pt.Dst[n*pt.Rows] != 42 {
									t.Fatalf("%v part %d: wrote past its dst", typ, i)
								}
								clear(pt.Dst[:n*pt.Rows])
							}
						}
					}
				}
			}
		})
	}
}

// TestCanPack: CanPack follows the kernel set in use.
func TestCanPack(t *testing.T) {
	defer active.Store(active.Load())
	for _, set := range packedTestSets() {
		active.Store(set.im)
		for _, typ := range allTypes {
			want := (typ == gguf.TypeQ4_0 || typ == gguf.TypeQ8_0) && set.im.q4_0T != nil
			if got := CanPack(typ); got != want {
				t.Errorf("%s: CanPack(%v) = %v, want %v", set.name, typ, got, want)
			}
		}
	}
	active.Store(genericImpl)
	if CanPack(gguf.TypeQ4_0) {
		t.Error("generic kernels: CanPack(Q4_0) = true")
	}
}

// TestPackedPanics: wrong types and lengths panic with a message naming
// the function and the sizes, as MatMul's do.
func TestPackedPanics(t *testing.T) {
	w := make([]byte, 9*18)
	p := make([]byte, 2*144)
	x := make([]float32, 32)
	dst := make([]float32, 9)
	cases := []panicCase{
		{"size type", "kernels.PackedSize: no packed layout for Q4_1", func() { PackedSize(gguf.TypeQ4_1, 8, 32) }},
		{"size partial block", "not a whole number", func() { PackedSize(gguf.TypeQ4_0, 8, 31) }},
		{"pack short w", "kernels.PackInto: 9×32 Q4_0 matrix is 162 bytes, got 144", func() { PackInto(p, w[:144], gguf.TypeQ4_0, 9, 32) }},
		{"pack short dst", "kernels.PackInto: packed 9×32 Q4_0 matrix is 288 bytes, got 144", func() { PackInto(p[:144], w, gguf.TypeQ4_0, 9, 32) }},
		{"matmul type", "kernels.MatMulPacked: no packed layout for F16", func() { MatMulPacked(dst, p, gguf.TypeF16, 9, 32, x, 1, nil) }},
		{"matmul short p", "kernels.MatMulPacked: packed 9×32 Q4_0 matrix is 288 bytes, got 144", func() { MatMulPacked(dst, p[:144], gguf.TypeQ4_0, 9, 32, x, 1, nil) }},
		{"matmul short x", "kernels.MatMulPacked: x has 32 elements, want 2 vectors", func() { MatMulPacked(make([]float32, 18), p, gguf.TypeQ4_0, 9, 32, x, 2, nil) }},
		{"matmul short dst", "kernels.MatMulPacked: dst has 8 elements", func() { MatMulPacked(dst[:8], p, gguf.TypeQ4_0, 9, 32, x, 1, nil) }},
		{"multi short part", "kernels.MatMulPackedMulti: packed 9×32 Q4_0 matrix is 288 bytes, got 144", func() {
			MatMulPackedMulti([]PackedPart{{Dst: dst, P: p, Rows: 9}, {Dst: dst, P: p[:144], Rows: 9}}, gguf.TypeQ4_0, 32, x, 1, nil)
		}},
		{"multi negative rows", "kernels.MatMulPackedMulti: negative size rows=-1", func() {
			MatMulPackedMulti([]PackedPart{{Dst: dst, P: p, Rows: -1}}, gguf.TypeQ4_0, 32, x, 1, nil)
		}},
	}
	expectPanics(t, cases)
}

func TestPackedZeroSizes(t *testing.T) {
	for _, typ := range packedTypes {
		if n := PackedSize(typ, 0, 64); n != 0 {
			t.Errorf("%v: PackedSize(0, 64) = %d", typ, n)
		}
		PackInto(nil, nil, typ, 3, 0)
		dst := []float32{1, 2, 3, 4, 5, 6}
		MatMulPacked(dst, nil, typ, 3, 0, nil, 2, nil)
		for i, v := range dst {
			if v != 0 {
				t.Errorf("%v: 3×0 product left dst[%d] = %g, want 0", typ, i, v)
			}
		}
		MatMulPacked(nil, nil, typ, 0, 32, make([]float32, 32), 1, nil)
	}
}
