package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// TestAttnMatchesReference checks the attention kernels, on every kernel
// set, in float32 and half floats, against float64 sums of the stored
// numbers: group sizes around the assembly's four heads, head dimensions
// on and off its multiples of 16, blocks of 16 slots (the assembly's) and
// others, and partial blocks of values. Each head must also get the same
// bits alone as in its group.
func TestAttnMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	forEachImpl(t, func(t *testing.T) {
		for _, half := range []bool{false, true} {
			for _, bs := range []int{16, 8, 32} {
				for _, hd := range []int{8, 16, 64, 128} {
					for _, group := range []int{1, 2, 4, 5, 7, 8} {
						name := fmt.Sprintf("half=%v/bs=%d/hd=%d/group=%d", half, bs, hd, group)
						checkAttnKernels(t, r, name, half, bs, hd, group)
					}
				}
			}
		}
	})
}

func checkAttnKernels(t *testing.T, r *rand.Rand, name string, half bool, bs, hd, group int) {
	t.Helper()
	ld := bs + 3 // rows of scores/weights further apart than a block
	k32, v32 := randomVec(r, hd*bs), randomVec(r, bs*hd)
	k16, v16 := make([]uint16, len(k32)), make([]uint16, len(v32))
	for i := range k32 {
		k16[i], v16[i] = F32ToF16(k32[i]), F32ToF16(v32[i])
		if half { // the reference reads what is stored
			k32[i], v32[i] = F16ToF32(k16[i]), F16ToF32(v16[i])
		}
	}
	q := randomVec(r, group*hd)
	scores := func(dst []float32, q []float32, group int) {
		if half {
			AttnScoresF16(dst, ld, k16, q, group, hd, bs)
		} else {
			AttnScoresF32(dst, ld, k32, q, group, hd, bs)
		}
	}
	values := func(out, a []float32, group, rows int) {
		if half {
			AttnValuesF16(out, v16, a, ld, group, hd, rows)
		} else {
			AttnValuesF32(out, v32, a, ld, group, hd, rows)
		}
	}
	dst := make([]float32, (group-1)*ld+bs)
	for i := range dst {
		dst[i] = float32(math.NaN()) // every score must be written
	}
	scores(dst, q, group)
	for h := range group {
		for s := range bs {
			var want, mag float64
			for d := range hd {
				p := float64(q[h*hd+d]) * float64(k32[d*bs+s])
				want += p
				mag += math.Abs(p)
			}
			if got := float64(dst[h*ld+s]); !(math.Abs(got-want) <= relTol*mag+1e-30) {
				t.Fatalf("%s: score head %d slot %d = %v, want %v", name, h, s, got, want)
			}
		}
		one := make([]float32, bs)
		scores(one, q[h*hd:(h+1)*hd], 1)
		for s := range bs {
			if math.Float32bits(one[s]) != math.Float32bits(dst[h*ld+s]) {
				t.Fatalf("%s: head %d slot %d alone %v, in its group %v", name, h, s, one[s], dst[h*ld+s])
			}
		}
	}
	a := randomVec(r, (group-1)*ld+bs)
	for _, rows := range []int{bs, 1, bs - 1} {
		base := randomVec(r, group*hd)
		out := append([]float32(nil), base...)
		values(out, a, group, rows)
		for h := range group {
			for d := range hd {
				want, mag := float64(base[h*hd+d]), math.Abs(float64(base[h*hd+d]))
				for s := range rows {
					p := float64(a[h*ld+s]) * float64(v32[s*hd+d])
					want += p
					mag += math.Abs(p)
				}
				if got := float64(out[h*hd+d]); !(math.Abs(got-want) <= relTol*mag+1e-30) {
					t.Fatalf("%s rows %d: output head %d dim %d = %v, want %v", name, rows, h, d, got, want)
				}
			}
			one := append([]float32(nil), base[h*hd:(h+1)*hd]...)
			values(one, a[h*ld:], 1, rows)
			for d := range hd {
				if math.Float32bits(one[d]) != math.Float32bits(out[h*hd+d]) {
					t.Fatalf("%s rows %d: head %d dim %d alone %v, in its group %v", name, rows, h, d, one[d], out[h*hd+d])
				}
			}
		}
	}
}

// TestAttnPanics checks that sizes the slices cannot hold panic with a
// message naming the kernel, instead of reading past them.
func TestAttnPanics(t *testing.T) {
	cases := map[string]func(){
		"AttnScoresF32": func() { AttnScoresF32(make([]float32, 16), 16, make([]float32, 64*15), make([]float32, 64), 1, 64, 16) },
		"AttnScoresF16": func() { AttnScoresF16(make([]float32, 16), 16, make([]uint16, 64*16), make([]float32, 64), 2, 64, 16) },
		"AttnValuesF32": func() { AttnValuesF32(make([]float32, 64), make([]float32, 64*16), make([]float32, 16), 8, 1, 64, 16) },
		"AttnValuesF16": func() { AttnValuesF16(make([]float32, 63), make([]uint16, 64*16), make([]float32, 16), 16, 1, 64, 16) },
	}
	for name, f := range cases {
		func() {
			defer func() {
				if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), name) {
					t.Errorf("%s: recovered %v, want a panic naming it", name, r)
				}
			}()
			f()
		}()
	}
	// Empty sizes do nothing.
	AttnScoresF32(nil, 0, nil, nil, 0, 64, 0)
	AttnValuesF16(nil, nil, nil, 0, 4, 64, 0)
}

// BenchmarkAttnBlock times one block of 16 slots, a TinyLlama-shaped KV
// head (hd 64, four query heads), scores and values, on every kernel set.
func BenchmarkAttnBlock(b *testing.B) {
	r := rand.New(rand.NewPCG(1, 2))
	const bs, hd, group = 16, 64, 4
	k, v := make([]uint16, hd*bs), make([]uint16, bs*hd)
	for i := range k {
		k[i], v[i] = F32ToF16(r.Float32()), F32ToF16(r.Float32())
	}
	q, a, dst, out := randomVec(r, group*hd), randomVec(r, group*bs), make([]float32, group*bs), make([]float32, group*hd)
	benchImpls(b, func(b *testing.B) {
		for b.Loop() {
			AttnScoresF16(dst, bs, k, q, group, hd, bs)
			AttnValuesF16(out, v, a, bs, group, hd, bs)
		}
	})
}
