package kernels

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/npumesh/npumesh/internal/gguf"
)

// allTypes are the weight types MatVec accepts, in the order tests report them.
var allTypes = []gguf.Type{
	gguf.TypeF32, gguf.TypeF16, gguf.TypeBF16, gguf.TypeQ8_0, gguf.TypeQ4_0, gguf.TypeQ4_1,
	gguf.TypeQ5_0, gguf.TypeQ5_1, gguf.TypeQ4_K, gguf.TypeQ5_K, gguf.TypeQ6_K,
}

// f16Fields lists the byte offsets of the f16 scale fields in one block
// of typ; randomBlocks overwrites them with sane values.
func f16Fields(typ gguf.Type) []int {
	switch typ {
	case gguf.TypeQ8_0, gguf.TypeQ4_0, gguf.TypeQ5_0:
		return []int{0}
	case gguf.TypeQ4_1, gguf.TypeQ5_1, gguf.TypeQ4_K, gguf.TypeQ5_K:
		return []int{0, 2}
	case gguf.TypeQ6_K:
		return []int{208}
	}
	return nil
}

// randomRows returns rows×cols weights of typ: random bits everywhere
// (every bit pattern of the quantized fields is valid, including q8_0's
// −128), with the f16 scales set to finite values of either sign.
func randomRows(r *rand.Rand, typ gguf.Type, rows, cols int) []byte {
	rb, err := RowSize(typ, cols)
	if err != nil {
		panic(err)
	}
	w := make([]byte, rows*rb)
	switch typ {
	case gguf.TypeF32:
		for i := 0; i < len(w); i += 4 {
			put32(w[i:], math.Float32bits(float32(r.NormFloat64())))
		}
		return w
	case gguf.TypeF16:
		for i := 0; i < len(w); i += 2 {
			put16(w[i:], F32ToF16(float32(r.NormFloat64())))
		}
		return w
	case gguf.TypeBF16:
		for i := 0; i < len(w); i += 2 {
			put16(w[i:], uint16(math.Float32bits(float32(r.NormFloat64()))>>16))
		}
		return w
	}
	for i := range w {
		w[i] = byte(r.Uint32())
	}
	ts := int(typ.TypeSize())
	for b := 0; b < len(w); b += ts {
		for _, off := range f16Fields(typ) {
			put16(w[b+off:], F32ToF16(float32(r.NormFloat64()*0.02)))
		}
	}
	return w
}

func randomVec(r *rand.Rand, n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64())
	}
	return x
}

func put32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}

// quantizedActivation returns x as the kernels of typ see it: quantized
// to q8_0 or q8_K and decoded again (x itself for the float types), and
// the per-element bound |x − x̂| of that rounding.
func quantizedActivation(typ gguf.Type, x []float32) (xq []float64, bound []float64) {
	xq, bound = make([]float64, len(x)), make([]float64, len(x))
	switch typ {
	case gguf.TypeF32, gguf.TypeF16, gguf.TypeBF16:
		for i, v := range x {
			xq[i] = float64(v)
		}
		return xq, bound
	case gguf.TypeQ4_K, gguf.TypeQ5_K, gguf.TypeQ6_K:
		nb := len(x) / qkK
		v := q8KVec{qs: make([]int8, len(x)), d: make([]float32, nb), bsums: make([]int16, nb*16)}
		quantizeQ8K(&v, x)
		for i := range x {
			d := float64(v.d[i/qkK])
			xq[i], bound[i] = d*float64(v.qs[i]), math.Abs(d)/2*1.0001
		}
		return xq, bound
	}
	nb := len(x) / 32
	v := q8Vec{qs: make([]int8, len(x)), d: make([]float32, nb), s: make([]float32, nb), sum: make([]int32, nb)}
	quantizeQ8(&v, x)
	for i := range x {
		d := float64(v.d[i/32])
		xq[i], bound[i] = d*float64(v.qs[i]), d/2*1.0001
	}
	return xq, bound
}

// panicCase is a call that must panic with a message containing want.
type panicCase struct {
	name, want string
	f          func()
}

// expectPanics runs each case as a subtest and checks its panic.
func expectPanics(t *testing.T, cases []panicCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			defer func() {
				r := recover()
				if r == nil || !strings.Contains(fmt.Sprint(r), c.want) {
					t.Errorf("recovered %v, want a panic containing %q", r, c.want)
				}
			}()
			c.f()
		})
	}
}

// q8Extremes is a 1×256 q8_0 row of −128 weights (scale 1) and an
// activation of −1s, which quantizes to −127: the product, 256·128, is
// the largest a block sum reaches and stresses int16 saturation.
func q8Extremes() (w []byte, x []float32) {
	w = make([]byte, 34*8)
	for b := range 8 {
		put16(w[34*b:], 0x3c00)
		for j := range 32 {
			w[34*b+2+j] = 0x80
		}
	}
	x = make([]float32, 256)
	for i := range x {
		x[i] = -1
	}
	return w, x
}
