package bench

import (
	"math"
	"math/rand/v2"
	"time"
)

// Poisson is an open-loop arrival process: requests arrive independently of
// how the server is doing, with exponentially distributed gaps of mean
// 1/rate (the arrival process of vLLM's benchmark_serving with
// --request-rate and of llm-d's benchmarks). The same seed and rate give the
// same arrival times, so the policies compared face the same load.
type Poisson struct {
	rng  *rand.Rand
	rate float64
	t    float64 // seconds since the start
}

// NewPoisson returns the arrivals at rate requests per second (rate > 0).
func NewPoisson(seed uint64, rate float64) *Poisson {
	return &Poisson{rng: rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15)), rate: rate}
}

// Next returns the next arrival's offset from the start; offsets increase.
// With rate <= 0 there is no next arrival (the offset is the largest
// duration).
func (p *Poisson) Next() time.Duration {
	if p.rate <= 0 || math.IsNaN(p.rate) {
		return time.Duration(math.MaxInt64)
	}
	p.t += p.rng.ExpFloat64() / p.rate
	if p.t >= float64(math.MaxInt64)/1e9 {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(p.t * 1e9)
}

// Schedule lists the arrivals before d: about rate x d of them, never more
// than limit (limit <= 0: no limit besides d).
func Schedule(seed uint64, rate float64, d time.Duration, limit int) []time.Duration {
	var out []time.Duration
	p := NewPoisson(seed, rate)
	for limit <= 0 || len(out) < limit {
		at := p.Next()
		if at >= d {
			break
		}
		out = append(out, at)
	}
	return out
}
