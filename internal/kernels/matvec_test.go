package kernels

import (
	"fmt"
	"go/parser"
	"go/token"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/gguf"
)

// colsFor returns column counts to test for typ: whole blocks only, from
// one block up to a size that exercises the assembly's paired loop, its
// single-block tail and the k-quant wrappers' chunking (kChunk super-blocks).
func colsFor(typ gguf.Type) []int {
	switch typ.BlockSize() {
	case 1:
		return []int{1, 7, 8, 9, 31, 32, 33, 100, 4096}
	case 32:
		return []int{32, 64, 96, 160, 4096}
	}
	return []int{256, 512, 768, 17 * 256}
}

// reference returns W·x̂ in float64, where x̂ is x as the kernel sees it
// after activation quantization, and Σ|W·x̂| (the scale of the rounding
// error of any float32 summation order).
func reference(t *testing.T, w []byte, typ gguf.Type, rows, cols int, x []float32) (want, scale []float64) {
	t.Helper()
	xq, _ := quantizedActivation(typ, x)
	rb, _ := RowSize(typ, cols)
	row := make([]float32, cols)
	want, scale = make([]float64, rows), make([]float64, rows)
	for r := range rows {
		if err := Dequantize(row, w[r*rb:(r+1)*rb], typ); err != nil {
			t.Fatal(err)
		}
		for i, v := range row {
			want[r] += float64(v) * xq[i]
			scale[r] += math.Abs(float64(v) * xq[i])
		}
	}
	return want, scale
}

// relTol bounds float32 summation error relative to Σ|terms|: the kernels
// add one product per block (or element) in float32, a few thousand terms
// at most, so n·2⁻²⁴ is the worst case; 2e-5 is several times the worst
// case seen and far below any indexing or scaling bug (which is O(1)).
const relTol = 2e-5

func forEachImpl(t *testing.T, f func(t *testing.T)) {
	t.Helper()
	defer active.Store(active.Load()) // back to the set in use before (NPUMESH_KERNELS's choice)
	for _, generic := range []bool{true, false} {
		SetGeneric(generic)
		if !generic && Implementation() == "generic" {
			continue // no assembly on this machine
		}
		t.Run(Implementation(), f)
	}
}

// TestMatVecMatchesReference checks every type, on every kernel set,
// against the float64 product of the dequantized weights with the
// quantized activations, and against the exact activations within the
// activation rounding bound documented on MatVec.
func TestMatVecMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	pool := NewPool(3)
	defer pool.Close()
	for _, typ := range allTypes {
		for _, cols := range colsFor(typ) {
			rows := 5
			w := randomRows(r, typ, rows, cols)
			x := randomVec(r, cols)
			want, scale := reference(t, w, typ, rows, cols, x)
			t.Run(fmt.Sprintf("%v/%d", typ, cols), func(t *testing.T) {
				forEachImpl(t, func(t *testing.T) {
					got := make([]float32, rows)
					MatVec(got, w, typ, rows, cols, x, pool)
					for i := range rows {
						if d := math.Abs(float64(got[i]) - want[i]); d > relTol*scale[i]+1e-30 {
							t.Errorf("row %d: got %g, want %g (Σ|terms| %g)", i, got[i], want[i], scale[i])
						}
					}
				})
			})
			// Against exact x: the documented bound Σ|W|·|x−x̂|.
			_, bound := quantizedActivation(typ, x)
			rb, _ := RowSize(typ, cols)
			row := make([]float32, cols)
			got := make([]float32, rows)
			MatVec(got, w, typ, rows, cols, x, nil)
			for i := range rows {
				_ = Dequantize(row, w[i*rb:(i+1)*rb], typ)
				var exact, b float64
				for j, v := range row {
					exact += float64(v) * float64(x[j])
					b += math.Abs(float64(v)) * bound[j]
				}
				if d := math.Abs(float64(got[i]) - exact); d > b+relTol*scale[i]+1e-30 {
					t.Errorf("%v/%d row %d: got %g, exact %g, activation rounding bound %g", typ, cols, i, got[i], exact, b)
				}
			}
		}
	}
}

// TestAsmMatchesGeneric compares the assembly kernels with the portable
// ones on random data: odd row counts, every column count of colsFor. The
// integer block sums are identical by construction, so the only
// difference is float32 summation order (relTol of Σ|terms|).
func TestAsmMatchesGeneric(t *testing.T) {
	if asmKernels() == nil {
		t.Skip("no assembly kernels on this CPU")
	}
	defer active.Store(active.Load()) // back to the set in use before (NPUMESH_KERNELS's choice)
	r := rand.New(rand.NewPCG(7, 8))
	for _, typ := range allTypes {
		for _, cols := range colsFor(typ) {
			for _, rows := range []int{1, 3, 17} {
				w := randomRows(r, typ, rows, cols)
				x := randomVec(r, cols)
				_, scale := reference(t, w, typ, rows, cols, x)
				gen, asm := make([]float32, rows), make([]float32, rows)
				SetGeneric(true)
				MatVec(gen, w, typ, rows, cols, x, nil)
				SetGeneric(false)
				MatVec(asm, w, typ, rows, cols, x, nil)
				for i := range rows {
					if d := math.Abs(float64(gen[i] - asm[i])); d > relTol*scale[i]+1e-30 {
						t.Errorf("%v %d×%d row %d: generic %g, %s %g (Σ|terms| %g)", typ, rows, cols, i, gen[i], Implementation(), asm[i], scale[i])
					}
				}
			}
		}
	}
	// Extremes: q8_0 weights of −128 and activations that quantize to ±127
	// stress VPMADDUBSW's int16 saturation; the sums must stay exact.
	w, x := q8Extremes()
	for _, generic := range []bool{true, false} {
		SetGeneric(generic)
		var got [1]float32
		MatVec(got[:], w, gguf.TypeQ8_0, 1, 256, x, nil)
		if got[0] != 256*128 {
			t.Errorf("%s: all −128 · all −1 = %g, want %d", Implementation(), got[0], 256*128)
		}
	}
}

// TestMatMulEqualsMatVec: a batch gives bit-identical results to one
// MatVec per vector, whatever the pool size.
func TestMatMulEqualsMatVec(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	pools := []*Pool{nil, NewPool(2), NewPool(5)}
	defer func() {
		for _, p := range pools {
			p.Close()
		}
	}()
	for _, typ := range allTypes {
		for _, cols := range []int{colsFor(typ)[1], colsFor(typ)[len(colsFor(typ))-2]} {
			testMatMulEqualsMatVec(t, r, pools, typ, cols)
		}
	}
}

func testMatMulEqualsMatVec(t *testing.T, r *rand.Rand, pools []*Pool, typ gguf.Type, cols int) {
	rows := 37
	w := randomRows(r, typ, rows, cols)
	for _, n := range []int{1, 3, 4, 5, 8, 21} {
		x := randomVec(r, n*cols)
		forEachImpl(t, func(t *testing.T) {
			want := make([]float32, n*rows)
			for i := range n {
				MatVec(want[i*rows:(i+1)*rows], w, typ, rows, cols, x[i*cols:(i+1)*cols], nil)
			}
			for pi, p := range pools {
				got := make([]float32, n*rows)
				MatMul(got, w, typ, rows, cols, x, n, p)
				for i := range got {
					if got[i] != want[i] {
						t.Fatalf("%v cols=%d n=%d pool %d: dst[%d] = %g, MatVec gave %g", typ, cols, n, pi, i, got[i], want[i])
					}
				}
			}
		})
	}
}

func TestPool(t *testing.T) {
	before := runtime.NumGoroutine()
	p := NewPool(4)
	if p.Threads() != 4 {
		t.Errorf("Threads() = %d, want 4", p.Threads())
	}
	// Polling only when every thread has a processor.
	if polls := p.spin > 0; polls != (4 <= runtime.GOMAXPROCS(0)) {
		t.Errorf("4 threads, GOMAXPROCS %d: polling %v", runtime.GOMAXPROCS(0), polls)
	}
	// Every index exactly once, from several callers at a time.
	var wg sync.WaitGroup
	for c := range 4 {
		wg.Go(func() {
			for rep := range 50 {
				n := 1 + (c*977+rep*131)%1000
				hits := make([]atomic.Int32, n)
				p.For(n, 1+rep%9, func(lo, hi int) {
					for i := lo; i < hi; i++ {
						hits[i].Add(1)
					}
				})
				if !onceEach(t, hits) {
					return
				}
			}
		})
	}
	wg.Wait()
	if r := p.running.Load(); r != 3 {
		t.Errorf("%d workers running before Close, want 3", r)
	}
	p.Close()
	if r := p.running.Load(); r != 0 {
		t.Errorf("Close returned with %d workers still running", r)
	}
	p.Close() // harmless
	// Close waited for the workers: none of them is left. (Polled with a
	// deadline in case the runtime or testing package started one of its
	// own meanwhile and is about to end it.)
	for deadline := time.Now().Add(2 * time.Second); runtime.NumGoroutine() > before; {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after Close, %d before", runtime.NumGoroutine(), before)
		}
		time.Sleep(time.Millisecond)
	}
	func() {
		defer func() {
			if r := recover(); r == nil || !strings.Contains(fmt.Sprint(r), "after Close") {
				t.Errorf("parallel after Close: recovered %v, want a panic naming Close", r)
			}
		}()
		p.For(100, 1, func(int, int) {})
	}()
	var nilPool *Pool
	ran := 0
	nilPool.For(10, 1, func(lo, hi int) { ran += hi - lo })
	if ran != 10 || nilPool.Threads() != 1 {
		t.Errorf("nil pool ran %d of 10, Threads %d", ran, nilPool.Threads())
	}
	nilPool.Close()
	NewPool(0).Close()
}

// TestPanics: the programmer errors listed in the package comment panic
// with a message naming the function and the sizes.
func TestPanics(t *testing.T) {
	w := make([]byte, 2*18)
	x := make([]float32, 32)
	dst := make([]float32, 2)
	cases := []panicCase{
		{"short weights", "2×32 Q4_0 matrix is 36 bytes, got 18", func() { MatVec(dst, w[:18], gguf.TypeQ4_0, 2, 32, x, nil) }},
		{"short x", "x has 16 elements", func() { MatVec(dst, w, gguf.TypeQ4_0, 2, 32, x[:16], nil) }},
		{"short dst", "dst has 1 elements", func() { MatVec(dst[:1], w, gguf.TypeQ4_0, 2, 32, x, nil) }},
		{"partial block", "not a whole number", func() { MatVec(dst, w, gguf.TypeQ4_0, 2, 31, x, nil) }},
		{"unsupported", "no kernel for IQ2_XXS", func() { MatVec(dst, w, gguf.TypeIQ2_XXS, 2, 256, x, nil) }},
		{"MatMul short x", "kernels.MatMul: x has 32 elements, want 2 vectors", func() { MatMul(make([]float32, 4), w, gguf.TypeQ4_0, 2, 32, x, 2, nil) }},
		{"Dequantize length", "kernels.Dequantize: 32 Q4_0 elements need 18 bytes, got 36", func() { _ = Dequantize(x, w, gguf.TypeQ4_0) }},
		{"Quantize length", "kernels.Quantize: 32 Q8_0 elements need 34 bytes, got 36", func() { _ = Quantize(w, x, gguf.TypeQ8_0) }},
	}
	expectPanics(t, cases)
}

func TestSetGeneric(t *testing.T) {
	defer active.Store(active.Load()) // back to the set in use before (NPUMESH_KERNELS's choice)
	SetGeneric(true)
	if got := Implementation(); got != "generic" {
		t.Errorf("after SetGeneric(true): %q, want generic", got)
	}
	SetGeneric(false)
	want := "generic"
	if asmKernels() != nil {
		want = "avx2"
	}
	if got := Implementation(); got != want {
		t.Errorf("after SetGeneric(false): %q, want %q", got, want)
	}
}

// TestImports enforces the package comment: kernels imports the standard
// library, gguf's type enum, x/sys/cpu and (for the bandwidth probe's
// huge-page buffer) hugemem, nothing else (in particular no network
// package).
func TestImports(t *testing.T) {
	files, _ := filepath.Glob("*.go")
	allowed := map[string]bool{"github.com/npumesh/npumesh/internal/gguf": true, "golang.org/x/sys/cpu": true, "github.com/npumesh/npumesh/internal/hugemem": true}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			p := strings.Trim(imp.Path.Value, `"`)
			if strings.Contains(p, ".") && !allowed[p] || strings.HasPrefix(p, "net") {
				t.Errorf("%s imports %s; kernels must stay free of I/O and network packages", f, p)
			}
		}
	}
	if _, err := os.Stat("asmgen/main.go"); err != nil {
		t.Errorf("the assembly generator is missing: %v", err)
	}
}

func TestMeasureBandwidth(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates 512 MiB")
	}
	bw := MeasureBandwidth()
	// Only sanity: no real memory system reads less than 100 MB/s or more
	// than 10 TB/s; the number itself is for benchmarks, not tests.
	if bw < 1e8 || bw > 1e13 {
		t.Errorf("MeasureBandwidth() = %g B/s, not a plausible bandwidth", bw)
	}
}

func TestZeroSizes(t *testing.T) {
	for _, typ := range allTypes {
		dst := []float32{1, 2, 3, 4, 5, 6, 7, 8}
		MatMul(dst, nil, typ, 2, 0, nil, 4, nil)
		for i, v := range dst {
			if v != 0 {
				t.Errorf("%v: 2×0 product left dst[%d] = %g, want 0", typ, i, v)
			}
		}
		MatVec(nil, nil, typ, 0, int(typ.BlockSize()), make([]float32, typ.BlockSize()), nil)
	}
}

// TestEnvForcesGeneric runs this test binary again with
// NPUMESH_KERNELS=generic and checks that the portable kernels are used.
func TestEnvForcesGeneric(t *testing.T) {
	if os.Getenv("NPUMESH_KERNELS") == "generic" {
		if got := Implementation(); got != "generic" {
			t.Fatalf("NPUMESH_KERNELS=generic: Implementation() = %q", got)
		}
		return
	}
	if asmKernels() == nil {
		t.Skip("no assembly kernels here: always generic")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestEnvForcesGeneric$", "-test.v")
	cmd.Env = append(os.Environ(), "NPUMESH_KERNELS=generic")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestEnvForcesGeneric") {
		t.Fatalf("child with NPUMESH_KERNELS=generic: %v\n%s", err, out)
	}
}

// TestPoolEqualsSerial: products large enough to be split over a pool
// (above serialBytes) give the same bits as on the caller alone.
// onceEach reports whether every index of a loop over len(hits) ran once,
// failing t if not.
func onceEach(t *testing.T, hits []atomic.Int32) bool {
	t.Helper()
	for i := range hits {
		if h := hits[i].Load(); h != 1 {
			t.Errorf("n=%d: index %d ran %d times", len(hits), i, h)
			return false
		}
	}
	return true
}

// TestPoolGuided checks ForGuided's chunks: every index once, each chunk
// starting at a multiple of unit, at least least long but for the last,
// and never longer than the chunk before it, from concurrent callers.
func TestPoolGuided(t *testing.T) {
	p := NewPool(3)
	defer p.Close()
	var wg sync.WaitGroup
	for c := range 3 {
		wg.Go(func() {
			for rep := range 40 {
				n := (c*977 + rep*131) % 3000
				unit, least := 1+rep%8, 1+rep%50
				hits := make([]atomic.Int32, n)
				var mu sync.Mutex
				chunks := map[int]int{} // lo → hi
				p.ForGuided(n, unit, least, func(lo, hi int) {
					mu.Lock()
					chunks[lo] = hi
					mu.Unlock()
					for i := lo; i < hi; i++ {
						hits[i].Add(1)
					}
				})
				if !onceEach(t, hits) {
					return
				}
				prev := n + 1
				for lo := 0; lo < n; lo = chunks[lo] {
					hi, ok := chunks[lo]
					if !ok || lo%unit != 0 || hi <= lo || (hi < n && hi-lo < least) || hi-lo > prev {
						t.Errorf("n=%d unit=%d least=%d: chunk [%d,%d) (found %v) after one of %d", n, unit, least, lo, hi, ok, prev)
						return
					}
					prev = hi - lo
				}
				if n > 4*least && len(chunks) < 2 {
					t.Errorf("n=%d least=%d: %d chunks", n, least, len(chunks))
				}
			}
		})
	}
	wg.Wait()
	var nilPool *Pool
	ran := 0
	nilPool.ForGuided(10, 4, 1, func(lo, hi int) { ran += hi - lo })
	if ran != 10 {
		t.Errorf("nil pool ran %d of 10", ran)
	}
}

func TestPoolEqualsSerial(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	pool := NewPool(4)
	defer pool.Close()
	for _, typ := range allTypes {
		cols := colsFor(typ)[len(colsFor(typ))-1]
		rows := 67
		w := randomRows(r, typ, rows, cols)
		if rb, _ := RowSize(typ, cols); rows*rb < serialBytes {
			t.Fatalf("%v: %d bytes is too small to reach the pool", typ, rows*rb)
		}
		for _, n := range []int{1, 5} {
			x := randomVec(r, n*cols)
			want, got := make([]float32, n*rows), make([]float32, n*rows)
			MatMul(want, w, typ, rows, cols, x, n, nil)
			MatMul(got, w, typ, rows, cols, x, n, pool)
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("%v n=%d: pooled dst[%d] = %g, serial %g", typ, n, i, got[i], want[i])
				}
			}
		}
	}
}

// TestQuantizeQ8Asm: the assembly activation quantizer gives the same
// bits as quantizeQ8 (so generic and assembly products see the same
// activations), including all-zero blocks and values that sit on ties.
func TestQuantizeQ8Asm(t *testing.T) {
	a := asmKernels()
	if a == nil {
		t.Skip("no assembly kernels on this CPU")
	}
	r := rand.New(rand.NewPCG(15, 16))
	x := randomVec(r, 32*64)
	for i := range 32 {
		x[i] = 0                         // a zero block
		x[32+i] = float32(i-16) + 0.5    // with x[32] = 127 below, d = 1: exact ties
		x[64+i] = float32(i%3-1) * 1e-30 // tiny
	}
	x[32] = 127
	x[100] = -1e4 // one outlier
	nb := len(x) / 32
	mk := func() q8Vec {
		return q8Vec{qs: make([]int8, len(x)), d: make([]float32, nb), s: make([]float32, nb), sum: make([]int32, nb)}
	}
	want, got := mk(), mk()
	quantizeQ8(&want, x)
	a.quantQ8(&got, x)
	for i := range x {
		if got.qs[i] != want.qs[i] {
			t.Fatalf("qs[%d] (x=%g): asm %d, Go %d", i, x[i], got.qs[i], want.qs[i])
		}
	}
	for b := range nb {
		if got.d[b] != want.d[b] || got.s[b] != want.s[b] || got.sum[b] != want.sum[b] {
			t.Fatalf("block %d: asm d=%g s=%g sum=%d, Go d=%g s=%g sum=%d", b, got.d[b], got.s[b], got.sum[b], want.d[b], want.s[b], want.sum[b])
		}
	}
}

// TestPoolSpinAndSleep covers both ways a pool waits: a caller whose helper
// takes longer than spinWait blocks for it, and a worker idle for longer
// than spinWait sleeps and still takes the next job.
func TestPoolSpinAndSleep(t *testing.T) {
	p := NewPool(2)
	defer p.Close()
	for rep := range 3 {
		var ran [2]atomic.Int32
		p.For(2, 1, func(lo, hi int) {
			if lo == 1 {
				time.Sleep(3 * spinWait) // whoever runs it, the caller waits past its spin
			}
			ran[lo].Add(1)
		})
		for i := range ran {
			if ran[i].Load() != 1 {
				t.Fatalf("rep %d: chunk %d ran %d times", rep, i, ran[i].Load())
			}
		}
		time.Sleep(3 * spinWait) // the worker sleeps
	}
}
