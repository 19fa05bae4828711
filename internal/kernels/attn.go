package kernels

import "fmt"

// The attention kernels read one block of a paged KV cache in place, for
// one KV head and the group of query heads that share it. A block of bs
// positions (slots) stores a KV head's
//   - keys transposed, hd rows of bs slots (k[d·bs+s]), so that a query's
//     scores for all the slots are summed a dimension at a time with no
//     horizontal sums;
//   - values as they come, bs rows of hd (v[s·hd+d]), so that the output
//     is summed a slot at a time, the same way.
//
// On amd64 the scores of blocks of 16 slots (the engine's default) and
// the values of head dimensions that are multiples of 16 run in assembly,
// four query heads at a time; other shapes, and other platforms, run the
// portable loops. A
// head's result is computed by the same operations whatever the group,
// so it does not depend on the other heads.

// attnSet is a platform's attention kernels for blocks of 16 slots; x4
// takes four query heads, x1 one.
type attnSet struct {
	scoresF32x1, scoresF32x4 func(dst *float32, ld int, k *float32, q *float32, hd int)
	scoresF16x1, scoresF16x4 func(dst *float32, ld int, k *uint16, q *float32, hd int)
	valuesF32x1, valuesF32x4 func(out *float32, v *float32, a *float32, ld int, hd int, rows int)
	valuesF16x1, valuesF16x4 func(out *float32, v *uint16, a *float32, ld int, hd int, rows int)
}

// attnBlock is the block size the assembly kernels take.
const attnBlock = 16

// AttnScoresF32 sets dst[h·ld+s] = Σ_d q[h·hd+d]·k[d·bs+s] for every slot
// s < bs and query head h < group: the scores of a group of query heads
// (q, group×hd) against one block's keys of their KV head, stored
// transposed (k, hd×bs). ld ≥ bs is the distance between two heads' rows
// of dst. It panics if a slice is too short for the sizes.
func AttnScoresF32(dst []float32, ld int, k, q []float32, group, hd, bs int) {
	checkScores("AttnScoresF32", len(dst), ld, len(k), len(q), group, hd, bs)
	if group == 0 || hd == 0 {
		return
	}
	if a := active.Load().attn; a != nil && bs == attnBlock {
		byFour(group, func(h int) { a.scoresF32x4(&dst[h*ld], ld, &k[0], &q[h*hd], hd) },
			func(h int) { a.scoresF32x1(&dst[h*ld], ld, &k[0], &q[h*hd], hd) })
		return
	}
	scoresGeneric(dst, ld, k, q, group, hd, bs)
}

// AttnScoresF16 is AttnScoresF32 for keys stored as IEEE half floats.
func AttnScoresF16(dst []float32, ld int, k []uint16, q []float32, group, hd, bs int) {
	checkScores("AttnScoresF16", len(dst), ld, len(k), len(q), group, hd, bs)
	if group == 0 || hd == 0 {
		return
	}
	if a := active.Load().attn; a != nil && bs == attnBlock {
		byFour(group, func(h int) { a.scoresF16x4(&dst[h*ld], ld, &k[0], &q[h*hd], hd) },
			func(h int) { a.scoresF16x1(&dst[h*ld], ld, &k[0], &q[h*hd], hd) })
		return
	}
	var buf [attnBuf]float32
	scoresGeneric(dst, ld, widen(k[:hd*bs], &buf), q, group, hd, bs)
}

// AttnValuesF32 adds Σ_s a[h·ld+s]·v[s·hd+d], over the slots s < rows, to
// out[h·hd+d] for every dimension d < hd and query head h < group: one
// block's values of a KV head (v, bs×hd as they come; rows ≤ bs of them
// used) weighted by each head's attention (a, a row of ld per head). It
// panics if a slice is too short for the sizes.
func AttnValuesF32(out, v, a []float32, ld, group, hd, rows int) {
	checkValues("AttnValuesF32", len(out), len(v), len(a), ld, group, hd, rows)
	if group == 0 || hd == 0 || rows == 0 {
		return
	}
	if as := active.Load().attn; as != nil && hd%16 == 0 {
		byFour(group, func(h int) { as.valuesF32x4(&out[h*hd], &v[0], &a[h*ld], ld, hd, rows) },
			func(h int) { as.valuesF32x1(&out[h*hd], &v[0], &a[h*ld], ld, hd, rows) })
		return
	}
	valuesGeneric(out, v, a, ld, group, hd, rows)
}

// AttnValuesF16 is AttnValuesF32 for values stored as IEEE half floats.
func AttnValuesF16(out []float32, v []uint16, a []float32, ld, group, hd, rows int) {
	checkValues("AttnValuesF16", len(out), len(v), len(a), ld, group, hd, rows)
	if group == 0 || hd == 0 || rows == 0 {
		return
	}
	if as := active.Load().attn; as != nil && hd%16 == 0 {
		byFour(group, func(h int) { as.valuesF16x4(&out[h*hd], &v[0], &a[h*ld], ld, hd, rows) },
			func(h int) { as.valuesF16x1(&out[h*hd], &v[0], &a[h*ld], ld, hd, rows) })
		return
	}
	var buf [attnBuf]float32
	valuesGeneric(out, widen(v[:rows*hd], &buf), a, ld, group, hd, rows)
}

// byFour runs four(h) for the query heads h, h+1, h+2, h+3 while four
// are left, then one(h) for each of the rest.
func byFour(group int, four, one func(h int)) {
	h := 0
	for ; h+4 <= group; h += 4 {
		four(h)
	}
	for ; h < group; h++ {
		one(h)
	}
}

func checkScores(fn string, ndst, ld, nk, nq, group, hd, bs int) {
	switch {
	case group < 0 || hd < 0 || bs < 0 || ld < bs:
		panic(fmt.Sprintf("kernels.%s: bad sizes group=%d hd=%d bs=%d ld=%d", fn, group, hd, bs, ld))
	case group == 0 || hd == 0:
	case nk < hd*bs || nq < group*hd || ndst < (group-1)*ld+bs:
		panic(fmt.Sprintf("kernels.%s: %d keys, %d queries, %d scores: too few for group=%d hd=%d bs=%d ld=%d",
			fn, nk, nq, ndst, group, hd, bs, ld))
	}
}

func checkValues(fn string, nout, nv, na, ld, group, hd, rows int) {
	switch {
	case group < 0 || hd < 0 || rows < 0 || ld < rows:
		panic(fmt.Sprintf("kernels.%s: bad sizes group=%d hd=%d rows=%d ld=%d", fn, group, hd, rows, ld))
	case group == 0 || hd == 0 || rows == 0:
	case nv < rows*hd || na < (group-1)*ld+rows || nout < group*hd:
		panic(fmt.Sprintf("kernels.%s: %d values, %d weights, %d outputs: too few for group=%d hd=%d rows=%d ld=%d",
			fn, nv, na, nout, group, hd, rows, ld))
	}
}

// attnBuf is the stack buffer the portable half-float loops widen a
// block into when it fits (hd·bs ≤ 2048: hd 128 with 16 slots).
const attnBuf = 2048

// widen returns h as float32, in buf when it fits.
func widen(h []uint16, buf *[attnBuf]float32) []float32 {
	f := buf[:0]
	if len(h) > len(buf) {
		f = make([]float32, 0, len(h))
	}
	t := f16Table()
	for _, x := range h {
		f = append(f, t[x])
	}
	return f
}

// scoresGeneric is the portable AttnScores: each score sums its products
// over d in order, four slots at a time in registers.
func scoresGeneric(dst []float32, ld int, k, q []float32, group, hd, bs int) {
	k = k[:hd*bs]
	for h := range group {
		qh, o := q[h*hd:(h+1)*hd], dst[h*ld:h*ld+bs]
		s := 0
		for ; s+4 <= bs; s += 4 {
			var a0, a1, a2, a3 float32
			for d, qd := range qh {
				kd := k[d*bs+s : d*bs+s+4 : d*bs+s+4]
				a0 += qd * kd[0]
				a1 += qd * kd[1]
				a2 += qd * kd[2]
				a3 += qd * kd[3]
			}
			o[s], o[s+1], o[s+2], o[s+3] = a0, a1, a2, a3
		}
		for ; s < bs; s++ {
			var a float32
			for d, qd := range qh {
				a += qd * k[d*bs+s]
			}
			o[s] = a
		}
	}
}

// valuesGeneric is the portable AttnValues: each output adds its products
// over the slots in order, four dimensions at a time in registers.
func valuesGeneric(out, v, a []float32, ld, group, hd, rows int) {
	v = v[:rows*hd]
	for h := range group {
		ah, oh := a[h*ld:h*ld+rows], out[h*hd:(h+1)*hd]
		d := 0
		for ; d+4 <= hd; d += 4 {
			o := oh[d : d+4 : d+4]
			a0, a1, a2, a3 := o[0], o[1], o[2], o[3]
			for s, w := range ah {
				vs := v[s*hd+d : s*hd+d+4 : s*hd+d+4]
				a0 += w * vs[0]
				a1 += w * vs[1]
				a2 += w * vs[2]
				a3 += w * vs[3]
			}
			o[0], o[1], o[2], o[3] = a0, a1, a2, a3
		}
		for ; d < hd; d++ {
			acc := oh[d]
			for s, w := range ah {
				acc += w * v[s*hd+d]
			}
			oh[d] = acc
		}
	}
}
