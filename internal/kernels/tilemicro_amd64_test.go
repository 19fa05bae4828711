package kernels

import (
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/npumesh/npumesh/internal/gguf"
)

// BenchmarkTileMicro times the tile kernels themselves on one thread with
// the weights in cache (32 rows of 4096), against the one- and
// four-vector row kernels, and the tile kernels' packed forms ("p"
// suffix); MB/s is weight bytes per second, so divide by the vector count
// for the rate per vector.
func BenchmarkTileMicro(b *testing.B) {
	const rows, cols = 32, 4096
	r := rand.New(rand.NewPCG(1, 2))
	sets := []struct {
		typ        gguf.Type
		avx2, vnni *tileSet
		one        func([]byte, *q8Vec) float32
		four       func([]byte, []q8Vec, *[4]float32)
	}{
		{gguf.TypeQ4_0, tilesQ4_0AVX2, tilesQ4_0VNNI, dotQ4_0Asm, dotQ4_0x4Asm},
		{gguf.TypeQ8_0, tilesQ8_0AVX2, tilesQ8_0VNNI, dotQ8_0Asm, dotQ8_0x4Asm},
	}
	for _, s := range sets {
		w := randomRows(r, s.typ, rows, cols)
		p := pack(s.typ, w, rows, cols)
		gb := len(p) / (rows / 8)
		rb, _ := RowSize(s.typ, cols)
		x := randomVec(r, 8*cols)
		vs := new(scratch).q8Vecs(quantizeQ8Asm, x, 8, cols, nil)
		nb := cols / 32
		dst := make([]float32, 8*rows)
		b.Run(s.typ.String()+"/rows1", func(b *testing.B) {
			b.SetBytes(int64(len(w)))
			for b.Loop() {
				for rr := range rows {
					dst[rr] = s.one(w[rr*rb:(rr+1)*rb], &vs[0])
				}
			}
		})
		var out [4]float32
		b.Run(s.typ.String()+"/rows8", func(b *testing.B) {
			b.SetBytes(int64(len(w)))
			for b.Loop() {
				for rr := range rows {
					s.four(w[rr*rb:(rr+1)*rb], vs[0:4], &out)
					s.four(w[rr*rb:(rr+1)*rb], vs[4:8], &out)
				}
			}
		})
		for _, ts := range []struct {
			name string
			set  *tileSet
		}{{"avx2", s.avx2}, {"vnni", s.vnni}} {
			if ts.name == "vnni" && !hasVNNI() {
				continue
			}
			xt := new(scratch).q8TileVecs(quantizeQ8Asm, x, 8, cols, ts.set.offset, nil)
			rec := (*byte)(unsafe.Pointer(&xt.rec[0]))
			for _, k := range []struct {
				v int
				f tileFn
				p packedFn
			}{{1, ts.set.r8v1, ts.set.p8v1}, {4, ts.set.r8v4, ts.set.p8v4}, {8, ts.set.r8v8, ts.set.p8v8}} {
				if k.f == nil {
					continue
				}
				name := s.typ.String() + "/8x" + string(rune('0'+k.v)) + ts.name
				b.Run(name, func(b *testing.B) {
					b.SetBytes(int64(len(w)))
					for b.Loop() {
						for rr := 0; rr < rows; rr += 8 {
							k.f(&w[rr*rb], rb, rec, nb, xt.stride, &dst[rr], 4*rows)
						}
					}
				})
				b.Run(name+"p", func(b *testing.B) {
					b.SetBytes(int64(len(w)))
					for b.Loop() {
						for rr := 0; rr < rows; rr += 8 {
							k.p(&p[rr/8*gb], rec, nb, xt.stride, &dst[rr], 4*rows)
						}
					}
				})
			}
		}
	}
}
