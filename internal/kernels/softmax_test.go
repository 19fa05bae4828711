package kernels

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestSoftmax checks Softmax against a float64 softmax, and the assembly
// passes against the portable ones bit for bit, at lengths on and off
// multiples of eight, with scores spread wide enough that some underflow.
func TestSoftmax(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	defer active.Store(active.Load())
	for _, n := range []int{1, 2, 7, 8, 9, 16, 23, 100, 513, 2048} {
		for _, spread := range []float32{1, 30, 200} {
			x := make([]float32, n)
			for i := range x {
				x[i] = (r.Float32()*2 - 1) * spread
			}
			const scale = 0.125
			var got [2][]float32
			for k, generic := range []bool{true, false} {
				SetGeneric(generic)
				got[k] = append([]float32(nil), x...)
				Softmax(got[k], scale)
			}
			if Implementation() != "generic" {
				for i := range x {
					if math.Float32bits(got[0][i]) != math.Float32bits(got[1][i]) {
						t.Fatalf("n=%d spread %g: [%d] generic %v, assembly %v", n, spread, i, got[0][i], got[1][i])
					}
				}
			}
			mx := math.Inf(-1)
			for _, v := range x {
				mx = math.Max(mx, float64(v))
			}
			var sum float64
			want := make([]float64, n)
			for i, v := range x {
				want[i] = math.Exp(scale * (float64(v) - mx))
				sum += want[i]
			}
			for i := range want {
				// A few float32 roundings of a value ≤ 1, and the exp's 2 ulp.
				if d := math.Abs(float64(got[1][i]) - want[i]/sum); d > 1e-6*(want[i]/sum)+1e-12 {
					t.Fatalf("n=%d spread %g: [%d] = %v, want %v", n, spread, i, got[1][i], want[i]/sum)
				}
			}
		}
	}
	// A NaN past the first leaves the maximum alone and poisons only the
	// sum, as in the portable loops; one in x[0] makes every lane NaN.
	for _, generic := range []bool{true, false} {
		SetGeneric(generic)
		x := []float32{0, 1, float32(math.NaN()), 2, 0, 0, 0, 0, 1}
		Softmax(x, 1)
		for i, v := range x {
			if v == v {
				t.Errorf("generic=%v: [%d] = %v with a NaN score, want NaN", generic, i, v)
			}
		}
	}
	Softmax(nil, 1) // nothing to do
}
