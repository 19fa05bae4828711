package engine

import (
	"fmt"

	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/kernels"
)

// matrix is a row-major weight matrix as GGUF stores it: rows of cols
// elements (ggml ne[0] = cols, ne[1] = rows), each row rowBytes bytes in
// ggml's encoding of typ. data normally aliases the file's read-only
// mapping; it is a buffer of its own only when Options.Quantize converted
// the matrix at load time.
type matrix struct {
	name       string // the GGUF tensor's, for errors
	rows, cols int
	typ        gguf.Type
	rowBytes   int
	data       []byte
	// owned: data is a buffer of the engine's, not the file's mapping.
	// packed: data is in kernels' packed layout (pack.go), which only the
	// products read (row does not).
	owned, packed bool
}

// bytes is the size of m in ggml's layout (a packed matrix whose rows are
// not a multiple of 8 takes a little more, padding); 0 for a matrix a
// pipeline stage does not hold.
func (m *matrix) bytes() int64 {
	if m.data == nil {
		return 0
	}
	return int64(m.rows * m.rowBytes)
}

// newMatrix checks that data is rows×cols of typ and that package kernels
// multiplies that type.
func newMatrix(name string, typ gguf.Type, data []byte, cols, rows int) (matrix, error) {
	if !kernels.CanMatVec(typ) {
		return matrix{}, fmt.Errorf("tensor %q has type %s; this engine computes with F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K (requantize the model to one of them)", name, typ)
	}
	rb, err := kernels.RowSize(typ, cols)
	if err != nil {
		return matrix{}, fmt.Errorf("tensor %q: %w", name, err)
	}
	if len(data) != rows*rb {
		return matrix{}, fmt.Errorf("tensor %q: %d bytes, want %d for %d×%d %s", name, len(data), rows*rb, rows, cols, typ)
	}
	return matrix{name: name, rows: rows, cols: cols, typ: typ, rowBytes: rb, data: data}, nil
}

// matmulBatch sets dst = x·mᵀ for n activation rows: dst holds n rows of
// m.rows values and x n rows of m.cols values. It is kernels.MatMul, which
// reads each weight row once for all n rows (so a step's memory traffic
// does not grow with the batch) and gives each row bit for bit what
// kernels.MatVec gives it alone, so batching never changes a result.
//
// Quantized weights multiply an activation quantized to 8 bits per block
// (q8_0, or q8_K for the k-quants), as llama.cpp does; F32, F16 and BF16
// weights multiply the float32 activations. The F32 sums are not formed
// in llama2.c's order (one running sum) nor in this engine's former one
// (four accumulators): the AVX2 kernel keeps eight-lane FMA partial sums.
// That moves logits by up to ~1e-5 (TestF32KernelOrders), and the
// stories260K greedy text is still llama2.c's exactly with the AVX2 and
// the portable kernels alike (TestGreedyMatchesLlama2c;
// NPUMESH_KERNELS=generic selects the portable ones), so no separate
// exact F32 path is kept.
func matmulBatch(dst []float32, m *matrix, x []float32, n int, pool *kernels.Pool) {
	if m.packed {
		kernels.MatMulPacked(dst[:n*m.rows], m.data, m.typ, m.rows, m.cols, x[:n*m.cols], n, pool)
		return
	}
	kernels.MatMul(dst[:n*m.rows], m.data, m.typ, m.rows, m.cols, x[:n*m.cols], n, pool)
}

// product is one matrix of a matmulShared and where its results go.
type product struct {
	dst []float32
	m   *matrix
}

// matmulShared is matmulBatch for matrices that multiply the same x (a
// layer's query, key and value projections; its gate and up projections).
// When they are all packed in one type, x is quantized once and all their
// rows are split over the pool in one loop (kernels.MatMulPackedMulti), so
// the threads meet once instead of once per matrix; the results are
// matmulBatch's bit for bit either way.
func matmulShared(x []float32, n int, pool *kernels.Pool, ps ...product) {
	var parts [3]kernels.PackedPart
	multi := len(ps) <= len(parts)
	for i, p := range ps {
		if !multi || !p.m.packed || p.m.typ != ps[0].m.typ || p.m.cols != ps[0].m.cols {
			multi = false
			break
		}
		parts[i] = kernels.PackedPart{Dst: p.dst[:n*p.m.rows], P: p.m.data, Rows: p.m.rows}
	}
	if !multi {
		for _, p := range ps {
			matmulBatch(p.dst, p.m, x, n, pool)
		}
		return
	}
	m := ps[0].m
	kernels.MatMulPackedMulti(parts[:len(ps)], m.typ, m.cols, x[:n*m.cols], n, pool)
}

// row decodes row r into dst as float32 (embedding lookup: one row is
// dequantized, never the whole table).
func (m *matrix) row(dst []float32, r int) {
	if m.packed {
		panic("engine: row of a packed matrix " + m.name)
	}
	if err := kernels.Dequantize(dst[:m.cols], m.data[r*m.rowBytes:(r+1)*m.rowBytes], m.typ); err != nil {
		panic(err) // newMatrix accepted the type
	}
}
