package engine

import (
	"math"
	"math/rand/v2"
	"testing"
)

// expf is within 2 ulp of math.Exp over its normal range, saturates to
// +Inf and 0 outside it, and passes NaN through.
func TestExpf(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	check := func(x float32) {
		got, want := float64(expf(x)), math.Exp(float64(x))
		if want < 0x1p-126 {
			if got != 0 && math.Abs(got-want) > 0x1p-149*4 {
				t.Fatalf("expf(%v) = %v, want %v (or 0)", x, got, want)
			}
			return
		}
		if math.IsInf(want, 1) || want > math.MaxFloat32 {
			if !math.IsInf(got, 1) {
				t.Fatalf("expf(%v) = %v, want +Inf", x, got)
			}
			return
		}
		ulp := float64(math.Nextafter32(float32(want), float32(math.Inf(1)))) - float64(float32(want))
		if d := math.Abs(got - want); d > 2*ulp {
			t.Fatalf("expf(%v) = %v, want %v (%.2f ulp)", x, got, want, d/ulp)
		}
	}
	for range 2_000_000 {
		check(r.Float32()*180 - 90)
		check(r.Float32()*2 - 1)
	}
	for _, x := range []float32{0, -0, 1, -1, 88.7, 88.72, 88.7228, 88.72283, 89, 1000, -87.3, -87.33654, -87.4, -104, -1000,
		float32(math.Inf(1)), float32(math.Inf(-1)), 0x1p-30, -0x1p-30} {
		check(x)
	}
	if x := expf(float32(math.NaN())); x == x {
		t.Fatalf("expf(NaN) = %v", x)
	}
	if expf(0) != 1 {
		t.Fatalf("expf(0) = %v", expf(0))
	}
}

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

func BenchmarkExp(b *testing.B) {
	x := make([]float32, 45056)
	r := rand.New(rand.NewPCG(1, 1))
	for i := range x {
		x[i] = r.Float32()*8 - 4
	}
	y := make([]float32, len(x))
	b.Run("math.Exp", func(b *testing.B) {
		for b.Loop() {
			for i, v := range x {
				y[i] = float32(math.Exp(float64(v)))
			}
		}
	})
	b.Run("expInPlace", func(b *testing.B) {
		for b.Loop() {
			copy(y, x)
			expInPlace(y)
		}
	})
	b.Run("swiglu", func(b *testing.B) {
		for b.Loop() {
			copy(y, x)
			swiglu(y, x)
		}
	})
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
