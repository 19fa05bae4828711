package kernels

import (
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/gguf"
)

type tileVariant struct {
	name string
	im   *impl
}

// tileVariants returns a's kernel set without tile kernels (the row
// kernels), with the AVX2 tile kernels and, where the CPU has it, with
// the VNNI ones.
func tileVariants(a *impl) []tileVariant {
	rows, avx2, vnni := *a, *a, *a
	rows.q4_0T, rows.q8_0T = nil, nil
	avx2.q4_0T, avx2.q8_0T = tilesQ4_0AVX2, tilesQ8_0AVX2
	vnni.q4_0T, vnni.q8_0T = tilesQ4_0VNNI, tilesQ8_0VNNI
	v := []tileVariant{{"rows", &rows}, {"tile-avx2", &avx2}}
	if cpu := hasVNNI(); cpu {
		v = append(v, tileVariant{"tile-vnni", &vnni})
	}
	return v
}

// TestTileFormsAgree: the AVX2 and VNNI tile kernels, row-major and
// packed, compute the same exact integer lane sums and the same float
// operations, so every batch size and pool gives the same bits with any
// of them; and they stay within the tested tolerance of the row kernels
// (TestAsmMatchesGeneric checks the active set against the portable one).
func TestTileFormsAgree(t *testing.T) {
	a := asmKernels()
	if a == nil {
		t.Skip("no assembly kernels")
	}
	defer active.Store(active.Load())
	vs := tileVariants(a)
	if len(vs) < 3 {
		t.Skip("no AVX-512 VNNI on this CPU: only the AVX2 tile kernels run")
	}
	r := rand.New(rand.NewPCG(21, 22))
	pool := NewPool(3)
	defer pool.Close()
	for _, typ := range []gguf.Type{gguf.TypeQ4_0, gguf.TypeQ8_0} {
		for _, cols := range []int{32, 96, 128, 416, 4096} {
			rows := 43
			w := randomRows(r, typ, rows, cols)
			p := pack(typ, w, rows, cols)
			for _, n := range []int{1, 3, 4, 8, 13, 21} {
				x := randomVec(r, n*cols)
				var want []float32
				for _, v := range vs[1:] {
					active.Store(v.im)
					for _, packed := range []bool{false, true} {
						got := make([]float32, n*rows)
						if packed {
							MatMulPacked(got, p, typ, rows, cols, x, n, pool)
						} else {
							MatMul(got, w, typ, rows, cols, x, n, pool)
						}
						if want == nil {
							want = got
							continue
						}
						for i := range got {
							if got[i] != want[i] {
								t.Fatalf("%v %d×%d n=%d: %s (packed %v) dst[%d] = %g, %s %g", typ, rows, cols, n, v.name, packed, i, got[i], vs[1].name, want[i])
							}
						}
					}
				}
			}
		}
	}
	// q8_0 extremes: −128 weights against ±127 activations.
	w, x := q8Extremes()
	p := pack(gguf.TypeQ8_0, w, 1, 256)
	for _, v := range vs {
		active.Store(v.im)
		var got, gotP [1]float32
		MatVec(got[:], w, gguf.TypeQ8_0, 1, 256, x, nil)
		MatMulPacked(gotP[:], p, gguf.TypeQ8_0, 1, 256, x, 1, nil)
		if got[0] != 256*128 || gotP[0] != 256*128 {
			t.Errorf("%s: all −128 · all −1 = %g (packed %g), want %d", v.name, got[0], gotP[0], 256*128)
		}
	}
}

// BenchmarkTiles compares, in one run, the row kernels (one or four
// vectors per row, as before the tile kernels) with the tile kernels in
// their AVX2 and VNNI forms, for q4_0 and q8_0 at 1 and 8 vectors on
// GOMAXPROCS threads. Compare ratios within a run.
func BenchmarkTiles(b *testing.B) {
	a := asmKernels()
	if a == nil {
		b.Skip("no assembly kernels")
	}
	defer active.Store(active.Load())
	pool := NewPool(runtime.GOMAXPROCS(0))
	defer pool.Close()
	for _, typ := range []gguf.Type{gguf.TypeQ4_0, gguf.TypeQ8_0} {
		ws := benchWeights(typ)
		for _, n := range []int{1, 8} {
			x := randomVec(rand.New(rand.NewPCG(1, 1)), n*benchDim)
			dst := make([]float32, n*benchDim)
			for _, v := range tileVariants(a) {
				b.Run(typ.String()+"/n="+strconv.Itoa(n)+"/"+v.name, func(b *testing.B) {
					defer active.Store(active.Load())
					active.Store(v.im)
					b.SetBytes(int64(len(ws[0])))
					i := 0
					for b.Loop() {
						MatMul(dst, ws[i%len(ws)], typ, benchDim, benchDim, x, n, pool)
						i++
					}
				})
			}
		}
	}
}

// BenchmarkTilesInterleaved runs the variants of BenchmarkTiles, and the
// tile kernels' packed forms on the packed matrices (MatMulPacked,
// "packed-"), in turn within each iteration and reports each one's
// fastest pass (ms, and the ratio to the row kernels), so that the load
// of a shared machine hits all of them alike.
func BenchmarkTilesInterleaved(b *testing.B) {
	a := asmKernels()
	if a == nil {
		b.Skip("no assembly kernels")
	}
	defer active.Store(active.Load())
	pool := NewPool(runtime.GOMAXPROCS(0))
	defer pool.Close()
	for _, typ := range []gguf.Type{gguf.TypeQ4_0, gguf.TypeQ8_0} {
		ws, ps := benchWeights(typ), benchPackedWeights(typ)
		for _, n := range []int{1, 8} {
			x := randomVec(rand.New(rand.NewPCG(1, 1)), n*benchDim)
			dst := make([]float32, n*benchDim)
			vs := tileVariants(a)
			var packed []bool
			for range vs {
				packed = append(packed, false)
			}
			for _, v := range vs[1:] {
				vs = append(vs, tileVariant{"packed-" + strings.TrimPrefix(v.name, "tile-"), v.im})
				packed = append(packed, true)
			}
			b.Run(typ.String()+"/n="+strconv.Itoa(n), func(b *testing.B) {
				best := make([]time.Duration, len(vs))
				i := 0
				for b.Loop() {
					for k, v := range vs {
						active.Store(v.im)
						t0 := time.Now()
						if packed[k] {
							MatMulPacked(dst, ps[i%len(ps)], typ, benchDim, benchDim, x, n, pool)
						} else {
							MatMul(dst, ws[i%len(ws)], typ, benchDim, benchDim, x, n, pool)
						}
						if d := time.Since(t0); best[k] == 0 || d < best[k] {
							best[k] = d
						}
						i++
					}
				}
				for k, v := range vs {
					b.ReportMetric(float64(best[k].Microseconds())/1e3, v.name+"-ms")
					b.ReportMetric(float64(best[0])/float64(best[k]), v.name+"-speedup")
				}
			})
		}
	}
}

// TestTileRowsIndependent: the eight-row kernels compute each row in its
// own lanes, so a row gives the same bits in any group of eight, alone
// (padded) or with others, with either kernel form and any vector count.
func TestTileRowsIndependent(t *testing.T) {
	a := asmKernels()
	if a == nil {
		t.Skip("no assembly kernels")
	}
	defer active.Store(active.Load())
	r := rand.New(rand.NewPCG(31, 32))
	for _, v := range tileVariants(a)[1:] {
		active.Store(v.im)
		for _, typ := range []gguf.Type{gguf.TypeQ4_0, gguf.TypeQ8_0} {
			const rows, cols = 21, 160
			rb, _ := RowSize(typ, cols)
			w := randomRows(r, typ, rows, cols)
			for _, n := range []int{1, 5, 8, 12} {
				x := randomVec(r, n*cols)
				all := make([]float32, n*rows)
				MatMul(all, w, typ, rows, cols, x, n, nil)
				for lo := range rows {
					for _, m := range []int{1, 3} {
						hi := min(lo+m, rows)
						part := make([]float32, n*(hi-lo))
						MatMul(part, w[lo*rb:hi*rb], typ, hi-lo, cols, x, n, nil)
						for i := range n {
							for k := lo; k < hi; k++ {
								if got, want := part[i*(hi-lo)+k-lo], all[i*rows+k]; got != want {
									t.Fatalf("%s %v n=%d: row %d of rows [%d,%d) = %g, of all rows %g", v.name, typ, n, k, lo, hi, got, want)
								}
							}
						}
					}
				}
			}
		}
	}
}
