package synth

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/safetensors"
	"github.com/npumesh/npumesh/internal/testdata"
)

func greedy(t *testing.T, m *engine.Model, prompt string, n int) (string, []int32) {
	t.Helper()
	var text strings.Builder
	var ids []int32
	_, err := m.Generate(context.Background(), engine.Request{Prompt: prompt, MaxTokens: n}, func(d engine.Delta) error {
		text.WriteString(d.Text)
		ids = append(ids, d.IDs...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return text.String(), ids
}

func load(t *testing.T, path string) *engine.Model {
	t.Helper()
	m, err := engine.Load(path, engine.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestWriteHFDirStories: stories260K converted to a safetensors directory
// loads in the engine from its config.json, tokenizer.json and
// model.safetensors, and generates upstream's greedy text, token for token
// what the GGUF generates; its tokenizer encodes like the GGUF's.
func TestWriteHFDirStories(t *testing.T) {
	src := filepath.Join(testdata.Dir(t, "stories260K"), "stories260K.gguf")
	want, err := os.ReadFile(filepath.Join(testdata.Dir(t, "stories260K"), "expected_greedy_noprompt_200steps.txt"))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "stories260K-hf")
	if err := WriteHFDir(dir, src); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := safetensors.ParseConfig("config.json", b)
	if err != nil {
		t.Fatal(err)
	}
	if c.ModelType != "llama" || c.HiddenSize != 64 || c.NumHiddenLayers != 5 || c.NumAttentionHeads != 8 || c.NumKeyValueHeads != 4 ||
		c.VocabSize != 512 || c.TieWordEmbeddings || float32(c.RMSNormEps) != 1e-5 || c.MaxPositionEmbeddings <= 0 {
		t.Errorf("config %+v", c)
	}
	hf, g := load(t, dir), load(t, src)
	if i := hf.Info(); i.Arch != "llama" || i.Parameters != g.Info().Parameters {
		t.Errorf("HF info %+v, GGUF info %+v", i, g.Info())
	}
	text, ids := greedy(t, hf, "", 200)
	if !strings.HasPrefix(text, string(want)) {
		t.Errorf("greedy text from the safetensors directory\n%q\nwant\n%q", text, want)
	}
	if _, gids := greedy(t, g, "", 200); !slices.Equal(ids, gids) {
		t.Errorf("token ids differ from the GGUF's")
	}
	for _, s := range []string{"Once upon a time, there was a little girl named Lily.", " She liked to play! 123"} {
		a, err1 := hf.Tokenizer().Encode(s, true)
		b, err2 := g.Tokenizer().Encode(s, true)
		if err1 != nil || err2 != nil || !slices.Equal(a, b) {
			t.Errorf("Encode(%q): HF %v %v, GGUF %v %v", s, a, err1, b, err2)
		}
	}
}

// TestWriteHFDirSynthetic: a random F16 model with a synthetic vocabulary
// converts too, and the directory computes what the GGUF computes.
func TestWriteHFDirSynthetic(t *testing.T) {
	src := filepath.Join(t.TempDir(), "m.gguf")
	o := Options{Dim: 128, Layers: 2, Heads: 4, KVHeads: 2, FF: 256, Vocab: 600, Context: 256, Type: gguf.TypeF16, Seed: 5}
	if err := WriteFile(src, o, nil); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "m-hf")
	if err := WriteHFDir(dir, src); err != nil {
		t.Fatal(err)
	}
	hf, g := load(t, dir), load(t, src)
	_, a := greedy(t, hf, "the cat sat on a mat", 30)
	_, b := greedy(t, g, "the cat sat on a mat", 30)
	if len(a) != 30 || !slices.Equal(a, b) {
		t.Errorf("greedy ids: safetensors %v, GGUF %v", a, b)
	}
	// A quantized GGUF does not convert, and says why.
	q := filepath.Join(t.TempDir(), "q.gguf")
	o.Type = gguf.TypeQ8_0
	if err := WriteFile(q, o, kernelsQuantizer); err != nil {
		t.Fatal(err)
	}
	if err := WriteHFDir(filepath.Join(t.TempDir(), "q-hf"), q); err == nil || !strings.Contains(err.Error(), "only F32, F16 and BF16 convert") {
		t.Errorf("quantized: %v", err)
	}
}
