package engine

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"

	"github.com/npumesh/npumesh/internal/kvcache"
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

func BenchmarkGenerate200(b *testing.B) {
	m := loadStories(b, Options{Threads: 1})
	for b.Loop() {
		if _, err := m.Generate(context.Background(), Request{MaxTokens: 200}, func(Delta) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}

// benchModel is a synthetic llama of about 25M F32 weights (dim 512, 8
// layers), large enough that the weights do not fit in cache.
func benchModel(b *testing.B, threads int) *Model {
	sm := writeSynthetic(b, synthConfig{arch: "llama", dim: 512, hidden: 1376, layers: 8, heads: 8, kvHeads: 8,
		vocab: 2048, ctx: 1024, ropeBase: 10000, seed: 1})
	m, err := Load(sm.path, Options{Threads: threads})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	return m
}

// BenchmarkDecodeStep is one decoding step of n sequences at position 100
// through Model.forward; tok/s is the aggregate over the batch.
func BenchmarkDecodeStep(b *testing.B) {
	for _, threads := range []int{1, runtime.NumCPU()} {
		m := benchModel(b, threads)
		for _, n := range []int{1, 8} {
			b.Run(fmt.Sprintf("threads=%d/batch=%d", threads, n), func(b *testing.B) {
				kvs := make([]*kvcache.Seq, n)
				for j := range kvs {
					kvs[j] = m.cache.NewSeq()
					if err := kvs[j].Reserve(101); err != nil {
						b.Fatal(err)
					}
					kvs[j].Commit(make([]int32, 100))
					defer kvs[j].Release()
				}
				var bt batch
				for b.Loop() {
					bt.reset()
					for j, kv := range kvs {
						bt.add(int32(3+j), 100, kv, true)
					}
					m.forward(&bt)
				}
				b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "tok/s")
			})
		}
	}
}

// BenchmarkGenerateConcurrent runs n Generate calls at once (16-token
// prompts, 32 tokens each) through the scheduler; tok/s counts completion
// tokens of all of them.
func BenchmarkGenerateConcurrent(b *testing.B) {
	m := benchModel(b, runtime.NumCPU())
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			tokens := 0
			for b.Loop() {
				var wg sync.WaitGroup
				var mu sync.Mutex
				for j := range n {
					wg.Go(func() {
						prompt := make([]int32, 16)
						for i := range prompt {
							prompt[i] = int32(3 + (7*j+i)%2000)
						}
						res, err := m.Generate(context.Background(), Request{PromptIDs: prompt, MaxTokens: 32, Temperature: 1, Seed: seed(uint64(j))}, nil)
						if err != nil {
							b.Error(err)
						}
						mu.Lock()
						tokens += res.CompletionTokens
						mu.Unlock()
					})
				}
				wg.Wait()
			}
			b.ReportMetric(float64(tokens)/b.Elapsed().Seconds(), "tok/s")
		})
	}
}
