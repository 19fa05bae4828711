package engine

import (
	"math"
	"math/rand/v2"
	"testing"
)

// swiglu matches the float64 definition to a few ulp, including at the
// extremes where e^-g overflows or underflows.
func TestSwiglu(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	h := make([]float32, 4096)
	u := make([]float32, len(h))
	for i := range h {
		h[i] = (r.Float32()*2 - 1) * 20
		u[i] = r.Float32()*2 - 1
	}
	h[0], h[1], h[2], h[3] = 100, -100, 0, 88.8
	want := make([]float64, len(h))
	for i, g := range h {
		want[i] = float64(g) / (1 + math.Exp(-float64(g))) * float64(u[i])
	}
	swiglu(h, u)
	for i, got := range h {
		if d := math.Abs(float64(got) - want[i]); d > 4e-7*math.Abs(want[i])+1e-30 {
			t.Fatalf("element %d: got %v, want %v", i, got, want[i])
		}
	}
}

// Attention, reading the cache blocks in place, agrees with the per-head
// reference at positions around block boundaries: a block's first and
// last slot, and a last block of one slot or of all but one.
func TestAttentionPositions(t *testing.T) {
	for _, pos := range []int{0, 1, 7, 8, 15, 16, 17, 31, 33, 100} {
		for _, kvType := range []string{"f32", "f16"} {
			checkAttention(t, 2, pos, kvType, 0)
		}
	}
}
