package synth

import (
	"context"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/kernels"
)

// kernelsQuantizer is what `npumesh model synth` passes for quantized types.
func kernelsQuantizer(typ gguf.Type, src []float32) ([]byte, error) {
	n, err := kernels.RowSize(typ, len(src))
	if err != nil {
		return nil, err
	}
	dst := make([]byte, n)
	return dst, kernels.Quantize(dst, src, typ)
}

func TestSyntheticModelLoadsAndGenerates(t *testing.T) {
	for _, typ := range []gguf.Type{gguf.TypeF32, gguf.TypeF16, gguf.TypeBF16, gguf.TypeQ8_0, gguf.TypeQ4_0, gguf.TypeQ4_K} {
		t.Run(typ.String(), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "m.gguf")
			o := Options{Dim: 256, Layers: 2, Heads: 4, KVHeads: 2, FF: 512, Vocab: 400, Context: 256, Type: typ, Seed: 1}
			if err := WriteFile(path, o, kernelsQuantizer); err != nil {
				t.Fatal(err)
			}
			checkLlamaCppLayout(t, path, typ)
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

// checkLlamaCppLayout checks what llama.cpp's loader (gguf_init_from_file
// and llm_load_hparams/llm_load_vocab for llama) demands of a file, short
// of running llama.cpp: data aligned to general.alignment (32 when absent),
// tensors laid out in order at offsets padded to it, each tensor exactly
// ne/block·type_size bytes with rows a whole number of blocks, the llama
// hyperparameter keys, and a SentencePiece vocabulary whose tokens, scores
// and types have one entry per row of token_embd.
func checkLlamaCppLayout(t *testing.T, path string, typ gguf.Type) {
	t.Helper()
	f, err := gguf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	align := uint64(gguf.DefaultAlignment)
	if a, err := f.Uint("general.alignment"); err == nil {
		align = a
	}
	if f.Alignment != align {
		t.Errorf("file alignment %d, general.alignment %d", f.Alignment, align)
	}
	var base, next uintptr
	for i, tt := range f.Tensors() {
		addr := uintptr(unsafe.Pointer(unsafe.SliceData(tt.Data)))
		if i == 0 {
			base, next = addr, addr
		}
		if addr != next || (addr-base)%uintptr(align) != 0 {
			t.Errorf("tensor %s at offset %d, want %d (in order, aligned to %d)", tt.Name, addr-base, next-base, align)
		}
		bs, ts := tt.Type.BlockSize(), tt.Type.TypeSize()
		if tt.Dims[0]%bs != 0 || uint64(len(tt.Data)) != tt.NumElements()/bs*ts {
			t.Errorf("tensor %s: %v %v is %d bytes, rows of %d are not whole %d-blocks of %d bytes", tt.Name, tt.Type, tt.Dims, len(tt.Data), tt.Dims[0], bs, ts)
		}
		if want := gguf.TypeF32; len(tt.Dims) == 2 {
			want = typ
			if tt.Type != want {
				t.Errorf("tensor %s has type %v, want %v", tt.Name, tt.Type, want)
			}
		} else if tt.Type != want {
			t.Errorf("vector %s has type %v, want F32", tt.Name, tt.Type)
		}
		next = addr + uintptr((uint64(len(tt.Data))+align-1)/align*align)
	}
	for _, k := range []string{"llama.context_length", "llama.embedding_length", "llama.block_count", "llama.feed_forward_length",
		"llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.dimension_count", "llama.vocab_size", "general.file_type"} {
		if _, err := f.Uint(k); err != nil {
			t.Errorf("key %s: %v", k, err)
		}
	}
	if _, err := f.Float("llama.attention.layer_norm_rms_epsilon"); err != nil {
		t.Errorf("rms epsilon: %v", err)
	}
	emb, _ := f.Tensor("token_embd.weight")
	tokens, err1 := f.Strings("tokenizer.ggml.tokens")
	scores, err2 := f.Float32s("tokenizer.ggml.scores")
	types, err3 := f.Int32s("tokenizer.ggml.token_type")
	if model, _ := f.String("tokenizer.ggml.model"); model != "llama" || err1 != nil || err2 != nil || err3 != nil ||
		uint64(len(tokens)) != emb.Dims[1] || len(scores) != len(tokens) || len(types) != len(tokens) {
		t.Errorf("vocabulary: model %q, %d tokens (%v), %d scores (%v), %d types (%v), %d embedding rows", model, len(tokens), err1, len(scores), err2, len(types), err3, emb.Dims[1])
	}
}

// A llama-sized vocabulary (32000) is built, every piece distinct.
func TestLargeVocab(t *testing.T) {
	for _, n := range []int{MinVocab, 32000, 50000} {
		tokens, scores, types := vocab(n)
		if len(tokens) != n || len(scores) != n || len(types) != n {
			t.Fatalf("vocab(%d): %d tokens, %d scores, %d types", n, len(tokens), len(scores), len(types))
		}
		seen := map[string]bool{}
		for _, tok := range tokens {
			if seen[tok] {
				t.Fatalf("vocab(%d): %q twice", n, tok)
			}
			seen[tok] = true
		}
	}
}
