package main

import (
	"fmt"

	. "github.com/mmcloughlin/avo/build"
	. "github.com/mmcloughlin/avo/operand"
	. "github.com/mmcloughlin/avo/reg"
)

// The tile kernels multiply eight q4_0 or q8_0 weight rows by V q8
// activation vectors with the rows in the lanes (the layout of llama.cpp's
// repacked q4_0x8 kernels, built here on the fly from the file's layout
// instead of repacked at load). Per block, the eight rows' quants are
// loaded (16 bytes at a time, rows i and i+4 in one ymm) and transposed
// so that dword lane r of c[j] holds row r's bytes 4j..4j+3: for q4_0
// their low nibbles pair with the activation bytes 4j..4j+3 and their
// high nibbles with 16+4j..16+4j+3, for q8_0 (32 bytes) the bytes pair
// with the activation bytes 4j..4j+3 (j = 0..7). One VPDPBUSD with the
// activation dword broadcast (EVEX embedded broadcast) then serves all
// eight rows: a block costs about one integer instruction per row and
// vector, plus one convert, one multiply and one FMA per vector for all
// eight rows, and the transposition, shared by all V vectors.
//
// Per block b, lane r of vector v's int32 sum is, exactly,
//
//	q4_0: Σ n·x − 8·Σx (n the unsigned nibbles, x the q8 activation);
//	q8_0: Σ w·x, as Σ (w+128)·x − 128·Σx in the VNNI form (VPDPBUSD
//	      multiplies unsigned by signed bytes) and as Σ |w|·(x·sign w)
//	      with VPMADDUBSW in the AVX2 form (w+128 would saturate it);
//
// the offsets (offset·Σx per block, "xoi") come precomputed with the
// activations. The AVX2 form gets the same integers from
// VPMADDUBSW+VPMADDWD (q4_0: the eight products' int16 sums, each at most
// 2·15·127, stay below 2^15, so one VPMADDWD per block). Row r's float
// accumulator then takes, in lane r,
//
//	acc = fma(float(sum), f16(d_r)·d_x, acc)
//
// one block after the other. Every V and both ISA forms do exactly that,
// so all shapes, ISAs and vector counts give the same bits; a group of
// fewer than eight rows is computed in a padded copy (the lanes are
// independent).

type tileType struct {
	name  string
	bsize int
	q4    bool // nibbles (q4_0), else signed bytes (q8_0)
}

var (
	tq4_0 = tileType{"Q4_0", 18, true}
	tq8_0 = tileType{"Q8_0", 34, false}
)

// usesOffset reports whether the kernel adds the activation's integer
// block offsets: q4_0's −8·Σx, and −128·Σx in q8_0's VNNI form.
func (t tileType) usesOffset(vnni bool) bool { return t.q4 || vnni }

// highY are the registers only EVEX instructions reach.
var highY = []VecPhysical{Y16, Y17, Y18, Y19, Y20, Y21, Y22, Y23, Y24, Y25, Y26, Y27, Y28, Y29, Y30, Y31}

func tileName(t tileType, V int, vnni, packed bool) string {
	isa := "AVX2"
	if vnni {
		isa = "VNNI"
	}
	kind := "tile"
	if packed {
		kind = "packed"
	}
	return fmt.Sprintf("%s%s_8x%d%s", kind, t.name, V, isa)
}

// The packed kernels read the packed (interleaved) weight layout that
// kernels.PackInto writes: rows in groups of 8, and per group and block
// b one packed block of B8 = 8·bsize bytes (144 for q4_0, 272 for q8_0),
// the group's blocks one after the other:
//
//	bytes [0,16): the eight rows' fp16 scales d, in row order;
//	then chunks of 32 bytes (4 for q4_0, 8 for q8_0): chunk c, row j
//	holds, at 16 + 32c + 4j, that row's block quant bytes qs[4c..4c+3].
//
// Chunk c is then exactly the transposed c[j] that the row-major kernels
// build with eight 16-byte loads and eight unpacks, and the scales are one
// VCVTPH2PS from memory, so a packed kernel computes the very same
// integer sums and float operations as its row-major twin, with plain
// loads (q8_0's VNNI form XORs the 128 straight from memory). A last
// group of fewer than eight rows is padded with zero rows when packed.
// The stream of a group's blocks is contiguous, so the kernel prefetches
// a fixed distance ahead of it (packedPrefetch).

// packedPrefetch is how far ahead (bytes) the packed kernel for V vectors
// prefetches its weight stream, into L2 (PREFETCHT1) like the row-major
// kernels. Measured as the best of interleaved MatMulPacked runs on
// 4096×4096 matrices from DRAM, two threads (EPYC with VNNI; 0 B to
// 16 KiB ahead, and one group ahead as the row-major kernels do): the
// compute-heavy 8x4 and 8x8 forms need it far ahead — at 1 KiB or less
// they streamed q4_0 and q8_0 at half the rate they reached at 8 KiB,
// 16 KiB or one group; 4 KiB was 5-10% slower than 8 KiB — while the
// 8x1 forms, which the hardware prefetcher keeps up with, did the same
// with 0 to 1 KiB and 5-35% worse with 2 KiB or more (or with
// PREFETCHT0 or PREFETCHNTA at 512 B).
func packedPrefetch(V int) int {
	if V == 1 {
		return 512
	}
	return 8 << 10
}

// tileKernel emits the eight-row kernel of t for V vectors, for the
// row-major layout or (packed) the packed layout.
func tileKernel(t tileType, V int, vnni, packed bool) {
	bsize := t.bsize
	name := tileName(t, V, vnni, packed)
	var rb, w4 GPVirtual
	var rowAt func(r, disp int) Mem
	wparam := "w"
	if packed {
		wparam = "p"
		TEXT(name, NOSPLIT, "func(p *byte, x *byte, nb int, xstride int, out *float32, ostride int)")
		Pragma("noescape")
		Doc(fmt.Sprintf("%s multiplies a packed group of 8 %s rows (see PackInto) by %d q8", name, t.name, V),
			"vectors over nb ≥ 1 blocks; row r of vector v goes to out[v·ostride/4 + r].",
			"Vector v's record, at x + v·xstride, holds per block its scale d (float32)",
			"and offset xoi (int32), then the nb·32 q8 values.")
	} else {
		TEXT(name, NOSPLIT, "func(w *byte, rb int, x *byte, nb int, xstride int, out *float32, ostride int)")
		Pragma("noescape")
		Doc(fmt.Sprintf("%s multiplies 8 %s rows (rb bytes apart) by %d q8 vectors", name, t.name, V),
			"over nb ≥ 1 blocks; row r of vector v goes to out[v·ostride/4 + r]. Vector v's",
			"record, at x + v·xstride, holds per block its scale d (float32) and offset",
			"xoi (int32), then the nb·32 q8 values.")
	}
	w, dx, xq, nb := GP64(), GP64(), GP64(), GP64()
	Load(Param(wparam), w)
	Load(Param("x"), dx)
	Load(Param("nb"), nb)
	LEAQ(Mem{Base: dx, Index: nb, Scale: 8}, xq)
	if !packed {
		var rb3 GPVirtual
		rb, rb3, w4 = GP64(), GP64(), GP64()
		Load(Param("rb"), rb)
		LEAQ(Mem{Base: rb, Index: rb, Scale: 2}, rb3)
		LEAQ(Mem{Base: w, Index: rb, Scale: 4}, w4)
		rowAt = func(r, disp int) Mem {
			if r >= 4 {
				return at(w4, rb, rb3, r-4, disp)
			}
			return at(w, rb, rb3, r, disp)
		}
	}
	var xs, xs3, xq4, dx4 GPVirtual
	if V > 1 {
		xs, xs3 = GP64(), GP64()
		Load(Param("xstride"), xs)
		LEAQ(Mem{Base: xs, Index: xs, Scale: 2}, xs3)
		if V > 4 {
			xq4, dx4 = GP64(), GP64()
			LEAQ(Mem{Base: xq, Index: xs, Scale: 4}, xq4)
			LEAQ(Mem{Base: dx, Index: xs, Scale: 4}, dx4)
		}
	}
	vecAt := func(base, base4, s, s3 GPVirtual, v, disp int) Mem {
		if v >= 4 {
			return at(base4, s, s3, v-4, disp)
		}
		return at(base, s, s3, v, disp)
	}
	xAt := func(v, disp int) Mem { return vecAt(xq, xq4, xs, xs3, v, disp) }
	dAt := func(v, disp int) Mem { return vecAt(dx, dx4, xs, xs3, v, disp) }
	// The packed one-vector kernels count k = 8·(b − nb) up to 0 and
	// address block b's record pair at xq+k (xq = x + 8·nb is where the
	// pairs end) and its q8 values at xend + 4k (xend = xq + 32·nb): one
	// ADDQ and a fused JNZ step both.
	var k GPVirtual
	if packed && V == 1 {
		k = nb
		xend := GP64()
		SHLQ(U8(3), k)
		LEAQ(Mem{Base: xq, Index: k, Scale: 4}, xend)
		NEGQ(k)
		xAt = func(_, disp int) Mem { return Mem{Base: xend, Index: k, Scale: 4, Disp: disp} }
		dAt = func(_, disp int) Mem { return Mem{Base: xq, Index: k, Scale: 1, Disp: disp} }
	}
	oAt := func(v, disp int) Mem { return dAt(v, disp+4) }

	var mask, ones VecVirtual
	switch {
	case t.q4:
		mask = splat(0x0f0f0f0f)
	case vnni:
		mask = splat(0x80808080) // w+128: unsigned for VPDPBUSD
	}
	if !vnni {
		ones = onesW()
	}
	// The VNNI forms of 4 and 8 vectors keep the float accumulators in
	// Y16-Y23 and the integer sums in Y24-Y31 (EVEX instructions only),
	// so that the allocator, which hands out all 32 registers, keeps the
	// rest in Y0-Y15 for VEX-only instructions (VPAND, VINSERTI128,
	// VHADDPS). Should a form ever need more, the Go assembler rejects it.
	high := vnni && V >= 4
	acc := make([]Register, V)
	for v := range V {
		if high {
			acc[v] = highY[v]
			VPXORD(acc[v], acc[v], acc[v])
		} else {
			a := YMM()
			VXORPS(a, a, a)
			acc[v] = a
		}
	}

	loop, done := "loop", "done"
	// The next eight rows follow these in memory: read them ahead, into
	// L2, as one sequential stream of 8·bsize bytes per block. Eight row
	// streams side by side are read from DRAM about 1.5x more slowly
	// than one (and prefetching into L1 thrashes it: two groups of rows
	// are larger).
	// (A packed group's blocks are one contiguous stream: prefetch it
	// packedPrefetch(V) bytes ahead, one line per 64 bytes of the block.)
	var pf GPVirtual
	if !packed {
		pf = GP64()
		LEAQ(Mem{Base: w4, Index: rb, Scale: 4}, pf)
	}
	Label(loop)
	for off := 0; off < 8*bsize; off += 64 {
		if packed {
			PREFETCHT1(Mem{Base: w, Disp: packedPrefetch(V) + off})
		} else {
			PREFETCHT1(Mem{Base: pf, Disp: off})
		}
	}
	if !packed {
		ADDQ(U32(8*bsize), pf)
	}
	// Integer sums per vector, seeded with the block's offset.
	isum := make([]Register, V)
	for v := range V {
		if !vnni {
			break
		}
		if high {
			isum[v] = highY[8+v]
		} else {
			isum[v] = YMM()
		}
		VPBROADCASTD(oAt(v, 0), isum[v])
	}
	// rowsT loads 16 bytes at disp of each row, a_i = rows i | i+4, and
	// transposes them 4×4 dwords per lane: lane r of c[j] is row r's
	// dword j.
	rowsT := func(disp int) []VecVirtual {
		a := make([]VecVirtual, 4)
		for i := range a {
			a[i] = YMM()
			// (Not VMOVDQU to the xmm: the allocator would take the
			// ymm's upper half as live from the previous block.)
			VBROADCASTI128(rowAt(i, disp), a[i])
			VINSERTI128(U8(1), rowAt(i+4, disp), a[i], a[i])
		}
		t0, t1, t2, t3 := YMM(), YMM(), YMM(), YMM()
		VPUNPCKLDQ(a[1], a[0], t0)
		VPUNPCKHDQ(a[1], a[0], t1)
		VPUNPCKLDQ(a[3], a[2], t2)
		VPUNPCKHDQ(a[3], a[2], t3)
		c := []VecVirtual{YMM(), YMM(), YMM(), YMM()}
		VPUNPCKLQDQ(t2, t0, c[0])
		VPUNPCKHQDQ(t2, t0, c[1])
		VPUNPCKLQDQ(t3, t1, c[2])
		VPUNPCKHQDQ(t3, t1, c[3])
		return c
	}
	// AVX2, q4_0: int16 sums of the eight VPMADDUBSW (each ≤ 2·15·127,
	// eight of them < 2^15), widened by one VPMADDWD at the end. q8_0
	// (|w|·±x, up to 2·128·127 per pair) widens each.
	// chunk returns the packed block's chunk c (lane r = row r's quant
	// bytes 4c..4c+3).
	chunk := func(c int) VecVirtual {
		y := YMM()
		VMOVDQU(Mem{Base: w, Disp: 16 + 32*c}, y)
		return y
	}
	s16 := make([]VecVirtual, V)
	dot := func(u, raw VecVirtual, disp int) {
		for v := range V {
			if vnni {
				VPDPBUSD_BCST(xAt(v, disp), u, isum[v])
				continue
			}
			xb := YMM()
			VPBROADCASTD(xAt(v, disp), xb)
			if raw != nil {
				VPSIGNB(raw, xb, xb)
			}
			switch {
			case t.q4 && s16[v] == nil:
				s16[v] = YMM()
				VPMADDUBSW(xb, u, s16[v])
			case t.q4:
				VPMADDUBSW(xb, u, xb)
				VPADDW(xb, s16[v], s16[v])
			case isum[v] == nil:
				VPMADDUBSW(xb, u, xb)
				VPMADDWD(ones, xb, xb)
				isum[v] = xb
			default:
				VPMADDUBSW(xb, u, xb)
				VPMADDWD(ones, xb, xb)
				VPADDD(xb, isum[v], isum[v])
			}
		}
	}
	switch {
	case t.q4:
		var c []VecVirtual
		if !packed {
			c = rowsT(2)
		}
		for j := range 4 {
			cj := chunkOr(c, j, packed, chunk)
			lo, hi := YMM(), YMM()
			VPSRLD(U8(4), cj, hi)
			VPAND(mask, cj, lo)
			VPAND(mask, hi, hi)
			dot(lo, nil, 4*j)
			dot(hi, nil, 16+4*j)
		}
	case packed && vnni:
		// w+128 straight from memory.
		for j := range 8 {
			u := YMM()
			VPXOR(Mem{Base: w, Disp: 16 + 32*j}, mask, u)
			dot(u, nil, 4*j)
		}
	default:
		for half := range 2 {
			var c []VecVirtual
			if !packed {
				c = rowsT(2 + 16*half)
			}
			for j := range 4 {
				cj := chunkOr(c, j, packed, func(j int) VecVirtual { return chunk(4*half + j) })
				u := YMM()
				if vnni {
					VPXOR(mask, cj, u)
					dot(u, nil, 16*half+4*j)
				} else {
					VPSIGNB(cj, cj, u)
					dot(u, cj, 16*half+4*j)
				}
			}
		}
	}
	// The eight rows' scales, lane r = row r: in the packed layout one
	// VCVTPH2PS from memory.
	var dw VecVirtual
	if packed {
		dw = YMM()
		VCVTPH2PS(Mem{Base: w}, dw)
	} else {
		dw = gatherScales(rowAt)
	}
	for v := range V {
		if !vnni {
			if t.q4 {
				isum[v] = s16[v]
				VPMADDWD(ones, s16[v], s16[v])
			}
			if t.usesOffset(vnni) {
				o := YMM()
				VPBROADCASTD(oAt(v, 0), o)
				VPADDD(o, isum[v], isum[v])
			}
		}
		f, s := YMM(), YMM()
		VCVTDQ2PS(isum[v], f)
		if vnni {
			VMULPS_BCST(dAt(v, 0), dw, s)
		} else {
			VBROADCASTSS(dAt(v, 0), s)
			VMULPS(dw, s, s)
		}
		VFMADD231PS(f, s, acc[v])
	}
	switch {
	case packed && V == 1:
		ADDQ(U32(8*bsize), w)
		ADDQ(U8(8), k)
		JNZ(LabelRef(loop))
	case packed:
		ADDQ(U32(8*bsize), w)
	default:
		ADDQ(U32(bsize), w)
		ADDQ(U32(bsize), w4)
	}
	if k == nil {
		ADDQ(U32(32), xq)
		ADDQ(U32(8), dx)
		if xq4 != nil {
			ADDQ(U32(32), xq4)
			ADDQ(U32(8), dx4)
		}
		DECQ(nb)
		JNZ(LabelRef(loop))
	}

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
	for v := range V {
		VMOVUPS(acc[v], vecAt(out, out4, os, os3, v, 0))
	}
	VZEROUPPER()
	RET()
}

// chunkOr returns the row-major kernel's transposed c[j], or in the
// packed layout the chunk load(j).
func chunkOr(c []VecVirtual, j int, packed bool, load func(int) VecVirtual) VecVirtual {
	if packed {
		return load(j)
	}
	return c[j]
}

// gatherScales collects the eight rows' f16 scales (rowAt(r, 0)) into an
// xmm, lane r = row r, and returns them converted to float32.
func gatherScales(rowAt func(r, disp int) Mem) VecVirtual {
	hx := XMM()
	for half := range 2 {
		g := GP64()
		MOVWQZX(rowAt(4*half, 0), g)
		for k := 1; k < 4; k++ {
			h := GP64()
			MOVWQZX(rowAt(4*half+k, 0), h)
			SHLQ(U8(16*k), h)
			ORQ(h, g)
		}
		if half == 0 {
			VMOVQ(g, hx)
		} else {
			VPINSRQ(U8(1), g, hx, hx)
		}
	}
	dw := YMM()
	VCVTPH2PS(hx, dw)
	return dw
}

// tileKernels generates the kernels for 1, 4 and (VNNI only: the AVX2
// form runs out of its sixteen registers) 8 vectors, for the row-major
// and the packed layout.
func tileKernels() {
	for _, packed := range []bool{false, true} {
		for _, t := range []tileType{tq4_0, tq8_0} {
			for _, V := range []int{1, 4} {
				tileKernel(t, V, false, packed)
			}
			for _, V := range []int{1, 4, 8} {
				tileKernel(t, V, true, packed)
			}
		}
	}
}
