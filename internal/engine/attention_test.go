package engine

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/kernels"
	"github.com/npumesh/npumesh/internal/kvcache"
)

// attentionSetup loads a one-layer GQA model (8 query heads sharing 2 KV
// heads of 64) with a KV cache of kvType in blocks of bs positions (0: the
// default) and fills a batch of n rows, each a sequence of its own at
// position pos, with random queries and cached keys and values.
func attentionSetup(t testing.TB, n, pos int, kvType string, bs int) (*Model, *batch) {
	sm := writeSynthetic(t, synthConfig{arch: "llama", dim: 512, hidden: 64, layers: 1, heads: 8, kvHeads: 2,
		vocab: 64, ctx: 2048, ropeBase: 10000, seed: 3})
	m, err := Load(sm.path, Options{Threads: 2, KVType: kvType, BlockSize: bs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	r := rand.New(rand.NewPCG(5, 6))
	b := &batch{}
	bs = m.cache.BlockSize()
	for range n {
		kv := m.cache.NewSeq()
		if err := kv.Reserve(pos + 1); err != nil {
			t.Fatal(err)
		}
		kv.Commit(make([]int32, pos))
		t.Cleanup(kv.Release)
		for blk := 0; blk <= pos/bs; blk++ {
			if m.kvHalf {
				for _, s := range [][]uint16{kv.Block(blk).KHalf(0), kv.Block(blk).VHalf(0)} {
					for i := range s {
						s[i] = kernels.F32ToF16(r.Float32()*2 - 1)
					}
				}
				continue
			}
			for _, s := range [][]float32{kv.Block(blk).K(0), kv.Block(blk).V(0)} {
				for i := range s {
					s[i] = r.Float32()*2 - 1
				}
			}
		}
		b.add(0, pos, kv, false)
	}
	b.q, b.ao = make([]float32, n*m.hp.QDim()), make([]float32, n*m.hp.QDim())
	for i := range b.q {
		b.q[i] = r.Float32()*2 - 1
	}
	return m, b
}

// attendHeadReference is attention one query head at a time, each
// reading its keys and values on its own with scalar loops: the engine's
// way before heads were grouped by KV head and multiplied by package
// kernels. It writes head h of row i into out (hd values) using att (at
// least pos+1 values) as scratch. The grouped products sum in another
// order, so the two agree to rounding.
func attendHeadReference(m *Model, b *batch, li, i, h int, att, out []float32) {
	hp := &m.hp
	hd, qDim, bs := hp.HeadDim, hp.QDim(), m.cache.BlockSize()
	scale := float32(1 / math.Sqrt(float64(hd)))
	p, kv := b.pos[i], b.kv[i]
	q := b.q[i*qDim+h*hd : i*qDim+(h+1)*hd]
	off := (h / (hp.Heads / hp.KVHeads)) * bs * hd
	att = att[:p+1]
	for t := 0; t <= p; t++ {
		keys := kvFloats(m, kv.Block(t/bs), li, true) // [head][hd][slot]
		var dot float32
		for d := range hd {
			dot += q[d] * keys[off+d*bs+t%bs]
		}
		att[t] = dot * scale
	}
	kernels.Softmax(att, 1)
	out = out[:hd]
	clear(out)
	for t0 := 0; t0 <= p; t0 += bs {
		vals := kvFloats(m, kv.Block(t0/bs), li, false) // [head][slot][hd]
		for d := range out {
			for t := t0; t < t0+bs && t <= p; t++ {
				out[d] += att[t] * vals[off+(t-t0)*hd+d]
			}
		}
	}
}

func TestAttentionGroupsMatchHeads(t *testing.T) {
	for _, kvType := range []string{"f32", "f16"} {
		// The assembly reads blocks of 16; other sizes take the
		// portable loops.
		for _, bs := range []int{0, 8, 32} {
			checkAttention(t, 3, 40, kvType, bs)
		}
	}
}

// checkAttention runs the grouped attention of n rows at position pos with
// a KV cache of kvType and compares every head with attendHeadReference
// (which reads the same stored numbers).
func checkAttention(t *testing.T, n, pos int, kvType string, bs int) {
	t.Helper()
	m, b := attentionSetup(t, n, pos, kvType, bs)
	m.attention(b, 0)
	hd, qDim := m.hp.HeadDim, m.hp.QDim()
	att, want := make([]float32, pos+1), make([]float32, hd)
	for i := range b.n {
		for h := range m.hp.Heads {
			attendHeadReference(m, b, 0, i, h, att, want)
			got := b.ao[i*qDim+h*hd : i*qDim+(h+1)*hd]
			for d := range want {
				if math.Abs(float64(got[d]-want[d])) > 1e-5 {
					t.Fatalf("%s KV, blocks of %d, pos %d row %d head %d [%d]: got %v, want %v", kvType, m.cache.BlockSize(), pos, i, h, d, got[d], want[d])
				}
			}
		}
	}
}

// kvFloats returns layer li's keys (or values) of blk as float32, whatever
// the cache stores.
func kvFloats(m *Model, blk *kvcache.Block, li int, keys bool) []float32 {
	if !m.kvHalf {
		if keys {
			return blk.K(li)
		}
		return blk.V(li)
	}
	h := blk.VHalf(li)
	if keys {
		h = blk.KHalf(li)
	}
	f := make([]float32, len(h))
	for i, x := range h {
		f[i] = kernels.F16ToF32(x)
	}
	return f
}

// BenchmarkAttention compares the former per-head scalar loops with the
// grouped kernels products for 8 sequences at position 512, on one
// goroutine each. The two run
// alternately within every iteration, so that a noisy machine slows both
// alike; the metrics are each one's time per step of one layer.
func BenchmarkAttention(b *testing.B) {
	m, bt := attentionSetup(b, 8, 512, "f32", 0) // the reference reads float32 as it is
	m.threads = 1
	att, out := make([]float32, 513), make([]float32, m.hp.HeadDim)
	var perHead, grouped time.Duration
	for b.Loop() {
		t0 := time.Now()
		for i := range bt.n {
			for h := range m.hp.Heads {
				attendHeadReference(m, bt, 0, i, h, att, out)
			}
		}
		t1 := time.Now()
		m.attention(bt, 0)
		grouped += time.Since(t1)
		perHead += t1.Sub(t0)
	}
	b.ReportMetric(float64(perHead.Nanoseconds())/float64(b.N), "per-head-ns/step")
	b.ReportMetric(float64(grouped.Nanoseconds())/float64(b.N), "grouped-ns/step")
	b.ReportMetric(float64(perHead)/float64(grouped), "speedup")
}
