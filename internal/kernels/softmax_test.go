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

// TestRMSNorm checks RMSNorm against float64 arithmetic, and the assembly
// passes against the portable ones bit for bit.
func TestRMSNorm(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	defer active.Store(active.Load())
	for _, n := range []int{1, 7, 8, 15, 64, 2048, 5632} {
		x, w := randomVec(r, n), randomVec(r, n)
		const eps = 1e-5
		var got [2][]float32
		for k, generic := range []bool{true, false} {
			SetGeneric(generic)
			got[k] = make([]float32, n+1)
			got[k][n] = 42
			RMSNorm(got[k], x, w, eps)
			if got[k][n] != 42 {
				t.Fatalf("n=%d: wrote past len(x)", n)
			}
		}
		if Implementation() != "generic" {
			for i := range n {
				if math.Float32bits(got[0][i]) != math.Float32bits(got[1][i]) {
					t.Fatalf("n=%d: [%d] generic %v, assembly %v", n, i, got[0][i], got[1][i])
				}
			}
		}
		var ss float64
		for _, v := range x {
			ss += float64(v) * float64(v)
		}
		inv := 1 / math.Sqrt(ss/float64(n)+eps)
		for i := range n {
			want := float64(w[i]) * float64(x[i]) * inv
			if d := math.Abs(float64(got[1][i]) - want); d > 1e-5*math.Abs(want)+1e-7 {
				t.Fatalf("n=%d: [%d] = %v, want %v", n, i, got[1][i], want)
			}
		}
	}
	RMSNorm(nil, nil, nil, 1e-5) // nothing to do
}
