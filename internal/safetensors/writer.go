package safetensors

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
)

// Writer builds one .safetensors file the way the reference implementation
// lays it out: data ordered by dtype from the widest alignment down, then
// by name, so every tensor starts aligned to its element size; the header
// lists tensors in data order after "__metadata__", and is padded with
// spaces to a multiple of 8 bytes so the data buffer starts 8-aligned. The
// zero value is not usable; call NewWriter.
type Writer struct {
	metadata map[string]string
	tensors  []writerTensor
	names    map[string]bool
}

type writerTensor struct {
	name  string
	dtype DType
	shape []int
	size  uint64
	write func(io.Writer) error
}

// NewWriter returns an empty Writer.
func NewWriter() *Writer {
	return &Writer{metadata: map[string]string{}, names: map[string]bool{}}
}

// SetMetadata sets a key of the header's "__metadata__" map.
func (w *Writer) SetMetadata(key, value string) { w.metadata[key] = value }

// Add adds a tensor; shape is in PyTorch order and data must be exactly the
// size it implies. data is not copied and must not change until the file
// is written.
func (w *Writer) Add(name string, dtype DType, shape []int, data []byte) error {
	size, err := w.check(name, dtype, shape)
	if err != nil {
		return err
	}
	if uint64(len(data)) != size {
		return fmt.Errorf("safetensors writer: tensor %q: %d bytes of data, want %d for %s %v", name, len(data), size, dtype, shape)
	}
	w.add(name, dtype, shape, size, func(out io.Writer) error {
		_, err := out.Write(data)
		return err
	})
	return nil
}

// AddFunc adds a tensor whose data write produces when the file is written,
// so a converter can dequantize one tensor at a time instead of holding the
// whole model. write must produce exactly the size shape implies.
func (w *Writer) AddFunc(name string, dtype DType, shape []int, write func(io.Writer) error) error {
	size, err := w.check(name, dtype, shape)
	if err != nil {
		return err
	}
	w.add(name, dtype, shape, size, write)
	return nil
}

func (w *Writer) check(name string, dtype DType, shape []int) (uint64, error) {
	if name == "__metadata__" {
		return 0, errors.New(`safetensors writer: "__metadata__" is reserved and cannot name a tensor`)
	}
	if w.names[name] {
		return 0, fmt.Errorf("safetensors writer: tensor %q added twice", name)
	}
	if !dtype.Known() {
		return 0, fmt.Errorf("safetensors writer: tensor %q: %w %s", name, ErrUnknownDType, dtype)
	}
	if len(shape) > MaxRank {
		return 0, fmt.Errorf("safetensors writer: tensor %q: %d dimensions (at most %d)", name, len(shape), MaxRank)
	}
	for _, d := range shape {
		if d < 0 || uint64(d) > MaxDim {
			return 0, fmt.Errorf("safetensors writer: tensor %q: dimension %d in %v", name, d, shape)
		}
	}
	size, err := byteSize(dtype, shape)
	if err != nil {
		return 0, fmt.Errorf("safetensors writer: tensor %q: %s %v: %w", name, dtype, shape, err)
	}
	return size, nil
}

func (w *Writer) add(name string, dtype DType, shape []int, size uint64, write func(io.Writer) error) {
	w.names[name] = true
	w.tensors = append(w.tensors, writerTensor{name, dtype, slices.Clone(shape), size, write})
}

// header returns the padded header and the tensors in data order.
func (w *Writer) header() ([]byte, []writerTensor, error) {
	order := slices.Clone(w.tensors)
	slices.SortStableFunc(order, func(a, b writerTensor) int {
		if c := cmp.Compare(b.dtype, a.dtype); c != 0 {
			return c
		}
		return cmp.Compare(a.name, b.name)
	})
	var h bytes.Buffer
	h.WriteByte('{')
	if len(w.metadata) > 0 {
		writeJSONString(&h, "__metadata__")
		h.WriteString(":{")
		keys := make([]string, 0, len(w.metadata))
		for k := range w.metadata {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for i, k := range keys {
			if i > 0 {
				h.WriteByte(',')
			}
			writeJSONString(&h, k)
			h.WriteByte(':')
			writeJSONString(&h, w.metadata[k])
		}
		h.WriteByte('}')
	}
	var off uint64
	for i, t := range order {
		if i > 0 || len(w.metadata) > 0 {
			h.WriteByte(',')
		}
		writeJSONString(&h, t.name)
		h.WriteString(`:{"dtype":"`)
		h.WriteString(t.dtype.String())
		h.WriteString(`","shape":[`)
		for j, d := range t.shape {
			if j > 0 {
				h.WriteByte(',')
			}
			h.WriteString(strconv.Itoa(d))
		}
		h.WriteString(`],"data_offsets":[`)
		h.WriteString(strconv.FormatUint(off, 10))
		h.WriteByte(',')
		off += t.size
		h.WriteString(strconv.FormatUint(off, 10))
		h.WriteString("]}")
	}
	h.WriteByte('}')
	for h.Len()%8 != 0 {
		h.WriteByte(' ')
	}
	if h.Len() > MaxHeaderSize {
		return nil, nil, fmt.Errorf("safetensors writer: header of %d bytes exceeds the limit of %d: %w", h.Len(), MaxHeaderSize, ErrHeaderTooLarge)
	}
	return h.Bytes(), order, nil
}

// writeJSONString writes s as a JSON string without the HTML escaping
// encoding/json does by default, as serde_json (the reference) writes it.
func writeJSONString(b *bytes.Buffer, s string) {
	enc := json.NewEncoder(b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // cannot fail for a string
	b.Truncate(b.Len() - 1)
}

// WriteTo writes the file.
func (w *Writer) WriteTo(out io.Writer) (int64, error) {
	header, order, err := w.header()
	if err != nil {
		return 0, err
	}
	bw := bufio.NewWriterSize(out, 1<<20)
	cw := &countWriter{w: bw}
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(header)))
	if _, err := cw.Write(n[:]); err != nil {
		return cw.n, fmt.Errorf("safetensors writer: %w", err)
	}
	if _, err := cw.Write(header); err != nil {
		return cw.n, fmt.Errorf("safetensors writer: %w", err)
	}
	for _, t := range order {
		start := cw.n
		lw := &limitedWriter{w: cw, left: t.size}
		if err := t.write(lw); err != nil {
			return cw.n, fmt.Errorf("safetensors writer: tensor %q: %w", t.name, err)
		}
		if got := uint64(cw.n - start); got != t.size {
			return cw.n, fmt.Errorf("safetensors writer: tensor %q: wrote %d bytes, want %d for %s %v", t.name, got, t.size, t.dtype, t.shape)
		}
	}
	if err := bw.Flush(); err != nil {
		return cw.n, fmt.Errorf("safetensors writer: %w", err)
	}
	return cw.n, nil
}

// WriteFile writes the file to path through a temporary file in the same
// directory, renamed into place once complete, so a crash never leaves a
// truncated file under the final name.
func (w *Writer) WriteFile(path string) (err error) {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("safetensors writer: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := w.WriteTo(tmp); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("safetensors writer: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("safetensors writer: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("safetensors writer: %w", err)
	}
	return nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// limitedWriter refuses to write past one tensor's size, so a faulty fill
// function fails loudly instead of shifting every later tensor.
type limitedWriter struct {
	w    io.Writer
	left uint64
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if uint64(len(p)) > l.left {
		return 0, fmt.Errorf("%d bytes more than the tensor's size", uint64(len(p))-l.left)
	}
	n, err := l.w.Write(p)
	l.left -= uint64(n)
	return n, err
}
