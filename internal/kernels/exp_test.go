package kernels

import (
	"math"
	"math/rand/v2"
	"testing"
)

// expSpecials are the inputs where Exp's branches meet, ±1 ulp, for x
// and for SwiGLU's −g, plus zeros, infinities, NaNs and subnormals.
func expSpecials() []float32 {
	var s []float32
	for _, b := range []float32{expLo, expHi, expMax, 0} {
		for _, v := range []float32{b, -b} {
			s = append(s, v, math.Nextafter32(v, float32(math.Inf(1))), math.Nextafter32(v, float32(math.Inf(-1))))
		}
	}
	inf := float32(math.Inf(1))
	nan := float32(math.NaN())
	s = append(s, inf, -inf, nan, -nan,
		math.Float32frombits(0x7fc12345), math.Float32frombits(0xffa00001), // quiet and signalling payloads
		math.Float32frombits(1), math.Float32frombits(0x80000001), // smallest subnormals
		math.Float32frombits(0x007fffff), math.Float32frombits(0x807fffff), // largest subnormals
		math.SmallestNonzeroFloat32, math.MaxFloat32, -math.MaxFloat32, 88.5, -88.5)
	return s
}

// expInputs returns n values: random in [−100, 100] with, unless plain,
// specials at random places (about a quarter of them).
func expInputs(r *rand.Rand, n int, plain bool) []float32 {
	sp := expSpecials()
	x := make([]float32, n)
	for i := range x {
		if !plain && r.IntN(4) == 0 {
			x[i] = sp[r.IntN(len(sp))]
		} else {
			x[i] = float32(r.Float64()*200 - 100)
		}
	}
	return x
}

func sameBits(t *testing.T, what string, n int, in, got, want []float32) {
	t.Helper()
	for i := range got {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("%s n=%d [%d]: input %v (%#08x): got %v (%#08x), want %v (%#08x)", what, n, i,
				in[i], math.Float32bits(in[i]), got[i], math.Float32bits(got[i]), want[i], math.Float32bits(want[i]))
		}
	}
}

// TestExpSwiGLUBits checks that Exp and SwiGLU, with the kernel set in
// use (the assembly unless NPUMESH_KERNELS=generic), give the portable
// code's bits on random values, the branch boundaries ±1 ulp, zeros,
// infinities, NaNs and subnormals, at lengths that leave every tail.
func TestExpSwiGLUBits(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	lengths := []int{4099, 5632}
	for n := range 41 {
		lengths = append(lengths, n)
	}
	count := 0
	for _, n := range lengths {
		for rep := range 8 {
			plain := rep == 0 // some vectors that never leave the fast path
			x := expInputs(r, n, plain)
			got, want := append([]float32(nil), x...), append([]float32(nil), x...)
			Exp(got)
			expGeneric(want)
			sameBits(t, "Exp", n, x, got, want)

			u := expInputs(r, n+rep, rep < 4) // len(u) ≥ len(h)
			h, hw := append([]float32(nil), x...), append([]float32(nil), x...)
			SwiGLU(h, u)
			swigluGeneric(hw, u[:n])
			sameBits(t, "SwiGLU", n, x, h, hw)
			count += n
		}
	}
	// Every special as h against every special as u, in one vector.
	sp := expSpecials()
	var h, u []float32
	for _, a := range sp {
		for _, b := range sp {
			h, u = append(h, a), append(u, b)
		}
	}
	hg, hw := append([]float32(nil), h...), append([]float32(nil), h...)
	SwiGLU(hg, u)
	swigluGeneric(hw, u)
	sameBits(t, "SwiGLU specials", len(h), h, hg, hw)
	count += len(h)
	t.Logf("kernel set %q: Exp and SwiGLU equal the portable Go bit for bit on %d values each", Implementation(), count)
}

// TestExpAccuracy checks Exp, with the kernel set in use, against
// math.Exp: within 2 ulp over the normal range, 0 (or the subnormal
// result, within 4 of its ulps) below it, +Inf above it.
func TestExpAccuracy(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	x := make([]float32, 0, 4_000_020)
	for range 2_000_000 {
		x = append(x, r.Float32()*180-90, r.Float32()*2-1)
	}
	x = append(x, 0, -0, 1, -1, 88.7, 88.72, 88.7228, 88.72283, 89, 1000, -87.3, -87.33654, -87.4, -104, -1000,
		float32(math.Inf(1)), float32(math.Inf(-1)), 0x1p-30, -0x1p-30)
	got := append([]float32(nil), x...)
	Exp(got)
	for i, v := range x {
		g, want := float64(got[i]), math.Exp(float64(v))
		switch {
		case want < 0x1p-126:
			if g != 0 && math.Abs(g-want) > 0x1p-149*4 {
				t.Fatalf("Exp(%v) = %v, want %v (or 0)", v, g, want)
			}
		case want > math.MaxFloat32:
			if !math.IsInf(g, 1) {
				t.Fatalf("Exp(%v) = %v, want +Inf", v, g)
			}
		default:
			ulp := float64(math.Nextafter32(float32(want), float32(math.Inf(1)))) - float64(float32(want))
			if d := math.Abs(g - want); d > 2*ulp {
				t.Fatalf("Exp(%v) = %v, want %v (%.2f ulp)", v, g, want, d/ulp)
			}
		}
	}
}

// TestExpSpecialValues pins the out-of-range results.
func TestExpSpecialValues(t *testing.T) {
	inf := float32(math.Inf(1))
	x := []float32{float32(math.NaN()), -inf, inf, expLo - 1, 88.8, 0, 88.5, 1, 2, 3}
	Exp(x)
	if x[0] == x[0] || x[1] != 0 || x[2] != inf || x[3] != 0 || x[4] != inf || x[5] != 1 {
		t.Errorf("Exp(NaN, -Inf, +Inf, expLo-1, 88.8, 0) = %v", x[:6])
	}
	if want := float32(math.Exp(88.5)); x[6] != want {
		t.Errorf("Exp(88.5) = %v, want %v", x[6], want)
	}
}

// The benchmarks run 5632 elements, a 1B model's FFN width, with the
// assembly and the portable code side by side; each iteration copies the
// input back (both pay for it).
func benchElementwise(b *testing.B, f func(y, u []float32), lo, hi float64) {
	r := rand.New(rand.NewPCG(7, 8))
	const n = 5632
	x, u, y := make([]float32, n), make([]float32, n), make([]float32, n)
	for i := range x {
		x[i] = float32(lo + r.Float64()*(hi-lo))
		u[i] = float32(r.NormFloat64())
	}
	benchImpls(b, func(b *testing.B) {
		b.SetBytes(4 * n)
		for b.Loop() {
			copy(y, x)
			f(y, u)
		}
	})
}

func BenchmarkExp(b *testing.B) {
	benchElementwise(b, func(y, _ []float32) { Exp(y) }, -20, 0) // softmax inputs
}

func BenchmarkSwiGLU(b *testing.B) {
	benchElementwise(b, SwiGLU, -8, 8)
}
