package synth

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/gguf"
)

func TestSyntheticModelLoadsAndGenerates(t *testing.T) {
	for _, typ := range []gguf.Type{gguf.TypeF32, gguf.TypeF16} {
		t.Run(typ.String(), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "m.gguf")
			o := Options{Dim: 64, Layers: 2, Heads: 4, KVHeads: 2, FF: 128, Vocab: 400, Context: 256, Type: typ, Seed: 1}
			if err := WriteFile(path, o, nil); err != nil {
				t.Fatal(err)
			}
			m, err := engine.Load(path, engine.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			info := m.Info()
			if info.Parameters != o.Parameters() {
				t.Errorf("parameters = %d, want %d", info.Parameters, o.Parameters())
			}
			if info.ContextLength != 256 || info.Quantization != typ.String() {
				t.Errorf("info = %+v", info)
			}
			ids, err := m.Tokenizer().Encode("hello world, this is text", true)
			if err != nil || len(ids) < 3 || ids[0] != 1 {
				t.Fatalf("encode = %v, %v", ids, err)
			}
			res, err := m.Generate(context.Background(), engine.Request{Prompt: "hello", MaxTokens: 20}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.CompletionTokens == 0 {
				t.Fatalf("generated nothing: %+v", res)
			}
		})
	}
}

func TestValidation(t *testing.T) {
	bad := []Options{
		{Dim: 0, Layers: 1, Heads: 1, FF: 8, Vocab: MinVocab},
		{Dim: 64, Layers: 1, Heads: 3, FF: 8, Vocab: MinVocab},
		{Dim: 64, Layers: 1, Heads: 4, KVHeads: 3, FF: 8, Vocab: MinVocab},
		{Dim: 64, Layers: 1, Heads: 4, FF: 8, Vocab: 10},
		{Arch: "gpt-j", Dim: 64, Layers: 1, Heads: 4, FF: 8, Vocab: MinVocab},
		{Dim: 64, Layers: 1, Heads: 4, FF: 8, Vocab: MinVocab, Type: gguf.TypeQ4_0}, // no quantizer
	}
	for i, o := range bad {
		if err := Write(nil, o, nil); err == nil {
			t.Errorf("case %d: %+v accepted", i, o)
		}
	}
}

func TestF16Conversion(t *testing.T) {
	cases := map[float32]uint16{0: 0, 1: 0x3c00, -2: 0xc000, 0.5: 0x3800, 65504: 0x7bff, 1e9: 0x7c00, 5.960464477539063e-08: 0x0001}
	for f, want := range cases {
		if got := f32ToF16(f); got != want {
			t.Errorf("f32ToF16(%g) = %#04x, want %#04x", f, got, want)
		}
	}
}
