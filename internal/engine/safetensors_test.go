package engine

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/safetensors"
)

// hfPermuteInverse undoes llama.cpp's convert_hf_to_gguf.py permute on a
// row-major [heads*headDim, cols] f32 matrix of rowBytes per row: GGUF row
// 2i+k of a head becomes HF row k*headDim/2+i (rotate-half order).
func hfPermuteInverse(data []byte, heads, rowBytes int) []byte {
	rows := len(data) / rowBytes
	hd := rows / heads
	out := make([]byte, len(data))
	for h := range heads {
		for i := range hd / 2 {
			for k := range 2 {
				src := h*hd + 2*i + k
				dst := h*hd + k*hd/2 + i
				copy(out[dst*rowBytes:(dst+1)*rowBytes], data[src*rowBytes:(src+1)*rowBytes])
			}
		}
	}
	return out
}

// storiesHFDir converts the stories260K GGUF into a Hugging Face
// directory; edit, when set, may change a tensor's name, shape or data
// (returning "" drops it).
func storiesHFDir(t *testing.T, edit func(name string, shape []int, data []byte) (string, []int, []byte)) string {
	t.Helper()
	f, err := gguf.Open(storiesPath(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const heads, kvHeads = 8, 4
	names := map[string]string{
		"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight",
	}
	blk := map[string]string{
		"attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
		"attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
		"attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
		"ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight",
	}
	w := safetensors.NewWriter()
	for _, tt := range f.Tensors() {
		if tt.Type != gguf.TypeF32 {
			t.Fatalf("%s: type %s", tt.Name, tt.Type)
		}
		name, ok := names[tt.Name]
		if !ok {
			var rest string
			parts := strings.SplitN(tt.Name, ".", 3)
			if len(parts) == 3 && parts[0] == "blk" {
				rest = parts[2]
			}
			hf, ok := blk[rest]
			if !ok {
				t.Fatalf("unmapped tensor %s", tt.Name)
			}
			name = "model.layers." + parts[1] + "." + hf
		}
		shape := make([]int, len(tt.Dims))
		for i, d := range tt.Dims {
			shape[len(shape)-1-i] = int(d)
		}
		data := tt.Data
		switch {
		case strings.HasSuffix(name, "q_proj.weight"):
			data = hfPermuteInverse(data, heads, int(tt.Dims[0])*4)
		case strings.HasSuffix(name, "k_proj.weight"):
			data = hfPermuteInverse(data, kvHeads, int(tt.Dims[0])*4)
		}
		if edit != nil {
			if name, shape, data = edit(name, shape, data); name == "" {
				continue
			}
		}
		dtype := safetensors.F32
		if strings.HasPrefix(name, "I32:") {
			name, dtype = name[4:], safetensors.I32
		}
		if err := w.Add(name, dtype, shape, data); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(t.TempDir(), "stories260K-hf")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteFile(filepath.Join(dir, "model.safetensors")); err != nil {
		t.Fatal(err)
	}
	ctx, err := f.Uint("llama.context_length")
	if err != nil {
		t.Fatal(err)
	}
	writeJSON(t, filepath.Join(dir, "config.json"), map[string]any{
		"architectures": []string{"LlamaForCausalLM"}, "model_type": "llama",
		"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 5,
		"num_attention_heads": heads, "num_key_value_heads": kvHeads, "vocab_size": 512,
		"rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": ctx,
		"tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2,
		"hidden_act": "silu", "torch_dtype": "float32",
	})
	tokens, err := f.Strings("tokenizer.ggml.tokens")
	if err != nil {
		t.Fatal(err)
	}
	scores, err := f.Float32s("tokenizer.ggml.scores")
	if err != nil {
		t.Fatal(err)
	}
	writeJSON(t, filepath.Join(dir, "tokenizer.json"), spmTokenizerJSON(tokens, scores))
	writeJSON(t, filepath.Join(dir, "tokenizer_config.json"), map[string]any{
		"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": true,
	})
	return dir
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// spmTokenizerJSON is a SentencePiece vocabulary in the tokenizer.json
// schema transformers writes for Llama (BPE with byte fallback, merges
// ordered by the merged piece's score).
func spmTokenizerJSON(tokens []string, scores []float32) map[string]any {
	vocab := map[string]int{}
	for i, tok := range tokens {
		vocab[tok] = i
	}
	type merge struct {
		l, r  string
		score float32
		id    int
	}
	var merges []merge
	for id, tok := range tokens {
		if id < 3 || strings.HasPrefix(tok, "<0x") {
			continue
		}
		for i := 1; i < len(tok); i++ {
			l, r := tok[:i], tok[i:]
			_, okl := vocab[l]
			_, okr := vocab[r]
			if okl && okr {
				merges = append(merges, merge{l, r, scores[id], id})
			}
		}
	}
	sort.SliceStable(merges, func(i, j int) bool { return merges[i].score > merges[j].score })
	ms := make([][2]string, len(merges))
	for i, m := range merges {
		ms[i] = [2]string{m.l, m.r}
	}
	added := []map[string]any{}
	for id, tok := range []string{"<unk>", "<s>", "</s>"} {
		added = append(added, map[string]any{"id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true})
	}
	return map[string]any{
		"version": "1.0", "added_tokens": added,
		"normalizer": map[string]any{"type": "Sequence", "normalizers": []any{
			map[string]any{"type": "Prepend", "prepend": "▁"},
			map[string]any{"type": "Replace", "pattern": map[string]any{"String": " "}, "content": "▁"},
		}},
		"pre_tokenizer": nil,
		"post_processor": map[string]any{
			"type":           "TemplateProcessing",
			"single":         []any{map[string]any{"SpecialToken": map[string]any{"id": "<s>", "type_id": 0}}, map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}}},
			"pair":           []any{map[string]any{"SpecialToken": map[string]any{"id": "<s>", "type_id": 0}}, map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}}, map[string]any{"Sequence": map[string]any{"id": "B", "type_id": 1}}},
			"special_tokens": map[string]any{"<s>": map[string]any{"id": "<s>", "ids": []int{1}, "tokens": []string{"<s>"}}},
		},
		"decoder": map[string]any{"type": "Sequence", "decoders": []any{
			map[string]any{"type": "Replace", "pattern": map[string]any{"String": "▁"}, "content": " "},
			map[string]any{"type": "ByteFallback"},
			map[string]any{"type": "Fuse"},
			map[string]any{"type": "Strip", "content": " ", "start": 1, "stop": 0},
		}},
		"model": map[string]any{"type": "BPE", "dropout": nil, "unk_token": "<unk>", "continuing_subword_prefix": nil,
			"end_of_word_suffix": nil, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
			"vocab": vocab, "merges": ms},
	}
}

func TestLoadHFSafetensors(t *testing.T) {
	dir := storiesHFDir(t, nil)
	m, err := Load(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	info := m.Info()
	if info.ID != "stories260K-hf" || info.Arch != "llama" || info.Parameters != 292800 || info.Quantization != "F32" {
		t.Errorf("info %+v", info)
	}
	text, _, _, err := generate(t, m, context.Background(), Request{MaxTokens: 200})
	if err != nil {
		t.Fatal(err)
	}
	if want := expectedGreedy(t); !strings.HasPrefix(text, want) {
		t.Errorf("got\n%q\nwant\n%q", text, want)
	}
	// The tokenizer.json agrees with the GGUF's SentencePiece tokenizer.
	g := loadStories(t, Options{})
	for _, s := range []string{"Once upon a time, there was a little girl named Lily.", " She liked to play!"} {
		a, err1 := m.Tokenizer().Encode(s, true)
		b, err2 := g.Tokenizer().Encode(s, true)
		if err1 != nil || err2 != nil || len(a) != len(b) || !slicesEqual(a, b) {
			t.Errorf("Encode(%q): HF %v %v, GGUF %v %v", s, a, err1, b, err2)
		}
	}
}

func slicesEqual(a, b []int32) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return len(a) == len(b)
}

func TestLoadHFSafetensorsErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		edit func(name string, shape []int, data []byte) (string, []int, []byte)
		want []string
	}{
		{"missing", func(n string, s []int, d []byte) (string, []int, []byte) {
			if n == "model.layers.2.mlp.up_proj.weight" {
				return "", nil, nil
			}
			return n, s, d
		}, []string{`"model.layers.2.mlp.up_proj.weight" not found`}},
		{"shape", func(n string, s []int, d []byte) (string, []int, []byte) {
			if n == "model.layers.1.mlp.gate_proj.weight" {
				return n, []int{s[1], s[0]}, d
			}
			return n, s, d
		}, []string{"model.safetensors", `"model.layers.1.mlp.gate_proj.weight" has shape`}},
		{"dtype", func(n string, s []int, d []byte) (string, []int, []byte) {
			if n == "model.layers.3.input_layernorm.weight" {
				return "I32:" + n, s, d
			}
			return n, s, d
		}, []string{"model.safetensors", `"model.layers.3.input_layernorm.weight" has dtype I32`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := storiesHFDir(t, c.edit)
			m, err := Load(dir, Options{})
			if err == nil {
				m.Close()
				t.Fatal("no error")
			}
			t.Log(err)
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}
