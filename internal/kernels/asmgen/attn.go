package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// The attention kernels read one KV-cache block of one KV head in place,
// for nh query heads at a time (1 or 4), in float32 or half floats (elem
// bytes 4 or 2). A block holds 16 positions (slots):
//   - the keys transposed, [hd][16]: the scores of 16 slots are two ymm
//     registers per head, summed over d with one broadcast of q[d] each, so
//     no horizontal sums;
//   - the values as they come, [slot][hd]: the output is summed 16
//     dimensions (two registers per head) at a time over the slots, with
//     one broadcast of the slot's weight each.
//
// Each head's scores and outputs are computed by the same operations in
// the same order whatever nh is, so a head's result does not depend on
// how the heads are chunked.

// attnLoad loads 8 numbers at m into y as float32.
func attnLoad(elem int, m Mem, y VecVirtual) {
	if elem == 2 {
		VCVTPH2PS(m, y)
		return
	}
	VMOVUPS(m, y)
}

func attnType(elem int) (string, string) {
	if elem == 2 {
		return "F16", "uint16"
	}
	return "F32", "float32"
}

// attnScores emits attnScores<T>x<nh>: dst[h·ld + s] = Σ_d q[h·hd + d]·k[d·16 + s]
// for s < 16, h < nh.
func attnScores(elem, nh int) {
	t, ct := attnType(elem)
	name := fmt.Sprintf("attnScores%sx%d", t, nh)
	TEXT(name, NOSPLIT, "func(dst *float32, ld int, k *"+ct+", q *float32, hd int)")
	Pragma("noescape")
	Doc(name+" sets dst[h·ld+s] = Σ_d q[h·hd+d]·k[d·16+s] for the 16 slots s",
		fmt.Sprintf("of one block's keys (stored [hd][16]) and %d query heads h; hd ≥ 1.", nh))
	dst, ld, k, q, hd := GP64(), GP64(), GP64(), GP64(), GP64()
	Load(Param("dst"), dst)
	Load(Param("ld"), ld)
	Load(Param("k"), k)
	Load(Param("q"), q)
	Load(Param("hd"), hd)
	// q of head h, dimension d, is at q + 4·(h·hd + d): qs = 4·hd.
	qs, qs3 := GP64(), GP64()
	times(hd, 4, qs)
	LEAQ(Mem{Base: qs, Index: qs, Scale: 2}, qs3)
	acc := make([][2]VecVirtual, nh)
	for h := range acc {
		for i := range 2 {
			acc[h][i] = YMM()
			VXORPS(acc[h][i], acc[h][i], acc[h][i])
		}
	}
	loop := name + "_loop"
	Label(loop)
	kv := [2]VecVirtual{YMM(), YMM()}
	for i := range 2 {
		attnLoad(elem, Mem{Base: k, Disp: 8 * elem * i}, kv[i])
	}
	for h := range nh {
		qb := YMM()
		VBROADCASTSS(at(q, qs, qs3, h, 0), qb)
		for i := range 2 {
			VFMADD231PS(kv[i], qb, acc[h][i])
		}
	}
	ADDQ(U8(16*elem), k)
	ADDQ(U8(4), q)
	DECQ(hd)
	JNZ(LabelRef(loop))
	// dst of head h at dst + 4·h·ld.
	lds, lds3 := GP64(), GP64()
	times(ld, 4, lds)
	LEAQ(Mem{Base: lds, Index: lds, Scale: 2}, lds3)
	for h := range nh {
		for i := range 2 {
			VMOVUPS(acc[h][i], at(dst, lds, lds3, h, 32*i))
		}
	}
	VZEROUPPER()
	RET()
}

// attnValues emits attnValues<T>x<nh>: out[h·hd + d] += Σ_{s<rows} a[h·ld + s]·v[s·hd + d]
// for d < hd (a multiple of 16), h < nh.
func attnValues(elem, nh int) {
	t, ct := attnType(elem)
	name := fmt.Sprintf("attnValues%sx%d", t, nh)
	TEXT(name, NOSPLIT, "func(out *float32, v *"+ct+", a *float32, ld int, hd int, rows int)")
	Pragma("noescape")
	Doc(name+" adds Σ_s a[h·ld+s]·v[s·hd+d] over the slots s < rows ≥ 1 of one",
		fmt.Sprintf("block's values (stored [16][hd]) to out[h·hd+d] for %d query heads h;", nh),
		"hd is a multiple of 16.")
	out, v, a, ld, hd, rows := GP64(), GP64(), GP64(), GP64(), GP64(), GP64()
	Load(Param("out"), out)
	Load(Param("v"), v)
	Load(Param("a"), a)
	Load(Param("ld"), ld)
	Load(Param("hd"), hd)
	Load(Param("rows"), rows)
	// a of head h, slot s, at a + 4·(h·ld + s); out of head h at out + 4·h·hd;
	// slot s's values at v + elem·s·hd.
	lds, lds3, os, os3, vs := GP64(), GP64(), GP64(), GP64(), GP64()
	times(ld, 4, lds)
	LEAQ(Mem{Base: lds, Index: lds, Scale: 2}, lds3)
	times(hd, 4, os)
	LEAQ(Mem{Base: os, Index: os, Scale: 2}, os3)
	times(hd, elem, vs)
	chunk, slots := name+"_chunk", name+"_slots"
	Label(chunk)
	acc := make([][2]VecVirtual, nh)
	for h := range acc {
		for i := range 2 {
			acc[h][i] = YMM()
			VMOVUPS(at(out, os, os3, h, 32*i), acc[h][i])
		}
	}
	s, vp, ap := GP64(), GP64(), GP64()
	MOVQ(rows, s)
	MOVQ(v, vp)
	MOVQ(a, ap)
	Label(slots)
	vv := [2]VecVirtual{YMM(), YMM()}
	for i := range 2 {
		attnLoad(elem, Mem{Base: vp, Disp: 8 * elem * i}, vv[i])
	}
	for h := range nh {
		ab := YMM()
		VBROADCASTSS(at(ap, lds, lds3, h, 0), ab)
		for i := range 2 {
			VFMADD231PS(vv[i], ab, acc[h][i])
		}
	}
	ADDQ(vs, vp)
	ADDQ(U8(4), ap)
	DECQ(s)
	JNZ(LabelRef(slots))
	for h := range nh {
		for i := range 2 {
			VMOVUPS(acc[h][i], at(out, os, os3, h, 32*i))
		}
	}
	// The next 16 dimensions.
	ADDQ(U8(64), out)
	ADDQ(U8(16*elem), v)
	SUBQ(U8(16), hd)
	JNZ(LabelRef(chunk))
	VZEROUPPER()
	RET()
}

func attnKernels() {
	for _, elem := range []int{4, 2} {
		for _, nh := range []int{1, 4} {
			attnScores(elem, nh)
			attnValues(elem, nh)
		}
	}
}

// times sets dst = r·k for k = 2 or 4.
func times(r GPVirtual, k int, dst GPVirtual) {
	MOVQ(r, dst)
	if k == 4 {
		SHLQ(U8(2), dst)
		return
	}
	SHLQ(U8(1), dst)
}

// toHalf emits toHalfF16C: dst[i] = the half float of src[i] for i < n, a
// multiple of 8, rounded to nearest even (F16C's VCVTPS2PH, mode 0), as
// F32ToF16 rounds.
func toHalf() {
	TEXT("toHalfF16C", NOSPLIT, "func(dst *uint16, src *float32, n int)")
	Pragma("noescape")
	Doc("toHalfF16C converts n (a multiple of 8, ≥ 8) float32 at src to half floats at dst.")
	dst, src, n := GP64(), GP64(), GP64()
	Load(Param("dst"), dst)
	Load(Param("src"), src)
	Load(Param("n"), n)
	Label("tohalf")
	y := YMM()
	VMOVUPS(Mem{Base: src}, y)
	VCVTPS2PH(U8(0), y, Mem{Base: dst})
	ADDQ(U8(32), src)
	ADDQ(U8(16), dst)
	SUBQ(U8(8), n)
	JNZ(LabelRef("tohalf"))
	VZEROUPPER()
	RET()
}

// The passes of Softmax (softmax.go) over n floats, n a multiple of 8 and
// at least 8. Each does in eight lanes the float32 operations of its
// portable twin, in the same order, so the results are the same bits.
func softmaxKernels() {
	// maxF32AVX2: the lanes start at x[0]; lane j takes max(x[8i+j], m)
	// with VMAXPS's rule (m = v > m ? v : m, so m if either is NaN).
	lanesKernel("maxF32AVX2", "returns the largest of x[:n] as softmax.go's maxGeneric does",
		func(x GPVirtual, m VecVirtual) { VBROADCASTSS(Mem{Base: x}, m) },
		func(x GPVirtual, m VecVirtual) {
			v := YMM()
			VMOVUPS(Mem{Base: x}, v)
			VMAXPS(m, v, m)
		},
		func(a, b Register) { VMAXPS(a, b, a) })
	lanesKernel("sumF32AVX2", "returns the sum of x[:n] in softmax.go's lanes8 order",
		func(_ GPVirtual, s VecVirtual) { VXORPS(s, s, s) },
		func(x GPVirtual, s VecVirtual) { VADDPS(Mem{Base: x}, s, s) },
		func(a, b Register) { VADDPS(b, a, a) })

	// shiftScaleAVX2: x[i] = (x[i] − sub)·mul.
	TEXT("shiftScaleAVX2", NOSPLIT, "func(x *float32, n int, sub float32, mul float32)")
	Pragma("noescape")
	Doc("shiftScaleAVX2 sets x[i] = (x[i]−sub)·mul for i < n.")
	x, n := GP64(), GP64()
	Load(Param("x"), x)
	Load(Param("n"), n)
	sb, ml := YMM(), YMM()
	VBROADCASTSS(NewParamAddr("sub", 16), sb)
	VBROADCASTSS(NewParamAddr("mul", 20), ml)
	Label("shiftloop")
	v := YMM()
	VMOVUPS(Mem{Base: x}, v)
	VSUBPS(sb, v, v)
	VMULPS(ml, v, v)
	VMOVUPS(v, Mem{Base: x})
	ADDQ(U8(32), x)
	SUBQ(U8(8), n)
	JNZ(LabelRef("shiftloop"))
	VZEROUPPER()
	RET()
}

// lanesKernel emits name(x *float32, n int) float32 over n floats (a
// multiple of 8, at least 8): init sets the eight lanes, step takes the
// next eight floats at x into them, and the lanes fold into the result as
// fold8 does with op.
func lanesKernel(name, doc string, init, step func(x GPVirtual, acc VecVirtual), op func(a, b Register)) {
	TEXT(name, NOSPLIT, "func(x *float32, n int) float32")
	Pragma("noescape")
	Doc(name + " " + doc + ".")
	x, n := GP64(), GP64()
	Load(Param("x"), x)
	Load(Param("n"), n)
	acc := YMM()
	init(x, acc)
	Label(name + "_loop")
	step(x, acc)
	ADDQ(U8(32), x)
	SUBQ(U8(8), n)
	JNZ(LabelRef(name + "_loop"))
	fold8(acc, op)
	Store(acc.AsX(), ReturnIndex(0))
	VZEROUPPER()
	RET()
}

// fold8 folds the eight lanes of a into lane 0 as softmax.go's lanes8
// does: lane j with lane j+4, then j with j+2, then 0 with 1, op(a, b)
// setting a to a∘b lane by lane.
func fold8(a VecVirtual, op func(a, b Register)) {
	h := YMM()
	VEXTRACTF128(U8(1), a, h.AsX())
	op(a.AsX(), h.AsX())
	VPERMILPS(U8(0x4e), a.AsX(), h.AsX()) // lanes 2,3,0,1
	op(a.AsX(), h.AsX())
	VPERMILPS(U8(0xb1), a.AsX(), h.AsX()) // lanes 1,0,3,2
	op(a.AsX(), h.AsX())
}

// normKernels emits the passes of RMSNorm (norm.go): the sum of squares
// in eight lanes, and out = w·(inv·x).
func normKernels() {
	// A VMULPS and a VADDPS, not an FMA, as the portable loop rounds.
	lanesKernel("sumSqF32AVX2", "returns Σ x[i]² over x[:n] in softmax.go's lanes8 order",
		func(_ GPVirtual, s VecVirtual) { VXORPS(s, s, s) },
		func(x GPVirtual, s VecVirtual) {
			v := YMM()
			VMOVUPS(Mem{Base: x}, v)
			VMULPS(v, v, v)
			VADDPS(v, s, s)
		},
		func(a, b Register) { VADDPS(b, a, a) })

	TEXT("normScaleAVX2", NOSPLIT, "func(out *float32, x *float32, w *float32, n int, inv float32)")
	Pragma("noescape")
	Doc("normScaleAVX2 sets out[i] = w[i]·(inv·x[i]) for i < n.")
	out, x2, w, n2 := GP64(), GP64(), GP64(), GP64()
	Load(Param("out"), out)
	Load(Param("x"), x2)
	Load(Param("w"), w)
	Load(Param("n"), n2)
	iv := YMM()
	VBROADCASTSS(NewParamAddr("inv", 32), iv)
	Label("normloop")
	t := YMM()
	VMULPS(Mem{Base: x2}, iv, t)
	VMULPS(Mem{Base: w}, t, t)
	VMOVUPS(t, Mem{Base: out})
	ADDQ(U8(32), out)
	ADDQ(U8(32), x2)
	ADDQ(U8(32), w)
	SUBQ(U8(8), n2)
	JNZ(LabelRef("normloop"))
	VZEROUPPER()
	RET()
}
