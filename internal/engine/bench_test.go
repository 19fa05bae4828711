package engine

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"

	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/kernels"
	"github.com/npumesh/npumesh/internal/kvcache"
)

// randMatrix is a rows×cols matrix of typ with values in [-0.5, 0.5).
func randMatrix(t testing.TB, rows, cols int, typ gguf.Type) matrix {
	r := rand.New(rand.NewPCG(1, 2))
	vals := make([]float32, rows*cols)
	for i := range vals {
		vals[i] = r.Float32() - 0.5
	}
	rb, err := kernels.RowSize(typ, cols)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, rows*rb)
	if typ == gguf.TypeBF16 {
		for i, v := range vals {
			binary.LittleEndian.PutUint16(data[2*i:], uint16(math.Float32bits(v)>>16))
		}
	} else {
		for row := range rows {
			if err := kernels.Quantize(data[row*rb:(row+1)*rb], vals[row*cols:(row+1)*cols], typ); err != nil {
				t.Fatal(err)
			}
		}
	}
	m, err := newMatrix("rand", typ, data, cols, rows)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

var matrixTypes = []gguf.Type{gguf.TypeF32, gguf.TypeF16, gguf.TypeBF16, gguf.TypeQ8_0, gguf.TypeQ4_0, gguf.TypeQ4_K, gguf.TypeQ6_K}

// The engine's products give every row the same value whatever the thread
// count and the batch: a sequence's logits never depend on its batch
// mates (the batching tests rely on it for greedy equality).
func TestMatmulBatchExact(t *testing.T) {
	for _, typ := range matrixTypes {
		t.Run(typ.String(), func(t *testing.T) {
			m := randMatrix(t, 301, 512, typ) // rows not a multiple of threads
			const n = 8
			x := make([]float32, n*m.cols)
			for i := range x {
				x[i] = float32(i%11) - 5 + float32(i/m.cols)*0.25
			}
			want := make([]float32, n*m.rows)
			for j := range n {
				matmulBatch(want[j*m.rows:], &m, x[j*m.cols:], 1, nil)
			}
			for _, threads := range []int{1, 2, 3} {
				pool := kernels.NewPool(threads)
				got := make([]float32, n*m.rows)
				matmulBatch(got, &m, x, n, pool)
				pool.Close()
				for i := range got {
					if got[i] != want[i] {
						t.Fatalf("threads %d: element %d got %v, want %v (alone)", threads, i, got[i], want[i])
					}
				}
			}
			// And close to a float64 product with the dequantized weights
			// (the activations' 8-bit rounding bounds the difference).
			row := make([]float32, m.cols)
			for r := range m.rows {
				m.row(row, r)
				var ref, mag float64
				for i, w := range row {
					ref += float64(w) * float64(x[i])
					mag += math.Abs(float64(w) * float64(x[i]))
				}
				if d := math.Abs(ref - float64(want[r])); d > 1e-5*mag+mag/127 {
					t.Fatalf("row %d: got %v, want %v", r, want[r], ref)
				}
			}
		})
	}
}

func BenchmarkMatVec(b *testing.B) {
	for _, size := range []int{1024, 4096} {
		for _, typ := range []gguf.Type{gguf.TypeF32, gguf.TypeF16, gguf.TypeQ8_0, gguf.TypeQ4_0} {
			for _, threads := range []int{1, runtime.NumCPU()} {
				b.Run(fmt.Sprintf("%dx%d/%s/threads=%d", size, size, typ, threads), func(b *testing.B) {
					m := randMatrix(b, size, size, typ)
					pool := kernels.NewPool(threads)
					defer pool.Close()
					x := make([]float32, size)
					for i := range x {
						x[i] = float32(i%7) - 3
					}
					out := make([]float32, size)
					b.SetBytes(int64(len(m.data)))
					for b.Loop() {
						matmulBatch(out, &m, x, 1, pool)
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
			b.Run(fmt.Sprintf("threads=%d/batch=%d", threads, n), func(b *testing.B) { benchDecode(b, m, n, 100) })
		}
	}
}

// BenchmarkDecodeFile is BenchmarkDecodeStep on the GGUF file named by
// $NPUMESH_BENCH_MODEL (say a 1B model from `npumesh model synth`), with
// $NPUMESH_BENCH_QUANTIZE as Options.Quantize and $NPUMESH_BENCH_KV as
// Options.KVType, at position $NPUMESH_BENCH_POS (default 128) with all
// cores; skipped without the variable. It is what profiles the engine on a
// model of real size:
//
//	NPUMESH_BENCH_MODEL=q4_0.gguf go test -run - -bench DecodeFile -cpuprofile cpu.out ./internal/engine
func BenchmarkDecodeFile(b *testing.B) {
	path := os.Getenv("NPUMESH_BENCH_MODEL")
	if path == "" {
		b.Skip("set NPUMESH_BENCH_MODEL to a GGUF file")
	}
	m, err := Load(path, Options{Threads: runtime.NumCPU(), Quantize: os.Getenv("NPUMESH_BENCH_QUANTIZE"), KVType: os.Getenv("NPUMESH_BENCH_KV")})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	b.Logf("%s: %s, %.0f MiB read per step", m.Info().ID, m.Info().Quantization, float64(m.StepWeightBytes())/(1<<20))
	pos := 128
	if s := os.Getenv("NPUMESH_BENCH_POS"); s != "" {
		if pos, err = strconv.Atoi(s); err != nil || pos < 0 {
			b.Fatalf("NPUMESH_BENCH_POS=%q: want a position", s)
		}
	}
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) { benchDecode(b, m, n, pos) })
	}
}

// benchDecode times steps of n sequences each decoding one token at
// position pos (their caches hold pos earlier positions).
func benchDecode(b *testing.B, m *Model, n, pos int) {
	kvs := make([]*kvcache.Seq, n)
	for j := range kvs {
		kvs[j] = m.cache.NewSeq()
		if err := kvs[j].Reserve(pos + 1); err != nil {
			b.Fatal(err)
		}
		kvs[j].Commit(make([]int32, pos))
		defer kvs[j].Release()
	}
	var bt batch
	b.ReportAllocs()
	cpu0 := processCPU()
	for b.Loop() {
		bt.reset()
		for j, kv := range kvs {
			bt.add(int32(3+j), pos, kv, true)
		}
		m.forward(&bt)
	}
	// The CPU time per step (all threads; the machine may be shared, so
	// this is steadier than the wall clock) and the rate it would give
	// if the process had its threads' cores to itself.
	if cpu := processCPU() - cpu0; cpu > 0 {
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
		b.ReportMetric(float64(n*b.N)*float64(m.threads)/cpu.Seconds(), "tok/cpu-s")
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "tok/s")
	b.ReportMetric(float64(m.StepWeightBytes())*float64(b.N)/b.Elapsed().Seconds()/1e9, "weightGB/s")
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
