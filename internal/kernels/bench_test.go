package kernels

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"unsafe"

	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/hugemem"
)

// The benchmarks use 4096×4096 matrices (a 7B model's attention
// projection) on a pool of GOMAXPROCS threads; b.SetBytes counts weight
// bytes, so MB/s is the weight streaming rate to set beside
// MeasureBandwidth. Each iteration takes the next of several copies of
// the matrix, together well over the L3 cache, so the weights come from
// DRAM as they do when a real model decodes. Sub-benchmarks run the
// assembly and the portable kernels side by side; compare within one
// run, the machine is noisy.

const (
	benchDim   = 4096
	benchBytes = 160 << 20 // total of the copies: 5× a 32 MiB L3
)

var (
	benchMu       sync.Mutex
	benchMatrices = map[gguf.Type][][]byte{}
	benchPacked   = map[gguf.Type][][]byte{}
)

// benchWeights returns copies of one random 4096×4096 matrix of typ.
func benchWeights(typ gguf.Type) [][]byte {
	benchMu.Lock()
	defer benchMu.Unlock()
	if m, ok := benchMatrices[typ]; ok {
		return m
	}
	w := randomRows(rand.New(rand.NewPCG(11, 12)), typ, benchDim, benchDim)
	m := [][]byte{w}
	for len(m)*len(w) < benchBytes {
		m = append(m, append([]byte(nil), w...))
	}
	benchMatrices[typ] = m
	return m
}

// benchPackedWeights returns copies of benchWeights(typ)'s matrix in the
// packed layout (PackInto).
func benchPackedWeights(typ gguf.Type) [][]byte {
	w := benchWeights(typ)[0]
	benchMu.Lock()
	defer benchMu.Unlock()
	if m, ok := benchPacked[typ]; ok {
		return m
	}
	p := make([]byte, PackedSize(typ, benchDim, benchDim))
	PackInto(p, w, typ, benchDim, benchDim)
	m := [][]byte{p}
	for len(m)*len(p) < benchBytes {
		m = append(m, append([]byte(nil), p...))
	}
	benchPacked[typ] = m
	return m
}

func benchImpls(b *testing.B, f func(b *testing.B)) {
	defer active.Store(active.Load()) // back to the set in use before (NPUMESH_KERNELS's choice)
	for _, generic := range []bool{false, true} {
		SetGeneric(generic)
		if !generic && Implementation() == "generic" {
			continue
		}
		b.Run(Implementation(), f)
	}
}

func benchMatMul(b *testing.B, n int) {
	pool := NewPool(runtime.GOMAXPROCS(0))
	defer pool.Close()
	x := randomVec(rand.New(rand.NewPCG(1, 1)), n*benchDim)
	dst := make([]float32, n*benchDim)
	for _, typ := range allTypes {
		ws := benchWeights(typ)
		b.Run(typ.String(), func(b *testing.B) {
			benchImpls(b, func(b *testing.B) {
				b.SetBytes(int64(len(ws[0])))
				i := 0
				for b.Loop() {
					MatMul(dst, ws[i%len(ws)], typ, benchDim, benchDim, x, n, pool)
					i++
				}
			})
		})
	}
}

func BenchmarkMatVec(b *testing.B)  { benchMatMul(b, 1) }
func BenchmarkMatMul8(b *testing.B) { benchMatMul(b, 8) }

// benchMatMulPacked is benchMatMul for the packed types, on the same
// matrices packed, so that MB/s (row-major bytes, which the packed
// matrix equals) sets beside BenchmarkMatVec's and BenchmarkMatMul8's.
// The portable kernels have no packed form and are skipped.
func benchMatMulPacked(b *testing.B, n int) {
	pool := NewPool(runtime.GOMAXPROCS(0))
	defer pool.Close()
	x := randomVec(rand.New(rand.NewPCG(1, 1)), n*benchDim)
	dst := make([]float32, n*benchDim)
	for _, typ := range []gguf.Type{gguf.TypeQ8_0, gguf.TypeQ4_0} {
		b.Run(typ.String(), func(b *testing.B) {
			benchImpls(b, func(b *testing.B) {
				if !CanPack(typ) {
					b.Skip("no packed kernels")
				}
				ps := benchPackedWeights(typ)
				b.SetBytes(int64(len(ps[0])))
				i := 0
				for b.Loop() {
					MatMulPacked(dst, ps[i%len(ps)], typ, benchDim, benchDim, x, n, pool)
					i++
				}
			})
		})
	}
}

func BenchmarkMatVecPacked(b *testing.B)  { benchMatMulPacked(b, 1) }
func BenchmarkMatMul8Packed(b *testing.B) { benchMatMulPacked(b, 8) }

// BenchmarkMatVecSerial is one thread, for the per-core kernel speed.
func BenchmarkMatVecSerial(b *testing.B) {
	x := randomVec(rand.New(rand.NewPCG(1, 1)), benchDim)
	dst := make([]float32, benchDim)
	for _, typ := range allTypes {
		ws := benchWeights(typ)
		b.Run(typ.String(), func(b *testing.B) {
			benchImpls(b, func(b *testing.B) {
				b.SetBytes(int64(len(ws[0])))
				i := 0
				for b.Loop() {
					MatVec(dst, ws[i%len(ws)], typ, benchDim, benchDim, x, nil)
					i++
				}
			})
		})
	}
}

func BenchmarkQuantize(b *testing.B) {
	x := randomVec(rand.New(rand.NewPCG(1, 1)), benchDim*16)
	for _, typ := range []gguf.Type{gguf.TypeQ8_0, gguf.TypeQ4_0, gguf.TypeQ4_K, gguf.TypeQ6_K} {
		n, _ := RowSize(typ, len(x))
		q := make([]byte, n)
		b.Run(typ.String(), func(b *testing.B) {
			b.SetBytes(int64(4 * len(x)))
			for b.Loop() {
				_ = Quantize(q, x, typ)
			}
		})
	}
}

func BenchmarkMeasureBandwidth(b *testing.B) {
	var bw float64
	for b.Loop() {
		bw = MeasureBandwidth()
	}
	b.ReportMetric(bw/1e9, "GB/s")
}

// BenchmarkStreamPacked sets the one-vector packed kernels (a batch-1
// decode step's products) beside the bandwidth probe's read loop, both
// streaming the same 256 MiB in huge pages as the engine's weights are,
// on one and on two threads, so that the kernel's share of the probe's
// rate (the bandwidth bound's) is read off one run. The packed blocks have
// unit scales and random quants (untouched pages would read as the
// zero page).
func BenchmarkStreamPacked(b *testing.B) {
	const cols, size = 2048, 256 << 20
	mem, err := hugemem.Alloc(size)
	if err != nil {
		b.Skipf("no huge-page buffer: %v", err)
	}
	defer hugemem.Free(mem)
	words := unsafe.Slice((*uint64)(unsafe.Pointer(unsafe.SliceData(mem))), size/8)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range words {
		words[i] = r.Uint64() // and the probe reads no untouched (zero) pages
	}
	x := randomVec(r, cols)
	im := active.Load()
	for _, threads := range []int{1, 2} {
		b.Run(fmt.Sprintf("probe/threads=%d", threads), func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				var wg sync.WaitGroup
				share := len(words) / threads &^ 15
				for t := range threads {
					wg.Go(func() { readSum(words[t*share : (t+1)*share]) })
				}
				wg.Wait()
			}
		})
		for _, typ := range []gguf.Type{gguf.TypeQ4_0, gguf.TypeQ8_0} {
			ts := tilesFor(im, typ)
			if ts == nil || ts.p8v1 == nil {
				continue
			}
			b8 := packedB8("BenchmarkStreamPacked", typ)
			nb := cols / 32
			gb := nb * b8
			groups := size / gb
			b.Run(fmt.Sprintf("%v/threads=%d", typ, threads), func(b *testing.B) {
				for blk := 0; blk < groups*nb; blk++ {
					p := mem[blk*b8 : (blk+1)*b8]
					for j := 0; j < 16; j += 2 {
						p[j], p[j+1] = 0x00, 0x3c // fp16 1.0
					}
				}
				xt := new(scratch).q8TileVecs(im.quantQ8, x, 1, cols, ts.offset, nil)
				rec := (*byte)(unsafe.Pointer(&xt.rec[0]))
				b.SetBytes(int64(groups * gb))
				b.ResetTimer()
				for b.Loop() {
					var wg sync.WaitGroup
					per := groups / threads
					for t := range threads {
						wg.Go(func() {
							var out [8]float32
							for g := t * per; g < (t+1)*per; g++ {
								ts.p8v1(&mem[g*gb], rec, nb, xt.stride, &out[0], 32)
							}
						})
					}
					wg.Wait()
				}
			})
		}
	}
}

// BenchmarkRow times the row kernels alone, one row of 4096 in L1, one
// and four activation vectors: the per-core compute speed without the
// memory system. MB/s counts the weight bytes of one pass.
func BenchmarkRow(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 2))
	const cols = 4096
	x := randomVec(r, 4*cols)
	sc := new(scratch)
	vs, ks := sc.q8Vecs(quantizeQ8, x, 4, cols, nil), sc.q8KVecs(x, 4, cols, nil)
	for _, typ := range allTypes {
		w := randomRows(r, typ, 1, cols)
		b.Run(typ.String(), func(b *testing.B) {
			benchImpls(b, func(b *testing.B) {
				im := active.Load()
				var one func() float32
				var four func(*[4]float32)
				switch typ {
				case gguf.TypeF32, gguf.TypeF16, gguf.TypeBF16:
					f, f4 := im.f32, im.f32x4
					if typ == gguf.TypeF16 {
						f, f4 = im.f16, im.f16x4
					} else if typ == gguf.TypeBF16 {
						f, f4 = im.bf16, im.bf16x4
					}
					one = func() float32 { return f(w, x[:cols]) }
					if f4 != nil {
						xs := [][]float32{x[:cols], x[cols : 2*cols], x[2*cols : 3*cols], x[3*cols:]}
						four = func(o *[4]float32) { f4(w, xs, o) }
					}
				default:
					var q func([]byte, *q8Vec) float32
					var q4 func([]byte, []q8Vec, *[4]float32)
					var k func([]byte, *q8KVec) float32
					var k4 func([]byte, []q8KVec, *[4]float32)
					switch typ {
					case gguf.TypeQ8_0:
						q, q4 = im.q8_0, im.q8_0x4
					case gguf.TypeQ4_0:
						q, q4 = im.q4_0, im.q4_0x4
					case gguf.TypeQ4_1:
						q, q4 = im.q4_1, im.q4_1x4
					case gguf.TypeQ5_0:
						q = im.q5_0
					case gguf.TypeQ5_1:
						q = im.q5_1
					case gguf.TypeQ4_K:
						k, k4 = im.q4K, im.q4Kx4
					case gguf.TypeQ5_K:
						k, k4 = im.q5K, im.q5Kx4
					case gguf.TypeQ6_K:
						k, k4 = im.q6K, im.q6Kx4
					}
					if q != nil {
						one = func() float32 { return q(w, &vs[0]) }
						if q4 != nil {
							four = func(o *[4]float32) { q4(w, vs, o) }
						}
					} else {
						one = func() float32 { return k(w, &ks[0]) }
						if k4 != nil {
							four = func(o *[4]float32) { k4(w, ks, o) }
						}
					}
				}
				b.Run("x1", func(b *testing.B) {
					b.SetBytes(int64(len(w)))
					for b.Loop() {
						one()
					}
				})
				if four != nil {
					b.Run("x4", func(b *testing.B) {
						var out [4]float32
						b.SetBytes(int64(len(w)))
						for b.Loop() {
							four(&out)
						}
					})
				}
			})
		})
	}
}

// BenchmarkMatVecSmall shows the cost of dispatching to the Pool on a
// matrix small enough (512×512 q8_0, 272 KiB) that it matters.
func BenchmarkMatVecSmall(b *testing.B) {
	const dim = 512
	w := randomRows(rand.New(rand.NewPCG(3, 3)), gguf.TypeQ8_0, dim, dim)
	x := randomVec(rand.New(rand.NewPCG(1, 1)), dim)
	dst := make([]float32, dim)
	pool := NewPool(runtime.GOMAXPROCS(0))
	defer pool.Close()
	for _, c := range []struct {
		name string
		p    *Pool
	}{{"serial", nil}, {"pool", pool}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(w)))
			for b.Loop() {
				MatVec(dst, w, gguf.TypeQ8_0, dim, dim, x, c.p)
			}
		})
	}
}

// BenchmarkPackedQKV multiplies the query, key and value projections of a
// TinyLlama-shaped layer (2048, 512 and 512 rows of 2048 q4_0 columns;
// copies past the L3) by one and by eight vectors: "each" as three
// MatMulPacked calls, "multi" as one MatMulPackedMulti, which quantizes
// the vectors once and meets the threads once. Run with -count to
// interleave them.
func BenchmarkPackedQKV(b *testing.B) {
	const typ, cols = gguf.TypeQ4_0, 2048
	if !CanPack(typ) {
		b.Skip("no packed kernels")
	}
	rows := []int{2048, 512, 512}
	r := rand.New(rand.NewPCG(13, 14))
	var sets [][][]byte // copies of the three packed matrices
	size := 0
	for size < benchBytes {
		var set [][]byte
		for _, n := range rows {
			set = append(set, pack(typ, randomRows(r, typ, n, cols), n, cols))
			size += len(set[len(set)-1])
		}
		sets = append(sets, set)
	}
	pool := NewPool(runtime.GOMAXPROCS(0))
	defer pool.Close()
	for _, n := range []int{1, 8} {
		x := randomVec(r, n*cols)
		dsts := make([][]float32, len(rows))
		for i, m := range rows {
			dsts[i] = make([]float32, n*m)
		}
		b.Run(fmt.Sprintf("n%d/each", n), func(b *testing.B) {
			b.SetBytes(int64(size / len(sets)))
			i := 0
			for b.Loop() {
				for j, p := range sets[i%len(sets)] {
					MatMulPacked(dsts[j], p, typ, rows[j], cols, x, n, pool)
				}
				i++
			}
		})
		b.Run(fmt.Sprintf("n%d/multi", n), func(b *testing.B) {
			b.SetBytes(int64(size / len(sets)))
			parts := make([]PackedPart, len(rows))
			i := 0
			for b.Loop() {
				for j, p := range sets[i%len(sets)] {
					parts[j] = PackedPart{Dst: dsts[j], P: p, Rows: rows[j]}
				}
				MatMulPackedMulti(parts, typ, cols, x, n, pool)
				i++
			}
		})
	}
}
