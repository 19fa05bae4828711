package kernels

import (
	"errors"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/npumesh/npumesh/internal/gguf"
)

// TestF16Exhaustive checks every finite half: it converts to float32 and
// back unchanged, and the midpoint to the next half (and the floats just
// either side of it) round to the nearest half, ties to even, as F16C does.
func TestF16Exhaustive(t *testing.T) {
	for h := range uint32(0x7c00) { // positive finite halves; sign is a separate bit
		for _, sign := range []uint16{0, 0x8000} {
			hh := uint16(h) | sign
			f := F16ToF32(hh)
			if got := F32ToF16(f); got != hh && !(h == 0) {
				t.Fatalf("F32ToF16(F16ToF32(%#04x)=%g) = %#04x, want %#04x", hh, f, got, hh)
			}
			if h == 0x7bff {
				continue
			}
			next := F16ToF32(hh + 1)
			mid := float32((float64(f) + float64(next)) / 2)
			even := hh
			if hh&1 == 1 {
				even = hh + 1
			}
			if got := F32ToF16(mid); got != even {
				t.Fatalf("F32ToF16(midpoint %g of %#04x,%#04x) = %#04x, want %#04x (even)", mid, hh, hh+1, got, even)
			}
			toward := func(v float32, dir float64) float32 { return float32(math.Nextafter32(v, float32(dir))) }
			inf := math.Inf(1)
			if sign != 0 {
				inf = -inf
			}
			if got := F32ToF16(toward(mid, inf)); got != hh+1 {
				t.Fatalf("F32ToF16(just past midpoint of %#04x) = %#04x, want %#04x", hh, got, hh+1)
			}
			if got := F32ToF16(toward(mid, -inf)); got != hh {
				t.Fatalf("F32ToF16(just before midpoint of %#04x) = %#04x, want %#04x", hh, got, hh)
			}
		}
	}
	for _, c := range []struct {
		f    float32
		want uint16
	}{
		{1, 0x3c00}, {65504, 0x7bff}, {65520, 0x7c00}, {1e9, 0x7c00}, {-1e9, 0xfc00},
		{float32(math.Inf(1)), 0x7c00}, {0x1p-24, 0x0001}, {0x1p-25, 0}, {0x1.8p-25, 0x0001},
		{1 + 0x1p-11, 0x3c00}, {1 + 0x3p-11, 0x3c02}, {0.1, 0x2e66}, {-2.5e-5, 0x81a3}, {6.1e-5, 0x03ff},
	} {
		if got := F32ToF16(c.f); got != c.want {
			t.Errorf("F32ToF16(%g) = %#04x, want %#04x", c.f, got, c.want)
		}
	}
	if got := F16ToF32(F32ToF16(float32(math.NaN()))); !math.IsNaN(float64(got)) {
		t.Errorf("NaN round trip gave %g", got)
	}
}

// TestToF16 checks the slice conversion against F32ToF16 on every kernel
// set: floats with every exponent (so halves' normals, subnormals, zero
// and overflow) and random mantissas, at lengths on and off the assembly's
// eight; a NaN must stay a NaN.
func TestToF16(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	src := make([]float32, 0, 1<<17)
	for e := range uint32(256) {
		for range 256 {
			src = append(src, math.Float32frombits(r.Uint32()&0x807fffff|e<<23))
		}
	}
	src = append(src, 0.5+0x1p-12, 1+0x1p-11, 65504, 65520, 0x1p-25, 0x1.8p-25) // ties and bounds
	forEachImpl(t, func(t *testing.T) {
		for _, n := range []int{len(src), 7, 8, 13} {
			dst := make([]uint16, n+1)
			dst[n] = 0xabcd
			ToF16(dst, src[:n])
			for i, f := range src[:n] {
				want := F32ToF16(f)
				if f != f {
					if h := F16ToF32(dst[i]); h == h {
						t.Fatalf("ToF16(NaN %#08x) = %#04x, not a NaN", math.Float32bits(f), dst[i])
					}
					continue
				}
				if dst[i] != want {
					t.Fatalf("ToF16(%g = %#08x) = %#04x, want %#04x", f, math.Float32bits(f), dst[i], want)
				}
			}
			if dst[n] != 0xabcd {
				t.Fatalf("n=%d: wrote past the end", n)
			}
		}
	})
}

// packScalesK4 builds the 12 scale bytes of a q4_K/q5_K block from the
// layout ggml-common.h describes: bytes 0-3 hold scales 0-3 in their low
// 6 bits, bytes 4-7 mins 0-3; scales and mins 4-7 keep their low nibbles
// in bytes 8-11 (scale low, min high) and their top two bits in the top
// bits of bytes 0-3 (scales) and 4-7 (mins).
func packScalesK4(sc, mn [8]uint8) []byte {
	b := make([]byte, 12)
	for j := range 4 {
		b[j] = sc[j] | (sc[j+4]>>4)<<6
		b[j+4] = mn[j] | (mn[j+4]>>4)<<6
		b[j+8] = sc[j+4]&15 | (mn[j+4]&15)<<4
	}
	return b
}

type knownBlock struct {
	typ  gguf.Type
	data []byte
	want []float32
}

// knownBlocks builds one block of every type from its documented layout,
// with the values each element must decode to written out element by
// element (not block-structured like the decoder).
func knownBlocks() []knownBlock {
	r := rand.New(rand.NewPCG(1, 2))
	var out []knownBlock
	f32 := make([]byte, 8)
	put32(f32, math.Float32bits(1.5))
	put32(f32[4:], math.Float32bits(-2))
	out = append(out, knownBlock{gguf.TypeF32, f32, []float32{1.5, -2}})
	out = append(out, knownBlock{gguf.TypeF16, []byte{0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00}, []float32{1, -2, 0x1p-24}})
	out = append(out, knownBlock{gguf.TypeBF16, []byte{0x80, 0x3f, 0x40, 0xc0}, []float32{1, -3}})

	q8 := []byte{0x00, 0x38} // d = 0.5
	var q8w []float32
	for j := range 32 {
		q8 = append(q8, byte(int8(j*8-128)))
		q8w = append(q8w, 0.5*float32(j*8-128))
	}
	out = append(out, knownBlock{gguf.TypeQ8_0, q8, q8w})

	// nib(e): element e < 16 is the low nibble of qs[e], e ≥ 16 the high
	// nibble of qs[e−16]; qs[j] = j | (15−j)<<4 gives nib(e) = e or 31−e.
	nib := func(e int) int {
		if e < 16 {
			return e
		}
		return 31 - e
	}
	qs := make([]byte, 16)
	for j := range qs {
		qs[j] = byte(j) | byte(15-j)<<4
	}
	const qh = 0xf0f00f0f
	bit := func(e int) int { return qh >> e & 1 }
	qhb := []byte{0x0f, 0x0f, 0xf0, 0xf0}
	var q40, q41, q50, q51 []float32
	for e := range 32 {
		q40 = append(q40, 2*float32(nib(e)-8))
		q41 = append(q41, float32(nib(e))-1)
		q50 = append(q50, float32(nib(e)+16*bit(e)-16))
		q51 = append(q51, 0.5*float32(nib(e)+16*bit(e))+3)
	}
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	out = append(out,
		knownBlock{gguf.TypeQ4_0, cat([]byte{0x00, 0x40}, qs), q40},                  // d = 2
		knownBlock{gguf.TypeQ4_1, cat([]byte{0x00, 0x3c, 0x00, 0xbc}, qs), q41},      // d = 1, m = −1
		knownBlock{gguf.TypeQ5_0, cat([]byte{0x00, 0x3c}, qhb, qs), q50},             // d = 1
		knownBlock{gguf.TypeQ5_1, cat([]byte{0x00, 0x38, 0x00, 0x42}, qhb, qs), q51}, // d = 0.5, m = 3
	)

	// k-quants: scales and mins that exercise the 6-bit packing (values
	// above 15 for sub-blocks 4-7), random quants, element-wise expectations.
	sc := [8]uint8{1, 2, 3, 63, 17, 33, 50, 16}
	mn := [8]uint8{0, 1, 62, 3, 20, 40, 60, 5}
	const d, dmin = 0.25, 0.5 // f16 0x3400, 0x3800
	kqs := make([]byte, 128)
	kqh := make([]byte, 32)
	for i := range kqs {
		kqs[i] = byte(r.Uint32())
	}
	for i := range kqh {
		kqh[i] = byte(r.Uint32())
	}
	var q4k, q5k []float32
	for e := range 256 {
		g, in, j, l := e/64, e%64, e/32, e%32
		n := int(kqs[32*g+l] & 15)
		if in >= 32 {
			n = int(kqs[32*g+l] >> 4)
		}
		q4k = append(q4k, d*float32(sc[j])*float32(n)-dmin*float32(mn[j]))
		h := int(kqh[l]>>j) & 1 // sub-block j takes bit j of qh[l]
		q5k = append(q5k, d*float32(sc[j])*float32(n+16*h)-dmin*float32(mn[j]))
	}
	hdr := []byte{0x00, 0x34, 0x00, 0x38}
	out = append(out,
		knownBlock{gguf.TypeQ4_K, cat(hdr, packScalesK4(sc, mn), kqs), q4k},
		knownBlock{gguf.TypeQ5_K, cat(hdr, packScalesK4(sc, mn), kqh, kqs), q5k})

	// q6_K: element e is in half n = e/128, quarter k = r/32 of it
	// (r = e%128), lane l = r%32. Its low four bits are in ql[64n+l+32(k%2)]
	// (low nibble for k < 2), its top two in bits 2k,2k+1 of qh[32n+l]; its
	// scale is the int8 scales[e/16].
	ql, qh6, s6 := make([]byte, 128), make([]byte, 64), make([]byte, 16)
	for i := range ql {
		ql[i] = byte(r.Uint32())
	}
	for i := range qh6 {
		qh6[i] = byte(r.Uint32())
	}
	for i := range s6 {
		s6[i] = byte(int8(i*17 - 128))
	}
	var q6k []float32
	for e := range 256 {
		n, rr := e/128, e%128
		k, l := rr/32, rr%32
		lo := int(ql[64*n+l+32*(k%2)])
		if k < 2 {
			lo &= 15
		} else {
			lo >>= 4
		}
		hi := int(qh6[32*n+l]>>(2*k)) & 3
		q6k = append(q6k, 0.25*float32(int8(s6[e/16]))*float32(lo|hi<<4-32))
	}
	out = append(out, knownBlock{gguf.TypeQ6_K, cat(ql, qh6, s6, []byte{0x00, 0x34}), q6k})
	return out
}

func TestDequantizeKnownBlocks(t *testing.T) {
	for _, kb := range knownBlocks() {
		t.Run(kb.typ.String(), func(t *testing.T) {
			if n, _ := RowSize(kb.typ, len(kb.want)); n != len(kb.data) {
				t.Fatalf("test block is %d bytes, RowSize says %d", len(kb.data), n)
			}
			got := make([]float32, len(kb.want))
			if err := Dequantize(got, kb.data, kb.typ); err != nil {
				t.Fatal(err)
			}
			// Exact: every expected value is a product of a few small
			// integers and powers of two, representable in float32.
			for i := range got {
				if got[i] != kb.want[i] {
					t.Fatalf("element %d: got %g, want %g", i, got[i], kb.want[i])
				}
			}
		})
	}
	// Spot values a reader can check by hand against the layouts.
	blocks := knownBlocks()
	for _, c := range []struct {
		typ  gguf.Type
		i    int
		want float32
	}{
		{gguf.TypeQ4_0, 0, -16}, {gguf.TypeQ4_0, 31, -16}, {gguf.TypeQ5_0, 0, 0}, {gguf.TypeQ5_0, 4, -12},
		{gguf.TypeQ4_K, 4*32 + 1, 0.25*17*float32(blocks[8].data[16+64+1]&15) - 0.5*20},
	} {
		for _, kb := range blocks {
			if kb.typ == c.typ && kb.want[c.i] != c.want {
				t.Errorf("%v element %d: table says %g, hand value %g", c.typ, c.i, kb.want[c.i], c.want)
			}
		}
	}
}

func TestDequantizeErrors(t *testing.T) {
	err := Dequantize(make([]float32, 32), make([]byte, 32), gguf.TypeIQ2_XXS)
	if !errors.Is(err, ErrUnsupported) {
		t.Errorf("Dequantize(IQ2_XXS) = %v, want ErrUnsupported", err)
	}
	if err := Quantize(make([]byte, 34), make([]float32, 32), gguf.TypeQ2_K); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Quantize(Q2_K) = %v, want ErrUnsupported", err)
	}
	if _, err := RowSize(gguf.TypeQ4_K, 100); err == nil {
		t.Error("RowSize(Q4_K, 100) succeeded, want an error (not a whole block)")
	}
}

// TestQuantizeGGMLReference checks the bytes of q8_0 and q4_0 on inputs
// whose ggml encoding can be worked out by hand.
func TestQuantizeGGMLReference(t *testing.T) {
	x := make([]float32, 32)
	for j := range x {
		x[j] = float32(j - 16)
	}
	q8 := make([]byte, 34)
	if err := Quantize(q8, x, gguf.TypeQ8_0); err != nil {
		t.Fatal(err)
	}
	// d = 16/127 → f16 0x3008; id = 127/16 = 7.9375; q = roundf(x·id),
	// half away from zero: x = −8 → −63.5 → −64, x = 15 → 119.0625 → 119.
	for _, c := range []struct {
		i    int
		want byte
	}{{0, 0x08}, {1, 0x30}, {2, byte(0x81)}, {2 + 8, byte(0xc0)}, {2 + 16, 0}, {2 + 24, 64}, {2 + 31, 119}} {
		if q8[c.i] != c.want {
			t.Errorf("q8_0 byte %d = %#02x, want %#02x", c.i, q8[c.i], c.want)
		}
	}

	// q4_0: the largest magnitude is −8 at j = 0, so d = −8/−8 = 1 and
	// nibble = trunc(x + 8.5): x[j] = j−8 → j, x[16+j] = 7−j → 15−j.
	for j := range 16 {
		x[j], x[16+j] = float32(j-8), float32(7-j)
	}
	q4 := make([]byte, 18)
	if err := Quantize(q4, x, gguf.TypeQ4_0); err != nil {
		t.Fatal(err)
	}
	want := []byte{0x00, 0x3c}
	for j := range 16 {
		want = append(want, byte(j)|byte(15-j)<<4)
	}
	if string(q4) != string(want) {
		t.Errorf("q4_0 = % x, want % x", q4, want)
	}
	// A positive extreme: max = 8 gives d = −1, and x = 8 maps to
	// trunc(−8 + 8.5) = 0; x = −8 would map to 16, clipped to 15.
	for j := range 32 {
		x[j] = 0
	}
	x[0], x[1] = 8, -8
	if err := Quantize(q4, x, gguf.TypeQ4_0); err != nil {
		t.Fatal(err)
	}
	if q4[0] != 0x00 || q4[1] != 0xbc || q4[2] != 0x00|8<<4 || q4[3] != 15|8<<4 {
		t.Errorf("q4_0 of ±8 = % x, want d=0xbc00, nibbles 0, 15", q4[:4])
	}
}

// TestQuantizeRoundTrip quantizes Gaussian data and bounds every
// element's error by what the format can promise; see each case.
func TestQuantizeRoundTrip(t *testing.T) {
	const h = 1.0 / 2048 // relative rounding of an f16 scale
	r := rand.New(rand.NewPCG(3, 4))
	x := randomVec(r, 4096)
	for i := range 64 { // some blocks of one sign, some tiny, one zero block
		x[i] = abs32(x[i]) + 0.5
		x[64+i] *= 1e-3
		x[128+i] = 0
	}
	blockAmax := func(b []float32) (amax, lo, hi float32) {
		lo, hi = minMax(b)
		return max(abs32(lo), abs32(hi)), lo, hi
	}
	cases := []struct {
		typ gguf.Type
		// bound returns the allowed error for element i of block b.
		bound func(b []float32, i int) float32
	}{
		{gguf.TypeF32, func([]float32, int) float32 { return 0 }},
		// Nearest f16: half an ulp, 2⁻¹¹ relative (no subnormals here but
		// the tiny block, covered by the absolute 2⁻²⁵).
		{gguf.TypeF16, func(b []float32, i int) float32 { return abs32(b[i])*h + 0x1p-25 }},
		// d = amax/127, q = round(x/d): half a step, plus 127 steps of the
		// f16 rounding of d.
		{gguf.TypeQ8_0, func(b []float32, _ int) float32 { a, _, _ := blockAmax(b); return a / 127 * (0.5 + 127*h) }},
		// |d| = amax/8 and the values span −8..7: the extreme of the
		// other sign can clip by up to a whole step.
		{gguf.TypeQ4_0, func(b []float32, _ int) float32 { a, _, _ := blockAmax(b); return a / 8 * (1 + 16*h) }},
		{gguf.TypeQ5_0, func(b []float32, _ int) float32 { a, _, _ := blockAmax(b); return a / 16 * (1 + 32*h) }},
		// d = (max−min)/15, m = min: half a step, plus f16 rounding of d
		// (15 steps) and of m.
		{gguf.TypeQ4_1, func(b []float32, _ int) float32 {
			_, lo, hi := blockAmax(b)
			return (hi-lo)/15*(0.5+16*h) + abs32(lo)*h
		}},
		{gguf.TypeQ5_1, func(b []float32, _ int) float32 {
			_, lo, hi := blockAmax(b)
			return (hi-lo)/31*(0.5+32*h) + abs32(lo)*h
		}},
	}
	for _, c := range cases {
		t.Run(c.typ.String(), func(t *testing.T) {
			got := roundTrip(t, c.typ, x)
			bs := int(c.typ.BlockSize())
			if bs == 1 {
				bs = 32
			}
			for i := range x {
				b := x[i/bs*bs : i/bs*bs+bs]
				if e := abs32(got[i] - x[i]); e > c.bound(b, i%bs)*1.0001+1e-12 {
					t.Fatalf("element %d: %g → %g, error %g > bound %g", i, x[i], got[i], e, c.bound(b, i%bs))
				}
			}
		})
	}
	t.Run("Q4_K", func(t *testing.T) {
		// ggml's least-squares fit may trade a clipped extreme for a finer
		// step, so the bound is a whole step of the sub-block's range
		// (hi − min(lo, 0))/15 plus dmin (the 6-bit rounding of the min),
		// well below what a layout or scale mix-up produces; the RMS check
		// below holds the average to what 4.5 bits give.
		q := make([]byte, 144*len(x)/qkK)
		if err := Quantize(q, x, gguf.TypeQ4_K); err != nil {
			t.Fatal(err)
		}
		got := make([]float32, len(x))
		if err := Dequantize(got, q, gguf.TypeQ4_K); err != nil {
			t.Fatal(err)
		}
		for i := range x {
			blk := q[i/qkK*144:]
			_, lo, hi := blockAmax(x[i/32*32 : i/32*32+32])
			bound := (hi-min(lo, 0))/15 + f16At(blk[2:]) + 1e-6
			if e := abs32(got[i] - x[i]); e > bound {
				t.Fatalf("element %d: %g → %g, error %g > bound %g", i, x[i], got[i], e, bound)
			}
		}
		checkRMS(t, x, got, 0.085)
	})
	t.Run("Q6_K", func(t *testing.T) {
		// Each 16 elements: the exact scale maps the group's extreme to
		// −32, so one step is amax/32; the int8 scale times d is within
		// d/2 of it, which moves a value of |q| ≤ 32 by up to 16·d.
		got := roundTrip(t, gguf.TypeQ6_K, x)
		q := make([]byte, 210*len(x)/qkK)
		_ = Quantize(q, x, gguf.TypeQ6_K)
		for i := range x {
			d := abs32(f16At(q[i/qkK*210+208:]))
			a, _, _ := blockAmax(x[i/16*16 : i/16*16+16])
			bound := a/32 + 16*d + 1e-12
			if e := abs32(got[i] - x[i]); e > bound {
				t.Fatalf("element %d: %g → %g, error %g > bound %g", i, x[i], got[i], e, bound)
			}
		}
		checkRMS(t, x, got, 0.04)
	})
}

func roundTrip(t *testing.T, typ gguf.Type, x []float32) []float32 {
	t.Helper()
	n, err := RowSize(typ, len(x))
	if err != nil {
		t.Fatal(err)
	}
	q := make([]byte, n)
	if err := Quantize(q, x, typ); err != nil {
		t.Fatal(err)
	}
	got := make([]float32, len(x))
	if err := Dequantize(got, q, typ); err != nil {
		t.Fatal(err)
	}
	return got
}

// checkRMS fails if the RMS error exceeds frac of the RMS signal: a
// quality check on top of the per-element bounds (4 bits over ±2.5σ is
// about 0.1σ of rounding noise, 6 bits about 0.02σ).
func checkRMS(t *testing.T, x, got []float32, frac float64) {
	t.Helper()
	var se, ss float64
	for i := range x {
		se += float64((got[i] - x[i]) * (got[i] - x[i]))
		ss += float64(x[i] * x[i])
	}
	if rel := math.Sqrt(se / ss); rel > frac {
		t.Errorf("RMS error %.4f of signal, want ≤ %.2f", rel, frac)
	}
}

// FuzzDequantize feeds arbitrary bytes as blocks of every type: decoding
// must not panic, and the float results are whatever the bits say.
func FuzzDequantize(f *testing.F) {
	f.Add([]byte{0x00, 0x3c, 1, 2, 3})
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, typ := range append(allTypes, gguf.TypeQ8_K) {
			ts, bs := int(typ.TypeSize()), int(typ.BlockSize())
			nb := len(data) / ts
			dst := make([]float32, nb*bs)
			if err := Dequantize(dst, data[:nb*ts], typ); err != nil {
				t.Fatal(err)
			}
		}
	})
}
