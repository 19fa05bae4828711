package node

import (
	"sync"
	"time"
)

// speeds tracks the measured decode speed of each model on this node, an
// exponentially weighted average over completed requests, so the router can
// send more work to faster nodes and less to slowed (throttled) ones.
type speeds struct {
	mu sync.Mutex // guards tokS
	// tokS is tokens per second per request stream, by model id.
	tokS map[string]float64
}

// speedAlpha weighs the newest request; ~10 requests make up the average.
const speedAlpha = 0.2

// observe records a request that decoded tokens between first and last
// token arrival (the first token's time includes prefill, so it is left out).
func (s *speeds) observe(model string, tokens int, first, last time.Time) {
	if tokens < 2 || !last.After(first) {
		return
	}
	rate := float64(tokens-1) / last.Sub(first).Seconds()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tokS == nil {
		s.tokS = map[string]float64{}
	}
	if old, ok := s.tokS[model]; ok {
		rate = old + speedAlpha*(rate-old)
	}
	s.tokS[model] = rate
}

// get returns the average for model, 0 when nothing was measured yet.
func (s *speeds) get(model string) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokS[model]
}
