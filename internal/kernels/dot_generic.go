package kernels

import (
	"encoding/binary"
	"math"
	"unsafe"
)

// The portable kernels. Each computes the dot product of one weight row
// (ggml bytes) with one quantized activation vector. They are the
// reference the assembly is tested against and the only kernels on
// arm64 and riscv64, so they avoid bounds checks in the inner loops by
// re-slicing to constant lengths.

// The integer kernels work on eight bytes at a time packed in a uint64:
// the compiler keeps that in registers, where byte indexing made it spill
// the accumulators. dot4u and dot4s are small enough to be inlined.

// dot4u returns Σ a_i·c_i over the low four bytes, a's unsigned, c's signed.
func dot4u(a, c uint64) int32 {
	return int32(uint8(a))*int32(int8(c)) + int32(uint8(a>>8))*int32(int8(c>>8)) +
		int32(uint8(a>>16))*int32(int8(c>>16)) + int32(uint8(a>>24))*int32(int8(c>>24))
}

// dot4s is dot4u with a's bytes signed too.
func dot4s(a, c uint64) int32 {
	return int32(int8(a))*int32(int8(c)) + int32(int8(a>>8))*int32(int8(c>>8)) +
		int32(int8(a>>16))*int32(int8(c>>16)) + int32(int8(a>>24))*int32(int8(c>>24))
}

func le64(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }

// i8le64 reads eight int8 activations as one little-endian word (the
// compiler turns it into a single load).
func i8le64(q []int8) uint64 {
	q = q[:8]
	return uint64(uint8(q[0])) | uint64(uint8(q[1]))<<8 | uint64(uint8(q[2]))<<16 | uint64(uint8(q[3]))<<24 |
		uint64(uint8(q[4]))<<32 | uint64(uint8(q[5]))<<40 | uint64(uint8(q[6]))<<48 | uint64(uint8(q[7]))<<56
}

const (
	nib  = 0x0f0f0f0f0f0f0f0f
	two  = 0x0303030303030303
	bit4 = 0x1010101010101010
)

// spread4[b] has bit i of b at bit 4 of byte i: the fifth bits of eight
// q5 values from one byte of qh.
var spread4 = func() (t [256]uint64) {
	for b := range t {
		for i := range 8 {
			if b>>i&1 != 0 {
				t[b] |= 0x10 << (8 * i)
			}
		}
	}
	return t
}()

// dot32u returns Σ n_i·q_i over 32 elements whose unsigned bytes are
// w0..w3 (elements 0-7, ..., 24-31).
func dot32u(w0, w1, w2, w3 uint64, q []int8) int32 {
	q = q[:32]
	c0, c1, c2, c3 := i8le64(q[0:8]), i8le64(q[8:16]), i8le64(q[16:24]), i8le64(q[24:32])
	return dot4u(w0, c0) + dot4u(w0>>32, c0>>32) + dot4u(w1, c1) + dot4u(w1>>32, c1>>32) +
		dot4u(w2, c2) + dot4u(w2>>32, c2>>32) + dot4u(w3, c3) + dot4u(w3>>32, c3>>32)
}

func dotQ8_0Generic(w []byte, x *q8Vec) float32 {
	nb := len(x.d)
	w, qs := w[:nb*34], x.qs[:nb*32]
	var sum float32
	for b := range nb {
		blk, q := w[b*34:b*34+34:b*34+34], qs[b*32:b*32+32:b*32+32]
		var s int32
		for k := 0; k < 32; k += 8 {
			a, c := le64(blk[2+k:10+k]), i8le64(q[k:k+8])
			s += dot4s(a, c) + dot4s(a>>32, c>>32)
		}
		sum += f16At(blk) * x.d[b] * float32(s)
	}
	return sum
}

// dotQ4_0Generic multiplies the raw nibbles and applies the −8 offset
// once per block through the activation's block sum: Σ(n−8)·x = Σn·x − 8·Σx.
// q5_0 does the same with 16.
func dotQ4_0Generic(w []byte, x *q8Vec) float32 {
	nb := len(x.d)
	w, qs, sums := w[:nb*18], x.qs[:nb*32], x.sum[:nb]
	var sum float32
	for b := range nb {
		blk := w[b*18 : b*18+18 : b*18+18]
		lo, hi := le64(blk[2:10]), le64(blk[10:18])
		s := dot32u(lo&nib, hi&nib, lo>>4&nib, hi>>4&nib, qs[b*32:b*32+32])
		sum += f16At(blk) * x.d[b] * float32(s-8*sums[b])
	}
	return sum
}

func dotQ4_1Generic(w []byte, x *q8Vec) float32 {
	nb := len(x.d)
	w, qs := w[:nb*20], x.qs[:nb*32]
	var sum float32
	for b := range nb {
		blk := w[b*20 : b*20+20 : b*20+20]
		lo, hi := le64(blk[4:12]), le64(blk[12:20])
		s := dot32u(lo&nib, hi&nib, lo>>4&nib, hi>>4&nib, qs[b*32:b*32+32])
		sum += f16At(blk)*x.d[b]*float32(s) + f16At(blk[2:])*x.s[b]
	}
	return sum
}

func dotQ5_0Generic(w []byte, x *q8Vec) float32 {
	nb := len(x.d)
	w, qs, sums := w[:nb*22], x.qs[:nb*32], x.sum[:nb]
	var sum float32
	for b := range nb {
		blk := w[b*22 : b*22+22 : b*22+22]
		h := blk[2:6:6]
		lo, hi := le64(blk[6:14]), le64(blk[14:22])
		s := dot32u(lo&nib|spread4[h[0]], hi&nib|spread4[h[1]], lo>>4&nib|spread4[h[2]], hi>>4&nib|spread4[h[3]], qs[b*32:b*32+32])
		sum += f16At(blk) * x.d[b] * float32(s-16*sums[b])
	}
	return sum
}

func dotQ5_1Generic(w []byte, x *q8Vec) float32 {
	nb := len(x.d)
	w, qs := w[:nb*24], x.qs[:nb*32]
	var sum float32
	for b := range nb {
		blk := w[b*24 : b*24+24 : b*24+24]
		h := blk[4:8:8]
		lo, hi := le64(blk[8:16]), le64(blk[16:24])
		s := dot32u(lo&nib|spread4[h[0]], hi&nib|spread4[h[1]], lo>>4&nib|spread4[h[2]], hi>>4&nib|spread4[h[3]], qs[b*32:b*32+32])
		sum += f16At(blk)*x.d[b]*float32(s) + f16At(blk[2:])*x.s[b]
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

// dotQ45KGeneric is q4_K (qh == nil) and q5_K: qs[32g+l] holds elements
// 64g+l (low nibble) and 64g+32+l (high nibble); q5_K's fifth bits are
// bits 2g and 2g+1 of qh[l].
func dotQ45KGeneric(w []byte, x *q8KVec, bsize, qsOff int, five bool) float32 {
	nb := len(x.d)
	w, qs := w[:nb*bsize], x.qs[:nb*qkK]
	var sum float32
	for b := range nb {
		blk, q8 := w[b*bsize:b*bsize+bsize], qs[b*qkK:b*qkK+qkK:b*qkK+qkK]
		sc, mn := unpackScalesK4(blk[4:16])
		q := blk[qsOff : qsOff+128 : qsOff+128]
		var isum int32
		for g := range 4 {
			var w [8]uint64
			for k := range 4 {
				a := le64(q[32*g+8*k : 32*g+8*k+8])
				w[k], w[4+k] = a&nib, a>>4&nib
				if five {
					h := le64(blk[16+8*k : 24+8*k])
					w[k] |= h >> (2 * g) << 4 & bit4
					w[4+k] |= h >> (2*g + 1) << 4 & bit4
				}
			}
			s1 := dot32u(w[0], w[1], w[2], w[3], q8[64*g:64*g+32])
			s2 := dot32u(w[4], w[5], w[6], w[7], q8[64*g+32:64*g+64])
			isum += int32(sc[2*g])*s1 + int32(sc[2*g+1])*s2
		}
		msum := kMinSum(&mn, x.bsums[b*16:b*16+16])
		sum += x.d[b] * (f16At(blk)*float32(isum) - f16At(blk[2:])*float32(msum))
	}
	return sum
}

func dotQ4KGeneric(w []byte, x *q8KVec) float32 { return dotQ45KGeneric(w, x, 144, 16, false) }
func dotQ5KGeneric(w []byte, x *q8KVec) float32 { return dotQ45KGeneric(w, x, 176, 48, true) }

// dotQ6KGeneric multiplies the unsigned 6-bit values and removes the −32
// through the activation's 16-element sums: Σ(u−32)·q8 = Σu·q8 − 32·Σq8.
func dotQ6KGeneric(w []byte, x *q8KVec) float32 {
	nb := len(x.d)
	w, qs := w[:nb*210], x.qs[:nb*qkK]
	var sum float32
	for b := range nb {
		blk, q8 := w[b*210:b*210+210:b*210+210], qs[b*qkK:b*qkK+qkK:b*qkK+qkK]
		sc, bs := blk[192:208:208], x.bsums[b*16:b*16+16:b*16+16]
		var isum int32
		for n := range 2 {
			ql, qh, a := blk[64*n:64*n+64:64*n+64], blk[128+32*n:160+32*n:160+32*n], q8[128*n:128*n+128:128*n+128]
			for k := 0; k < 32; k += 8 {
				l0, l1, h := le64(ql[k:k+8]), le64(ql[32+k:40+k]), le64(qh[k:k+8])
				u := [4]uint64{
					l0&nib | h&two<<4, l1&nib | h>>2&two<<4,
					l0>>4&nib | h>>4&two<<4, l1>>4&nib | h>>6&two<<4,
				}
				for j, uj := range u { // quarter j: elements 32j+k.., scale group 2j+k/16
					c := i8le64(a[32*j+k : 32*j+k+8])
					isum += int32(int8(sc[8*n+2*j+k/16])) * (dot4u(uj, c) + dot4u(uj>>32, c>>32))
				}
			}
		}
		var off int32
		for g := range 16 {
			off += int32(int8(sc[g])) * int32(bs[g])
		}
		sum += x.d[b] * f16At(blk[208:]) * float32(isum-32*off)
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
