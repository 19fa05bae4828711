package engine

import (
	"errors"
	"fmt"
	"math"

	"github.com/npumesh/npumesh/internal/gguf"
)

type layer struct {
	attnNorm, ffnNorm []float32
	wq, wk, wv, wo    matrix
	gate, up, down    matrix
}

type weights struct {
	embd    matrix // token_embd.weight: one row per token
	layers  []layer
	outNorm []float32
	output  matrix // output.weight, or token_embd.weight when tied
	// invFreq[i] is ropeBase^(-2i/rotDim), the angle per position of
	// rotated pair i.
	invFreq []float64
}

// loadWeights maps the llama tensors (llama.cpp's names) and checks shapes.
func loadWeights(f *gguf.File, hp hparams) (weights, error) {
	var w weights
	var err error
	if w.embd, err = loadMatrix(f, "token_embd.weight", hp.dim, hp.vocab); err != nil {
		return w, err
	}
	if w.outNorm, err = loadVector(f, "output_norm.weight", hp.dim); err != nil {
		return w, err
	}
	w.output, err = loadMatrix(f, "output.weight", hp.dim, hp.vocab)
	if errors.Is(err, gguf.ErrNotFound) {
		// Tied embeddings: the output head reuses the embedding.
		w.output, err = w.embd, nil
	}
	if err != nil {
		return w, err
	}
	w.layers = make([]layer, hp.layers)
	for i := range w.layers {
		l := &w.layers[i]
		p := fmt.Sprintf("blk.%d.", i)
		for _, v := range []struct {
			name string
			dst  *[]float32
		}{{"attn_norm", &l.attnNorm}, {"ffn_norm", &l.ffnNorm}} {
			if *v.dst, err = loadVector(f, p+v.name+".weight", hp.dim); err != nil {
				return w, err
			}
		}
		for _, m := range []struct {
			name       string
			dst        *matrix
			cols, rows int
		}{
			{"attn_q", &l.wq, hp.dim, hp.heads * hp.headDim},
			{"attn_k", &l.wk, hp.dim, hp.kvDim()},
			{"attn_v", &l.wv, hp.dim, hp.kvDim()},
			{"attn_output", &l.wo, hp.heads * hp.headDim, hp.dim},
			{"ffn_gate", &l.gate, hp.dim, hp.hidden},
			{"ffn_up", &l.up, hp.dim, hp.hidden},
			{"ffn_down", &l.down, hp.hidden, hp.dim},
		} {
			if *m.dst, err = loadMatrix(f, p+m.name+".weight", m.cols, m.rows); err != nil {
				return w, err
			}
		}
	}
	w.invFreq = make([]float64, hp.rotDim/2)
	for i := range w.invFreq {
		w.invFreq[i] = math.Pow(hp.ropeBase, -float64(2*i)/float64(hp.rotDim))
	}
	return w, nil
}

// state is one sequence's activations and KV cache. It belongs to one
// Generate call.
type state struct {
	x, xb, xb2, hb, hb2 []float32
	q, k, v, att        []float32
	logits              []float32
	cos, sin            []float32
	// kc and vc hold, per layer, kvDim values per position; they grow
	// with the sequence so a short request does not pay for the whole
	// context.
	kc, vc [][]float32
}

func newState(hp *hparams) *state {
	return &state{
		x: make([]float32, hp.dim), xb: make([]float32, hp.heads*hp.headDim), xb2: make([]float32, hp.dim),
		hb: make([]float32, hp.hidden), hb2: make([]float32, hp.hidden),
		q: make([]float32, hp.heads*hp.headDim), k: make([]float32, hp.kvDim()), v: make([]float32, hp.kvDim()),
		logits: make([]float32, hp.vocab),
		cos:    make([]float32, hp.rotDim/2), sin: make([]float32, hp.rotDim/2),
		kc: make([][]float32, hp.layers), vc: make([][]float32, hp.layers),
	}
}

// forward runs token at position pos (the number of tokens already in
// the cache) through the model. With wantLogits it leaves the next-token
// logits in s.logits; prompt tokens before the last skip the output head.
func (m *Model) forward(s *state, token int32, pos int, wantLogits bool) {
	hp, w, th := &m.hp, &m.w, m.threads
	w.embd.row(s.x, int(token))
	for i, f := range w.invFreq {
		sin, cos := math.Sincos(float64(pos) * f)
		s.cos[i], s.sin[i] = float32(cos), float32(sin)
	}
	kvDim := hp.kvDim()
	for li := range w.layers {
		l := &w.layers[li]
		rmsNorm(s.xb[:hp.dim], s.x, l.attnNorm, hp.eps)
		matVec(s.q, &l.wq, s.xb, th)
		matVec(s.k, &l.wk, s.xb, th)
		matVec(s.v, &l.wv, s.xb, th)
		rope(s.q, hp.headDim, hp.rope, s.cos, s.sin)
		rope(s.k, hp.headDim, hp.rope, s.cos, s.sin)
		s.kc[li] = append(s.kc[li], s.k...)
		s.vc[li] = append(s.vc[li], s.v...)
		m.attention(s, li, pos, kvDim)
		matVec(s.xb2, &l.wo, s.xb, th)
		add(s.x, s.xb2)

		rmsNorm(s.xb[:hp.dim], s.x, l.ffnNorm, hp.eps)
		matVec(s.hb, &l.gate, s.xb, th)
		matVec(s.hb2, &l.up, s.xb, th)
		for i, g := range s.hb {
			// SwiGLU: silu(gate) * up.
			s.hb[i] = g / (1 + float32(math.Exp(float64(-g)))) * s.hb2[i]
		}
		matVec(s.xb2, &l.down, s.hb, th)
		add(s.x, s.xb2)
	}
	if !wantLogits {
		return
	}
	rmsNorm(s.x, s.x, w.outNorm, hp.eps)
	matVec(s.logits, &w.output, s.x, th)
}

// attention computes grouped-query attention of s.q over positions
// [0, pos] of layer li's cache into s.xb.
func (m *Model) attention(s *state, li, pos, kvDim int) {
	hp := &m.hp
	hd := hp.headDim
	group := hp.heads / hp.kvHeads
	scale := float32(1 / math.Sqrt(float64(hd)))
	if cap(s.att) < pos+1 {
		s.att = make([]float32, pos+1, max(2*(pos+1), 64))
	}
	att := s.att[:pos+1]
	kc, vc := s.kc[li], s.vc[li]
	for h := range hp.heads {
		q := s.q[h*hd : (h+1)*hd]
		off := (h / group) * hd
		for t := range att {
			att[t] = dotF32(q, kc[t*kvDim+off:t*kvDim+off+hd]) * scale
		}
		softmax(att)
		out := s.xb[h*hd : (h+1)*hd]
		clear(out)
		for t, a := range att {
			v := vc[t*kvDim+off : t*kvDim+off+hd]
			for i := range out {
				out[i] += a * v[i]
			}
		}
	}
}

// rope rotates each head of x (heads of hd values) by the angles in
// cos/sin, over the first 2*len(cos) dimensions of each head.
func rope(x []float32, hd int, style ropeStyle, cos, sin []float32) {
	half := len(cos)
	for h := 0; h+hd <= len(x); h += hd {
		head := x[h : h+hd]
		for i := range half {
			a, b := 2*i, 2*i+1
			if style == ropeHalf {
				a, b = i, i+half
			}
			x0, x1 := head[a], head[b]
			head[a] = x0*cos[i] - x1*sin[i]
			head[b] = x0*sin[i] + x1*cos[i]
		}
	}
}

// rmsNorm sets out = x / rms(x) * w. out may be x.
func rmsNorm(out, x, w []float32, eps float32) {
	var ss float32
	for _, v := range x {
		ss += v * v
	}
	ss = ss/float32(len(x)) + eps
	inv := float32(1 / math.Sqrt(float64(ss)))
	for i, v := range x {
		out[i] = w[i] * (inv * v)
	}
}

// softmax normalizes x in place, subtracting the maximum for stability.
func softmax(x []float32) {
	mx := x[0]
	for _, v := range x[1:] {
		mx = max(mx, v)
	}
	var sum float32
	for i, v := range x {
		e := float32(math.Exp(float64(v - mx)))
		x[i] = e
		sum += e
	}
	for i := range x {
		x[i] /= sum
	}
}

func add(dst, src []float32) {
	for i, v := range src {
		dst[i] += v
	}
}
