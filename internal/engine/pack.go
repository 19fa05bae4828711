package engine

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"github.com/npumesh/npumesh/internal/kernels"
)

// packing says whether loads rearrange the weights of types with packed
// kernels (kernels.CanPack); tests turn it off to compare.
var packing = true

// packWeights rearranges every multiplied matrix of w whose type has packed
// kernels into the interleaved layout those kernels read with plain
// vector loads (kernels.PackInto): eight rows' blocks side by side, their
// scales together. It is the same number of bytes, so the memory a model
// takes does not change:
//   - a matrix converted at load (Options.Quantize) is packed in its own
//     buffer, eight rows at a time;
//   - a matrix in the file's read-only mapping is packed into memory
//     allocated outside the Go heap (allocWeights), and the mapping's pages
//     are then released, so the resident set holds it once; the embedding
//     is never packed (only single rows of it are read), and a head tied to
//     it gets a packed copy of its own.
//
// Matrices are packed concurrently on threads goroutines. It returns the
// buffers it allocated, for Model.Close to free (on error it frees them).
func packWeights(w *weights, threads int) ([][]byte, error) {
	if !packing {
		return nil, nil
	}
	var ms []*matrix
	if w.output.data != nil {
		ms = append(ms, &w.output)
	}
	for i := range w.layers {
		l := &w.layers[i]
		ms = append(ms, &l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down)
	}
	embd := w.embd.data
	var (
		mu    sync.Mutex
		bufs  [][]byte
		errs  []error
		wg    sync.WaitGroup
		slots = make(chan struct{}, max(threads, 1))
	)
	for _, m := range ms {
		if !kernels.CanPack(m.typ) || len(m.data) == 0 {
			continue
		}
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			buf, err := m.pack(sameStart(m.data, embd))
			mu.Lock()
			defer mu.Unlock()
			if buf != nil {
				bufs = append(bufs, buf)
			}
			if err != nil {
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, b := range bufs {
			freeWeights(b)
		}
		return nil, fmt.Errorf("pack the weights: %w", err)
	}
	return bufs, nil
}

// pack rearranges m (see packWeights) and returns the buffer it allocated,
// nil when it packed m's own buffer in place. shared says m.data is also
// another matrix's (a tied head): it is then neither overwritten nor
// released. On error m is unchanged.
func (m *matrix) pack(shared bool) ([]byte, error) {
	size := kernels.PackedSize(m.typ, m.rows, m.cols)
	if m.owned && !shared && m.rows%8 == 0 && size == len(m.data) {
		// Eight rows take the bytes of their packed group: pack each
		// group from a copy of its rows.
		g := 8 * m.rowBytes
		tmp := make([]byte, g)
		for off := 0; off < len(m.data); off += g {
			copy(tmp, m.data[off:off+g])
			kernels.PackInto(m.data[off:off+g], tmp, m.typ, 8, m.cols)
		}
		m.packed = true
		return nil, nil
	}
	buf, err := allocWeights(size)
	if err != nil {
		return nil, fmt.Errorf("tensor %q: %w", m.name, err)
	}
	kernels.PackInto(buf, m.data, m.typ, m.rows, m.cols)
	if !shared && !m.owned {
		releasePages(m.data)
	}
	m.data, m.packed, m.owned = buf, true, true
	return buf, nil
}

// sameStart reports whether a and b are slices of the same array from the
// same element.
func sameStart(a, b []byte) bool {
	return len(a) > 0 && len(b) > 0 && unsafe.SliceData(a) == unsafe.SliceData(b)
}
