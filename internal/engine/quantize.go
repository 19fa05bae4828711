package engine

import (
	"fmt"
	"strings"
	"sync"

	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/kernels"
)

// loadQuantTypes are the types Options.Quantize accepts: those package
// kernels both encodes and multiplies.
var loadQuantTypes = []gguf.Type{gguf.TypeQ8_0, gguf.TypeQ4_0, gguf.TypeQ4_1, gguf.TypeQ5_0, gguf.TypeQ5_1, gguf.TypeQ4_K, gguf.TypeQ6_K}

// parseQuantize reads Options.Quantize ("q8_0", "Q4_0", ...).
func parseQuantize(s string) (gguf.Type, error) {
	names := make([]string, len(loadQuantTypes))
	for i, t := range loadQuantTypes {
		if strings.EqualFold(s, t.String()) {
			return t, nil
		}
		names[i] = strings.Replace(strings.ToLower(t.String()), "_k", "_K", 1) // as llama.cpp spells them
	}
	return 0, fmt.Errorf("quantize %q: unknown type (use one of %s)", s, strings.Join(names, ", "))
}

// quantizeWeights converts every F32, F16 and BF16 matrix of w whose rows
// are whole blocks of typ into typ, in new buffers, splitting the rows of
// each over threads goroutines, and releases the originals' pages of the
// mapping as it goes (the peak is the converted model plus one original
// matrix). A tied output head stays tied. It returns the converted
// matrices by tensor name.
func quantizeWeights(w *weights, typ gguf.Type, threads int) (map[string]matrix, error) {
	// A pipeline stage holds the embedding only when first and the head
	// only when last (selectLayers): a matrix it lacks has no data.
	tied := w.output.data != nil && w.embd.data != nil && &w.output.data[0] == &w.embd.data[0]
	var ms []*matrix
	if w.embd.data != nil {
		ms = append(ms, &w.embd)
	}
	if !tied && w.output.data != nil {
		ms = append(ms, &w.output)
	}
	for i := range w.layers {
		l := &w.layers[i]
		ms = append(ms, &l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down)
	}
	out := map[string]matrix{}
	for _, m := range ms {
		switch m.typ {
		case gguf.TypeF32, gguf.TypeF16, gguf.TypeBF16:
		default:
			continue
		}
		if uint64(m.cols)%typ.BlockSize() != 0 {
			continue
		}
		q, err := quantizeMatrix(m, typ, threads)
		if err != nil {
			return nil, err
		}
		releasePages(m.data)
		*m = q
		out[m.name] = q
	}
	if tied {
		w.output = w.embd
	}
	return out, nil
}

// quantizeMatrix returns m converted to typ in a new buffer.
func quantizeMatrix(m *matrix, typ gguf.Type, threads int) (matrix, error) {
	rb, err := kernels.RowSize(typ, m.cols)
	if err != nil {
		return matrix{}, fmt.Errorf("quantize tensor %q: %w", m.name, err)
	}
	data := make([]byte, m.rows*rb)
	threads = max(1, min(threads, m.rows))
	chunk := (m.rows + threads - 1) / threads
	errs := make([]error, threads)
	var wg sync.WaitGroup
	for t := range threads {
		lo, hi := t*chunk, min((t+1)*chunk, m.rows)
		wg.Go(func() {
			row := make([]float32, m.cols)
			for r := lo; r < hi; r++ {
				m.row(row, r)
				if err := kernels.Quantize(data[r*rb:(r+1)*rb], row, typ); err != nil {
					errs[t] = fmt.Errorf("quantize tensor %q: %w", m.name, err)
					return
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return matrix{}, err
		}
	}
	q := matrix{name: m.name, rows: m.rows, cols: m.cols, typ: typ, rowBytes: rb, data: data, owned: true}
	return q, nil
}
