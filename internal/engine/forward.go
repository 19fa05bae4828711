package engine

import (
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/npumesh/npumesh/internal/engine/arch"
	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/kvcache"
)

type layer struct {
	attnNorm, ffnNorm []float32
	wq, wk, wv, wo    matrix
	bq, bk, bv        []float32 // QKV biases; nil without
	gate, up, down    matrix
}

type weights struct {
	embd    matrix // token_embd.weight: one row per token
	layers  []layer
	outNorm []float32
	output  matrix // output.weight, or token_embd.weight when tied
	// invFreq[i] is the angle per position of rotated pair i, scaling
	// and frequency factors included.
	invFreq []float64
}

// loadWeights maps the llama-family tensors (llama.cpp's names) and
// checks shapes.
func loadWeights(f *gguf.File, hp *hparams) (weights, error) {
	var w weights
	var err error
	if w.embd, err = loadMatrix(f, "token_embd.weight", hp.Dim, hp.Vocab); err != nil {
		return w, err
	}
	if w.outNorm, err = loadVector(f, "output_norm.weight", hp.Dim); err != nil {
		return w, err
	}
	w.output, err = loadMatrix(f, "output.weight", hp.Dim, hp.Vocab)
	if errors.Is(err, gguf.ErrNotFound) {
		// Tied embeddings: the output head reuses the embedding.
		w.output, err = w.embd, nil
	}
	if err != nil {
		return w, err
	}
	w.layers = make([]layer, hp.Layers)
	for i := range w.layers {
		l := &w.layers[i]
		p := fmt.Sprintf("blk.%d.", i)
		vectors := []struct {
			name string
			dst  *[]float32
			n    int
		}{{"attn_norm.weight", &l.attnNorm, hp.Dim}, {"ffn_norm.weight", &l.ffnNorm, hp.Dim}}
		if hp.QKVBias {
			vectors = append(vectors, []struct {
				name string
				dst  *[]float32
				n    int
			}{{"attn_q.bias", &l.bq, hp.QDim()}, {"attn_k.bias", &l.bk, hp.KVDim()}, {"attn_v.bias", &l.bv, hp.KVDim()}}...)
		}
		for _, v := range vectors {
			if *v.dst, err = loadVector(f, p+v.name, v.n); err != nil {
				return w, err
			}
		}
		for _, m := range []struct {
			name       string
			dst        *matrix
			cols, rows int
		}{
			{"attn_q", &l.wq, hp.Dim, hp.QDim()},
			{"attn_k", &l.wk, hp.Dim, hp.KVDim()},
			{"attn_v", &l.wv, hp.Dim, hp.KVDim()},
			{"attn_output", &l.wo, hp.QDim(), hp.Dim},
			{"ffn_gate", &l.gate, hp.Dim, hp.Hidden},
			{"ffn_up", &l.up, hp.Dim, hp.Hidden},
			{"ffn_down", &l.down, hp.Hidden, hp.Dim},
		} {
			if *m.dst, err = loadMatrix(f, p+m.name+".weight", m.cols, m.rows); err != nil {
				return w, err
			}
		}
	}
	// Llama 3.1 files carry per-frequency RoPE factors as a tensor.
	var factors []float32
	if _, ok := f.Tensor("rope_freqs.weight"); ok {
		if factors, err = loadVector(f, "rope_freqs.weight", hp.RotDim/2); err != nil {
			return w, err
		}
	}
	if w.invFreq, err = hp.InvFreq(factors); err != nil {
		return w, err
	}
	return w, nil
}

// batch is the activations of one step: n rows, each a token of some
// sequence at some position. Rows of one sequence are consecutive
// positions in increasing order. It belongs to the scheduler goroutine
// (or a test), and its buffers grow to the largest step seen.
type batch struct {
	n      int
	tokens []int32
	pos    []int
	kv     []*kvcache.Seq // the cache of each row's sequence
	// logitRows are the rows whose next-token logits are wanted; logits
	// holds them, vocab floats each, in that order.
	logitRows []int
	logits    []float32

	x, xn, ao, tmp []float32 // n × dim, n × dim, n × qDim, n × dim
	q, k, v        []float32 // n × qDim, n × kvDim, n × kvDim
	hb, hb2        []float32 // n × hidden
	xl             []float32 // len(logitRows) × dim
	cos, sin       []float32 // n × rotDim/2
	scratch        [][]float32
}

// reset empties b for a step of up to n rows.
func (b *batch) reset() {
	b.n = 0
	b.tokens, b.pos, b.kv, b.logitRows = b.tokens[:0], b.pos[:0], b.kv[:0], b.logitRows[:0]
}

// add appends a row.
func (b *batch) add(token int32, pos int, kv *kvcache.Seq, wantLogits bool) {
	if wantLogits {
		b.logitRows = append(b.logitRows, b.n)
	}
	b.tokens = append(b.tokens, token)
	b.pos = append(b.pos, pos)
	b.kv = append(b.kv, kv)
	b.n++
}

func grow(s []float32, n int) []float32 {
	if cap(s) < n {
		return make([]float32, n, n+n/4)
	}
	return s[:n]
}

// forward runs the rows of b through the model: it writes each row's keys
// and values into its sequence's cache (whose blocks must be reserved) and
// leaves the logits of b.logitRows in b.logits. Every row is computed in
// the same order whatever else is in the batch, so a sequence's logits do
// not depend on its batch mates (a test checks bit equality).
func (m *Model) forward(b *batch) {
	hp, w, th := &m.hp, &m.w, m.threads
	n := b.n
	dim, qDim, kvDim, hd := hp.Dim, hp.QDim(), hp.KVDim(), hp.HeadDim
	half := len(w.invFreq)
	b.x, b.xn, b.ao, b.tmp = grow(b.x, n*dim), grow(b.xn, n*dim), grow(b.ao, n*qDim), grow(b.tmp, n*dim)
	b.q, b.k, b.v = grow(b.q, n*qDim), grow(b.k, n*kvDim), grow(b.v, n*kvDim)
	b.hb, b.hb2 = grow(b.hb, n*hp.Hidden), grow(b.hb2, n*hp.Hidden)
	b.cos, b.sin = grow(b.cos, n*half), grow(b.sin, n*half)
	for i := range n {
		w.embd.row(b.x[i*dim:(i+1)*dim], int(b.tokens[i]))
		for j, f := range w.invFreq {
			sin, cos := math.Sincos(float64(b.pos[i]) * f)
			b.cos[i*half+j], b.sin[i*half+j] = float32(cos), float32(sin)
		}
	}
	bs := m.cache.BlockSize()
	for li := range w.layers {
		l := &w.layers[li]
		for i := range n {
			rmsNorm(b.xn[i*dim:(i+1)*dim], b.x[i*dim:(i+1)*dim], l.attnNorm, hp.NormEps)
		}
		matmulBatch(b.q, &l.wq, b.xn, n, th)
		matmulBatch(b.k, &l.wk, b.xn, n, th)
		matmulBatch(b.v, &l.wv, b.xn, n, th)
		for i := range n {
			q, k, v := b.q[i*qDim:(i+1)*qDim], b.k[i*kvDim:(i+1)*kvDim], b.v[i*kvDim:(i+1)*kvDim]
			if l.bq != nil {
				add(q, l.bq)
				add(k, l.bk)
				add(v, l.bv)
			}
			cos, sin := b.cos[i*half:(i+1)*half], b.sin[i*half:(i+1)*half]
			rope(q, hd, hp.Rope, cos, sin)
			rope(k, hd, hp.Rope, cos, sin)
			// All rows' keys and values are stored before any row
			// attends: later rows of a prompt chunk read earlier ones.
			p := b.pos[i]
			blk := b.kv[i].Block(p / bs)
			off := (p % bs) * kvDim
			copy(blk.K(li)[off:off+kvDim], k)
			copy(blk.V(li)[off:off+kvDim], v)
		}
		m.attention(b, li)
		matmulBatch(b.tmp, &l.wo, b.ao, n, th)
		add(b.x[:n*dim], b.tmp[:n*dim])

		for i := range n {
			rmsNorm(b.xn[i*dim:(i+1)*dim], b.x[i*dim:(i+1)*dim], l.ffnNorm, hp.NormEps)
		}
		matmulBatch(b.hb, &l.gate, b.xn, n, th)
		matmulBatch(b.hb2, &l.up, b.xn, n, th)
		for i, g := range b.hb {
			// SwiGLU: silu(gate) * up.
			b.hb[i] = g / (1 + float32(math.Exp(float64(-g)))) * b.hb2[i]
		}
		matmulBatch(b.tmp, &l.down, b.hb, n, th)
		add(b.x[:n*dim], b.tmp[:n*dim])
	}
	nl := len(b.logitRows)
	if nl == 0 {
		return
	}
	b.xl = grow(b.xl, nl*dim)
	b.logits = grow(b.logits, nl*hp.Vocab)
	for j, r := range b.logitRows {
		rmsNorm(b.xl[j*dim:(j+1)*dim], b.x[r*dim:(r+1)*dim], w.outNorm, hp.NormEps)
	}
	matmulBatch(b.logits, &w.output, b.xl, nl, th)
}

// attentionMin is the number of multiply-adds of a step's attention below
// which it stays on the calling goroutine.
const attentionMin = 1 << 15

// attention computes grouped-query attention of every row's query over
// positions [0, pos] of its sequence's cache, layer li, into b.ao.
func (m *Model) attention(b *batch, li int) {
	heads := m.hp.Heads
	tasks := b.n * heads
	work, maxPos := 0, 0
	for _, p := range b.pos[:b.n] {
		work += (p + 1) * 2 * m.hp.HeadDim * heads
		maxPos = max(maxPos, p)
	}
	workers := min(m.threads, tasks)
	if work < attentionMin {
		workers = 1
	}
	for len(b.scratch) < workers {
		b.scratch = append(b.scratch, nil)
	}
	run := func(wi, lo, hi int) {
		att := grow(b.scratch[wi], maxPos+1)
		b.scratch[wi] = att
		for t := lo; t < hi; t++ {
			m.attendHead(b, li, t/heads, t%heads, att)
		}
	}
	if workers <= 1 {
		run(0, 0, tasks)
		return
	}
	chunk := (tasks + workers - 1) / workers
	var wg sync.WaitGroup
	for wi := range workers {
		lo, hi := wi*chunk, min((wi+1)*chunk, tasks)
		if lo < hi {
			wg.Go(func() { run(wi, lo, hi) })
		}
	}
	wg.Wait()
}

// attendHead is head h of row i: softmax(q·K/sqrt(hd))·V over the row's
// positions, walking the sequence's blocks in order.
func (m *Model) attendHead(b *batch, li, i, h int, scratch []float32) {
	hp := &m.hp
	hd, kvDim, qDim := hp.HeadDim, hp.KVDim(), hp.QDim()
	bs := m.cache.BlockSize()
	scale := float32(1 / math.Sqrt(float64(hd)))
	p := b.pos[i]
	kv := b.kv[i]
	q := b.q[i*qDim+h*hd : i*qDim+(h+1)*hd]
	off := (h / (hp.Heads / hp.KVHeads)) * hd
	att := scratch[:p+1]
	for t0 := 0; t0 <= p; t0 += bs {
		keys := kv.Block(t0 / bs).K(li)
		for j := 0; j < bs && t0+j <= p; j++ {
			att[t0+j] = dotF32(q, keys[j*kvDim+off:j*kvDim+off+hd]) * scale
		}
	}
	softmax(att)
	out := b.ao[i*qDim+h*hd : i*qDim+(h+1)*hd]
	clear(out)
	for t0 := 0; t0 <= p; t0 += bs {
		vals := kv.Block(t0 / bs).V(li)
		for j := 0; j < bs && t0+j <= p; j++ {
			a := att[t0+j]
			v := vals[j*kvDim+off : j*kvDim+off+hd]
			for d := range out {
				out[d] += a * v[d]
			}
		}
	}
}

// rope rotates each head of x (heads of hd values) by the angles in
// cos/sin, over the first 2*len(cos) dimensions of each head.
func rope(x []float32, hd int, style arch.RopeStyle, cos, sin []float32) {
	half := len(cos)
	for h := 0; h+hd <= len(x); h += hd {
		head := x[h : h+hd]
		for i := range half {
			a, b := 2*i, 2*i+1
			if style == arch.RopeNeoX {
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
