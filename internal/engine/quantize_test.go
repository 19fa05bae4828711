package engine

import (
	"context"
	"encoding/binary"
	"math"
	"strings"
	"testing"

	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/kernels"
)

// quantizedStories writes stories260K with every 2-D weight whose rows are
// whole blocks of typ quantized by kernels.Quantize (ffn_down, 172 wide,
// stays F32), as llama.cpp's quantize would store it.
func quantizedStories(t *testing.T, typ gguf.Type) string {
	t.Helper()
	return rewrite(t, func(tt *gguf.Tensor) (gguf.Type, []uint64, []byte, bool) {
		if len(tt.Dims) != 2 || tt.Dims[0]%typ.BlockSize() != 0 {
			return tt.Type, tt.Dims, tt.Data, true
		}
		cols, rows := int(tt.Dims[0]), int(tt.Dims[1])
		rb, err := kernels.RowSize(typ, cols)
		if err != nil {
			t.Fatal(err)
		}
		out := make([]byte, rows*rb)
		row := make([]float32, cols)
		for r := range rows {
			for i := range row {
				row[i] = math.Float32frombits(binary.LittleEndian.Uint32(tt.Data[4*(r*cols+i):]))
			}
			if err := kernels.Quantize(out[r*rb:(r+1)*rb], row, typ); err != nil {
				t.Fatal(err)
			}
		}
		return typ, tt.Dims, out, true
	}, nil)
}

// logitStats runs ids through a and b one position at a time and returns
// the largest absolute logit difference, the fraction of positions whose
// top token agrees, and the largest logit magnitude of a (for scale).
func logitStats(t *testing.T, a, b *Model, ids []int32) (worst, agree, scale float64) {
	sa, sb := newSingle(t, a), newSingle(t, b)
	same := 0
	for pos, id := range ids {
		la, lb := sa.forward(id, pos), sb.forward(id, pos)
		for i := range la {
			worst = max(worst, math.Abs(float64(la[i]-lb[i])))
			scale = max(scale, math.Abs(float64(la[i])))
		}
		if argmax(la) == argmax(lb) {
			same++
		}
	}
	return worst, float64(same) / float64(len(ids)), scale
}

// Quantized conversions of stories260K stay close to F32, whether the file
// holds the quantized weights or Load converts them (Options.Quantize).
//
// The tolerances come from the quantization steps. q8_0 stores each block
// of 32 weights as round(w/d) with d = max|w|/127, so a weight moves by up
// to d/2 ≈ 0.4% of its block's largest; every product also rounds its
// activations that way. In a 64-wide dot product of random-signed terms
// the sum is ~√64 = 8 times smaller than Σ|w·x|, so one product's error is
// a few percent of its value, and five layers compound it. Measured: max
// |Δlogit| 0.37 with |logit| up to 22 (1.7%) and 98% top-1 agreement over
// 128 positions; we allow 0.6 and 95%. q4_0 has d = max|w|/8, a step
// 127/8 ≈ 16 times coarser, so every deviation scales by ~16: we allow
// 16 × 0.6 ≈ 10 and 75% top-1 agreement (measured 8.8 and 84%; the
// logit differences of a 4-bit toy model are large, the ranking holds).
// A scrambled block layout or wrong scale would give agreement near 1/512
// and differences as large as the logits.
func TestQuantizedLogits(t *testing.T) {
	f32 := loadStories(t, Options{})
	ids, _ := f32.Tokenizer().Encode(expectedGreedy(t), true)
	ids = ids[:128]
	for _, tc := range []struct {
		typ        gguf.Type
		maxDiff    float64
		minAgree   float64
		wantPrefix int // greedy text that must match F32's, in bytes
	}{
		{gguf.TypeQ8_0, 0.6, 0.95, 40},
		{gguf.TypeQ4_0, 10, 0.75, 0},
	} {
		t.Run(tc.typ.String(), func(t *testing.T) {
			file, err := Load(quantizedStories(t, tc.typ), Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer file.Close()
			conv := loadStories(t, Options{Quantize: strings.ToLower(tc.typ.String())})
			// The info describes what is computed with. (Q4_0 does not
			// name this toy model: its F32 ffn_down outweighs the rest.)
			fi, ci := file.Info(), conv.Info()
			ci.ID = fi.ID
			if ci != fi || fi.SizeBytes >= f32.Info().SizeBytes {
				t.Errorf("info: converted %+v, file %+v, F32 %d bytes", ci, fi, f32.Info().SizeBytes)
			}
			if tc.typ == gguf.TypeQ8_0 && fi.Quantization != "Q8_0" {
				t.Errorf("quantization %q, want Q8_0", fi.Quantization)
			}
			worst, agree, scale := logitStats(t, f32, file, ids)
			t.Logf("%s vs F32 over %d positions: max |Δlogit| %.4f (|logit| up to %.1f), top-1 agreement %.1f%%", tc.typ, len(ids), worst, scale, 100*agree)
			if worst > tc.maxDiff || agree < tc.minAgree {
				t.Errorf("%s logits: max difference %.4f (want ≤ %v), top-1 agreement %.3f (want ≥ %v)", tc.typ, worst, tc.maxDiff, agree, tc.minAgree)
			}
			// Converting at load time is the same quantizer on the same
			// values: the logits are identical to the file's.
			if d, a, _ := logitStats(t, file, conv, ids[:32]); d != 0 || a != 1 {
				t.Errorf("Options.Quantize differs from the quantized file: max difference %v, agreement %v", d, a)
			}
			text, _, _, err := generate(t, conv, context.Background(), Request{MaxTokens: 30})
			if err != nil || len(text) < tc.wantPrefix || !strings.HasPrefix(expectedGreedy(t), text[:tc.wantPrefix]) {
				t.Errorf("%s greedy: %q, %v", tc.typ, text, err)
			}
		})
	}
}

// A KV cache of half floats (the default) stays close to a float32 one.
// Half floats keep 11 significant bits, so each stored key and value moves
// by at most 2^-12 of itself (0.024%). A score q·k and a weighted sum of
// values move by about as much relative to the sum of their terms' sizes,
// which is several times the sum itself; the softmax turns score errors
// into relative weight errors, and five layers compound it, so logits of
// up to ~20 should move by hundredths, about 0.1%. Measured on stories260K
// over 128 positions: max |Δlogit| 0.023, top-1 agreement 100%; we allow
// 0.05 and 99%. Keys or values stored in the wrong slot, or a wrong
// conversion, move logits by whole units. Invalid types are refused.
func TestHalfKV(t *testing.T) {
	full := loadStories(t, Options{KVType: "f32"})
	half := loadStories(t, Options{KVType: "F16"})
	if !half.kvHalf || full.kvHalf {
		t.Fatalf("KV types: f16 model half=%v, f32 model half=%v", half.kvHalf, full.kvHalf)
	}
	if half.KVBudgetBytes() != full.KVBudgetBytes()/2 || half.cache.Stats().Capacity != full.cache.Stats().Capacity {
		t.Errorf("default budgets: f16 %d bytes in %d blocks, f32 %d bytes in %d blocks; want half the bytes, as many blocks",
			half.KVBudgetBytes(), half.cache.Stats().Capacity, full.KVBudgetBytes(), full.cache.Stats().Capacity)
	}
	ids, _ := full.Tokenizer().Encode(expectedGreedy(t), true)
	worst, agree, scale := logitStats(t, full, half, ids[:128])
	t.Logf("f16 vs f32 KV over 128 positions: max |Δlogit| %.4f (|logit| up to %.1f), top-1 agreement %.1f%%", worst, scale, 100*agree)
	if worst > 0.05 || agree < 0.99 {
		t.Errorf("f16 KV logits: max difference %.4f (want ≤ 0.05), top-1 agreement %.3f (want ≥ 0.99)", worst, agree)
	}
	if _, err := Load(storiesPath(t), Options{KVType: "q8_0"}); err == nil || !strings.Contains(err.Error(), "use f16 or f32") {
		t.Errorf("KV type q8_0: %v", err)
	}
}

// Batched decoding of quantized weights gives each sequence what it gets
// alone: the products' activation quantization is per vector.
func TestQuantizedBatchedMatchesAlone(t *testing.T) {
	path := quantizedStories(t, gguf.TypeQ4_0)
	load := func(threads int) *Model {
		m, err := Load(path, Options{Threads: threads})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	batched, alone := load(2), load(1)
	reqs := greedyRequests(batched, func(i int) int { return 20 + 3*i })
	got := runConcurrently(t, batched, reqs)
	checkAlone(t, alone, reqs, got)
}

// The AVX2 F32 kernel sums in another order than the portable one (which
// is the engine's former four-accumulator loop): the logits move by
// rounding only, and the greedy text stays llama2.c's
// (TestGreedyMatchesLlama2c runs with whichever kernels are active).
func TestF32KernelOrders(t *testing.T) {
	if kernels.Implementation() == "generic" {
		t.Skip("only the portable kernels here")
	}
	// A float32 KV cache: this compares the kernels' summation orders, which
	// half floats' rounding of the keys and values would amplify.
	m := loadStories(t, Options{Threads: 1, KVType: "f32"})
	ids, _ := m.Tokenizer().Encode(expectedGreedy(t), true)
	ids = ids[:64]
	logits := func() [][]float32 {
		s := newSingle(t, m)
		var out [][]float32
		for pos, id := range ids {
			out = append(out, append([]float32(nil), s.forward(id, pos)...))
		}
		return out
	}
	asm := logits()
	kernels.SetGeneric(true)
	defer kernels.SetGeneric(false)
	generic := logits()
	var worst float64
	for pos := range asm {
		for i := range asm[pos] {
			worst = max(worst, math.Abs(float64(asm[pos][i]-generic[pos][i])))
		}
	}
	t.Logf("AVX2 vs portable F32 sums: max |Δlogit| %.2g over %d positions", worst, len(ids))
	if worst > 1e-4 {
		t.Errorf("F32 logits of the two kernel sets differ by %v", worst)
	}
}

// A tied output head is quantized once, with the embedding, and stays
// shared; the step then reads the quantized table.
func TestQuantizeTiedOutput(t *testing.T) {
	path := rewrite(t, func(tt *gguf.Tensor) (gguf.Type, []uint64, []byte, bool) {
		return tt.Type, tt.Dims, tt.Data, tt.Name != "output.weight"
	}, nil)
	m, err := Load(path, Options{Quantize: "Q8_0"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// The head is the quantized embedding, or its packed copy (pack.go).
	if m.w.output.typ != gguf.TypeQ8_0 || m.w.output.packed == sameStart(m.w.output.data, m.w.embd.data) {
		t.Fatalf("output head %v (packed %v), not the quantized embedding", m.w.output.typ, m.w.output.packed)
	}
	if got, want := m.StepWeightBytes(), stepWeightBytes(&m.w); got != want || got <= int64(len(m.w.embd.data)) {
		t.Errorf("step bytes %d, want %d (embedding included)", got, want)
	}
	text, _, _, err := generate(t, m, context.Background(), Request{MaxTokens: 30})
	if err != nil || !strings.HasPrefix(expectedGreedy(t), text[:40]) {
		t.Errorf("tied q8_0 greedy: %q, %v", text, err)
	}
}

// Every type Options.Quantize accepts loads, computes and names itself;
// the logits stay near F32's (a loose bound: only a broken format would
// move them by as much as they spread).
func TestQuantizeEveryType(t *testing.T) {
	c := synthConfig{arch: "llama", dim: 256, hidden: 512, layers: 2, heads: 4, kvHeads: 2, vocab: 300, ctx: 64, ropeBase: 10000, seed: 9}
	sm := writeSynthetic(t, c)
	f32, err := Load(sm.path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer f32.Close()
	ids := []int32{1, 17, 5, 33, 8, 21, 3, 12}
	for _, typ := range loadQuantTypes {
		t.Run(typ.String(), func(t *testing.T) {
			m, err := Load(sm.path, Options{Quantize: typ.String()})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if q := m.Info().Quantization; q != typ.String() {
				t.Errorf("quantization %q, want %s", q, typ)
			}
			worst, _, scale := logitStats(t, f32, m, ids)
			t.Logf("max |Δlogit| %.3g, largest F32 logit %.3g", worst, scale)
			if !(worst < scale/2) {
				t.Errorf("logits differ from F32 by %v (largest F32 logit %v)", worst, scale)
			}
		})
	}
}
