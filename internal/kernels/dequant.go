package kernels

import (
	"errors"
	"fmt"
	"math"

	"github.com/npumesh/npumesh/internal/gguf"
)

// ErrUnsupported is returned for a tensor type this package cannot decode
// or encode. The caller should name the tensor and suggest requantizing the
// model to a supported type (f16, q8_0, q4_0, q4_K, ...).
var ErrUnsupported = errors.New("kernels: unsupported tensor type")

// qkK is ggml's QK_K, the super-block size of the k-quants.
const qkK = 256

// RowSize returns the number of bytes of a row of cols elements of typ,
// or an error if typ is unsupported or cols is not a whole number of blocks.
func RowSize(typ gguf.Type, cols int) (int, error) {
	if !canDequantize(typ) {
		return 0, fmt.Errorf("%w: %v", ErrUnsupported, typ)
	}
	bs := int(typ.BlockSize())
	if cols < 0 || cols%bs != 0 {
		return 0, fmt.Errorf("kernels: %d elements of %v is not a whole number of %d-element blocks", cols, typ, bs)
	}
	return cols / bs * int(typ.TypeSize()), nil
}

func canDequantize(typ gguf.Type) bool {
	switch typ {
	case gguf.TypeF32, gguf.TypeF16, gguf.TypeBF16, gguf.TypeQ8_0, gguf.TypeQ4_0, gguf.TypeQ4_1,
		gguf.TypeQ5_0, gguf.TypeQ5_1, gguf.TypeQ4_K, gguf.TypeQ5_K, gguf.TypeQ6_K, gguf.TypeQ8_K:
		return true
	}
	return false
}

// rowBytes is RowSize for callers that have already validated typ; it
// panics with the caller's name on a bad length.
func rowBytes(fn string, typ gguf.Type, cols int) int {
	n, err := RowSize(typ, cols)
	if err != nil {
		panic(fmt.Sprintf("kernels.%s: %v", fn, err))
	}
	return n
}

// Dequantize decodes src, len(dst) elements of type typ stored as ggml
// does, into dst. It returns ErrUnsupported (wrapped) for a type it cannot
// decode; it panics if len(dst) is not a whole number of blocks or src is
// not exactly that many blocks long.
func Dequantize(dst []float32, src []byte, typ gguf.Type) error {
	if !canDequantize(typ) {
		return fmt.Errorf("dequantize: %w: %v", ErrUnsupported, typ)
	}
	if want := rowBytes("Dequantize", typ, len(dst)); len(src) != want {
		panic(fmt.Sprintf("kernels.Dequantize: %d %v elements need %d bytes, got %d", len(dst), typ, want, len(src)))
	}
	switch typ {
	case gguf.TypeF32:
		for i := range dst {
			b := src[4*i : 4*i+4 : 4*i+4]
			dst[i] = math.Float32frombits(uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24)
		}
	case gguf.TypeF16:
		tab := f16Table()
		for i := range dst {
			dst[i] = tab[le16(src[2*i:])]
		}
	case gguf.TypeBF16:
		for i := range dst {
			dst[i] = BF16ToF32(le16(src[2*i:]))
		}
	case gguf.TypeQ8_0:
		for b := 0; b*32 < len(dst); b++ {
			blk, y := src[b*34:b*34+34:b*34+34], dst[b*32:b*32+32:b*32+32]
			d := f16At(blk)
			for j := range 32 {
				y[j] = d * float32(int8(blk[2+j]))
			}
		}
	case gguf.TypeQ4_0:
		for b := 0; b*32 < len(dst); b++ {
			blk, y := src[b*18:b*18+18:b*18+18], dst[b*32:b*32+32:b*32+32]
			d := f16At(blk)
			for j := range 16 {
				v := blk[2+j]
				y[j] = d * float32(int(v&15)-8)
				y[j+16] = d * float32(int(v>>4)-8)
			}
		}
	case gguf.TypeQ4_1:
		for b := 0; b*32 < len(dst); b++ {
			blk, y := src[b*20:b*20+20:b*20+20], dst[b*32:b*32+32:b*32+32]
			d, m := f16At(blk), f16At(blk[2:])
			for j := range 16 {
				v := blk[4+j]
				y[j] = d*float32(v&15) + m
				y[j+16] = d*float32(v>>4) + m
			}
		}
	case gguf.TypeQ5_0:
		for b := 0; b*32 < len(dst); b++ {
			blk, y := src[b*22:b*22+22:b*22+22], dst[b*32:b*32+32:b*32+32]
			d := f16At(blk)
			qh := uint32(blk[2]) | uint32(blk[3])<<8 | uint32(blk[4])<<16 | uint32(blk[5])<<24
			for j := range 16 {
				v := blk[6+j]
				h0 := byte(qh>>j<<4) & 0x10
				h1 := byte(qh>>(j+12)) & 0x10
				y[j] = d * float32(int(v&15|h0)-16)
				y[j+16] = d * float32(int(v>>4|h1)-16)
			}
		}
	case gguf.TypeQ5_1:
		for b := 0; b*32 < len(dst); b++ {
			blk, y := src[b*24:b*24+24:b*24+24], dst[b*32:b*32+32:b*32+32]
			d, m := f16At(blk), f16At(blk[2:])
			qh := uint32(blk[4]) | uint32(blk[5])<<8 | uint32(blk[6])<<16 | uint32(blk[7])<<24
			for j := range 16 {
				v := blk[8+j]
				h0 := byte(qh>>j<<4) & 0x10
				h1 := byte(qh>>(j+12)) & 0x10
				y[j] = d*float32(v&15|h0) + m
				y[j+16] = d*float32(v>>4|h1) + m
			}
		}
	case gguf.TypeQ4_K:
		for b := 0; b*qkK < len(dst); b++ {
			dequantQ4K(dst[b*qkK:b*qkK+qkK:b*qkK+qkK], src[b*144:b*144+144:b*144+144])
		}
	case gguf.TypeQ5_K:
		for b := 0; b*qkK < len(dst); b++ {
			dequantQ5K(dst[b*qkK:b*qkK+qkK:b*qkK+qkK], src[b*176:b*176+176:b*176+176])
		}
	case gguf.TypeQ6_K:
		for b := 0; b*qkK < len(dst); b++ {
			dequantQ6K(dst[b*qkK:b*qkK+qkK:b*qkK+qkK], src[b*210:b*210+210:b*210+210])
		}
	case gguf.TypeQ8_K:
		for b := 0; b*qkK < len(dst); b++ {
			blk, y := src[b*292:b*292+292:b*292+292], dst[b*qkK:b*qkK+qkK:b*qkK+qkK]
			d := math.Float32frombits(uint32(blk[0]) | uint32(blk[1])<<8 | uint32(blk[2])<<16 | uint32(blk[3])<<24)
			for j := range qkK {
				y[j] = d * float32(int8(blk[4+j]))
			}
		}
	}
	return nil
}

// scaleMinK4 unpacks the j-th 6-bit scale and min of a q4_K/q5_K block's
// 12 scale bytes (ggml's get_scale_min_k4).
func scaleMinK4(j int, q []byte) (sc, m uint8) {
	q = q[:12]
	if j < 4 {
		return q[j] & 63, q[j+4] & 63
	}
	return q[j+4]&0xf | (q[j-4]>>6)<<4, q[j+4]>>4 | (q[j]>>6)<<4
}

// unpackScalesK4 returns the eight scales and eight mins of a q4_K/q5_K
// block at once.
func unpackScalesK4(q []byte) (sc, m [8]uint8) {
	q = q[:12]
	for j := range 4 {
		sc[j] = q[j] & 63
		m[j] = q[j+4] & 63
		sc[j+4] = q[j+8]&0xf | (q[j]>>6)<<4
		m[j+4] = q[j+8]>>4 | (q[j+4]>>6)<<4
	}
	return sc, m
}

// block_q4_K: d f16, dmin f16, scales[12], qs[128]. Each 64 elements share
// 32 bytes of qs: the low nibbles are the first 32, the high nibbles the next.
func dequantQ4K(y []float32, blk []byte) {
	y, blk = y[:qkK], blk[:144]
	d, dmin := f16At(blk), f16At(blk[2:])
	sc, mn := unpackScalesK4(blk[4:16])
	q := blk[16:144]
	for g := range 4 {
		d1, m1 := d*float32(sc[2*g]), dmin*float32(mn[2*g])
		d2, m2 := d*float32(sc[2*g+1]), dmin*float32(mn[2*g+1])
		qq, yy := q[32*g:32*g+32], y[64*g:64*g+64]
		for l := range 32 {
			yy[l] = d1*float32(qq[l]&0xf) - m1
			yy[l+32] = d2*float32(qq[l]>>4) - m2
		}
	}
}

// block_q5_K: d, dmin, scales[12], qh[32], qs[128]; bit 2g (2g+1) of qh[l]
// is the fifth bit of element 64g+l (64g+32+l).
func dequantQ5K(y []float32, blk []byte) {
	y, blk = y[:qkK], blk[:176]
	d, dmin := f16At(blk), f16At(blk[2:])
	sc, mn := unpackScalesK4(blk[4:16])
	qh, q := blk[16:48], blk[48:176]
	for g := range 4 {
		d1, m1 := d*float32(sc[2*g]), dmin*float32(mn[2*g])
		d2, m2 := d*float32(sc[2*g+1]), dmin*float32(mn[2*g+1])
		qq, yy := q[32*g:32*g+32], y[64*g:64*g+64]
		for l := range 32 {
			h := qh[l] >> (2 * g)
			yy[l] = d1*float32(qq[l]&0xf|(h&1)<<4) - m1
			yy[l+32] = d2*float32(qq[l]>>4|(h&2)<<3) - m2
		}
	}
}

// block_q6_K: ql[128], qh[64], scales[16] int8, d f16; 16 elements share a
// scale, values are 6-bit minus 32.
func dequantQ6K(y []float32, blk []byte) {
	y, blk = y[:qkK], blk[:210]
	d := f16At(blk[208:])
	for n := range 2 {
		ql, qh, sc, yy := blk[64*n:64*n+64], blk[128+32*n:128+32*n+32], blk[192+8*n:192+8*n+8], y[128*n:128*n+128]
		for l := range 32 {
			is := l / 16
			q1 := int(ql[l]&0xf|(qh[l]&3)<<4) - 32
			q2 := int(ql[l+32]&0xf|(qh[l]>>2&3)<<4) - 32
			q3 := int(ql[l]>>4|(qh[l]>>4&3)<<4) - 32
			q4 := int(ql[l+32]>>4|(qh[l]>>6&3)<<4) - 32
			yy[l] = d * float32(int8(sc[is])) * float32(q1)
			yy[l+32] = d * float32(int8(sc[is+2])) * float32(q2)
			yy[l+64] = d * float32(int8(sc[is+4])) * float32(q3)
			yy[l+96] = d * float32(int8(sc[is+6])) * float32(q4)
		}
	}
}
