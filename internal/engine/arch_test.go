package engine

import (
	"context"
	"encoding/binary"
	"math"
	"strings"
	"testing"

	"github.com/npumesh/npumesh/internal/engine/arch"
	"github.com/npumesh/npumesh/internal/gguf"
)

var qwen2Config = synthConfig{arch: "qwen2", dim: 32, hidden: 48, layers: 2, heads: 4, kvHeads: 2,
	vocab: 40, ctx: 64, ropeBase: 1e6, bias: true, tied: true, seed: 7}

// The qwen2 path (QKV biases, NeoX RoPE, RoPE base from metadata, tied
// output head) matches a float64 reference written from the definition.
func TestQwen2MatchesReference(t *testing.T) {
	c := qwen2Config
	sm := writeSynthetic(t, c)
	// The reference computes in float64 throughout: keep the KV cache in
	// float32 too (f16 KV moves these logits by up to 0.004).
	m, err := Load(sm.path, Options{Threads: 2, KVType: "f32"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.hp.Rope != arch.RopeNeoX || !m.hp.QKVBias || m.hp.RopeBase != 1e6 || m.Info().Arch != "qwen2" {
		t.Fatalf("params %+v", m.hp)
	}
	tokens := []int32{1, 17, 5, 33, 8, 21, 3, 12, 30, 9}
	want := sm.reference(c, tokens, true)
	noBias := sm.reference(c, tokens, false)
	s := newSingle(t, m)
	var worst, biasEffect float64
	for pos, tok := range tokens {
		got := s.forward(tok, pos)
		for i, g := range got {
			worst = max(worst, math.Abs(float64(g)-want[pos][i]))
			biasEffect = max(biasEffect, math.Abs(noBias[pos][i]-want[pos][i]))
		}
	}
	if worst > 1e-3 {
		t.Errorf("logits differ from the reference by up to %v", worst)
	}
	if biasEffect < 0.1 {
		t.Errorf("the biases change the reference logits by only %v: the test cannot see them", biasEffect)
	}

	// Through Generate (scheduler, prefill in chunks), the greedy tokens
	// follow the reference's argmax.
	var ids []int32
	if _, err := m.Generate(context.Background(), Request{PromptIDs: tokens[:5], MaxTokens: 5}, func(d Delta) error {
		ids = append(ids, d.IDs...)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ref := append([]int32(nil), tokens[:5]...)
	for range 5 {
		logits := sm.reference(c, ref, true)
		last := logits[len(logits)-1]
		best := 0
		for i, v := range last {
			if v > last[best] {
				best = i
			}
		}
		if best == 2 { // EOS ends the completion
			break
		}
		ref = append(ref, int32(best))
	}
	if got, want := ids, ref[5:]; len(got) != len(want) || !equalIDs(got, want) {
		t.Errorf("greedy ids %v, want %v", got, want)
	}
}

func equalIDs(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// addTensors copies the stories GGUF with extra metadata and tensors.
func addTensors(t *testing.T, kv map[string]any, extra map[string][]float32) string {
	t.Helper()
	return rewrite(t, nil, kv, func(w *gguf.Writer) {
		for name, v := range extra {
			data := make([]byte, 4*len(v))
			for i, f := range v {
				binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(f))
			}
			if err := w.AddTensor(name, gguf.TypeF32, []uint64{uint64(len(v))}, data); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// Linear RoPE scaling from metadata and Llama 3 frequency factors from
// rope_freqs.weight both reach the angles; equal factors agree exactly.
func TestRopeScaling(t *testing.T) {
	plain := loadStories(t, Options{})
	load := func(path string) *Model {
		m, err := Load(path, Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	linear := load(rewrite(t, nil, map[string]any{"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": float32(2)}))
	twos := make([]float32, plain.hp.RotDim/2)
	for i := range twos {
		twos[i] = 2
	}
	factors := load(addTensors(t, nil, map[string][]float32{"rope_freqs.weight": twos}))
	for i, f := range plain.w.invFreq {
		if linear.w.invFreq[i] != f/2 || factors.w.invFreq[i] != f/2 {
			t.Fatalf("pair %d: plain %v, linear %v, factors %v", i, f, linear.w.invFreq[i], factors.w.invFreq[i])
		}
	}
	a, _, _, err := generate(t, linear, context.Background(), Request{MaxTokens: 40})
	if err != nil {
		t.Fatal(err)
	}
	b, _, _, _ := generate(t, factors, context.Background(), Request{MaxTokens: 40})
	c, _, _, _ := generate(t, plain, context.Background(), Request{MaxTokens: 40})
	if a != b || a == c {
		t.Errorf("linear %q\nfactors %q\nplain %q", a, b, c)
	}
	_, err = Load(rewrite(t, nil, map[string]any{"llama.rope.scaling.type": "yarn"}), Options{})
	if err == nil || !strings.Contains(err.Error(), `rope scaling "yarn"`) {
		t.Errorf("yarn: got %v", err)
	}
}
