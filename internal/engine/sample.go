package engine

import (
	"container/heap"
	"math"
	"math/rand/v2"
	"sort"
)

// sampler picks the next token from logits. Temperature 0 is greedy; else
// the logits are divided by the temperature (as Hugging Face orders it:
// temperature, then top-k, then top-p) and a token is drawn from what
// remains. One sampler belongs to one Generate call.
type sampler struct {
	temp  float32
	topK  int
	topP  float32
	rng   *rand.Rand
	cands []cand
}

type cand struct {
	id int32
	p  float32
}

// newSampler seeds a PCG generator, so a seed reproduces the same tokens
// for the same model and prompt.
func newSampler(temp, topP float32, topK int, seed uint64) *sampler {
	return &sampler{temp: temp, topK: topK, topP: topP,
		rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

func (s *sampler) sample(logits []float32) int32 {
	if s.temp == 0 {
		return argmax(logits)
	}
	c := s.cands[:0]
	mx := logits[argmax(logits)]
	var sum float32
	for i, l := range logits {
		p := float32(math.Exp(float64((l - mx) / s.temp)))
		c = append(c, cand{int32(i), p})
		sum += p
	}
	for i := range c {
		c[i].p /= sum
	}
	s.cands = c
	sorted := false
	if s.topK > 0 && s.topK < len(c) {
		c = topK(c, s.topK)
		sorted = true
	}
	if s.topP > 0 && s.topP < 1 {
		if !sorted && len(c) > 1 {
			// Tokens below (1-topP)/(n-1) can never be in the nucleus
			// (llama2.c's cut): drop them before sorting.
			cut := (1 - s.topP) / float32(len(c)-1)
			k := 0
			for _, x := range c {
				if x.p >= cut {
					c[k] = x
					k++
				}
			}
			c = c[:k]
			sort.Slice(c, func(i, j int) bool { return c[i].p > c[j].p || c[i].p == c[j].p && c[i].id < c[j].id })
		}
		var total, cum float32
		for _, x := range c {
			total += x.p
		}
		for i, x := range c {
			cum += x.p
			if cum >= s.topP*total {
				c = c[:i+1]
				break
			}
		}
	}
	var total float32
	for _, x := range c {
		total += x.p
	}
	r := s.rng.Float32() * total
	for _, x := range c {
		r -= x.p
		if r < 0 {
			return x.id
		}
	}
	return c[len(c)-1].id // rounding left r just above 0
}

// argmax returns the first index of the largest value, as llama2.c does.
func argmax(x []float32) int32 {
	best := 0
	for i, v := range x {
		if v > x[best] {
			best = i
		}
	}
	return int32(best)
}

// topK returns the k most probable candidates, most probable first, using
// a size-k min-heap so a large vocabulary is not sorted whole.
func topK(c []cand, k int) []cand {
	h := candHeap(make([]cand, 0, k))
	for _, x := range c {
		if len(h) < k {
			heap.Push(&h, x)
		} else if x.p > h[0].p {
			h[0] = x
			heap.Fix(&h, 0)
		}
	}
	out := []cand(h)
	sort.Slice(out, func(i, j int) bool { return out[i].p > out[j].p || out[i].p == out[j].p && out[i].id < out[j].id })
	return out
}

type candHeap []cand

func (h candHeap) Len() int           { return len(h) }
func (h candHeap) Less(i, j int) bool { return h[i].p < h[j].p }
func (h candHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *candHeap) Push(x any)        { *h = append(*h, x.(cand)) }
func (h *candHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
