package main

import (
	"math"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// The constants of expGeneric (exp.go), each repeated in eight lanes of
// the expconst table, in this order. The float ones are converted from
// the same untyped constants as in exp.go, so they round the same.
const (
	eSign = iota
	eLo
	eHi
	eMax // 88.72283: above it e^x overflows float32
	eLog2e
	eRound
	eLn2hi
	eLn2lo
	eOne
	eP1
	eP2
	eP3
	eP4
	eP5
	eP6
	eBias
	eInf
)

func f32(v float32) uint32 { return math.Float32bits(v) }

// expKernels emits expAVX2 and swigluAVX2. They do the float32
// operations of expGeneric and swigluGeneric one for one, in the same
// order and without FMA (Go does not fuse them on amd64 at GOAMD64=v1,
// and the portable code forbids it elsewhere), so every in-range lane
// has the same bits; the out-of-range lanes are blended in as the Go
// branches set them.
func expKernels() {
	tab := GLOBL("expconst", RODATA|NOPTR)
	vals := []uint32{
		eSign: 0x80000000,
		eLo:   f32(-87.33654), eHi: f32(88.37626), eMax: f32(88.72283),
		eLog2e: f32(1.44269504088896341), eRound: f32(12582912),
		eLn2hi: f32(0.693359375), eLn2lo: f32(-2.12194440e-4),
		eOne: f32(1),
		eP1:  f32(5.0000001201e-1), eP2: f32(1.6666665459e-1),
		eP3: f32(4.1665795894e-2), eP4: f32(8.3334519073e-3),
		eP5: f32(1.3981999507e-3), eP6: f32(1.9875691500e-4),
		eBias: (0x4b400000 - 127) << 23 & 0xffffffff,
		eInf:  0x7f800000,
	}
	for k, v := range vals {
		for l := range 8 {
			DATA(32*k+4*l, U32(v))
		}
	}
	c := func(k int) Mem { return tab.Offset(32 * k) }
	expKernel("expAVX2", false, c)
	expKernel("swigluAVX2", true, c)
}

// VCMPPS predicates (ordered, so NaN lanes compare false).
const (
	cmpLT = 0x01
	cmpLE = 0x02
	cmpGE = 0x0D
	cmpGT = 0x0E
)

func expKernel(name string, swiglu bool, c func(int) Mem) {
	if swiglu {
		TEXT(name, NOSPLIT, "func(h *float32, u *float32, n int) int")
		Pragma("noescape")
		Doc(name+" does swigluGeneric on h[:n], u[:n] (n a multiple of 8), 8 at a",
			"time. It stops before the first 8 with a −h in (expHi, 88.72283], which need",
			"math.Exp, and returns how many it did.")
	} else {
		TEXT(name, NOSPLIT, "func(x *float32, n int) int")
		Pragma("noescape")
		Doc(name+" does expGeneric on x[:n] (n a multiple of 8), 8 at a time. It",
			"stops before the first 8 with an x in (expHi, 88.72283], which need",
			"math.Exp, and returns how many it did.")
	}
	p, q, n, i := GP64(), GP64(), GP64(), GP64()
	if swiglu {
		Load(Param("h"), p)
		Load(Param("u"), q)
	} else {
		Load(Param("x"), p)
	}
	Load(Param("n"), n)
	XORQ(i, i)
	loop, done := name+"loop", name+"done"
	Label(loop)
	CMPQ(i, n)
	JGE(LabelRef(done))
	at := func(base GPVirtual) Mem { return Mem{Base: base, Index: i, Scale: 4} }
	g := YMM()
	VMOVUPS(at(p), g)
	v := g
	if swiglu {
		v = YMM()
		VXORPS(c(eSign), g, v) // v = −g
	}

	// Lanes for math.Exp: leave this 8 to the caller.
	s, s2, msk := YMM(), YMM(), GP32()
	VCMPPS(U8(cmpGT), c(eHi), v, s)
	VCMPPS(U8(cmpLE), c(eMax), v, s2)
	VANDPS(s2, s, s)
	VMOVMSKPS(s, msk)
	TESTL(msk, msk)
	JNZ(LabelRef(done))

	// expSplit: t = v·log2e + round, kf = t − round,
	// r = v − kf·ln2hi − kf·ln2lo.
	t, kf, r, a := YMM(), YMM(), YMM(), YMM()
	VMULPS(c(eLog2e), v, t)
	VADDPS(c(eRound), t, t)
	VSUBPS(c(eRound), t, kf)
	VMULPS(c(eLn2hi), kf, a)
	VSUBPS(a, v, r)
	VMULPS(c(eLn2lo), kf, a)
	VSUBPS(a, r, r)

	// expJoin: y = (r+1) + r2·((p1+p2·r) + r2·((p3+p4·r) + r2·(p5+p6·r))).
	r2, e1, e2, e3 := YMM(), YMM(), YMM(), YMM()
	VMULPS(r, r, r2)
	VMULPS(c(eP6), r, e3)
	VADDPS(c(eP5), e3, e3)
	VMULPS(c(eP4), r, e2)
	VADDPS(c(eP3), e2, e2)
	VMULPS(c(eP2), r, e1)
	VADDPS(c(eP1), e1, e1)
	VMULPS(e3, r2, e3)
	VADDPS(e3, e2, e2)
	VMULPS(e2, r2, e2)
	VADDPS(e2, e1, e1)
	VMULPS(e1, r2, e1)
	y := YMM()
	VADDPS(c(eOne), r, y)
	VADDPS(e1, y, y)
	// 2^k from t's bits.
	VPSLLD(U8(23), t, t)
	VPSUBD(c(eBias), t, t)
	VMULPS(t, y, y)

	// Out-of-range lanes as expGeneric sets them: v itself (NaN), 0
	// below expLo, +Inf above 88.72283.
	m, m2 := YMM(), YMM()
	VCMPPS(U8(cmpGE), c(eLo), v, m)
	VCMPPS(U8(cmpLE), c(eHi), v, m2)
	VANDPS(m2, m, m)
	VBLENDVPS(m, y, v, y)
	VCMPPS(U8(cmpLT), c(eLo), v, m)
	VANDNPS(y, m, y)
	VCMPPS(U8(cmpGT), c(eMax), v, m)
	VBLENDVPS(m, c(eInf), y, y)

	if swiglu {
		// h = g·u / (1 + e). u is the first operand of the product, as in
		// the Go compiler's MULSS: when g and u are both NaN, u's NaN is
		// the one that comes out.
		num := YMM()
		VMOVUPS(at(q), num)
		VMULPS(g, num, num)
		VADDPS(c(eOne), y, y)
		VDIVPS(y, num, num)
		VMOVUPS(num, at(p))
	} else {
		VMOVUPS(y, at(p))
	}
	ADDQ(U8(8), i)
	JMP(LabelRef(loop))

	Label(done)
	Store(i, ReturnIndex(0))
	VZEROUPPER()
	RET()
}
