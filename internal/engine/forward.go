package engine

import (
	"errors"
	"fmt"
	"math"
	"time"

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
	kvh            []uint16  // n × 2·kvDim: a row's key and value as half floats
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

func grow[T float32 | uint16](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n, n+n/4)
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
	if m.kvHalf {
		b.kvh = grow(b.kvh, n*2*kvDim)
	}
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
	// The per-row work between the products runs on the pool's threads
	// when the batch has rows enough (m.eachRow).
	if len(w.layers) > 0 {
		m.eachRow(n, func(i int) {
			rmsNorm(b.xn[i*dim:(i+1)*dim], b.x[i*dim:(i+1)*dim], w.layers[0].attnNorm, hp.NormEps)
		})
	}
	for li := range w.layers {
		l := &w.layers[li]
		matmulShared(b.xn, n, pool, product{b.q, &l.wq}, product{b.k, &l.wk}, product{b.v, &l.wv})
		m.eachRow(n, func(i int) {
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
			// A block holds each KV head's part as attendGroup's
			// kernels read it: keys transposed, [hd][slot], values
			// [slot][hd]. (Rows write distinct slots.)
			p := b.pos[i]
			blk := b.kv[i].Block(p / bs)
			slot := p % bs
			if m.kvHalf {
				kh, vh := b.kvh[2*i*kvDim:(2*i+1)*kvDim], b.kvh[(2*i+1)*kvDim:(2*i+2)*kvDim]
				kernels.ToF16(kh, k)
				kernels.ToF16(vh, v)
				storeKV(blk.KHalf(li), blk.VHalf(li), kh, vh, hd, bs, slot)
			} else {
				storeKV(blk.K(li), blk.V(li), k, v, hd, bs, slot)
			}
		})
		m.attention(b, li)
		matmulBatch(b.tmp, &l.wo, b.ao, n, pool)
		m.eachRow(n, func(i int) {
			x := b.x[i*dim : (i+1)*dim]
			add(x, b.tmp[i*dim:(i+1)*dim])
			rmsNorm(b.xn[i*dim:(i+1)*dim], x, l.ffnNorm, hp.NormEps)
		})
		matmulShared(b.xn, n, pool, product{b.hb, &l.gate}, product{b.hb2, &l.up})
		m.split(len(b.hb), swigluMin, func(lo, hi int) { swiglu(b.hb[lo:hi], b.hb2[lo:hi]) })
		matmulBatch(b.tmp, &l.down, b.hb, n, pool)
		// The residual, and the next layer's attention norm.
		m.eachRow(n, func(i int) {
			x := b.x[i*dim : (i+1)*dim]
			add(x, b.tmp[i*dim:(i+1)*dim])
			if li+1 < len(w.layers) {
				rmsNorm(b.xn[i*dim:(i+1)*dim], x, w.layers[li+1].attnNorm, hp.NormEps)
			}
		})
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

// eachRowChunk is the fewest rows eachRow gives a thread: the work between
// two products (a norm, RoPE, a residual add: microseconds a row) is less
// than a dispatch is worth for one row, so a batch of fewer than 4 rows
// stays on the caller.
const eachRowChunk = 2

// eachRow calls fn for each row index in [0,n), split over the pool's
// threads (m.split) in chunks of at least eachRowChunk rows. fn must only
// write row i's own data.
func (m *Model) eachRow(n int, fn func(i int)) {
	m.split(n, eachRowChunk, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			fn(i)
		}
	})
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
		att := grow(b.scratch[wi], attendScratch(group, m.cache.BlockSize(), maxPos+1))
		b.scratch[wi] = att
		for t := lo; t < hi; t++ {
			m.attendGroup(b, li, t/kvHeads, t%kvHeads, att)
		}
	}
	if workers <= 1 {
		run(0, 0, tasks)
		return
	}
	// One chunk per worker, each with its own scratch (indexed by chunk).
	chunk := (tasks + workers - 1) / workers
	m.pool.For(tasks, chunk, func(lo, hi int) { run(lo/chunk, lo, hi) })
}

// attendScratch is the scratch attendGroup needs for n positions: the
// group's attention weights, a row per query head over whole blocks.
func attendScratch(group, bs, n int) int {
	return group * ((n + bs - 1) / bs * bs)
}

// attendGroup is KV head g of row i for each query head h that shares it:
// softmax(q_h·K/sqrt(hd))·V over the row's positions. The kernels read
// the cache blocks in place (kernels.AttnScores*, AttnValues*), a block
// for the whole group at a time: its keys are stored transposed, [hd][slot],
// so a block's scores are summed a dimension at a time, and its values as
// they come, [slot][hd], so the output is summed a slot at a time, both with
// no horizontal sums. (Until session 5 the keys were [slot][hd] and the
// values [hd][slot], and each task first gathered every block's keys and
// values into one matrix for two kernels.MatMul; the gathers cost as much
// as the products.) A head's result does not depend on the other heads,
// nor on the rest of the batch.
func (m *Model) attendGroup(b *batch, li, i, g int, scratch []float32) {
	hp := &m.hp
	hd, qDim := hp.HeadDim, hp.QDim()
	group := hp.Heads / hp.KVHeads
	bs := m.cache.BlockSize()
	scale := float32(1 / math.Sqrt(float64(hd)))
	p := b.pos[i]
	n := p + 1
	blocks := (n + bs - 1) / bs
	ld := blocks * bs
	kv := b.kv[i]
	q := b.q[i*qDim+g*group*hd : i*qDim+(g+1)*group*hd]
	att := scratch[:group*ld]
	off, size := g*bs*hd, bs*hd // this head's part of a block
	for j := range blocks {
		if m.kvHalf {
			kernels.AttnScoresF16(att[j*bs:], ld, kv.Block(j).KHalf(li)[off:off+size], q, group, hd, bs)
		} else {
			kernels.AttnScoresF32(att[j*bs:], ld, kv.Block(j).K(li)[off:off+size], q, group, hd, bs)
		}
	}
	for h := range group {
		kernels.Softmax(att[h*ld:h*ld+n], scale)
	}
	out := b.ao[i*qDim+g*group*hd : i*qDim+(g+1)*group*hd]
	clear(out)
	for j := range blocks {
		rows := min(bs, n-j*bs)
		if m.kvHalf {
			kernels.AttnValuesF16(out, kv.Block(j).VHalf(li)[off:off+size], att[j*bs:], ld, group, hd, rows)
		} else {
			kernels.AttnValuesF32(out, kv.Block(j).V(li)[off:off+size], att[j*bs:], ld, group, hd, rows)
		}
	}
}

// storeKV writes one position's keys k and values v (kvDim each, already
// in the cache's number type) into a block's layer, as attendGroup reads
// them: per KV head (hd numbers), the keys transposed, [hd][slot], and the
// values as they come, [slot][hd].
func storeKV[T float32 | uint16](bk, bv, k, v []T, hd, bs, slot int) {
	for g := 0; g < len(k); g += hd {
		off := g * bs
		dk := bk[off+slot : off+hd*bs]
		for d, x := range k[g : g+hd] {
			dk[d*bs] = x
		}
		copy(bv[off+slot*hd:off+(slot+1)*hd], v[g:g+hd])
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
	sin = sin[:half]
	for h := 0; h+hd <= len(x); h += hd {
		head := x[h : h+hd]
		if style == arch.RopeNeoX {
			lo, hi := head[:half], head[half:2*half]
			for i, c := range cos {
				x0, x1 := lo[i], hi[i]
				lo[i] = x0*c - x1*sin[i]
				hi[i] = x0*sin[i] + x1*c
			}
			continue
		}
		pairs := head[:2*half]
		for i, c := range cos {
			p := pairs[2*i : 2*i+2 : 2*i+2]
			x0, x1 := p[0], p[1]
			p[0] = x0*c - x1*sin[i]
			p[1] = x0*sin[i] + x1*c
		}
	}
}

// rmsNorm sets out = x / rms(x) * w (kernels.RMSNorm). out may be x.
func rmsNorm(out, x, w []float32, eps float32) { kernels.RMSNorm(out, x, w, eps) }

// add sets dst += src, element by element.
func add(dst, src []float32) {
	dst = dst[:len(src)]
	i := 0
	for ; i+8 <= len(src); i += 8 {
		d, s := (*[8]float32)(dst[i:i+8]), (*[8]float32)(src[i:i+8])
		d[0] += s[0]
		d[1] += s[1]
		d[2] += s[2]
		d[3] += s[3]
		d[4] += s[4]
		d[5] += s[5]
		d[6] += s[6]
		d[7] += s[7]
	}
	for ; i < len(src); i++ {
		dst[i] += src[i]
	}
}

// swigluMin is the number of SwiGLU elements below which a step does them
// on the calling goroutine (about 30 µs of work per extra goroutine).
const swigluMin = 8192

// split runs fn over [0,n) in up to m.threads contiguous chunks of at
// least minChunk, on the model's pool, and waits for them; fn must
// compute each index the same way whatever the chunk.
func (m *Model) split(n, minChunk int, fn func(lo, hi int)) {
	workers := min(m.threads, n/max(minChunk, 1))
	if workers <= 1 {
		fn(0, n)
		return
	}
	m.pool.For(n, (n+workers-1)/workers, fn)
}

// swiglu sets h = silu(h)·u, silu(g) = g/(1+e^-g), element by element,
// as g·u/(1+e^-g): kernels.SwiGLU (AVX2 on amd64, the same bits everywhere).
func swiglu(h, u []float32) { kernels.SwiGLU(h, u) }
