// Package synth writes random-weight models of any size as valid GGUF files,
// for benchmarks and tests that need a model bigger than the demo one. The
// weights are random, the structure (metadata, tensor names, shapes, types,
// vocabulary) is what llama.cpp and our engine expect of a real model. It
// must not import the network stack.
package synth

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/kernels"
)

// Options describe the model to write.
type Options struct {
	Arch    string // "llama" (qwen2 comes with its engine support)
	Dim     int    // embedding length
	Layers  int
	Heads   int
	KVHeads int // 0 means Heads
	FF      int // feed-forward length
	Vocab   int // at least MinVocab
	Context int // 0 means 2048
	// Type of the 2-D weight matrices; norms are always F32.
	Type gguf.Type
	Seed uint64
	// Name is general.name; default "synthetic".
	Name string
}

// MinVocab is the smallest vocabulary: 3 control tokens and 256 byte tokens,
// so that any text can be encoded.
const MinVocab = 3 + 256 + 32

// Quantizer turns float32 rows into a quantized type; internal/kernels
// provides it for the quantized types. Nil means only F32/F16/BF16.
type Quantizer func(typ gguf.Type, src []float32) ([]byte, error)

func (o *Options) validate(q Quantizer) error {
	if o.Arch == "" {
		o.Arch = "llama"
	}
	if o.Arch != "llama" {
		return fmt.Errorf("synth: architecture %q is not supported yet (use llama)", o.Arch)
	}
	if o.KVHeads == 0 {
		o.KVHeads = o.Heads
	}
	if o.Context == 0 {
		o.Context = 2048
	}
	if o.Name == "" {
		o.Name = "synthetic"
	}
	switch {
	case o.Dim <= 0 || o.Layers <= 0 || o.Heads <= 0 || o.FF <= 0 || o.Context <= 0:
		return fmt.Errorf("synth: dim, layers, heads, ff and context must be positive")
	case o.Dim%o.Heads != 0 || o.Heads%o.KVHeads != 0:
		return fmt.Errorf("synth: %d heads and %d KV heads must divide dim %d", o.Heads, o.KVHeads, o.Dim)
	case (o.Dim/o.Heads)%2 != 0:
		return fmt.Errorf("synth: head size %d must be even for RoPE", o.Dim/o.Heads)
	case o.Vocab < MinVocab:
		return fmt.Errorf("synth: vocab %d is below the minimum %d", o.Vocab, MinVocab)
	case o.Dim > 1<<16 || o.FF > 1<<18 || o.Layers > 1024 || o.Vocab > 1<<20:
		return fmt.Errorf("synth: dimensions too large")
	}
	switch o.Type {
	case gguf.TypeF32, gguf.TypeF16, gguf.TypeBF16:
	default:
		if q == nil {
			return fmt.Errorf("synth: type %s needs a quantizer", o.Type)
		}
		if uint64(o.Dim)%o.Type.BlockSize() != 0 || uint64(o.FF)%o.Type.BlockSize() != 0 {
			return fmt.Errorf("synth: dim %d and ff %d must be multiples of the %s block size %d", o.Dim, o.FF, o.Type, o.Type.BlockSize())
		}
	}
	return nil
}

// Parameters is the number of weights the model will have.
func (o Options) Parameters() uint64 {
	kv := uint64(o.Dim / o.Heads * o.KVHeads)
	d, f, v := uint64(o.Dim), uint64(o.FF), uint64(o.Vocab)
	perLayer := 2*d + d*d*2 + 2*d*kv + 3*d*f
	return 2*v*d + d + uint64(o.Layers)*perLayer
}

// WriteFile writes the model to path (atomically: a temp file renamed).
func WriteFile(path string, o Options, q Quantizer) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".synth-*")
	if err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	defer os.Remove(tmp.Name())
	bw := bufio.NewWriterSize(tmp, 1<<20)
	if err := Write(bw, o, q); err != nil {
		tmp.Close()
		return err
	}
	if err := bw.Flush(); err != nil {
		tmp.Close()
		return fmt.Errorf("synth: write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	return os.Rename(tmp.Name(), path)
}

// Write writes the model as GGUF to w.
func Write(w io.Writer, o Options, q Quantizer) error {
	if err := o.validate(q); err != nil {
		return err
	}
	g := gguf.NewWriter()
	a := o.Arch
	kvDim := o.Dim / o.Heads * o.KVHeads
	meta := []struct {
		k string
		v any
	}{
		{"general.architecture", a},
		{"general.name", o.Name},
		{a + ".context_length", uint32(o.Context)},
		{a + ".embedding_length", uint32(o.Dim)},
		{a + ".feed_forward_length", uint32(o.FF)},
		{a + ".block_count", uint32(o.Layers)},
		{a + ".attention.head_count", uint32(o.Heads)},
		{a + ".attention.head_count_kv", uint32(o.KVHeads)},
		{a + ".rope.dimension_count", uint32(o.Dim / o.Heads)},
		{a + ".attention.layer_norm_rms_epsilon", float32(1e-5)},
		{a + ".rope.freq_base", float32(10000)},
		{a + ".vocab_size", uint32(o.Vocab)},
		{"general.file_type", fileType(o.Type)},
	}
	for _, m := range meta {
		if err := g.Set(m.k, m.v); err != nil {
			return err
		}
	}
	tokens, scores, types := vocab(o.Vocab)
	for _, m := range []struct {
		k string
		v any
	}{
		{"tokenizer.ggml.model", "llama"},
		{"tokenizer.ggml.tokens", tokens},
		{"tokenizer.ggml.scores", scores},
		{"tokenizer.ggml.token_type", types},
		{"tokenizer.ggml.unknown_token_id", uint32(0)},
		{"tokenizer.ggml.bos_token_id", uint32(1)},
		{"tokenizer.ggml.eos_token_id", uint32(2)},
		{"tokenizer.ggml.add_bos_token", true},
		{"tokenizer.ggml.add_eos_token", false},
	} {
		if err := g.Set(m.k, m.v); err != nil {
			return err
		}
	}

	rng := rand.New(rand.NewPCG(o.Seed, o.Seed^0x9e3779b97f4a7c15))
	add := func(name string, rows, cols int, typ gguf.Type, scale float32) error {
		vals := make([]float32, rows*cols)
		for i := range vals {
			vals[i] = float32(rng.NormFloat64()) * scale
		}
		data, err := encode(typ, vals, q)
		if err != nil {
			return fmt.Errorf("synth: tensor %s: %w", name, err)
		}
		dims := []uint64{uint64(cols)}
		if rows > 1 {
			dims = append(dims, uint64(rows))
		}
		return g.AddTensor(name, typ, dims, data)
	}
	ones := func(name string, n int) error {
		vals := make([]float32, n)
		for i := range vals {
			vals[i] = 1
		}
		data, _ := encode(gguf.TypeF32, vals, nil)
		return g.AddTensor(name, gguf.TypeF32, []uint64{uint64(n)}, data)
	}
	// Scales keep activations in a sane range through many layers.
	ws := float32(1 / math.Sqrt(float64(o.Dim)))
	fs := float32(1 / math.Sqrt(float64(o.FF)))
	steps := []func() error{
		func() error { return add("token_embd.weight", o.Vocab, o.Dim, o.Type, 1) },
		func() error { return ones("output_norm.weight", o.Dim) },
		func() error { return add("output.weight", o.Vocab, o.Dim, o.Type, ws) },
	}
	for i := 0; i < o.Layers; i++ {
		p := fmt.Sprintf("blk.%d.", i)
		steps = append(steps,
			func() error { return ones(p+"attn_norm.weight", o.Dim) },
			func() error { return add(p+"attn_q.weight", o.Dim, o.Dim, o.Type, ws) },
			func() error { return add(p+"attn_k.weight", kvDim, o.Dim, o.Type, ws) },
			func() error { return add(p+"attn_v.weight", kvDim, o.Dim, o.Type, ws) },
			func() error { return add(p+"attn_output.weight", o.Dim, o.Dim, o.Type, ws) },
			func() error { return ones(p+"ffn_norm.weight", o.Dim) },
			func() error { return add(p+"ffn_gate.weight", o.FF, o.Dim, o.Type, ws) },
			func() error { return add(p+"ffn_up.weight", o.FF, o.Dim, o.Type, ws) },
			func() error { return add(p+"ffn_down.weight", o.Dim, o.FF, o.Type, fs) },
		)
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	if _, err := g.WriteTo(w); err != nil {
		return fmt.Errorf("synth: write: %w", err)
	}
	return nil
}

// fileType is llama.cpp's general.file_type for a weight type.
func fileType(t gguf.Type) uint32 {
	switch t {
	case gguf.TypeF32:
		return 0
	case gguf.TypeF16:
		return 1
	case gguf.TypeQ4_0:
		return 2
	case gguf.TypeQ4_1:
		return 3
	case gguf.TypeQ8_0:
		return 7
	case gguf.TypeQ5_0:
		return 8
	case gguf.TypeQ5_1:
		return 9
	case gguf.TypeQ4_K:
		return 15 // MOSTLY_Q4_K_M
	case gguf.TypeQ6_K:
		return 18
	case gguf.TypeBF16:
		return 32
	}
	return 0
}

func encode(typ gguf.Type, vals []float32, q Quantizer) ([]byte, error) {
	switch typ {
	case gguf.TypeF32:
		b := make([]byte, 4*len(vals))
		for i, v := range vals {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
		}
		return b, nil
	case gguf.TypeF16:
		b := make([]byte, 2*len(vals))
		for i, v := range vals {
			binary.LittleEndian.PutUint16(b[2*i:], kernels.F32ToF16(v))
		}
		return b, nil
	case gguf.TypeBF16:
		b := make([]byte, 2*len(vals))
		for i, v := range vals {
			bits := math.Float32bits(v)
			bits += 0x7fff + (bits>>16)&1 // round to nearest even
			binary.LittleEndian.PutUint16(b[2*i:], uint16(bits>>16))
		}
		return b, nil
	}
	return q(typ, vals)
}

// vocab builds a SentencePiece-style vocabulary: <unk>, <s>, </s>, the 256
// byte tokens, then "▁"-prefixed and bare pieces from a fixed alphabet, so
// any text encodes (through byte fallback at worst).
func vocab(n int) (tokens []string, scores []float32, types []int32) {
	tokens = []string{"<unk>", "<s>", "</s>"}
	types = []int32{2, 3, 3} // unknown, control, control
	for b := 0; b < 256; b++ {
		tokens = append(tokens, fmt.Sprintf("<0x%02X>", b))
		types = append(types, 6) // byte
	}
	const alphabet = "etaoinshrdlcumwfgypbvkjxqzETAOINSHRDLCUMWFGYPBVKJXQZ0123456789.,!?'\"-:;()"
	seen := map[string]bool{}
	addPiece := func(p string) bool {
		if len(tokens) >= n || seen[p] {
			return len(tokens) < n
		}
		seen[p] = true
		tokens = append(tokens, p)
		types = append(types, 1) // normal
		return true
	}
	addPiece("▁")
	for _, c := range alphabet {
		addPiece(string(c))
		addPiece("▁" + string(c))
	}
	// Pairs and triples of letters until the vocabulary is full or they
	// run out (26³ steps visit every triple; a larger vocabulary is
	// completed below).
	for i := 0; len(tokens) < n && i < 26*26*26; i++ {
		a, b := alphabet[i%26], alphabet[(i/26)%26]
		if !addPiece(string([]byte{b, a})) || !addPiece("▁"+string([]byte{b, a})) {
			break
		}
		if i > 26*26 {
			c := alphabet[(i/676)%26]
			addPiece(string([]byte{c, b, a}))
		}
	}
	for len(tokens) < n { // vocabularies beyond ~19,000 pieces
		addPiece(fmt.Sprintf("▁tok%d", len(tokens)))
	}
	scores = make([]float32, len(tokens))
	for i := range scores {
		if types[i] == 1 {
			scores[i] = -float32(i) // earlier pieces merge first
		}
	}
	return tokens, scores, types
}
