package kernels

import (
	"math"
	"unsafe"
)

// The portable kernels. Each computes the dot product of one weight row
// (ggml bytes) with one quantized activation vector. They are the
// reference the assembly is tested against and the only kernels on
// arm64 and riscv64, so they avoid bounds checks in the inner loops by
// re-slicing to constant lengths.

func dotQ8_0Generic(w []byte, x *q8Vec) float32 {
	nb := len(x.d)
	w, qs := w[:nb*34], x.qs[:nb*32]
	var sum float32
	for b := range nb {
		blk, q := w[b*34:b*34+34:b*34+34], qs[b*32:b*32+32:b*32+32]
		var s0, s1 int32
		for j := 0; j < 32; j += 2 {
			s0 += int32(int8(blk[2+j])) * int32(q[j])
			s1 += int32(int8(blk[3+j])) * int32(q[j+1])
		}
		sum += f16At(blk) * x.d[b] * float32(s0+s1)
	}
	return sum
}

func dotQ4_0Generic(w []byte, x *q8Vec) float32 {
	nb := len(x.d)
	w, qs := w[:nb*18], x.qs[:nb*32]
	var sum float32
	for b := range nb {
		blk, q := w[b*18:b*18+18:b*18+18], qs[b*32:b*32+32:b*32+32]
		var s0, s1 int32
		for j := range 16 {
			v := blk[2+j]
			s0 += (int32(v&15) - 8) * int32(q[j])
			s1 += (int32(v>>4) - 8) * int32(q[j+16])
		}
		sum += f16At(blk) * x.d[b] * float32(s0+s1)
	}
	return sum
}

func dotQ4_1Generic(w []byte, x *q8Vec) float32 {
	nb := len(x.d)
	w, qs := w[:nb*20], x.qs[:nb*32]
	var sum float32
	for b := range nb {
		blk, q := w[b*20:b*20+20:b*20+20], qs[b*32:b*32+32:b*32+32]
		var s0, s1 int32
		for j := range 16 {
			v := blk[4+j]
			s0 += int32(v&15) * int32(q[j])
			s1 += int32(v>>4) * int32(q[j+16])
		}
		sum += f16At(blk)*x.d[b]*float32(s0+s1) + f16At(blk[2:])*x.s[b]
	}
	return sum
}

func dotQ5_0Generic(w []byte, x *q8Vec) float32 {
	nb := len(x.d)
	w, qs := w[:nb*22], x.qs[:nb*32]
	var sum float32
	for b := range nb {
		blk, q := w[b*22:b*22+22:b*22+22], qs[b*32:b*32+32:b*32+32]
		qh := uint32(blk[2]) | uint32(blk[3])<<8 | uint32(blk[4])<<16 | uint32(blk[5])<<24
		var s0, s1 int32
		for j := range 16 {
			v := uint32(blk[6+j])
			s0 += (int32(v&15|(qh>>j<<4)&0x10) - 16) * int32(q[j])
			s1 += (int32(v>>4|(qh>>(j+12))&0x10) - 16) * int32(q[j+16])
		}
		sum += f16At(blk) * x.d[b] * float32(s0+s1)
	}
	return sum
}

func dotQ5_1Generic(w []byte, x *q8Vec) float32 {
	nb := len(x.d)
	w, qs := w[:nb*24], x.qs[:nb*32]
	var sum float32
	for b := range nb {
		blk, q := w[b*24:b*24+24:b*24+24], qs[b*32:b*32+32:b*32+32]
		qh := uint32(blk[4]) | uint32(blk[5])<<8 | uint32(blk[6])<<16 | uint32(blk[7])<<24
		var s0, s1 int32
		for j := range 16 {
			v := uint32(blk[8+j])
			s0 += int32(v&15|(qh>>j<<4)&0x10) * int32(q[j])
			s1 += int32(v>>4|(qh>>(j+12))&0x10) * int32(q[j+16])
		}
		sum += f16At(blk)*x.d[b]*float32(s0+s1) + f16At(blk[2:])*x.s[b]
	}
	return sum
}

// kMinSum is Σ_j mins[j]·(Σq8 over sub-block j), the part of a q4_K/q5_K
// product that the mins contribute.
func kMinSum(mn *[8]uint8, bs []int16) int32 {
	bs = bs[:16]
	var s int32
	for j := range 8 {
		s += int32(mn[j]) * (int32(bs[2*j]) + int32(bs[2*j+1]))
	}
	return s
}

func dotQ4KGeneric(w []byte, x *q8KVec) float32 {
	nb := len(x.d)
	w, qs := w[:nb*144], x.qs[:nb*qkK]
	var sum float32
	for b := range nb {
		blk, q8 := w[b*144:b*144+144:b*144+144], qs[b*qkK:b*qkK+qkK:b*qkK+qkK]
		sc, mn := unpackScalesK4(blk[4:16])
		var isum int32
		for g := range 4 {
			q, a, c := blk[16+32*g:48+32*g:48+32*g], q8[64*g:64*g+32:64*g+32], q8[64*g+32:64*g+64:64*g+64]
			var s1, s2 int32
			for l := range 32 {
				s1 += int32(q[l]&15) * int32(a[l])
				s2 += int32(q[l]>>4) * int32(c[l])
			}
			isum += int32(sc[2*g])*s1 + int32(sc[2*g+1])*s2
		}
		msum := kMinSum(&mn, x.bsums[b*16:b*16+16])
		sum += x.d[b] * (f16At(blk)*float32(isum) - f16At(blk[2:])*float32(msum))
	}
	return sum
}

func dotQ5KGeneric(w []byte, x *q8KVec) float32 {
	nb := len(x.d)
	w, qs := w[:nb*176], x.qs[:nb*qkK]
	var sum float32
	for b := range nb {
		blk, q8 := w[b*176:b*176+176:b*176+176], qs[b*qkK:b*qkK+qkK:b*qkK+qkK]
		sc, mn := unpackScalesK4(blk[4:16])
		qh := blk[16:48:48]
		var isum int32
		for g := range 4 {
			q, a, c := blk[48+32*g:80+32*g:80+32*g], q8[64*g:64*g+32:64*g+32], q8[64*g+32:64*g+64:64*g+64]
			var s1, s2 int32
			for l := range 32 {
				h := qh[l] >> (2 * g)
				s1 += int32(q[l]&15|(h&1)<<4) * int32(a[l])
				s2 += int32(q[l]>>4|(h&2)<<3) * int32(c[l])
			}
			isum += int32(sc[2*g])*s1 + int32(sc[2*g+1])*s2
		}
		msum := kMinSum(&mn, x.bsums[b*16:b*16+16])
		sum += x.d[b] * (f16At(blk)*float32(isum) - f16At(blk[2:])*float32(msum))
	}
	return sum
}

func dotQ6KGeneric(w []byte, x *q8KVec) float32 {
	nb := len(x.d)
	w, qs := w[:nb*210], x.qs[:nb*qkK]
	var sum float32
	for b := range nb {
		blk, q8 := w[b*210:b*210+210:b*210+210], qs[b*qkK:b*qkK+qkK:b*qkK+qkK]
		sc := blk[192:208:208]
		var isum int32
		for n := range 2 {
			ql, qh, a := blk[64*n:64*n+64:64*n+64], blk[128+32*n:160+32*n:160+32*n], q8[128*n:128*n+128:128*n+128]
			for h := range 2 { // the two 16-element halves of each 32
				var s1, s2, s3, s4 int32
				for l := 16 * h; l < 16*h+16; l++ {
					s1 += (int32(ql[l]&15|(qh[l]&3)<<4) - 32) * int32(a[l])
					s2 += (int32(ql[l+32]&15|(qh[l]>>2&3)<<4) - 32) * int32(a[l+32])
					s3 += (int32(ql[l]>>4|(qh[l]>>4&3)<<4) - 32) * int32(a[l+64])
					s4 += (int32(ql[l+32]>>4|(qh[l]>>6&3)<<4) - 32) * int32(a[l+96])
				}
				s := sc[8*n+h:]
				isum += int32(int8(s[0]))*s1 + int32(int8(s[2]))*s2 + int32(int8(s[4]))*s3 + int32(int8(s[6]))*s4
			}
		}
		sum += x.d[b] * f16At(blk[208:]) * float32(isum)
	}
	return sum
}

// f32Row views a little-endian f32 row as []float32 without copying. Rows
// from a GGUF mapping are 32-byte aligned; an unaligned row is copied so
// that strict-alignment CPUs never see a misaligned load.
func f32Row(w []byte, n int) []float32 {
	w = w[:4*n]
	if n == 0 {
		return nil
	}
	if uintptr(unsafe.Pointer(&w[0]))%4 == 0 {
		return unsafe.Slice((*float32)(unsafe.Pointer(&w[0])), n)
	}
	f := make([]float32, n)
	for i := range f {
		b := w[4*i : 4*i+4 : 4*i+4]
		f[i] = math.Float32frombits(uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24)
	}
	return f
}

func dotF32Generic(w []byte, x []float32) float32 {
	return dotF32s(f32Row(w, len(x)), x)
}

// dotF32s sums with four accumulators so the additions overlap.
func dotF32s(a, x []float32) float32 {
	x = x[:len(a)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(a); i += 4 {
		a4, x4 := a[i:i+4:i+4], x[i:i+4:i+4]
		s0 += a4[0] * x4[0]
		s1 += a4[1] * x4[1]
		s2 += a4[2] * x4[2]
		s3 += a4[3] * x4[3]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * x[i]
	}
	return (s0 + s1) + (s2 + s3)
}

func dotF16Generic(w []byte, x []float32) float32 {
	n := len(x)
	w = w[:2*n]
	tab := f16Table()
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= n; i += 4 {
		b, x4 := w[2*i:2*i+8:2*i+8], x[i:i+4:i+4]
		s0 += tab[uint16(b[0])|uint16(b[1])<<8] * x4[0]
		s1 += tab[uint16(b[2])|uint16(b[3])<<8] * x4[1]
		s2 += tab[uint16(b[4])|uint16(b[5])<<8] * x4[2]
		s3 += tab[uint16(b[6])|uint16(b[7])<<8] * x4[3]
	}
	for ; i < n; i++ {
		s0 += tab[le16(w[2*i:])] * x[i]
	}
	return (s0 + s1) + (s2 + s3)
}

func dotBF16Generic(w []byte, x []float32) float32 {
	n := len(x)
	w = w[:2*n]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= n; i += 4 {
		b, x4 := w[2*i:2*i+8:2*i+8], x[i:i+4:i+4]
		s0 += math.Float32frombits(uint32(b[0])<<16|uint32(b[1])<<24) * x4[0]
		s1 += math.Float32frombits(uint32(b[2])<<16|uint32(b[3])<<24) * x4[1]
		s2 += math.Float32frombits(uint32(b[4])<<16|uint32(b[5])<<24) * x4[2]
		s3 += math.Float32frombits(uint32(b[6])<<16|uint32(b[7])<<24) * x4[3]
	}
	for ; i < n; i++ {
		s0 += BF16ToF32(le16(w[2*i:])) * x[i]
	}
	return (s0 + s1) + (s2 + s3)
}
