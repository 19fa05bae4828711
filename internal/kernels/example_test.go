package kernels_test

import (
	"fmt"

	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/kernels"
)

// A 2×64 matrix quantized to q4_0, multiplied with one vector on a pool
// of two threads.
func ExampleMatVec() {
	const rows, cols = 2, 64
	m := make([]float32, rows*cols)
	x := make([]float32, cols)
	for i := range cols {
		m[i] = 1                   // row 0: all ones
		m[cols+i] = float32(i % 2) // row 1: 0, 1, 0, 1, ...
		x[i] = 0.5
	}
	rb, _ := kernels.RowSize(gguf.TypeQ4_0, cols)
	w := make([]byte, rows*rb)
	for r := range rows {
		if err := kernels.Quantize(w[r*rb:(r+1)*rb], m[r*cols:(r+1)*cols], gguf.TypeQ4_0); err != nil {
			panic(err)
		}
	}
	pool := kernels.NewPool(2)
	defer pool.Close()
	dst := make([]float32, rows)
	kernels.MatVec(dst, w, gguf.TypeQ4_0, rows, cols, x, pool)
	fmt.Printf("%.2f %.2f\n", dst[0], dst[1])
	// Output: 32.00 16.00
}
