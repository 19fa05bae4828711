package kernels

import "math"

// Exp sets each x[i] to e^x[i], within 2 ulp (Cephes' expf: x = k·ln2 + r
// with |r| ≤ ln2/2, e^r by a degree-7 polynomial, times 2^k built from its
// bits), with results below 2^-126 flushed to 0, above the largest
// float32 +Inf, and NaN kept. The result depends only on x[i]: the
// assembly (AVX2, 8 at a time) and the portable code give the same bits
// on every platform, so a batch's rows stay independent of each other.
func Exp(x []float32) {
	if active.Load() == genericImpl {
		expGeneric(x)
		return
	}
	expAsm(x)
}

// SwiGLU sets h[i] = silu(h[i])·u[i], silu(g) = g/(1+e^-g), computed as
// g·u[i]/(1+e^-g) with e^-g as Exp computes it; the same bits everywhere.
// u must be at least as long as h.
func SwiGLU(h, u []float32) {
	u = u[:len(h)]
	if active.Load() == genericImpl {
		swigluGeneric(h, u)
		return
	}
	swigluAsm(h, u)
}

// expCore's range: e^x is a normal float32 and 2^k below 2^128.
const (
	expLo = -87.33654
	expHi = 88.37626
	// Above expMax, e^x overflows float32; between expHi and it, 2^k
	// would, so expGeneric takes math.Exp there.
	expMax = 88.72283
)

// expCore is e^x for expLo ≤ x ≤ expHi. The loops call
// expJoin(expSplit(x)), which Go inlines (the whole is over its inlining
// budget): no call per element.
//
// Every product is converted to float32 before it is added: that forbids
// the compiler to fuse the two into an FMA (it does on arm64, and on amd64
// at GOAMD64=v3), so every platform rounds each step as the assembly does.
func expCore(x float32) float32 { return expJoin(expSplit(x)) }

// expSplit is expCore's range reduction: t = k + 1.5·2^23 (the integer k
// in t's low mantissa bits) and r = x − k·ln2.
func expSplit(x float32) (t, r float32) {
	const (
		log2e = 1.44269504088896341
		ln2hi = 0.693359375
		ln2lo = -2.12194440e-4
		// Adding and subtracting 1.5·2^23 rounds a float32 of magnitude
		// below 2^22 to an integer (to even).
		round = 12582912
	)
	t = float32(x*log2e) + round
	kf := t - round
	return t, x - float32(kf*ln2hi) - float32(kf*ln2lo)
}

// expJoin is e^r·2^k for expSplit's t and r.
func expJoin(t, r float32) float32 {
	// e^r = 1 + r + r²·P(r), P evaluated by Estrin's scheme (pairs of
	// terms in parallel) rather than Horner's: the loops are bound by
	// the latency of the chain, not by the count of operations.
	r2 := float32(r * r)
	p3 := 1.3981999507e-3 + float32(1.9875691500e-4*r)
	p2 := 4.1665795894e-2 + float32(8.3334519073e-3*r) + float32(r2*p3)
	p1 := 5.0000001201e-1 + float32(1.6666665459e-1*r) + float32(r2*p2)
	y := (r + 1) + float32(r2*p1)
	// 2^k: the low bits of t hold k + 2^22 (t's exponent is 2^23's).
	return float32(y * math.Float32frombits(math.Float32bits(t)<<23-expBias))
}

// expBias is (t's bits − 2^k's bits) << 23 for expCore's t = k + 1.5·2^23.
const expBias = (0x4b400000 - 127) << 23 & 0xffffffff

// expGeneric is the portable Exp.
func expGeneric(x []float32) {
	for i, v := range x {
		if v >= expLo && v <= expHi {
			x[i] = expJoin(expSplit(v))
			continue
		}
		x[i] = expOut(v)
	}
}

// expOut is e^v for v outside [expLo, expHi].
func expOut(v float32) float32 {
	switch {
	case v != v:
		return v
	case v < 0:
		return 0
	case v <= expMax: // e^v is finite, but 2^k would overflow
		return float32(math.Exp(float64(v)))
	}
	return float32(math.Inf(1))
}

// swigluGeneric is the portable SwiGLU; len(u) == len(h).
func swigluGeneric(h, u []float32) {
	u = u[:len(h)]
	for i, g := range h {
		var e float32
		if v := -g; v >= expLo && v <= expHi {
			e = expJoin(expSplit(v))
		} else {
			e = expOut(v)
		}
		h[i] = float32(g*u[i]) / (1 + e)
	}
}
