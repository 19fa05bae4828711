package gguf

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// Writer builds a GGUF v3 file: metadata in the order set, tensors in the
// order added, each tensor's data aligned. The zero value is not usable;
// call NewWriter.
type Writer struct {
	alignment uint64
	keys      []string
	kv        map[string]Value
	tensors   []writerTensor
	names     map[string]bool
}

type writerTensor struct {
	name string
	typ  Type
	dims []uint64
	data []byte
}

// NewWriter returns an empty Writer with the default alignment.
func NewWriter() *Writer {
	return &Writer{alignment: DefaultAlignment, kv: map[string]Value{}, names: map[string]bool{}}
}

// SetAlignment sets the data alignment and records it as general.alignment.
func (w *Writer) SetAlignment(a uint32) error {
	if a == 0 || a&(a-1) != 0 || a > maxAlignment {
		return fmt.Errorf("gguf writer: alignment %d is not a power of two up to %d", a, maxAlignment)
	}
	w.alignment = uint64(a)
	return w.Set("general.alignment", a)
}

// Set sets a metadata key; x is anything ValueOf accepts. Setting a key
// again replaces its value and keeps its position.
func (w *Writer) Set(key string, x any) error {
	v, err := ValueOf(x)
	if err != nil {
		return fmt.Errorf("gguf writer: key %q: %w", key, err)
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("gguf writer: key %q longer than %d bytes", key[:32], MaxKeyLen)
	}
	if _, ok := w.kv[key]; !ok {
		w.keys = append(w.keys, key)
	}
	w.kv[key] = v
	return nil
}

// AddTensor adds a tensor; dims are ggml's ne (row length first) and data
// must be exactly the size they imply. data is not copied.
func (w *Writer) AddTensor(name string, typ Type, dims []uint64, data []byte) error {
	if w.names[name] {
		return fmt.Errorf("gguf writer: tensor %q added twice", name)
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("gguf writer: tensor name %q longer than %d bytes", name[:32], MaxNameLen)
	}
	if !typ.Known() {
		return fmt.Errorf("gguf writer: tensor %q: %w %d", name, ErrUnknownType, uint32(typ))
	}
	if len(dims) == 0 || len(dims) > MaxDims {
		return fmt.Errorf("gguf writer: tensor %q: %d dimensions (want 1 to %d)", name, len(dims), MaxDims)
	}
	n := uint64(1)
	for _, d := range dims {
		if d == 0 {
			return fmt.Errorf("gguf writer: tensor %q: zero dimension in %v", name, dims)
		}
		n *= d
	}
	if dims[0]%typ.BlockSize() != 0 {
		return fmt.Errorf("gguf writer: tensor %q: row length %d is not a multiple of the %s block size", name, dims[0], typ)
	}
	if want := n / typ.BlockSize() * typ.TypeSize(); uint64(len(data)) != want {
		return fmt.Errorf("gguf writer: tensor %q: %d bytes of data, want %d for %s %v", name, len(data), want, typ, dims)
	}
	w.names[name] = true
	w.tensors = append(w.tensors, writerTensor{name, typ, append([]uint64(nil), dims...), data})
	return nil
}

// WriteTo writes the file.
func (w *Writer) WriteTo(out io.Writer) (int64, error) {
	cw := &countWriter{w: bufio.NewWriter(out)}
	e := &encoder{w: cw}
	e.raw([]byte(Magic))
	e.u32(3)
	e.u64(uint64(len(w.tensors)))
	e.u64(uint64(len(w.keys)))
	for _, k := range w.keys {
		e.str(k)
		v := w.kv[k]
		e.u32(uint32(v.typ))
		e.value(v)
	}
	var off uint64
	for _, t := range w.tensors {
		e.str(t.name)
		e.u32(uint32(len(t.dims)))
		for _, d := range t.dims {
			e.u64(d)
		}
		e.u32(uint32(t.typ))
		e.u64(off)
		off = alignUp(off+uint64(len(t.data)), w.alignment)
	}
	e.pad(w.alignment)
	// The data section starts aligned, so aligning the file position
	// before each tensor lands on the offsets written above.
	for _, t := range w.tensors {
		e.pad(w.alignment)
		e.raw(t.data)
	}
	if e.err == nil {
		e.err = cw.w.(*bufio.Writer).Flush()
	}
	if e.err != nil {
		return cw.n, fmt.Errorf("gguf writer: %w", e.err)
	}
	return cw.n, nil
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

// encoder writes little-endian GGUF fields and remembers the first error.
type encoder struct {
	w   *countWriter
	err error
	buf [8]byte
}

func (e *encoder) raw(b []byte) {
	if e.err == nil {
		_, e.err = e.w.Write(b)
	}
}

func (e *encoder) u32(v uint32) {
	binary.LittleEndian.PutUint32(e.buf[:4], v)
	e.raw(e.buf[:4])
}

func (e *encoder) u64(v uint64) {
	binary.LittleEndian.PutUint64(e.buf[:8], v)
	e.raw(e.buf[:8])
}

func (e *encoder) str(s string) {
	e.u64(uint64(len(s)))
	e.raw([]byte(s))
}

func (e *encoder) pad(a uint64) {
	var zero [64]byte
	for n := alignUp(uint64(e.w.n), a) - uint64(e.w.n); n > 0 && e.err == nil; {
		k := min(n, uint64(len(zero)))
		e.raw(zero[:k])
		n -= k
	}
}

func (e *encoder) value(v Value) {
	switch x := v.x.(type) {
	case uint8:
		e.raw([]byte{x})
	case int8:
		e.raw([]byte{byte(x)})
	case bool:
		if x {
			e.raw([]byte{1})
		} else {
			e.raw([]byte{0})
		}
	case uint16:
		binary.LittleEndian.PutUint16(e.buf[:2], x)
		e.raw(e.buf[:2])
	case int16:
		binary.LittleEndian.PutUint16(e.buf[:2], uint16(x))
		e.raw(e.buf[:2])
	case uint32:
		e.u32(x)
	case int32:
		e.u32(uint32(x))
	case float32:
		e.u32(math.Float32bits(x))
	case uint64:
		e.u64(x)
	case int64:
		e.u64(uint64(x))
	case float64:
		e.u64(math.Float64bits(x))
	case string:
		e.str(x)
	default:
		if v.typ != Array {
			e.err = errors.New("gguf writer: invalid value")
			return
		}
		e.u32(uint32(v.elem))
		n := v.Len()
		e.u64(uint64(n))
		for i := range n {
			// Elements carry no type tag of their own; a nested
			// array's payload starts with its element type.
			e.value(v.Index(i))
		}
	}
}
