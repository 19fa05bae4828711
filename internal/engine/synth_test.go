package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/npumesh/npumesh/internal/gguf"
)

// synthConfig describes a random llama-family model written as GGUF.
type synthConfig struct {
	arch                                string // "llama" or "qwen2"
	dim, hidden, layers, heads, kvHeads int
	vocab, ctx                          int
	ropeBase                            float64
	bias                                bool // write attn_{q,k,v}.bias
	tied                                bool // no output.weight
	seed                                uint64
	// bpe, when non-nil, replaces the SentencePiece vocabulary with a
	// byte-level BPE one (tokenizer.ggml.model "gpt2"); vocab must be
	// len(bpe.tokens).
	bpe *synthBPE
}

// synthBPE is a GGUF-style byte-level BPE vocabulary.
type synthBPE struct {
	tokens []string
	types  []int32
	merges []string
	pre    string
	bos    int32 // -1: none
	eos    int32
}

// synthModel is the file and its tensors, for reference computations.
type synthModel struct {
	path    string
	tensors map[string][]float32
}

// writeSynthetic writes a random F32 model with a SentencePiece vocabulary
// of placeholder pieces. Weights are scaled by 1/sqrt(fan-in), so
// activations stay in a sensible range.
func writeSynthetic(t testing.TB, c synthConfig) synthModel {
	t.Helper()
	r := rand.New(rand.NewPCG(c.seed, 99))
	w := gguf.NewWriter()
	set := func(k string, v any) {
		if err := w.Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	p := c.arch + "."
	set("general.architecture", c.arch)
	set(p+"context_length", uint32(c.ctx))
	set(p+"embedding_length", uint32(c.dim))
	set(p+"feed_forward_length", uint32(c.hidden))
	set(p+"block_count", uint32(c.layers))
	set(p+"attention.head_count", uint32(c.heads))
	set(p+"attention.head_count_kv", uint32(c.kvHeads))
	set(p+"attention.layer_norm_rms_epsilon", float32(1e-6))
	set(p+"rope.freq_base", float32(c.ropeBase))
	if v := c.bpe; v != nil {
		set("tokenizer.ggml.model", "gpt2")
		set("tokenizer.ggml.pre", v.pre)
		set("tokenizer.ggml.tokens", v.tokens)
		set("tokenizer.ggml.token_type", v.types)
		set("tokenizer.ggml.merges", v.merges)
		if v.bos >= 0 {
			set("tokenizer.ggml.bos_token_id", uint32(v.bos))
		}
		set("tokenizer.ggml.eos_token_id", uint32(v.eos))
	} else {
		tokens := make([]string, c.vocab)
		for i := range tokens {
			tokens[i] = fmt.Sprintf("\u2581t%d", i)
		}
		tokens[0], tokens[1], tokens[2] = "<unk>", "<s>", "</s>"
		set("tokenizer.ggml.model", "llama")
		set("tokenizer.ggml.tokens", tokens)
		set("tokenizer.ggml.bos_token_id", uint32(1))
		set("tokenizer.ggml.eos_token_id", uint32(2))
	}

	m := synthModel{tensors: map[string][]float32{}}
	add := func(name string, scale float32, dims ...int) {
		n := 1
		udims := make([]uint64, len(dims))
		for i, d := range dims {
			n *= d
			udims[i] = uint64(d)
		}
		v := make([]float32, n)
		data := make([]byte, 4*n)
		for i := range v {
			v[i] = (r.Float32()*2 - 1) * scale
			if scale == 0 { // norms: around 1
				v[i] = 0.8 + 0.4*r.Float32()
			}
			binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(v[i]))
		}
		m.tensors[name] = v
		if err := w.AddTensor(name, gguf.TypeF32, udims, data); err != nil {
			t.Fatal(err)
		}
	}
	hd := c.dim / c.heads
	kvDim := c.kvHeads * hd
	inv := func(n int) float32 { return float32(1.7 / math.Sqrt(float64(n))) }
	add("token_embd.weight", 1, c.dim, c.vocab)
	add("output_norm.weight", 0, c.dim)
	if !c.tied {
		add("output.weight", inv(c.dim), c.dim, c.vocab)
	}
	for l := range c.layers {
		b := fmt.Sprintf("blk.%d.", l)
		add(b+"attn_norm.weight", 0, c.dim)
		add(b+"ffn_norm.weight", 0, c.dim)
		add(b+"attn_q.weight", inv(c.dim), c.dim, c.dim)
		add(b+"attn_k.weight", inv(c.dim), c.dim, kvDim)
		add(b+"attn_v.weight", inv(c.dim), c.dim, kvDim)
		if c.bias {
			add(b+"attn_q.bias", 0.5, c.dim)
			add(b+"attn_k.bias", 0.5, kvDim)
			add(b+"attn_v.bias", 0.5, kvDim)
		}
		add(b+"attn_output.weight", inv(c.dim), c.dim, c.dim)
		add(b+"ffn_gate.weight", inv(c.dim), c.dim, c.hidden)
		add(b+"ffn_up.weight", inv(c.dim), c.dim, c.hidden)
		add(b+"ffn_down.weight", inv(c.hidden), c.hidden, c.dim)
	}
	var buf bytes.Buffer
	if _, err := w.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	m.path = filepath.Join(t.TempDir(), c.arch+"-synthetic.gguf")
	if err := os.WriteFile(m.path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return m
}

// reference is a plain float64 forward pass of a llama-family model with
// rotate-half (NeoX) RoPE, written from the model's definition rather
// than from the engine's code. It returns the logits after each token.
// withBias false ignores the QKV biases.
func (s synthModel) reference(c synthConfig, tokens []int32, withBias bool) [][]float64 {
	T := s.tensors
	hd := c.dim / c.heads
	kvDim := c.kvHeads * hd
	matvec := func(name string, x []float64, rows int) []float64 {
		w := T[name]
		cols := len(x)
		out := make([]float64, rows)
		for r := range rows {
			for i, xv := range x {
				out[r] += float64(w[r*cols+i]) * xv
			}
		}
		return out
	}
	norm := func(x []float64, name string) []float64 {
		var ss float64
		for _, v := range x {
			ss += v * v
		}
		inv := 1 / math.Sqrt(ss/float64(len(x))+1e-6)
		out := make([]float64, len(x))
		for i, v := range x {
			out[i] = v * inv * float64(T[name][i])
		}
		return out
	}
	ropeNeoX := func(x []float64, pos int) {
		for h := 0; h < len(x); h += hd {
			for i := range hd / 2 {
				theta := float64(pos) * math.Pow(c.ropeBase, -float64(2*i)/float64(hd))
				a, b := x[h+i], x[h+i+hd/2]
				x[h+i] = a*math.Cos(theta) - b*math.Sin(theta)
				x[h+i+hd/2] = a*math.Sin(theta) + b*math.Cos(theta)
			}
		}
	}
	keys := make([][][]float64, c.layers)
	vals := make([][][]float64, c.layers)
	var out [][]float64
	for pos, tok := range tokens {
		x := make([]float64, c.dim)
		for i := range x {
			x[i] = float64(T["token_embd.weight"][int(tok)*c.dim+i])
		}
		for l := range c.layers {
			b := fmt.Sprintf("blk.%d.", l)
			xn := norm(x, b+"attn_norm.weight")
			q := matvec(b+"attn_q.weight", xn, c.dim)
			k := matvec(b+"attn_k.weight", xn, kvDim)
			v := matvec(b+"attn_v.weight", xn, kvDim)
			if withBias && c.bias {
				for i := range q {
					q[i] += float64(T[b+"attn_q.bias"][i])
				}
				for i := range k {
					k[i] += float64(T[b+"attn_k.bias"][i])
					v[i] += float64(T[b+"attn_v.bias"][i])
				}
			}
			ropeNeoX(q, pos)
			ropeNeoX(k, pos)
			keys[l] = append(keys[l], k)
			vals[l] = append(vals[l], v)
			att := make([]float64, c.dim)
			for h := range c.heads {
				kh := h / (c.heads / c.kvHeads) * hd
				scores := make([]float64, pos+1)
				mx := math.Inf(-1)
				for t := range scores {
					for i := range hd {
						scores[t] += q[h*hd+i] * keys[l][t][kh+i]
					}
					scores[t] /= math.Sqrt(float64(hd))
					mx = max(mx, scores[t])
				}
				var sum float64
				for t := range scores {
					scores[t] = math.Exp(scores[t] - mx)
					sum += scores[t]
				}
				for t, sc := range scores {
					for i := range hd {
						att[h*hd+i] += sc / sum * vals[l][t][kh+i]
					}
				}
			}
			o := matvec(b+"attn_output.weight", att, c.dim)
			for i := range x {
				x[i] += o[i]
			}
			xn = norm(x, b+"ffn_norm.weight")
			g := matvec(b+"ffn_gate.weight", xn, c.hidden)
			u := matvec(b+"ffn_up.weight", xn, c.hidden)
			for i := range g {
				g[i] = g[i] / (1 + math.Exp(-g[i])) * u[i]
			}
			d := matvec(b+"ffn_down.weight", g, c.dim)
			for i := range x {
				x[i] += d[i]
			}
		}
		head := "output.weight"
		if c.tied {
			head = "token_embd.weight"
		}
		out = append(out, matvec(head, norm(x, "output_norm.weight"), c.vocab))
	}
	return out
}
