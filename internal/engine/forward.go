package engine

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
	"unsafe"

	"github.com/npumesh/npumesh/internal/engine/arch"
	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/kernels"
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
	if b.n == 1 {
		// Single-position steps time the layers (LayerSeconds).
		defer m.timeLayers(time.Now())
	}
	hp, w, pool := &m.hp, &m.w, m.pool
	n := b.n
	dim, qDim, kvDim, hd := hp.Dim, hp.QDim(), hp.KVDim(), hp.HeadDim
	half := len(w.invFreq)
	b.x, b.xn, b.ao, b.tmp = grow(b.x, n*dim), grow(b.xn, n*dim), grow(b.ao, n*qDim), grow(b.tmp, n*dim)
	b.q, b.k, b.v = grow(b.q, n*qDim), grow(b.k, n*kvDim), grow(b.v, n*kvDim)
	b.hb, b.hb2 = grow(b.hb, n*hp.Hidden), grow(b.hb2, n*hp.Hidden)
	b.cos, b.sin = grow(b.cos, n*half), grow(b.sin, n*half)
	// A later pipeline stage gets b.x from the stage before it.
	if m.stage.Lo == 0 {
		for i := range n {
			w.embd.row(b.x[i*dim:(i+1)*dim], int(b.tokens[i]))
		}
	}
	for i := range n {
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
		matmulBatch(b.q, &l.wq, b.xn, n, pool)
		matmulBatch(b.k, &l.wk, b.xn, n, pool)
		matmulBatch(b.v, &l.wv, b.xn, n, pool)
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
			// A block holds each KV head's part as a matrix for
			// attendGroup's products: keys [slot][hd], values
			// transposed, [hd][slot].
			p := b.pos[i]
			blk := b.kv[i].Block(p / bs)
			bk, bv := blk.K(li), blk.V(li)
			slot := p % bs
			for g := 0; g < kvDim; g += hd {
				off := g * bs
				copy(bk[off+slot*hd:off+(slot+1)*hd], k[g:g+hd])
				for d, x := range v[g : g+hd] {
					bv[off+d*bs+slot] = x
				}
			}
		}
		m.attention(b, li)
		matmulBatch(b.tmp, &l.wo, b.ao, n, pool)
		add(b.x[:n*dim], b.tmp[:n*dim])

		for i := range n {
			rmsNorm(b.xn[i*dim:(i+1)*dim], b.x[i*dim:(i+1)*dim], l.ffnNorm, hp.NormEps)
		}
		matmulBatch(b.hb, &l.gate, b.xn, n, pool)
		matmulBatch(b.hb2, &l.up, b.xn, n, pool)
		for i, g := range b.hb {
			// SwiGLU: silu(gate) * up.
			b.hb[i] = g / (1 + float32(math.Exp(float64(-g)))) * b.hb2[i]
		}
		matmulBatch(b.tmp, &l.down, b.hb, n, pool)
		add(b.x[:n*dim], b.tmp[:n*dim])
	}
	nl := len(b.logitRows)
	if nl == 0 || !m.last() {
		return // a stage before the last leaves its output in b.x
	}
	b.xl = grow(b.xl, nl*dim)
	b.logits = grow(b.logits, nl*hp.Vocab)
	for j, r := range b.logitRows {
		rmsNorm(b.xl[j*dim:(j+1)*dim], b.x[r*dim:(r+1)*dim], w.outNorm, hp.NormEps)
	}
	matmulBatch(b.logits, &w.output, b.xl, nl, pool)
}

// attentionMin is the number of multiply-adds of a step's attention below
// which it stays on the calling goroutine.
const attentionMin = 1 << 15

// attention computes grouped-query attention of every row's query over
// positions [0, pos] of its sequence's cache, layer li, into b.ao. A task
// is one row and one KV head with the query heads that share it, so each
// key and value is loaded once for the group.
func (m *Model) attention(b *batch, li int) {
	kvHeads, group := m.hp.KVHeads, m.hp.Heads/m.hp.KVHeads
	tasks := b.n * kvHeads
	work, maxPos := 0, 0
	for _, p := range b.pos[:b.n] {
		work += (p + 1) * 2 * m.hp.HeadDim * m.hp.Heads
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
		att := grow(b.scratch[wi], group*(maxPos+1+max(m.cache.BlockSize(), m.hp.HeadDim)+m.cache.BlockSize()))
		b.scratch[wi] = att
		for t := lo; t < hi; t++ {
			m.attendGroup(b, li, t/kvHeads, t%kvHeads, att)
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

// attendGroup is KV head g of row i for each query head h that shares it:
// softmax(q_h·K/sqrt(hd))·V over the row's positions, walking the
// sequence's blocks in order, a kernels.MatMul per block for the scores
// and one for the weighted values (the group's heads as its vectors).
// MatMul gives each vector what it gives it alone, so a head's result
// does not depend on the others, nor on the rest of the batch.
func (m *Model) attendGroup(b *batch, li, i, g int, scratch []float32) {
	hp := &m.hp
	hd, qDim := hp.HeadDim, hp.QDim()
	group := hp.Heads / hp.KVHeads
	bs := m.cache.BlockSize()
	scale := float32(1 / math.Sqrt(float64(hd)))
	p := b.pos[i]
	n := p + 1
	kv := b.kv[i]
	q := b.q[i*qDim+g*group*hd : i*qDim+(g+1)*group*hd]
	att, sc := scratch[:group*n], scratch[group*n:group*n+group*max(bs, hd)]
	off := g * bs * hd // this head's part of a block
	for t0 := 0; t0 < n; t0 += bs {
		// The block's keys of this head are a rows×hd F32 matrix and
		// the group's queries group vectors: one kernels product.
		rows := min(bs, n-t0)
		keys := kv.Block(t0 / bs).K(li)[off : off+rows*hd]
		kernels.MatMul(sc, f32Bytes(keys), gguf.TypeF32, rows, hd, q, group, nil)
		for h := range group {
			for j, s := range sc[h*rows : (h+1)*rows] {
				att[h*n+t0+j] = s * scale
			}
		}
	}
	for h := range group {
		softmax(att[h*n : (h+1)*n])
	}
	out := b.ao[i*qDim+g*group*hd : i*qDim+(g+1)*group*hd]
	clear(out)
	// A full block's values of this head are an hd×bs matrix (stored
	// transposed), multiplied by the group's weights for the block as
	// group vectors; the last, partial block is summed here.
	xa := scratch[group*n+group*max(bs, hd):][:group*bs]
	for t0 := 0; t0 < n; t0 += bs {
		vals := kv.Block(t0 / bs).V(li)[off : off+hd*bs]
		if rows := n - t0; rows < bs {
			for h := range group {
				a, o := att[h*n+t0:h*n+n], out[h*hd:(h+1)*hd]
				for d := range o {
					o[d] += dotF32(a, vals[d*bs:d*bs+rows])
				}
			}
			break
		}
		for h := range group {
			copy(xa[h*bs:(h+1)*bs], att[h*n+t0:h*n+t0+bs])
		}
		kernels.MatMul(sc, f32Bytes(vals), gguf.TypeF32, hd, bs, xa, group, nil)
		add(out, sc[:group*hd])
	}
}

// axpy sets y += a·x.
func axpy(y []float32, a float32, x []float32) {
	x = x[:len(y)]
	i := 0
	for ; i+4 <= len(y); i += 4 {
		y4, x4 := y[i:i+4:i+4], x[i:i+4:i+4]
		y4[0] += a * x4[0]
		y4[1] += a * x4[1]
		y4[2] += a * x4[2]
		y4[3] += a * x4[3]
	}
	for ; i < len(y); i++ {
		y[i] += a * x[i]
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

// dotF32 sums with four accumulators, which lets the CPU overlap the
// additions (about twice as fast as one running sum in pure Go).
func dotF32(w, x []float32) float32 {
	x = x[:len(w)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(w); i += 4 {
		w4, x4 := w[i:i+4:i+4], x[i:i+4:i+4]
		s0 += w4[0] * x4[0]
		s1 += w4[1] * x4[1]
		s2 += w4[2] * x4[2]
		s3 += w4[3] * x4[3]
	}
	for ; i < len(w); i++ {
		s0 += w[i] * x[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// f32Bytes views x as the little-endian bytes kernels takes for F32.
func f32Bytes(x []float32) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(x))), 4*len(x))
}
