// Command asmgen writes the AVX2+FMA kernels of package kernels with avo.
// Run it through `go generate ./internal/kernels`; the output
// (kernels_amd64.s, stubs_amd64.go) is committed.
//
// Every kernel computes exactly the integer block sums of its portable Go
// twin in dot_generic.go; only the order of the float32 additions differs.
package main

import (
	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

func main() {
	ConstraintExpr("amd64")
	dotQ8_0(1, "dotQ8_0AVX2")
	dotQ8_0(4, "dotQ8_0x4AVX2")
	dotQ4_0(1, "dotQ4_0AVX2")
	dotQ4_0(4, "dotQ4_0x4AVX2")
	dotQ4_1(1, "dotQ4_1AVX2")
	dotQ4_1(4, "dotQ4_1x4AVX2")
	dotQ5(1, "dotQ5_0AVX2", 22, q32Mode{offset: 16})
	dotQ5(1, "dotQ5_1AVX2", 24, q32Mode{min: true})
	dotF32(1, "dotF32AVX2")
	dotF32(4, "dotF32x4AVX2")
	dotF16(1, "dotF16AVX2")
	dotF16(4, "dotF16x4AVX2")
	dotBF16(1, "dotBF16AVX2")
	dotBF16(4, "dotBF16x4AVX2")
	dotQ4K(1, "dotQ4KAVX2")
	dotQ4K(4, "dotQ4Kx4AVX2")
	dotQ5K(1, "dotQ5KAVX2")
	dotQ5K(4, "dotQ5Kx4AVX2")
	dotQ6K(1, "dotQ6KAVX2")
	dotQ6K(4, "dotQ6Kx4AVX2")
	tileKernels()
	quantQ8()
	readSum()
	expKernels()
	attnKernels()
	toHalf()
	softmaxKernels()
	normKernels()
	Generate()
}

// splat returns a ymm register with the 32-bit pattern v in every lane.
func splat(v uint32) VecVirtual {
	g, y := GP32(), YMM()
	MOVL(U32(v), g)
	VMOVD(g, y.AsX())
	VPBROADCASTD(y.AsX(), y)
	return y
}

// onesW returns a ymm register of sixteen int16 ones (for VPMADDWD).
func onesW() VecVirtual {
	y := YMM()
	VPCMPEQW(y, y, y)
	VPSRLW(U8(15), y, y)
	return y
}

// hsum adds the eight float32 lanes of acc and returns them in lane 0.
func hsum(acc VecVirtual) VecVirtual {
	x := XMM()
	VEXTRACTF128(U8(1), acc, x)
	VADDPS(acc.AsX(), x, x)
	VHADDPS(x, x, x)
	VHADDPS(x, x, x)
	return x
}

// mulSumI8 returns the eight int32 sums of adjacent groups of four
// products w[i]·x[i] of 32 signed bytes, llama.cpp's mul_sum_i8_pairs:
// |w| (wabs) is unsigned so VPMADDUBSW can multiply, and x takes w's sign.
// x must be in −127..127 (the activations are); w may be −128. x is
// clobbered.
func mulSumI8(w, wabs, x, ones VecVirtual) VecVirtual {
	VPSIGNB(w, x, x)
	p := YMM()
	VPMADDUBSW(x, wabs, p)
	VPMADDWD(ones, p, p)
	return p
}

// vecArgs are the registers addressing nv activation vectors that lie
// stride bytes apart (qs) and dstride bytes apart (scales).
type vecArgs struct {
	nv               int
	xs, xs3, ds, ds3 GPVirtual // strides, and three times them
}

func loadVecArgs(nv int) vecArgs {
	va := vecArgs{nv: nv}
	if nv == 1 {
		return va
	}
	va.xs, va.ds = GP64(), GP64()
	Load(Param("xstride"), va.xs)
	Load(Param("dstride"), va.ds)
	va.xs3, va.ds3 = GP64(), GP64()
	LEAQ(Mem{Base: va.xs, Index: va.xs, Scale: 2}, va.xs3)
	LEAQ(Mem{Base: va.ds, Index: va.ds, Scale: 2}, va.ds3)
	return va
}

// at addresses vector v's copy of base+disp.
func at(base, stride, stride3 GPVirtual, v, disp int) Mem {
	switch v {
	case 0:
		return Mem{Base: base, Disp: disp}
	case 1:
		return Mem{Base: base, Index: stride, Scale: 1, Disp: disp}
	case 2:
		return Mem{Base: base, Index: stride, Scale: 2, Disp: disp}
	}
	return Mem{Base: base, Index: stride3, Scale: 1, Disp: disp}
}

func (va vecArgs) x(base GPVirtual, v, disp int) Mem { return at(base, va.xs, va.xs3, v, disp) }
func (va vecArgs) d(base GPVirtual, v, disp int) Mem { return at(base, va.ds, va.ds3, v, disp) }

// storeResults sums each accumulator's lanes into the results: the
// float32 return value for one vector, out[0..3] for four. off, if set,
// holds per-vector scalars that m says how to apply.
func storeResults(acc, off []VecVirtual, m q32Mode) {
	var out GPVirtual
	if len(acc) > 1 {
		out = GP64()
		Load(Param("out"), out)
	}
	for v, a := range acc {
		r := hsum(a)
		if off != nil {
			VHADDPS(off[v], off[v], off[v]) // four lanes of block terms
			VHADDPS(off[v], off[v], off[v])
		}
		if off != nil && m.min {
			VADDSS(off[v], r, r)
		} else if off != nil {
			o := off[v]
			for k := 1; k < m.offset; k *= 2 {
				VADDSS(o, o, o) // ×offset by doubling: exact
			}
			VSUBSS(o, r, r)
		}
		if len(acc) == 1 {
			Store(r, ReturnIndex(0))
		} else {
			VMOVSS(r, Mem{Base: out, Disp: 4 * v})
		}
	}
}

// q32Mode says how a 32-element block format's values become products.
type q32Mode struct {
	// offset is the constant subtracted from the stored unsigned values
	// (8 for q4_0, 16 for q5_0); 0 with min false means signed values.
	offset int
	// min: value = d·q + m, the f16 m at byte 2 (q4_1, q5_1).
	min bool
}

func (m q32Mode) unsigned() bool { return m.offset != 0 || m.min }

// q32Kernel emits a dot product of nb 32-element weight blocks of bsize
// bytes (an f16 scale first) with nv q8 activation vectors. unpack loads
// block k's 32 weights as bytes. Signed weights (q8_0) multiply with
// llama.cpp's sign trick. Unsigned ones multiply directly, and the rest
// goes through the activation's block sums xs = d·Σq, added up apart and
// applied at the end: Σ(q−8)·x = Σq·x − 8·Σx for q4_0, Σ(d·q+m)·x =
// d·Σq·x + m·Σx for q4_1. Every vector goes through exactly the same
// instructions in the same order whatever nv is, so MatMul (nv = 4) and
// MatVec (nv = 1) agree bit for bit.
func q32Kernel(name string, bsize, nv int, mode q32Mode, setup func(), unpack func(w GPVirtual, k int) VecVirtual) {
	offset := mode.unsigned()
	args := "w *byte, xq *int8, xd *float32, "
	if offset {
		args += "xs *float32, "
	}
	args += "nb int"
	sig := "func(" + args + ") float32"
	if nv == 4 {
		sig = "func(" + args + ", xstride int, dstride int, out *[4]float32)"
	}
	TEXT(name, NOSPLIT, sig)
	Pragma("noescape")
	if nv == 1 {
		Doc(name + " returns Σ_b f16(w_b.d)·xd[b]·Σ_i w_b[i]·xq[32b+i] over nb ≥ 1 blocks.")
	} else {
		Doc(name+" is the four-vector form: vector v's qs are at xq+v·xstride, its",
			"scales at xd+v·dstride bytes, its result goes to out[v].")
	}
	w, xq, xd, xs, nb := GP64(), GP64(), GP64(), GP64(), GP64()
	Load(Param("w"), w)
	Load(Param("xq"), xq)
	Load(Param("xd"), xd)
	if offset {
		Load(Param("xs"), xs)
	}
	Load(Param("nb"), nb)
	va := loadVecArgs(nv)
	setup()
	ones := onesW()
	acc := make([]VecVirtual, nv)
	for v := range acc {
		acc[v] = YMM()
		VXORPS(acc[v], acc[v], acc[v])
	}
	var off []VecVirtual
	if offset {
		off = make([]VecVirtual, nv)
		for v := range off {
			off[v] = XMM()
			VXORPS(off[v], off[v], off[v])
		}
	}
	// The main loop takes four blocks at a time: their f16 scales are
	// converted together, multiplied by the four activation scales with
	// one VMULPS and parked on the stack, from where each block
	// broadcasts its own; the offset or min terms of the four blocks take
	// one FMA. Leftover blocks go one at a time (lane 0 of off).
	local := AllocLocal(16 * nv)
	product := func(k, v int, wv, wabs VecVirtual) VecVirtual {
		var p VecVirtual
		if offset {
			p = YMM()
			VPMADDUBSW(va.x(xq, v, 32*k), wv, p)
			VPMADDWD(ones, p, p)
		} else {
			x := YMM()
			VMOVDQU(va.x(xq, v, 32*k), x)
			p = mulSumI8(wv, wabs, x, ones)
		}
		VCVTDQ2PS(p, p)
		return p
	}
	signs := func(wv VecVirtual) VecVirtual {
		if offset {
			return nil
		}
		wabs := YMM()
		VPSIGNB(wv, wv, wabs)
		return wabs
	}
	gather4 := func(disp int) VecVirtual { // four f16 at stride bsize → float32 ×4
		g, x := GP32(), XMM()
		MOVWLZX(Mem{Base: w, Disp: disp}, g)
		VMOVD(g, x)
		for k := 1; k < 4; k++ {
			VPINSRW(U8(k), Mem{Base: w, Disp: disp + bsize*k}, x, x)
		}
		VCVTPH2PS(x, x)
		return x
	}
	quad, tail, done := uniq("quad"), uniq("tail"), uniq("done")
	Label(quad)
	CMPQ(nb, U8(4))
	JL(LabelRef(tail))
	dw4 := gather4(0)
	var mw4 VecVirtual
	if mode.min {
		mw4 = gather4(2)
	}
	for v := range nv {
		sc := XMM()
		VMULPS(va.d(xd, v, 0), dw4, sc)
		VMOVUPS(sc, local.Offset(16*v))
		switch {
		case mode.min:
			VFMADD231PS(va.d(xs, v, 0), mw4, off[v])
		case offset:
			VFMADD231PS(va.d(xs, v, 0), dw4, off[v])
		}
	}
	for k := range 4 {
		wv := unpack(w, k)
		wabs := signs(wv)
		for v := range nv {
			p := product(k, v, wv, wabs)
			s := YMM()
			VBROADCASTSS(local.Offset(16*v+4*k), s)
			VFMADD231PS(p, s, acc[v])
		}
	}
	ADDQ(U32(4*bsize), w)
	ADDQ(U32(4*32), xq)
	ADDQ(U32(4*4), xd)
	if offset {
		ADDQ(U32(4*4), xs)
	}
	SUBQ(U8(4), nb)
	JMP(LabelRef(quad))

	Label(tail)
	TESTQ(nb, nb)
	JZ(LabelRef(done))
	dw := f16Scalar(Mem{Base: w})
	var mw VecVirtual
	if mode.min {
		mw = f16Scalar(Mem{Base: w, Disp: 2})
	}
	wv := unpack(w, 0)
	wabs := signs(wv)
	for v := range nv {
		switch {
		case mode.min:
			VFMADD231SS(va.d(xs, v, 0), mw, off[v])
		case offset:
			VFMADD231SS(va.d(xs, v, 0), dw, off[v])
		}
		p := product(0, v, wv, wabs)
		VFMADD231PS(p, scaleBy(dw, va.d(xd, v, 0)), acc[v])
	}
	ADDQ(U32(bsize), w)
	ADDQ(U32(32), xq)
	ADDQ(U32(4), xd)
	if offset {
		ADDQ(U32(4), xs)
	}
	DECQ(nb)
	JMP(LabelRef(tail))
	Label(done)
	storeResults(acc, off, mode)
	VZEROUPPER()
	RET()
	fn++
}

func dotQ8_0(nv int, name string) {
	q32Kernel(name, 34, nv, q32Mode{}, func() {}, func(w GPVirtual, k int) VecVirtual {
		y := YMM()
		VMOVDQU(Mem{Base: w, Disp: 34*k + 2}, y)
		return y
	})
}

var m4 VecVirtual

func dotQ4_0(nv int, name string) {
	q32Kernel(name, 18, nv, q32Mode{offset: 8}, func() { m4 = splat(0x0f0f0f0f) }, nibbles(18, 2))
}

// nibbles returns an unpack function for blocks of bsize bytes whose 16
// bytes of nibbles start at off: elements 0-15 are the low nibbles,
// 16-31 the high ones (llama.cpp's bytes_from_nibbles_32).
func nibbles(bsize, off int) func(w GPVirtual, k int) VecVirtual {
	return func(w GPVirtual, k int) VecVirtual {
		lo, hi, a := XMM(), XMM(), YMM()
		VMOVDQU(Mem{Base: w, Disp: bsize*k + off}, lo)
		VPSRLW(U8(4), lo, hi)
		VINSERTI128(U8(1), hi, lo.AsY(), a)
		VPAND(m4, a, a)
		return a
	}
}

func dotQ4_1(nv int, name string) {
	q32Kernel(name, 20, nv, q32Mode{min: true}, func() { m4 = splat(0x0f0f0f0f) }, nibbles(20, 4))
}

var shuf, bitsel, m10 VecVirtual

// fifthBits sets up the constants of highBits.
func fifthBits() {
	m4, m10 = splat(0x0f0f0f0f), splat(0x10101010)
	g, lo, hi := GP64(), XMM(), XMM()
	shuf = YMM()
	MOVQ(U64(0x0101010101010101), g) // byte i of the 32 picks byte i/8 of qh
	VMOVQ(g, hi)
	VPSLLDQ(U8(8), hi, lo)
	MOVQ(U64(0x0303030302020202), g)
	VMOVQ(g, hi)
	VPUNPCKLBW(hi, hi, hi) // 02 02 02 02 02 02 02 02 03 ... 03
	VINSERTI128(U8(1), hi, lo.AsY(), shuf)
	bitsel = YMM()
	MOVQ(U64(0x8040201008040201), g) // byte i tests bit i%8
	VMOVQ(g, bitsel.AsX())
	VPBROADCASTQ(bitsel.AsX(), bitsel)
}

// highBits ORs bit i of the 32-bit qh at m into bit 4 of byte i of y
// (llama.cpp's bytes_from_bits_32, then masked to 0x10).
func highBits(m Mem, y VecVirtual) {
	h := YMM()
	VPBROADCASTD(m, h)
	VPSHUFB(shuf, h, h)
	VPAND(bitsel, h, h)
	VPCMPEQB(bitsel, h, h)
	VPAND(m10, h, h)
	VPOR(h, y, y)
}

func dotQ5(nv int, name string, bsize int, mode q32Mode) {
	q32Kernel(name, bsize, nv, mode, fifthBits, func(w GPVirtual, k int) VecVirtual {
		a := nibbles(bsize, bsize-16)(w, k)
		highBits(Mem{Base: w, Disp: bsize*k + bsize - 20}, a)
		return a
	})
}

var fn int

func uniq(s string) string { return s + string(rune('a'+fn)) }

// floatLoop emits the f32/f16/bf16 kernels for nv vectors: n (a multiple
// of 8) elements, 16 per iteration into two accumulators per vector, then
// 8 at a time. Two accumulators already outrun DRAM; keeping to two lets
// the four-vector form hold all eight and stay bit-identical to the
// one-vector form.
func floatLoop(name, wtype, what string, nv, elem int, load func(m Mem, y VecVirtual)) {
	args := "w *" + wtype + ", x *float32, n int"
	if nv == 1 {
		TEXT(name, NOSPLIT, "func("+args+") float32")
		Pragma("noescape")
		Doc(name + " returns Σ " + what + "·x[i] for i < n; n must be a multiple of 8.")
	} else {
		TEXT(name, NOSPLIT, "func("+args+", xstride int, out *[4]float32)")
		Pragma("noescape")
		Doc(name+" is the four-vector form: vector v starts xstride bytes after",
			"vector v−1, its result goes to out[v].")
	}
	w, x, n := GP64(), GP64(), GP64()
	Load(Param("w"), w)
	Load(Param("x"), x)
	Load(Param("n"), n)
	va := vecArgs{nv: nv}
	if nv > 1 {
		va.xs, va.xs3 = GP64(), GP64()
		Load(Param("xstride"), va.xs)
		LEAQ(Mem{Base: va.xs, Index: va.xs, Scale: 2}, va.xs3)
	}
	acc := make([][2]VecVirtual, nv)
	for v := range acc {
		for i := range 2 {
			acc[v][i] = YMM()
			VXORPS(acc[v][i], acc[v][i], acc[v][i])
		}
	}
	by16, by8, done := uniq("by16"), uniq("by8"), uniq("done")
	Label(by16)
	CMPQ(n, U8(16))
	JL(LabelRef(by8))
	var wv [2]VecVirtual
	for i := range 2 {
		wv[i] = YMM()
		load(Mem{Base: w, Disp: 8 * elem * i}, wv[i])
	}
	for v := range nv {
		for i := range 2 {
			VFMADD231PS(va.x(x, v, 32*i), wv[i], acc[v][i])
		}
	}
	ADDQ(U8(16*elem), w)
	ADDQ(U8(64), x)
	SUBQ(U8(16), n)
	JMP(LabelRef(by16))
	Label(by8)
	TESTQ(n, n)
	JZ(LabelRef(done))
	a := YMM()
	load(Mem{Base: w}, a)
	for v := range nv {
		VFMADD231PS(va.x(x, v, 0), a, acc[v][0])
	}
	Label(done)
	sums := make([]VecVirtual, nv)
	for v := range nv {
		VADDPS(acc[v][1], acc[v][0], acc[v][0])
		sums[v] = acc[v][0]
	}
	storeResults(sums, nil, q32Mode{})
	VZEROUPPER()
	RET()
	fn++
}

func dotF32(nv int, name string) {
	floatLoop(name, "float32", "w[i]", nv, 4, func(m Mem, y VecVirtual) { VMOVUPS(m, y) })
}

func dotBF16(nv int, name string) {
	floatLoop(name, "uint16", "bf16(w[i])", nv, 2, func(m Mem, y VecVirtual) {
		VPMOVZXWD(m, y)
		VPSLLD(U8(16), y, y)
	})
}

func dotF16(nv int, name string) {
	floatLoop(name, "uint16", "f16(w[i])", nv, 2, func(m Mem, y VecVirtual) { VCVTPH2PS(m, y) })
}

// kSig returns the signature of a k-quant kernel for nv vectors.
func kSig(nv int) string {
	args := "w *byte, q8 *int8, xd *float32, bsums *int16, nb int"
	if nv == 1 {
		return "func(" + args + ") float32"
	}
	return "func(" + args + ", stride int, out *[4]float32)"
}

// kPrologue loads the k-quant kernel arguments. With four vectors, each
// vector's q8, xd and bsums lie stride bytes after the previous one's
// (MatMul lays the q8_K activations out as records).
func kPrologue(nv int) (w, q8, xd, bs, nb GPVirtual, va vecArgs) {
	w, q8, xd, bs, nb = GP64(), GP64(), GP64(), GP64(), GP64()
	Load(Param("w"), w)
	Load(Param("q8"), q8)
	Load(Param("xd"), xd)
	Load(Param("bsums"), bs)
	Load(Param("nb"), nb)
	va = vecArgs{nv: nv}
	if nv > 1 {
		va.xs, va.xs3 = GP64(), GP64()
		Load(Param("stride"), va.xs)
		LEAQ(Mem{Base: va.xs, Index: va.xs, Scale: 2}, va.xs3)
		va.ds, va.ds3 = va.xs, va.xs3
	}
	return
}

// f16Scalar loads the f16 at m into lane 0 of a new xmm as float32.
func f16Scalar(m Mem) VecVirtual {
	g, x := GP32(), XMM()
	MOVWLZX(m, g)
	VMOVD(g, x)
	VCVTPH2PS(x, x)
	return x
}

// scaleBy returns a ymm holding f·(*m) in every lane.
func scaleBy(f VecVirtual, m Mem) Register {
	s := XMM()
	VMULSS(m, f, s)
	VBROADCASTSS(s, s.AsY())
	return s.AsY()
}

func kEpilogue(acc []VecVirtual, w, q8, xd, bs, nb GPVirtual, bsize int, loop string) {
	ADDQ(U32(bsize), w)
	ADDQ(U32(256), q8)
	ADDQ(U8(4), xd)
	ADDQ(U8(32), bs)
	DECQ(nb)
	JNZ(LabelRef(loop))
	storeResults(acc, nil, q32Mode{})
	VZEROUPPER()
	RET()
	fn++
}

// dotQ4K is llama.cpp's AVX2 q4_K·q8_K: per super-block the 6-bit scales
// and mins are unpacked with the kmask trick into a stack slot, the
// nibbles multiply the q8 values with VPMADDUBSW (15·127·2 < 2¹⁵), the
// scales weight the int16 pair sums, and the mins meet the activation's
// 16-element sums (bsums). As for q32Kernel, the four-vector form runs
// each vector through the same instructions as the one-vector form.
func dotQ4K(nv int, name string) { dotQ45K(nv, name, false) }

// dotQ5K is dotQ4K with the fifth bit of each value taken from qh: bit 2g
// (2g+1) of qh[l] for the low (high) nibbles of qs[32g+l], moved to bit 4
// with one word shift and a mask (VPMADDUBSW stays exact: 31·127·2 < 2¹⁵).
func dotQ5K(nv int, name string) { dotQ45K(nv, name, true) }

func dotQ45K(nv int, name string, q5 bool) {
	TEXT(name, NOSPLIT, kSig(nv))
	Pragma("noescape")
	kind, bsize, qsOff := "q4", 144, 16
	if q5 {
		kind, bsize, qsOff = "q5", 176, 48
	}
	Doc(name+" returns Σ_b xd[b]·(d_b·Σ_j sc_j·Σ "+kind+"·q8 − dmin_b·Σ_j m_j·(bsums[2j]+bsums[2j+1]))",
		"over nb ≥ 1 "+kind+"_K super-blocks at w.")
	w, q8, xd, bs, nb, va := kPrologue(nv)
	local := AllocLocal(32) // sc0-7 then m0-7 as int16
	mask := splat(0x0f0f0f0f)
	var m10 VecVirtual
	if q5 {
		m10 = splat(0x10101010)
	}
	acc := make([]VecVirtual, nv)
	for v := range acc {
		acc[v] = YMM()
		VXORPS(acc[v], acc[v], acc[v])
	}
	loop := uniq("loop")
	Label(loop)
	u0, u1, u2, t, t2 := GP32(), GP32(), GP32(), GP32(), GP32()
	MOVL(Mem{Base: w, Disp: 4}, u0)
	MOVL(Mem{Base: w, Disp: 8}, u1)
	MOVL(Mem{Base: w, Disp: 12}, u2)
	MOVL(u2, t) // mins 4-7: high nibbles of bytes 8-11, top bits of bytes 4-7
	SHRL(U8(4), t)
	ANDL(U32(0x0f0f0f0f), t)
	MOVL(u1, t2)
	SHRL(U8(6), t2)
	ANDL(U32(0x03030303), t2)
	SHLL(U8(4), t2)
	ORL(t2, t)
	ANDL(U32(0x3f3f3f3f), u1) // mins 0-3
	MOVL(u0, t2)              // scales 4-7: low nibbles of bytes 8-11, top bits of bytes 0-3
	SHRL(U8(6), t2)
	ANDL(U32(0x03030303), t2)
	SHLL(U8(4), t2)
	ANDL(U32(0x0f0f0f0f), u2)
	ORL(t2, u2)
	ANDL(U32(0x3f3f3f3f), u0) // scales 0-3
	// Assemble the 16 bytes in a register: four 4-byte stores read back
	// as one 16-byte load would miss store-to-load forwarding.
	packed, wide := XMM(), YMM()
	VMOVD(u0, packed)
	VPINSRD(U8(1), u2, packed, packed)
	VPINSRD(U8(2), u1, packed, packed)
	VPINSRD(U8(3), t, packed, packed)
	VPMOVZXBW(packed, wide)
	VMOVDQU(wide, local)

	sum := make([]VecVirtual, nv)
	for v := range sum {
		sum[v] = YMM()
		VPXOR(sum[v], sum[v], sum[v])
	}
	for g := range 4 {
		lo, hi, slo, shi := YMM(), YMM(), YMM(), YMM()
		VMOVDQU(Mem{Base: w, Disp: qsOff + 32*g}, lo)
		VPSRLW(U8(4), lo, hi)
		VPAND(mask, lo, lo)
		VPAND(mask, hi, hi)
		if q5 {
			for i, q := range []VecVirtual{lo, hi} {
				hb := YMM()
				VMOVDQU(Mem{Base: w, Disp: 16}, hb)
				switch bit := 2*g + i; {
				case bit < 4:
					VPSLLW(U8(4-bit), hb, hb)
				case bit > 4:
					VPSRLW(U8(bit-4), hb, hb)
				}
				VPAND(m10, hb, hb)
				VPOR(hb, q, q)
			}
		}
		VPBROADCASTW(local.Offset(4*g), slo)
		VPBROADCASTW(local.Offset(4*g+2), shi)
		for v := range nv {
			p := YMM()
			VPMADDUBSW(va.x(q8, v, 64*g), lo, p)
			VPMADDWD(slo, p, p)
			VPADDD(p, sum[v], sum[v])
			p = YMM()
			VPMADDUBSW(va.x(q8, v, 64*g+32), hi, p)
			VPMADDWD(shi, p, p)
			VPADDD(p, sum[v], sum[v])
		}
	}
	d, dmin := f16Scalar(Mem{Base: w}), f16Scalar(Mem{Base: w, Disp: 2})
	for v := range nv {
		VCVTDQ2PS(sum[v], sum[v])
		VFMADD231PS(sum[v], scaleBy(d, va.d(xd, v, 0)), acc[v])
		b, hi, m := YMM(), XMM(), XMM()
		VMOVDQU(va.x(bs, v, 0), b)
		VEXTRACTI128(U8(1), b, hi)
		VPHADDW(hi, b.AsX(), hi) // Σq8 per 32-element sub-block
		VMOVDQU(local.Offset(16), m)
		VPMADDWD(m, hi, hi)
		VCVTDQ2PS(hi, hi) // upper lanes are zero
		VFNMADD231PS(hi.AsY(), scaleBy(dmin, va.d(xd, v, 0)), acc[v])
	}
	kEpilogue(acc, w, q8, xd, bs, nb, bsize, loop)
}

// dotQ6K multiplies the unsigned 6-bit values (VPMADDUBSW cannot
// saturate: 2·63·127 < 2¹⁵) and removes the −32 offset through the
// activation's 16-element sums: Σ(u−32)·q8 = Σu·q8 − 32·Σq8.
func dotQ6K(nv int, name string) {
	TEXT(name, NOSPLIT, kSig(nv))
	Pragma("noescape")
	Doc(name+" returns Σ_b xd[b]·d_b·Σ_g sc_g·Σ (u6−32)·q8 over the 16-element",
		"groups g of nb ≥ 1 q6_K super-blocks at w.")
	w, q8, xd, bs, nb, va := kPrologue(nv)
	local := AllocLocal(32) // the 16 scales as int16
	m4 := splat(0x0f0f0f0f)
	m30 := splat(0x30303030)
	acc := make([]VecVirtual, nv)
	for v := range acc {
		acc[v] = YMM()
		VXORPS(acc[v], acc[v], acc[v])
	}
	loop := uniq("loop")
	Label(loop)
	wide := YMM()
	VPMOVSXBW(Mem{Base: w, Disp: 192}, wide)
	VMOVDQU(wide, local)
	sum := make([]VecVirtual, nv)
	for v := range sum {
		sum[v] = YMM()
		VPXOR(sum[v], sum[v], sum[v])
	}
	for n := range 2 {
		for k := range 4 {
			lo, hb := YMM(), YMM()
			VMOVDQU(Mem{Base: w, Disp: 64*n + 32*(k%2)}, lo)
			if k >= 2 {
				VPSRLW(U8(4), lo, lo)
			}
			VPAND(m4, lo, lo)
			VMOVDQU(Mem{Base: w, Disp: 128 + 32*n}, hb)
			switch k { // bits 2k, 2k+1 of qh moved to bits 4, 5
			case 0:
				VPSLLW(U8(4), hb, hb)
			case 1:
				VPSLLW(U8(2), hb, hb)
			case 3:
				VPSRLW(U8(2), hb, hb)
			}
			VPAND(m30, hb, hb)
			VPOR(hb, lo, lo)
			s, s2 := YMM(), XMM()
			VPBROADCASTW(local.Offset(2*(8*n+2*k)), s)
			VPBROADCASTW(local.Offset(2*(8*n+2*k+1)), s2)
			VINSERTI128(U8(1), s2, s, s)
			for v := range nv {
				p := YMM()
				VPMADDUBSW(va.x(q8, v, 128*n+32*k), lo, p)
				VPMADDWD(s, p, p)
				VPADDD(p, sum[v], sum[v])
			}
		}
	}
	d := f16Scalar(Mem{Base: w, Disp: 208})
	for v := range nv {
		o := YMM()
		VMOVDQU(local, o)
		VPMADDWD(va.x(bs, v, 0), o, o)
		VPSLLD(U8(5), o, o)
		VPSUBD(o, sum[v], sum[v])
		VCVTDQ2PS(sum[v], sum[v])
		VFMADD231PS(sum[v], scaleBy(d, va.d(xd, v, 0)), acc[v])
	}
	kEpilogue(acc, w, q8, xd, bs, nb, 210, loop)
}

// quantQ8 is llama.cpp's AVX2 quantize_row_q8_0 with a float32 d and the
// block sums kept: per 32 elements d = max|x|/127, q = x·(1/d) rounded
// half to even (VCVTPS2DQ under Go's default MXCSR). Every float
// operation is the one act.go's quantizeQ8 does, so the two agree bit
// for bit.
func quantQ8() {
	perm := GLOBL("q8perm", RODATA|NOPTR) // undoes VPACKSS's lane interleave
	for i, v := range []uint32{0, 4, 1, 5, 2, 6, 3, 7} {
		DATA(4*i, U32(v))
	}
	TEXT("quantQ8AVX2", NOSPLIT, "func(x *float32, qs *int8, d *float32, s *float32, sum *int32, nb int)")
	Pragma("noescape")
	Doc("quantQ8AVX2 quantizes nb ≥ 1 blocks of 32 floats at x to qs, with their",
		"scales d, block sums sum and d·sum in s.")
	x, qs, d, sp, sum, nb := GP64(), GP64(), GP64(), GP64(), GP64(), GP64()
	Load(Param("x"), x)
	Load(Param("qs"), qs)
	Load(Param("d"), d)
	Load(Param("s"), sp)
	Load(Param("sum"), sum)
	Load(Param("nb"), nb)
	absMask := splat(0x7fffffff)
	c127, one, zero := XMM(), XMM(), XMM()
	g := GP32()
	MOVL(U32(0x42fe0000), g) // 127.0
	VMOVD(g, c127)
	MOVL(U32(0x3f800000), g) // 1.0
	VMOVD(g, one)
	VXORPS(zero, zero, zero)
	idx := YMM()
	VMOVDQU(perm, idx)
	Label("q8loop")
	var v [4]VecVirtual
	m := YMM()
	for k := range 4 {
		v[k] = YMM()
		VMOVUPS(Mem{Base: x, Disp: 32 * k}, v[k])
		if k == 0 {
			VANDPS(absMask, v[0], m)
		} else {
			t := YMM()
			VANDPS(absMask, v[k], t)
			VMAXPS(t, m, m)
		}
	}
	h, t := XMM(), XMM()
	VEXTRACTF128(U8(1), m, h)
	VMAXPS(h, m.AsX(), h)
	VPERMILPS(U8(0x4e), h, t)
	VMAXPS(t, h, h)
	VPERMILPS(U8(0xb1), h, t)
	VMAXPS(t, h, h) // lane 0: max|x|
	dv, id, mask := XMM(), XMM(), XMM()
	VDIVSS(c127, h, dv)
	VMOVSS(dv, Mem{Base: d})
	VDIVSS(dv, one, id)
	VCMPSS(U8(4), zero, dv, mask) // d ≠ 0
	VANDPS(mask, id, id)          // else id = 0, as in Go
	VBROADCASTSS(id, id.AsY())
	for k := range 4 {
		VMULPS(id.AsY(), v[k], v[k])
		VCVTPS2DQ(v[k], v[k])
	}
	tot, tx := YMM(), XMM()
	VPADDD(v[1], v[0], tot)
	VPADDD(v[3], v[2], m)
	VPADDD(m, tot, tot)
	VEXTRACTI128(U8(1), tot, tx)
	VPADDD(tot.AsX(), tx, tx)
	VPSHUFD(U8(0x4e), tx, t)
	VPADDD(t, tx, tx)
	VPSHUFD(U8(0xb1), tx, t)
	VPADDD(t, tx, tx)
	VMOVD(tx, Mem{Base: sum})
	VCVTDQ2PS(tx, tx)
	VMULSS(tx, dv, tx)
	VMOVSS(tx, Mem{Base: sp})
	VPACKSSDW(v[1], v[0], v[0])
	VPACKSSDW(v[3], v[2], v[2])
	VPACKSSWB(v[2], v[0], v[0])
	VPERMD(v[0], idx, v[0])
	VMOVDQU(v[0], Mem{Base: qs})
	ADDQ(U8(128), x)
	ADDQ(U8(32), qs)
	ADDQ(U8(4), d)
	ADDQ(U8(4), sp)
	ADDQ(U8(4), sum)
	DECQ(nb)
	JNZ(LabelRef("q8loop"))
	VZEROUPPER()
	RET()
}

// readSum streams n bytes (a multiple of 128) through four ymm loads per
// iteration for MeasureBandwidth; the XOR keeps the loads live.
func readSum() {
	TEXT("readSumAVX2", NOSPLIT, "func(p *byte, n int) uint64")
	Pragma("noescape")
	Doc("readSumAVX2 XORs n bytes (a multiple of 128) together, 8 bytes at a time.")
	p, n := GP64(), GP64()
	Load(Param("p"), p)
	Load(Param("n"), n)
	var acc [4]VecVirtual
	for i := range acc {
		acc[i] = YMM()
		VPXOR(acc[i], acc[i], acc[i])
	}
	Label("readloop")
	for i := range 4 {
		VPXOR(Mem{Base: p, Disp: 32 * i}, acc[i], acc[i])
	}
	ADDQ(U32(128), p)
	SUBQ(U32(128), n)
	JNZ(LabelRef("readloop"))
	VPXOR(acc[1], acc[0], acc[0])
	VPXOR(acc[3], acc[2], acc[2])
	VPXOR(acc[2], acc[0], acc[0])
	x := XMM()
	VEXTRACTI128(U8(1), acc[0], x)
	VPXOR(acc[0].AsX(), x, x)
	r, r2 := GP64(), GP64()
	VMOVQ(x, r)
	VPEXTRQ(U8(1), x, r2)
	XORQ(r2, r)
	Store(r, ReturnIndex(0))
	VZEROUPPER()
	RET()
}
