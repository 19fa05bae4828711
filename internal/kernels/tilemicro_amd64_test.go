package kernels

import (
	"math/rand/v2"
	"testing"

	"github.com/npumesh/npumesh/internal/gguf"
)

// BenchmarkTileMicro times the q4_0 kernels themselves on one thread with
// the weights in cache (32 rows): the former one- and four-vector row
// kernels against the tile kernels.
func BenchmarkTileMicro(b *testing.B) {
	const rows, cols = 32, 4096
	r := rand.New(rand.NewPCG(1, 2))
	for _, typ := range []gguf.Type{gguf.TypeQ4_0} {
		w := randomRows(r, typ, rows, cols)
		rb, _ := RowSize(typ, cols)
		x := randomVec(r, 8*cols)
		sc := new(scratch)
		xt := sc.q8TileVecs(quantizeQ8Asm, x, 8, cols, -8, nil)
		vs := new(scratch).q8Vecs(quantizeQ8Asm, x, 8, cols, nil)
		nb := cols / 32
		dst := make([]float32, 8*rows)
		b.Run("old1", func(b *testing.B) {
			b.SetBytes(int64(len(w)))
			for b.Loop() {
				for rr := range rows {
					dst[rr] = dotQ4_0Asm(w[rr*rb:(rr+1)*rb], &vs[0])
				}
			}
		})
		b.Run("r4v1", func(b *testing.B) {
			b.SetBytes(int64(len(w)))
			for b.Loop() {
				for rr := 0; rr < rows; rr += 4 {
					tileQ4_0_1x1AVX2(&w[rr*rb], rb, &xt.qs[0], &xt.d[0], &xt.xo[0], nb, xt.stride, 4*nb, &dst[rr], 4*rows)
				}
			}
		})
		b.Run("r1v1", func(b *testing.B) {
			b.SetBytes(int64(len(w)))
			for b.Loop() {
				for rr := 0; rr < rows; rr++ {
					tileQ4_0_1x1AVX2(&w[rr*rb], rb, &xt.qs[0], &xt.d[0], &xt.xo[0], nb, xt.stride, 4*nb, &dst[rr], 4*rows)
				}
			}
		})
		b.Run("r4v1vnni", func(b *testing.B) {
			b.SetBytes(int64(len(w)))
			for b.Loop() {
				for rr := 0; rr < rows; rr += 4 {
					tileQ4_0_1x1VNNI(&w[rr*rb], rb, &xt.qs[0], &xt.d[0], &xt.xo[0], nb, xt.stride, 4*nb, &dst[rr], 4*rows)
				}
			}
		})
		var out [4]float32
		b.Run("old8", func(b *testing.B) {
			b.SetBytes(int64(len(w)))
			for b.Loop() {
				for rr := range rows {
					dotQ4_0x4Asm(w[rr*rb:(rr+1)*rb], vs[0:4], &out)
					dotQ4_0x4Asm(w[rr*rb:(rr+1)*rb], vs[4:8], &out)
				}
			}
		})
		b.Run("r1v8", func(b *testing.B) {
			b.SetBytes(int64(len(w)))
			for b.Loop() {
				for rr := 0; rr < rows; rr++ {
					tileQ4_0_1x8AVX2(&w[rr*rb], rb, &xt.qs[0], &xt.d[0], &xt.xo[0], nb, xt.stride, 4*nb, &dst[rr], 4*rows)
				}
			}
		})
		b.Run("r1v8vnni", func(b *testing.B) {
			b.SetBytes(int64(len(w)))
			for b.Loop() {
				for rr := 0; rr < rows; rr++ {
					tileQ4_0_1x8VNNI(&w[rr*rb], rb, &xt.qs[0], &xt.d[0], &xt.xo[0], nb, xt.stride, 4*nb, &dst[rr], 4*rows)
				}
			}
		})
	}
}
