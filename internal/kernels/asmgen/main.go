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
	dotQ8_0()
	dotQ4_0()
	dotF32()
	dotF16()
	dotQ4K()
	dotQ6K()
	readSum()
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

// blockScale returns a ymm register holding f16(*h)·(*f) in every lane.
func blockScale(h, f Mem) VecVirtual {
	g, y := GP32(), YMM()
	MOVWLZX(h, g)
	VMOVD(g, y.AsX())
	VCVTPH2PS(y.AsX(), y.AsX())
	VMULSS(f, y.AsX(), y.AsX())
	VBROADCASTSS(y.AsX(), y)
	return y
}

// mulSumI8 returns the eight int32 sums of adjacent groups of four
// products w[i]·x[i] of 32 signed bytes, llama.cpp's mul_sum_i8_pairs:
// |w| is unsigned so VPMADDUBSW can multiply, and x takes w's sign. x must
// be in −127..127 (the activations are); w may be −128. w is clobbered.
func mulSumI8(w, x, ones VecVirtual) VecVirtual {
	sx := YMM()
	VPSIGNB(w, x, sx)
	VPSIGNB(w, w, w)
	VPMADDUBSW(sx, w, w)
	VPMADDWD(ones, w, w)
	return w
}

// q8Block emits the product of one q8_0 weight block at w+off with the
// activation block at xq+32k, scale xd+4k, accumulated into acc.
func q8Block(w, xq, xd GPVirtual, k int, acc, ones VecVirtual) {
	s := blockScale(Mem{Base: w, Disp: 34 * k}, Mem{Base: xd, Disp: 4 * k})
	a, b := YMM(), YMM()
	VMOVDQU(Mem{Base: w, Disp: 34*k + 2}, a)
	VMOVDQU(Mem{Base: xq, Disp: 32 * k}, b)
	p := mulSumI8(a, b, ones)
	VCVTDQ2PS(p, p)
	VFMADD231PS(p, s, acc)
}

func dotQ8_0() {
	TEXT("dotQ8_0AVX2", NOSPLIT, "func(w *byte, xq *int8, xd *float32, nb int) float32")
	Doc("dotQ8_0AVX2 returns Σ_b f16(w_b.d)·xd[b]·Σ w_b.qs·xq_b over nb q8_0 blocks (nb ≥ 1).")
	blockLoop(34, q8Block)
}

func q4Block(w, xq, xd GPVirtual, k int, acc, ones VecVirtual) {
	q4Nibbles(w, xq, xd, k, acc, ones)
}

var m4, m8 VecVirtual

func q4Nibbles(w, xq, xd GPVirtual, k int, acc, ones VecVirtual) {
	s := blockScale(Mem{Base: w, Disp: 18 * k}, Mem{Base: xd, Disp: 4 * k})
	lo, hi, a, b := XMM(), XMM(), YMM(), YMM()
	VMOVDQU(Mem{Base: w, Disp: 18*k + 2}, lo)
	VPSRLW(U8(4), lo, hi)
	VINSERTI128(U8(1), hi, lo.AsY(), a)
	VPAND(m4, a, a)
	VPSUBB(m8, a, a)
	VMOVDQU(Mem{Base: xq, Disp: 32 * k}, b)
	p := mulSumI8(a, b, ones)
	VCVTDQ2PS(p, p)
	VFMADD231PS(p, s, acc)
}

func dotQ4_0() {
	TEXT("dotQ4_0AVX2", NOSPLIT, "func(w *byte, xq *int8, xd *float32, nb int) float32")
	Doc("dotQ4_0AVX2 returns Σ_b f16(w_b.d)·xd[b]·Σ (w_b.q−8)·xq_b over nb q4_0 blocks (nb ≥ 1).")
	m4, m8 = splat(0x0f0f0f0f), splat(0x08080808)
	blockLoop(18, q4Block)
}

// blockLoop emits a loop over nb blocks of bsize weight bytes, two blocks
// per iteration into two accumulators, then one trailing block.
func blockLoop(bsize int, body func(w, xq, xd GPVirtual, k int, acc, ones VecVirtual)) {
	w, xq, xd, nb := GP64(), GP64(), GP64(), GP64()
	Load(Param("w"), w)
	Load(Param("xq"), xq)
	Load(Param("xd"), xd)
	Load(Param("nb"), nb)
	ones := onesW()
	acc0, acc1 := YMM(), YMM()
	VXORPS(acc0, acc0, acc0)
	VXORPS(acc1, acc1, acc1)
	Label(uniq("pairs"))
	CMPQ(nb, U8(2))
	JL(LabelRef(uniq("single")))
	body(w, xq, xd, 0, acc0, ones)
	body(w, xq, xd, 1, acc1, ones)
	ADDQ(U32(2*bsize), w)
	ADDQ(U8(64), xq)
	ADDQ(U8(8), xd)
	SUBQ(U8(2), nb)
	JMP(LabelRef(uniq("pairs")))
	Label(uniq("single"))
	TESTQ(nb, nb)
	JZ(LabelRef(uniq("done")))
	body(w, xq, xd, 0, acc0, ones)
	Label(uniq("done"))
	VADDPS(acc1, acc0, acc0)
	Store(hsum(acc0), ReturnIndex(0))
	VZEROUPPER()
	RET()
	fn++
}

var fn int

func uniq(s string) string { return s + string(rune('a'+fn)) }

// floatLoop emits the f32/f16 kernels: n (a multiple of 8) elements,
// 32 per iteration into four accumulators, then 8 at a time.
func floatLoop(elem int, load func(m Mem, y VecVirtual)) {
	w, x, n := GP64(), GP64(), GP64()
	Load(Param("w"), w)
	Load(Param("x"), x)
	Load(Param("n"), n)
	var acc [4]VecVirtual
	for i := range acc {
		acc[i] = YMM()
		VXORPS(acc[i], acc[i], acc[i])
	}
	Label(uniq("by32"))
	CMPQ(n, U8(32))
	JL(LabelRef(uniq("by8")))
	for i := range 4 {
		a := YMM()
		load(Mem{Base: w, Disp: 8 * elem * i}, a)
		VFMADD231PS(Mem{Base: x, Disp: 32 * i}, a, acc[i])
	}
	ADDQ(U8(32*elem), w)
	ADDQ(U8(128), x)
	SUBQ(U8(32), n)
	JMP(LabelRef(uniq("by32")))
	Label(uniq("by8"))
	CMPQ(n, U8(8))
	JL(LabelRef(uniq("done")))
	a := YMM()
	load(Mem{Base: w}, a)
	VFMADD231PS(Mem{Base: x}, a, acc[0])
	ADDQ(U8(8*elem), w)
	ADDQ(U8(32), x)
	SUBQ(U8(8), n)
	JMP(LabelRef(uniq("by8")))
	Label(uniq("done"))
	VADDPS(acc[1], acc[0], acc[0])
	VADDPS(acc[3], acc[2], acc[2])
	VADDPS(acc[2], acc[0], acc[0])
	Store(hsum(acc[0]), ReturnIndex(0))
	VZEROUPPER()
	RET()
	fn++
}

func dotF32() {
	TEXT("dotF32AVX2", NOSPLIT, "func(w *float32, x *float32, n int) float32")
	Doc("dotF32AVX2 returns Σ w[i]·x[i] for i < n; n must be a multiple of 8.")
	floatLoop(4, func(m Mem, y VecVirtual) { VMOVUPS(m, y) })
}

func dotF16() {
	TEXT("dotF16AVX2", NOSPLIT, "func(w *uint16, x *float32, n int) float32")
	Doc("dotF16AVX2 returns Σ f16(w[i])·x[i] for i < n; n must be a multiple of 8.")
	floatLoop(2, func(m Mem, y VecVirtual) { VCVTPH2PS(m, y) })
}

// dotQ4K: the Go caller unpacks each super-block's 6-bit scales to int16
// and folds d·xd and the mins in itself; the kernel does the 256 nibble
// products per super-block.
func dotQ4K() {
	TEXT("dotQ4KAVX2", NOSPLIT, "func(qs *byte, q8 *int8, sc *int16, d *float32, nb int) float32")
	Doc("dotQ4KAVX2 returns Σ_b d[b]·Σ_j sc[8b+j]·Σ q4·q8 over sub-blocks j of nb q4_K",
		"super-blocks; qs points at the first block's qs (blocks are 144 bytes apart).")
	qs, q8, sc, d, nb := GP64(), GP64(), GP64(), GP64(), GP64()
	Load(Param("qs"), qs)
	Load(Param("q8"), q8)
	Load(Param("sc"), sc)
	Load(Param("d"), d)
	Load(Param("nb"), nb)
	mask := splat(0x0f0f0f0f)
	acc := YMM()
	VXORPS(acc, acc, acc)
	Label("q4kloop")
	sum := YMM()
	VPXOR(sum, sum, sum)
	for g := range 4 {
		q, lo, hi, s := YMM(), YMM(), YMM(), YMM()
		VMOVDQU(Mem{Base: qs, Disp: 32 * g}, q)
		VPAND(mask, q, lo)
		VPSRLW(U8(4), q, hi)
		VPAND(mask, hi, hi)
		VPMADDUBSW(Mem{Base: q8, Disp: 64 * g}, lo, lo)
		VPBROADCASTW(Mem{Base: sc, Disp: 4 * g}, s)
		VPMADDWD(s, lo, lo)
		VPADDD(lo, sum, sum)
		VPMADDUBSW(Mem{Base: q8, Disp: 64*g + 32}, hi, hi)
		VPBROADCASTW(Mem{Base: sc, Disp: 4*g + 2}, s)
		VPMADDWD(s, hi, hi)
		VPADDD(hi, sum, sum)
	}
	f := YMM()
	VCVTDQ2PS(sum, sum)
	VBROADCASTSS(Mem{Base: d}, f)
	VFMADD231PS(sum, f, acc)
	ADDQ(U32(144), qs)
	ADDQ(U32(256), q8)
	ADDQ(U8(16), sc)
	ADDQ(U8(4), d)
	DECQ(nb)
	JNZ(LabelRef("q4kloop"))
	Store(hsum(acc), ReturnIndex(0))
	VZEROUPPER()
	RET()
}

// dotQ6K: the Go caller widens the int8 scales to int16, folds d·xd in,
// and subtracts the −32 offset through the activation's 16-element sums,
// so the kernel multiplies the unsigned 6-bit values (VPMADDUBSW cannot
// saturate: 2·63·127 < 2¹⁵).
func dotQ6K() {
	TEXT("dotQ6KAVX2", NOSPLIT, "func(w *byte, q8 *int8, sc *int16, d *float32, nb int) float32")
	Doc("dotQ6KAVX2 returns Σ_b d[b]·Σ_g sc[16b+g]·Σ u6·q8 over the 16-element groups g",
		"of nb q6_K super-blocks, u6 being the stored values before the −32 offset.")
	w, q8, sc, d, nb := GP64(), GP64(), GP64(), GP64(), GP64()
	Load(Param("w"), w)
	Load(Param("q8"), q8)
	Load(Param("sc"), sc)
	Load(Param("d"), d)
	Load(Param("nb"), nb)
	m4 := splat(0x0f0f0f0f)
	m30 := splat(0x30303030)
	acc := YMM()
	VXORPS(acc, acc, acc)
	Label("q6kloop")
	sum := YMM()
	VPXOR(sum, sum, sum)
	for n := range 2 {
		q1, q2, h := YMM(), YMM(), YMM()
		VMOVDQU(Mem{Base: w, Disp: 64 * n}, q1)
		VMOVDQU(Mem{Base: w, Disp: 64*n + 32}, q2)
		VMOVDQU(Mem{Base: w, Disp: 128 + 32*n}, h)
		for k := range 4 {
			lo, hb := YMM(), YMM()
			src := q1
			if k%2 == 1 {
				src = q2
			}
			if k < 2 {
				VPAND(m4, src, lo)
			} else {
				VPSRLW(U8(4), src, lo)
				VPAND(m4, lo, lo)
			}
			switch k { // bits 2k, 2k+1 of qh moved to bits 4, 5
			case 0:
				VPSLLW(U8(4), h, hb)
			case 1:
				VPSLLW(U8(2), h, hb)
			case 2:
				VMOVDQA(h, hb)
			case 3:
				VPSRLW(U8(2), h, hb)
			}
			VPAND(m30, hb, hb)
			VPOR(hb, lo, lo)
			VPMADDUBSW(Mem{Base: q8, Disp: 128*n + 32*k}, lo, lo)
			s, s2 := YMM(), XMM()
			VPBROADCASTW(Mem{Base: sc, Disp: 2 * (8*n + 2*k)}, s)
			VPBROADCASTW(Mem{Base: sc, Disp: 2 * (8*n + 2*k + 1)}, s2)
			VINSERTI128(U8(1), s2, s, s)
			VPMADDWD(s, lo, lo)
			VPADDD(lo, sum, sum)
		}
	}
	f := YMM()
	VCVTDQ2PS(sum, sum)
	VBROADCASTSS(Mem{Base: d}, f)
	VFMADD231PS(sum, f, acc)
	ADDQ(U32(210), w)
	ADDQ(U32(256), q8)
	ADDQ(U8(32), sc)
	ADDQ(U8(4), d)
	DECQ(nb)
	JNZ(LabelRef("q6kloop"))
	Store(hsum(acc), ReturnIndex(0))
	VZEROUPPER()
	RET()
}

// readSum streams n bytes (a multiple of 128) through four ymm loads per
// iteration for MeasureBandwidth; the XOR keeps the loads live.
func readSum() {
	TEXT("readSumAVX2", NOSPLIT, "func(p *byte, n int) uint64")
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
