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
// are whole blocks of typ into typ, splitting the rows of each over
// threads goroutines, and releases the originals' pages of the mapping as
// it goes (the peak is the converted model plus one original matrix). The
// converted matrices live in one arena outside the Go heap, in huge pages
// where the system grants them (allocWeights), which it returns for
// Model.Close to free (nil when nothing was converted; on error it frees
// it). A tied output head stays tied. It also returns the converted
// matrices by tensor name.
func quantizeWeights(w *weights, typ gguf.Type, threads int) (map[string]matrix, []byte, error) {
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
	// The matrices to convert and their places in the arena, each from a
	// 64-byte line.
	var todo []*matrix
	var offs []int
	total := 0
	for _, m := range ms {
		switch m.typ {
		case gguf.TypeF32, gguf.TypeF16, gguf.TypeBF16:
		default:
			continue
		}
		rb, err := kernels.RowSize(typ, m.cols)
		if err != nil {
			continue // rows are not whole blocks of typ: computed as they are
		}
		todo, offs = append(todo, m), append(offs, total)
		total = (total + m.rows*rb + 63) &^ 63
	}
	arena, err := allocWeights(total)
	if err != nil {
		return nil, nil, fmt.Errorf("quantize the weights: %w", err)
	}
	out := map[string]matrix{}
	for i, m := range todo {
		q, err := quantizeMatrix(m, typ, threads, arena[offs[i]:])
		if err != nil {
			freeWeights(arena)
			return nil, nil, err
		}
		releasePages(m.data)
		*m = q
		out[m.name] = q
	}
	if tied {
		w.output = w.embd
	}
	return out, arena, nil
}

// quantizeMatrix returns m converted to typ in the start of buf (which
// must hold it).
func quantizeMatrix(m *matrix, typ gguf.Type, threads int, buf []byte) (matrix, error) {
	rb, err := kernels.RowSize(typ, m.cols)
	if err != nil {
		return matrix{}, fmt.Errorf("quantize tensor %q: %w", m.name, err)
	}
	data := buf[: m.rows*rb : m.rows*rb]
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
