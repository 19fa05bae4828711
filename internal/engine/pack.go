package engine

import (
	"fmt"
	"sync"
	"unsafe"

	"github.com/npumesh/npumesh/internal/hugemem"
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
//   - a matrix in the file's read-only mapping is packed into one arena
//     allocated outside the Go heap in huge pages where the system grants
//     them (allocWeights), and the mapping's pages are then released, so
//     the resident set holds it once; the embedding is never packed (only
//     single rows of it are read), and a head tied to it gets a packed
//     copy of its own in the arena.
//
// Matrices are packed concurrently on threads goroutines. It returns the
// arena, for Model.Close to free (nil when nothing needed one).
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
	// Where each matrix goes: in place, or at off in the arena (each
	// matrix from a 64-byte line).
	type place struct {
		m        *matrix
		shared   bool
		off, end int // off < 0: in place
	}
	var places []place
	total := 0
	for _, m := range ms {
		if !kernels.CanPack(m.typ) || len(m.data) == 0 {
			continue
		}
		shared := sameStart(m.data, embd)
		size := kernels.PackedSize(m.typ, m.rows, m.cols)
		if m.packsInPlace(shared, size) {
			places = append(places, place{m, shared, -1, -1})
			continue
		}
		places = append(places, place{m, shared, total, total + size})
		total = (total + size + 63) &^ 63
	}
	arena, err := allocWeights(total)
	if err != nil {
		return nil, fmt.Errorf("pack the weights: %w", err)
	}
	var wg sync.WaitGroup
	slots := make(chan struct{}, max(threads, 1))
	for _, pl := range places {
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			if pl.off < 0 {
				pl.m.packInPlace()
				return
			}
			pl.m.packTo(arena[pl.off:pl.end:pl.end], pl.shared)
		})
	}
	wg.Wait()
	if arena == nil {
		return nil, nil
	}
	return [][]byte{arena}, nil
}

// packsInPlace reports whether m (size bytes once packed) is packed in its
// own buffer: a buffer of the engine's (converted at load), not shared
// with another matrix, whose rows fill their groups of eight.
func (m *matrix) packsInPlace(shared bool, size int) bool {
	return m.owned && !shared && m.rows%8 == 0 && size == len(m.data)
}

// packInPlace packs m in its own buffer (packsInPlace): eight rows take
// the bytes of their packed group, so each group is packed from a copy of
// its rows.
func (m *matrix) packInPlace() {
	g := 8 * m.rowBytes
	tmp := make([]byte, g)
	for off := 0; off < len(m.data); off += g {
		copy(tmp, m.data[off:off+g])
		kernels.PackInto(m.data[off:off+g], tmp, m.typ, 8, m.cols)
	}
	m.packed = true
}

// packTo packs m into dst (kernels.PackedSize bytes) and makes dst m's
// data. shared says m.data is also another matrix's (a tied head): its
// pages are then not released; a file mapping's otherwise are.
func (m *matrix) packTo(dst []byte, shared bool) {
	kernels.PackInto(dst, m.data, m.typ, m.rows, m.cols)
	if !shared && !m.owned {
		releasePages(m.data)
	}
	m.data, m.packed, m.owned = dst, true, true
}

// sameStart reports whether a and b are slices of the same array from the
// same element.
func sameStart(a, b []byte) bool {
	return len(a) > 0 && len(b) > 0 && unsafe.SliceData(a) == unsafe.SliceData(b)
}

// allocWeights returns n zeroed bytes outside the Go heap, in huge pages
// where the system grants them (package hugemem), for weights the engine
// rearranges at load (pack.go) or converts (quantize.go): the heap would
// count them as live data and let garbage grow by as much again before
// collecting, and a decode step streams every weight once, which in 4 KiB
// pages costs a TLB miss and a page walk every 4 KiB. With the weights in
// huge pages, decode steps of the 1.1B q4_0 model took 15% less time at
// batch 1 and 18% less at batch 8 (docs/performance.md, session 4).
func allocWeights(n int) ([]byte, error) {
	b, err := hugemem.Alloc(n)
	if err != nil {
		return nil, fmt.Errorf("weights: %w", err)
	}
	return b, nil
}

// freeWeights releases a buffer from allocWeights; nothing may use it after.
func freeWeights(b []byte) { hugemem.Free(b) }
