package engine

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
)

func randMatrix(rows, cols int, f16 bool) matrix {
	r := rand.New(rand.NewPCG(1, 2))
	m := matrix{rows: rows, cols: cols}
	if f16 {
		m.f16 = make([]uint16, rows*cols)
		for i := range m.f16 {
			m.f16[i] = f32ToF16(r.Float32() - 0.5)
		}
	} else {
		m.f32 = make([]float32, rows*cols)
		for i := range m.f32 {
			m.f32[i] = r.Float32() - 0.5
		}
	}
	return m
}

// The threaded product equals the single-threaded one exactly: each row is
// summed by one goroutine in the same order.
func TestMatVecThreads(t *testing.T) {
	for _, f16 := range []bool{false, true} {
		m := randMatrix(301, 512, f16) // above parallelMin, rows not a multiple of threads
		x := make([]float32, m.cols)
		for i := range x {
			x[i] = float32(i%11) - 5
		}
		want := make([]float32, m.rows)
		m.rowsDot(want, x, 0, m.rows)
		for _, threads := range []int{1, 2, 3, 8} {
			got := make([]float32, m.rows)
			matVec(got, &m, x, threads)
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("f16 %v, threads %d: row %d got %v, want %v", f16, threads, i, got[i], want[i])
				}
			}
		}
		// And close to a float64 reference.
		for r := range m.rows {
			var ref float64
			row := make([]float32, m.cols)
			m.row(row, r)
			for i, w := range row {
				ref += float64(w) * float64(x[i])
			}
			if d := ref - float64(want[r]); d > 1e-3 || d < -1e-3 {
				t.Fatalf("row %d: got %v, want %v", r, want[r], ref)
			}
		}
	}
}

func BenchmarkMatVec(b *testing.B) {
	for _, size := range []int{64, 1024, 4096} {
		for _, f16 := range []bool{false, true} {
			for _, threads := range []int{1, runtime.NumCPU()} {
				typ := "f32"
				if f16 {
					typ = "f16"
				}
				b.Run(fmt.Sprintf("%dx%d/%s/threads=%d", size, size, typ, threads), func(b *testing.B) {
					m := randMatrix(size, size, f16)
					x := make([]float32, size)
					for i := range x {
						x[i] = float32(i%7) - 3
					}
					out := make([]float32, size)
					b.SetBytes(int64(size * size * 4))
					if f16 {
						b.SetBytes(int64(size * size * 2))
					}
					for b.Loop() {
						matVec(out, &m, x, threads)
					}
				})
			}
		}
	}
}

// BenchmarkDecodeStep is one forward pass of stories260K at position 100.
func BenchmarkDecodeStep(b *testing.B) {
	m := loadStories(b, Options{Threads: 1})
	s := newState(&m.hp)
	for pos := range 100 {
		m.forward(s, 1, pos, false)
	}
	kc, vc := s.kc, s.vc
	for b.Loop() {
		for l := range kc {
			s.kc[l], s.vc[l] = kc[l][:100*m.hp.kvDim()], vc[l][:100*m.hp.kvDim()]
		}
		m.forward(s, 300, 100, true)
	}
}

func BenchmarkGenerate200(b *testing.B) {
	m := loadStories(b, Options{Threads: 1})
	for b.Loop() {
		if _, err := m.Generate(context.Background(), Request{MaxTokens: 200}, func(Delta) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}
