package synth

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/npumesh/npumesh/internal/engine/arch"
	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/safetensors"
)

// WriteHFDir converts a llama GGUF file with unquantized weights (F32, F16
// or BF16, as llama2.c exports such as stories260K are) and a SentencePiece
// vocabulary into a Hugging Face safetensors directory dir, the layout
// transformers saves: config.json, model.safetensors, tokenizer.json and
// tokenizer_config.json. It undoes llama.cpp's convert_hf_to_gguf.py: the
// tensors get their Hugging Face names and shapes, and the rows of the Q and K
// projections go back from ggml's adjacent-pair RoPE order to rotate-half
// order. Loaded from dir, the model computes what it computes from the GGUF.
// It is for tests and demos that need a safetensors model; dir is created
// when missing and its files are overwritten.
func WriteHFDir(dir, ggufPath string) error {
	f, err := gguf.Open(ggufPath)
	if err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	defer f.Close()
	p, err := arch.Read(f)
	if err != nil {
		return fmt.Errorf("synth: %s: %w", ggufPath, err)
	}
	switch {
	case p.Arch != "llama":
		return fmt.Errorf("synth: %s: architecture %q; only llama converts to safetensors", ggufPath, p.Arch)
	case p.Scaling.Type != arch.ScalingNone:
		return fmt.Errorf("synth: %s: RoPE scaling %q does not convert", ggufPath, p.Scaling.Type)
	case p.RotDim != p.HeadDim:
		return fmt.Errorf("synth: %s: partial RoPE (%d of %d) does not convert", ggufPath, p.RotDim, p.HeadDim)
	case p.QKVBias:
		return fmt.Errorf("synth: %s: attention biases do not convert", ggufPath)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("synth: %w", err)
	}
	tied, dtype, err := writeHFWeights(f, p, filepath.Join(dir, "model.safetensors"))
	if err != nil {
		return fmt.Errorf("synth: %s: %w", ggufPath, err)
	}
	tok, err := readSPM(f)
	if err != nil {
		return fmt.Errorf("synth: %s: %w", ggufPath, err)
	}
	if len(tok.tokens) != p.Vocab {
		return fmt.Errorf("synth: %s: %d tokens for %d embedding rows", ggufPath, len(tok.tokens), p.Vocab)
	}
	config := map[string]any{
		"architectures": []string{"LlamaForCausalLM"}, "model_type": "llama",
		"hidden_size": p.Dim, "intermediate_size": p.Hidden, "num_hidden_layers": p.Layers,
		"num_attention_heads": p.Heads, "num_key_value_heads": p.KVHeads, "head_dim": p.HeadDim,
		"vocab_size": p.Vocab, "max_position_embeddings": p.Context,
		// The float32 the GGUF holds, written shortest ("1e-05").
		"rms_norm_eps": json.Number(strconv.FormatFloat(float64(p.NormEps), 'g', -1, 32)),
		"rope_theta":   p.RopeBase, "tie_word_embeddings": tied, "hidden_act": "silu",
		"bos_token_id": tok.bos, "eos_token_id": tok.eos, "torch_dtype": dtype,
	}
	tokConfig := map[string]any{
		"bos_token": tok.tokens[tok.bos], "eos_token": tok.tokens[tok.eos], "add_bos_token": tok.addBOS, "add_eos_token": false,
		"model_max_length": p.Context, "tokenizer_class": "LlamaTokenizerFast",
	}
	if tok.unk >= 0 {
		tokConfig["unk_token"] = tok.tokens[tok.unk]
	}
	for name, v := range map[string]any{"config.json": config, "tokenizer.json": tok.json(), "tokenizer_config.json": tokConfig} {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return fmt.Errorf("synth: %s: %w", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("synth: %w", err)
		}
	}
	return nil
}

// writeHFWeights writes the tensors under their Hugging Face names; tied
// reports that the GGUF has no output.weight (the head is the embedding);
// dtype is the embedding's type as torch_dtype names it.
func writeHFWeights(f *gguf.File, p arch.Params, path string) (tied bool, dtype string, err error) {
	top := map[string]string{
		"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight",
	}
	blk := map[string]string{
		"attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
		"attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
		"attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
		"ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight",
	}
	dtypes := map[gguf.Type]safetensors.DType{gguf.TypeF32: safetensors.F32, gguf.TypeF16: safetensors.F16, gguf.TypeBF16: safetensors.BF16}
	elem := map[gguf.Type]int{gguf.TypeF32: 4, gguf.TypeF16: 2, gguf.TypeBF16: 2}
	w := safetensors.NewWriter()
	tied = true
	for _, t := range f.Tensors() {
		dt, ok := dtypes[t.Type]
		if !ok {
			return false, "", fmt.Errorf("tensor %s is %s; only F32, F16 and BF16 convert", t.Name, t.Type)
		}
		name, ok := top[t.Name]
		if !ok {
			parts := strings.SplitN(t.Name, ".", 3)
			if len(parts) == 3 && parts[0] == "blk" {
				if hf, ok2 := blk[parts[2]]; ok2 {
					name, ok = "model.layers."+parts[1]+"."+hf, true
				}
			}
			if !ok {
				return false, "", fmt.Errorf("tensor %s has no Hugging Face llama name", t.Name)
			}
		}
		switch name {
		case "lm_head.weight":
			tied = false
		case "model.embed_tokens.weight":
			dtype = map[gguf.Type]string{gguf.TypeF32: "float32", gguf.TypeF16: "float16", gguf.TypeBF16: "bfloat16"}[t.Type]
		}
		shape := make([]int, len(t.Dims))
		for i, d := range t.Dims {
			shape[len(shape)-1-i] = int(d)
		}
		data := t.Data
		heads := 0
		switch {
		case strings.HasSuffix(name, ".q_proj.weight"):
			heads = p.Heads
		case strings.HasSuffix(name, ".k_proj.weight"):
			heads = p.KVHeads
		}
		if heads > 0 {
			if len(t.Dims) != 2 || int(t.Dims[1]) != heads*p.HeadDim {
				return false, "", fmt.Errorf("tensor %s has dims %v, want %d rows", t.Name, t.Dims, heads*p.HeadDim)
			}
			data = unpermuteRows(data, heads, int(t.Dims[0])*elem[t.Type])
		}
		if err := w.Add(name, dt, shape, data); err != nil {
			return false, "", err
		}
	}
	return tied, dtype, w.WriteFile(path)
}

// unpermuteRows undoes convert_hf_to_gguf.py's permute on a row-major
// [heads*headDim, cols] matrix with rowBytes per row: row 2i+k of a head
// becomes row k*headDim/2+i (rotate-half order).
func unpermuteRows(data []byte, heads, rowBytes int) []byte {
	hd := len(data) / rowBytes / heads
	out := make([]byte, len(data))
	for h := range heads {
		for i := range hd / 2 {
			for k := range 2 {
				src, dst := h*hd+2*i+k, h*hd+k*hd/2+i
				copy(out[dst*rowBytes:(dst+1)*rowBytes], data[src*rowBytes:(src+1)*rowBytes])
			}
		}
	}
	return out
}

// spmVocab is a GGUF SentencePiece vocabulary.
type spmVocab struct {
	tokens         []string
	scores         []float32
	types          []int32 // llama.cpp token types; 1 normal, 2 unknown, 3 control, 6 byte
	bos, eos, unk  int
	addBOS, prefix bool
}

func readSPM(f *gguf.File) (*spmVocab, error) {
	if m, err := f.String("tokenizer.ggml.model"); err != nil || m != "llama" {
		return nil, fmt.Errorf("tokenizer.ggml.model %q (%v): only SentencePiece (llama) vocabularies convert", m, err)
	}
	v := &spmVocab{unk: -1, addBOS: true, prefix: true}
	var err error
	if v.tokens, err = f.Strings("tokenizer.ggml.tokens"); err != nil {
		return nil, err
	}
	if v.scores, err = f.Float32s("tokenizer.ggml.scores"); err != nil || len(v.scores) != len(v.tokens) {
		return nil, fmt.Errorf("tokenizer.ggml.scores: %d for %d tokens (%v)", len(v.scores), len(v.tokens), err)
	}
	id := func(key string, def int) (int, error) {
		if _, ok := f.Value(key); !ok {
			return def, nil
		}
		n, err := f.Uint(key)
		if err != nil || n >= uint64(len(v.tokens)) {
			return 0, fmt.Errorf("%s: %d (%v)", key, n, err)
		}
		return int(n), nil
	}
	if v.bos, err = id("tokenizer.ggml.bos_token_id", 1); err != nil {
		return nil, err
	}
	if v.eos, err = id("tokenizer.ggml.eos_token_id", 2); err != nil {
		return nil, err
	}
	if v.unk, err = id("tokenizer.ggml.unknown_token_id", -1); err != nil {
		return nil, err
	}
	if _, ok := f.Value("tokenizer.ggml.add_bos_token"); ok {
		if v.addBOS, err = f.Bool("tokenizer.ggml.add_bos_token"); err != nil {
			return nil, err
		}
	}
	if _, ok := f.Value("tokenizer.ggml.add_space_prefix"); ok {
		if v.prefix, err = f.Bool("tokenizer.ggml.add_space_prefix"); err != nil {
			return nil, err
		}
	}
	if _, ok := f.Value("tokenizer.ggml.token_type"); ok {
		if v.types, err = f.Int32s("tokenizer.ggml.token_type"); err != nil || len(v.types) != len(v.tokens) {
			return nil, fmt.Errorf("tokenizer.ggml.token_type: %d for %d tokens (%v)", len(v.types), len(v.tokens), err)
		}
	} else {
		v.types = make([]int32, len(v.tokens))
		for i, t := range v.tokens {
			switch {
			case i == v.bos || i == v.eos:
				v.types[i] = 3
			case i == v.unk:
				v.types[i] = 2
			case len(t) == 6 && strings.HasPrefix(t, "<0x") && strings.HasSuffix(t, ">"):
				v.types[i] = 6
			default:
				v.types[i] = 1
			}
		}
	}
	if v.unk < 0 {
		for i, t := range v.types {
			if t == 2 {
				v.unk = i
				break
			}
		}
	}
	return v, nil
}

// json is the vocabulary in the tokenizer.json schema transformers writes
// for Llama: BPE with byte fallback, merges ordered by the merged piece's
// score, BOS added by the post-processor.
func (v *spmVocab) json() map[string]any {
	vocab := make(map[string]int, len(v.tokens))
	for i, t := range v.tokens {
		vocab[t] = i
	}
	normal := func(i int) bool { return v.types[i] == 1 || v.types[i] == 4 }
	type merge struct {
		l, r  string
		score float32
	}
	var merges []merge
	for id, tok := range v.tokens {
		if !normal(id) {
			continue
		}
		for i := 1; i < len(tok); i++ {
			l, r := tok[:i], tok[i:]
			li, okl := vocab[l]
			ri, okr := vocab[r]
			if okl && okr && normal(li) && normal(ri) {
				merges = append(merges, merge{l, r, v.scores[id]})
			}
		}
	}
	sort.SliceStable(merges, func(i, j int) bool { return merges[i].score > merges[j].score })
	ms := make([][2]string, len(merges))
	for i, m := range merges {
		ms[i] = [2]string{m.l, m.r}
	}
	added := []map[string]any{}
	for id, t := range v.types {
		if t == 2 || t == 3 {
			added = append(added, map[string]any{"id": id, "content": v.tokens[id], "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true})
		}
	}
	normalizers := []any{map[string]any{"type": "Replace", "pattern": map[string]any{"String": " "}, "content": "▁"}}
	decoders := []any{
		map[string]any{"type": "Replace", "pattern": map[string]any{"String": "▁"}, "content": " "},
		map[string]any{"type": "ByteFallback"},
		map[string]any{"type": "Fuse"},
	}
	if v.prefix {
		normalizers = append([]any{map[string]any{"type": "Prepend", "prepend": "▁"}}, normalizers...)
		decoders = append(decoders, map[string]any{"type": "Strip", "content": " ", "start": 1, "stop": 0})
	}
	var post any
	if v.addBOS {
		bos := v.tokens[v.bos]
		special := map[string]any{"SpecialToken": map[string]any{"id": bos, "type_id": 0}}
		post = map[string]any{
			"type":           "TemplateProcessing",
			"single":         []any{special, map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}}},
			"pair":           []any{special, map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}}, special, map[string]any{"Sequence": map[string]any{"id": "B", "type_id": 1}}},
			"special_tokens": map[string]any{bos: map[string]any{"id": bos, "ids": []int{v.bos}, "tokens": []string{bos}}},
		}
	}
	var unk any
	if v.unk >= 0 {
		unk = v.tokens[v.unk]
	}
	return map[string]any{
		"version": "1.0", "truncation": nil, "padding": nil, "added_tokens": added,
		"normalizer":     map[string]any{"type": "Sequence", "normalizers": normalizers},
		"pre_tokenizer":  nil,
		"post_processor": post,
		"decoder":        map[string]any{"type": "Sequence", "decoders": decoders},
		"model": map[string]any{"type": "BPE", "dropout": nil, "unk_token": unk, "continuing_subword_prefix": nil,
			"end_of_word_suffix": nil, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
			"vocab": vocab, "merges": ms},
	}
}
