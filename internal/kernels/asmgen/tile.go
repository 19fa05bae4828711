package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// The tile kernels multiply R weight rows by V q8 activation vectors in
// one pass over the rows' blocks (llamafile's tinyBLAS idea): each weight
// block is loaded and unpacked once for all V vectors, and the R·V
// products keep R·V independent accumulators, so the FMA latency chain of
// a one-accumulator dot no longer bounds a single vector (R = 4).
//
// Every (row, vector) pair goes through the same instructions in the same
// order whatever R and V are, so all tile shapes give the same bits, and
// the AVX2 and the VNNI forms compute the same exact int32 lane sums
// (VPMADDUBSW cannot saturate on these operands), so they agree bit for
// bit too.
//
// Per block b the pair's accumulator takes cvt(lane sums)·s_b by FMA,
// s_b = f16(d_w)·d_x, the lane sums being those of
//
//	q4_0: Σ n·x, the unsigned nibbles n times the q8 activation x;
//	q8_0: Σ w·x, as Σ |w|·(x·sign w) (llama.cpp's sign trick);
//
// and q4_0's offset, −8·Σx, comes in
// as s_b·xo[b], xo[b] = offset·Σx over the block being exact in float32,
// added to lane b mod 4 of the accumulator (lane 0 for leftover blocks).
// The scales of four blocks are multiplied with one VMULPS (the same
// float32 products as the scalar VMULSS of the leftover blocks).

type tileType struct {
	name  string
	bsize int
	q4    bool // nibbles (q4_0), else signed bytes (q8_0)
}

var (
	tq4_0 = tileType{"Q4_0", 18, true}
	tq8_0 = tileType{"Q8_0", 34, false}
)

// usesOffset reports whether the kernel adds the activation's block
// offsets xo.
func (t tileType) usesOffset(vnni bool) bool { return t.q4 }

func tileName(t tileType, r, v int, vnni bool) string {
	isa := "AVX2"
	if vnni {
		isa = "VNNI"
	}
	return fmt.Sprintf("tile%s_%dx%d%s", t.name, r, v, isa)
}

func tileKernel(t tileType, R, V int, vnni bool) {
	name := tileName(t, R, V, vnni)
	TEXT(name, NOSPLIT, "func(w *byte, rb int, xq *int8, xd *float32, xo *float32, nb int, xstride int, dstride int, out *float32, ostride int)")
	Pragma("noescape")
	Doc(fmt.Sprintf("%s multiplies %d %s rows (rb bytes apart) by %d q8 vectors", name, R, t.name, V),
		"(qs xstride bytes apart, scales d and offsets xo dstride bytes apart) over nb ≥ 1",
		"blocks; row r of vector v goes to out[v·ostride/4 + r].")
	w, xq, xd, nb := GP64(), GP64(), GP64(), GP64()
	Load(Param("w"), w)
	Load(Param("xq"), xq)
	Load(Param("xd"), xd)
	Load(Param("nb"), nb)
	var xo GPVirtual
	if t.usesOffset(vnni) {
		xo = GP64()
		Load(Param("xo"), xo)
	}
	var rb, rb3 GPVirtual
	if R > 1 {
		rb, rb3 = GP64(), GP64()
		Load(Param("rb"), rb)
		LEAQ(Mem{Base: rb, Index: rb, Scale: 2}, rb3)
	}
	rowAt := func(r, disp int) Mem { return at(w, rb, rb3, r, disp) }
	var xs, xs3, ds, ds3 GPVirtual
	var xq4, xo4, xd4 GPVirtual
	if V > 1 {
		xs, ds = GP64(), GP64()
		Load(Param("xstride"), xs)
		Load(Param("dstride"), ds)
		xs3, ds3 = GP64(), GP64()
		LEAQ(Mem{Base: xs, Index: xs, Scale: 2}, xs3)
		LEAQ(Mem{Base: ds, Index: ds, Scale: 2}, ds3)
		if V > 4 {
			xq4, xd4 = GP64(), GP64()
			LEAQ(Mem{Base: xq, Index: xs, Scale: 4}, xq4)
			LEAQ(Mem{Base: xd, Index: ds, Scale: 4}, xd4)
			if xo != nil {
				xo4 = GP64()
				LEAQ(Mem{Base: xo, Index: ds, Scale: 4}, xo4)
			}
		}
	}
	vecAt := func(base, base4, s, s3 GPVirtual, v, disp int) Mem {
		if v >= 4 {
			return at(base4, s, s3, v-4, disp)
		}
		return at(base, s, s3, v, disp)
	}
	xAt := func(v, disp int) Mem { return vecAt(xq, xq4, xs, xs3, v, disp) }
	oAt := func(v, disp int) Mem { return vecAt(xo, xo4, ds, ds3, v, disp) }
	dAt := func(v, disp int) Mem { return vecAt(xd, xd4, ds, ds3, v, disp) }

	var mask, ones, shift VecVirtual
	if t.q4 {
		mask = splat(0x0f0f0f0f)
		// Shift counts 0,0,4,4 for VPSRLVQ: the low lane keeps the low
		// nibbles, the high lane gets the high ones.
		g, x := GP64(), XMM()
		shift = YMM()
		MOVQ(U32(4), g)
		VMOVQ(g, x)
		VPBROADCASTQ(x, x)
		VPXOR(shift, shift, shift)
		VINSERTI128(U8(1), x, shift, shift)
	}
	if !vnni {
		ones = onesW()
	}
	acc := make([]VecVirtual, R*V)
	for i := range acc {
		acc[i] = YMM()
		VXORPS(acc[i], acc[i], acc[i])
	}
	// unpack returns row r's block k as bytes ready for the unsigned
	// operand, and for q8_0 on AVX2 the signs' source (the raw bytes).
	unpack := func(r, k int) (u, raw VecVirtual) {
		if t.q4 {
			a := YMM()
			VBROADCASTI128(rowAt(r, t.bsize*k+2), a)
			VPSRLVQ(shift, a, a)
			VPAND(mask, a, a)
			return a, nil
		}
		a := YMM()
		VMOVDQU(rowAt(r, t.bsize*k+2), a)
		abs := YMM()
		VPSIGNB(a, a, abs)
		return abs, a
	}
	// lanes returns the int32 lane sums of the block k product, as float32.
	lanes := func(v, k int, u, raw VecVirtual) VecVirtual {
		p := YMM()
		switch {
		case vnni && t.q4:
			VPXOR(p, p, p)
			VPDPBUSD(xAt(v, 32*k), u, p)
		case vnni:
			x := YMM()
			VMOVDQU(xAt(v, 32*k), x)
			VPSIGNB(raw, x, x)
			VPXOR(p, p, p)
			VPDPBUSD(x, u, p)
		case t.q4:
			VPMADDUBSW(xAt(v, 32*k), u, p)
			VPMADDWD(ones, p, p)
		default:
			VMOVDQU(xAt(v, 32*k), p)
			VPSIGNB(raw, p, p)
			VPMADDUBSW(p, u, p)
			VPMADDWD(ones, p, p)
		}
		VCVTDQ2PS(p, p)
		return p
	}
	gather4 := func(r int) VecVirtual { // four f16 at stride bsize → float32 ×4
		// Assembled in a general register: the integer ALUs are idle,
		// the vector ones are what the kernel is bound by.
		g, x := GP64(), XMM()
		MOVWQZX(rowAt(r, 0), g)
		for k := 1; k < 4; k++ {
			h := GP64()
			MOVWQZX(rowAt(r, t.bsize*k), h)
			SHLQ(U8(16*k), h)
			ORQ(h, g)
		}
		VMOVQ(g, x)
		VCVTPH2PS(x, x)
		return x
	}
	local := AllocLocal(16 * R * V)
	// Labels are local to a function in Go assembly.
	quad, tail, done := "quad", "tail", "done"
	Label(quad)
	CMPQ(nb, U8(4))
	JL(LabelRef(tail))
	for r := range R {
		// The rows are read side by side, R streams that the hardware
		// prefetchers follow poorly: ask for each row's data ahead.
		PREFETCHT0(rowAt(r, prefetchAhead*4*t.bsize))
		dw4 := gather4(r)
		for v := range V {
			sc := XMM()
			VMULPS(dAt(v, 0), dw4, sc)
			VMOVUPS(sc, local.Offset(16*(r*V+v)))
			if xo != nil {
				VMULPS(oAt(v, 0), sc, sc) // upper lanes of the ymm zeroed
				VADDPS(sc.AsY(), acc[r*V+v], acc[r*V+v])
			}
		}
	}
	for k := range 4 {
		for r := range R {
			u, raw := unpack(r, k)
			for v := range V {
				p := lanes(v, k, u, raw)
				s := YMM()
				VBROADCASTSS(local.Offset(16*(r*V+v)+4*k), s)
				VFMADD231PS(p, s, acc[r*V+v])
			}
		}
	}
	advance := func(blocks int) {
		ADDQ(U32(blocks*t.bsize), w)
		ADDQ(U32(blocks*32), xq)
		ADDQ(U32(blocks*4), xd)
		if xo != nil {
			ADDQ(U32(blocks*4), xo)
		}
		if xq4 != nil {
			ADDQ(U32(blocks*32), xq4)
			ADDQ(U32(blocks*4), xd4)
			if xo4 != nil {
				ADDQ(U32(blocks*4), xo4)
			}
		}
	}
	advance(4)
	SUBQ(U8(4), nb)
	JMP(LabelRef(quad))

	Label(tail)
	TESTQ(nb, nb)
	JZ(LabelRef(done))
	for r := range R {
		dw := f16Scalar(rowAt(r, 0))
		u, raw := unpack(r, 0)
		for v := range V {
			s := XMM() // lanes 1-3 are dw's: zero
			VMULSS(dAt(v, 0), dw, s)
			if xo != nil {
				o := XMM()
				VMULSS(oAt(v, 0), s, o)
				VADDPS(o.AsY(), acc[r*V+v], acc[r*V+v])
			}
			p := lanes(v, 0, u, raw)
			VBROADCASTSS(s, s.AsY())
			VFMADD231PS(p, s.AsY(), acc[r*V+v])
		}
	}
	advance(1)
	DECQ(nb)
	JMP(LabelRef(tail))

	Label(done)
	out := GP64()
	Load(Param("out"), out)
	var os, os3, out4 GPVirtual
	if V > 1 {
		os, os3 = GP64(), GP64()
		Load(Param("ostride"), os)
		LEAQ(Mem{Base: os, Index: os, Scale: 2}, os3)
		if V > 4 {
			out4 = GP64()
			LEAQ(Mem{Base: out, Index: os, Scale: 4}, out4)
		}
	}
	for r := range R {
		for v := range V {
			s := hsum(acc[r*V+v])
			VMOVSS(s, vecAt(out, out4, os, os3, v, 4*r))
		}
	}
	VZEROUPPER()
	RET()
}

// prefetchAhead is how many groups of four blocks ahead of the one being
// computed each row's data is prefetched.
var prefetchAhead = 8

// tileShapes are the (rows, vectors) shapes generated per type and ISA.
//
// {4, 1} (single vectors four rows at a time, which breaks the FMA
// latency chain of one accumulator) is faster when the rows are in cache
// but was slower in the engine, where the rows stream from DRAM; it is
// left out until that is understood.
var tileShapes = [][2]int{{1, 1}, {1, 4}, {1, 8}}

func tileKernels() {
	for _, vnni := range []bool{false, true} {
		for _, t := range []tileType{tq4_0, tq8_0} {
			for _, s := range tileShapes {
				tileKernel(t, s[0], s[1], vnni)
			}
		}
	}
}
