// Package gguf reads and writes GGUF model files (versions 2 and 3). Open
// maps the file read-only and hands out tensor data as slices of the
// mapping, so weights are never copied; every count, length, offset and
// size in the header is checked against the file before it is used, so a
// hostile file yields an error, not a crash or a huge allocation. It knows
// nothing of model architectures and nothing of the network.
package gguf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"sort"
)

// Magic is the first four bytes of every GGUF file.
const Magic = "GGUF"

// DefaultAlignment is the data alignment when general.alignment is absent.
const DefaultAlignment = 32

// Limits that keep a hostile header from asking for absurd work. They are
// far above what real models use.
const (
	MaxDims       = 4       // GGML_MAX_DIMS
	MaxNameLen    = 1 << 10 // tensor names (ggml itself allows 63 bytes)
	MaxKeyLen     = 1 << 16
	maxArrayDepth = 8
	maxAlignment  = 1 << 30
)

// Sentinel errors, wrapped in a *FormatError or returned by the getters.
var (
	ErrNotGGUF     = errors.New("not a GGUF file")
	ErrVersion     = errors.New("unsupported GGUF version")
	ErrTruncated   = errors.New("truncated")
	ErrCorrupt     = errors.New("corrupt")
	ErrNotFound    = errors.New("not found")
	ErrWrongType   = errors.New("wrong value type")
	ErrUnknownType = errors.New("unknown type")
)

// FormatError says which file, and which part of it, is malformed.
type FormatError struct {
	File   string // the name given to Open or Parse
	Where  string // "header", `key "general.alignment"`, `tensor "output.weight"`
	Offset int64  // byte offset in the file where the problem was found
	Err    error  // one of the sentinels above, possibly wrapped with detail
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("gguf %s: %s (at byte %d): %v", e.File, e.Where, e.Offset, e.Err)
}

func (e *FormatError) Unwrap() error { return e.Err }

// Tensor describes one tensor. Data aliases the file's mapping: it is valid
// until the File is closed and must not be written.
type Tensor struct {
	Name string
	Type Type
	// Dims are ggml's ne: Dims[0] is the number of elements in a row
	// (contiguous), Dims[1] the number of rows, and so on.
	Dims []uint64
	// Offset is where the data starts, relative to the data section.
	Offset uint64
	Data   []byte
}

// NumElements is the product of the dimensions.
func (t *Tensor) NumElements() uint64 {
	n := uint64(1)
	for _, d := range t.Dims {
		n *= d
	}
	return n
}

// File is a parsed GGUF file. Its methods are safe for concurrent use; Close
// must not run while tensor data is still in use.
type File struct {
	Name       string // path or name given to Open/Parse, used in errors
	Version    uint32
	Alignment  uint64
	DataOffset uint64 // where the data section starts in the file

	keys    []string // in file order
	kv      map[string]Value
	tensors []*Tensor
	byName  map[string]*Tensor
	data    []byte
	unmap   func() error
}

// Keys returns the metadata keys in file order.
func (f *File) Keys() []string { return append([]string(nil), f.keys...) }

// Value returns the metadata value of key.
func (f *File) Value(key string) (Value, bool) {
	v, ok := f.kv[key]
	return v, ok
}

// Tensors returns the tensors in file order.
func (f *File) Tensors() []*Tensor { return append([]*Tensor(nil), f.tensors...) }

// Tensor returns the named tensor.
func (f *File) Tensor(name string) (*Tensor, bool) {
	t, ok := f.byName[name]
	return t, ok
}

// Size is the size of the file in bytes.
func (f *File) Size() int64 { return int64(len(f.data)) }

// Close releases the mapping; tensor data must not be used afterwards.
func (f *File) Close() error {
	if f.unmap == nil {
		return nil
	}
	u := f.unmap
	f.unmap = nil
	f.data = nil
	if err := u(); err != nil {
		return fmt.Errorf("gguf %s: unmap: %w", f.Name, err)
	}
	return nil
}

func (f *File) get(key string, want ValueType) (Value, error) {
	v, ok := f.kv[key]
	if !ok {
		return Value{}, fmt.Errorf("gguf %s: key %q: %w", f.Name, key, ErrNotFound)
	}
	if want != v.typ && !(want == Array && v.typ == Array) {
		return Value{}, fmt.Errorf("gguf %s: key %q is %s, want %s: %w", f.Name, key, v.typ, want, ErrWrongType)
	}
	return v, nil
}

func (f *File) wrongType(key string, v Value, want string) error {
	t := v.typ.String()
	if v.typ == Array {
		t = "array of " + v.elem.String()
	}
	return fmt.Errorf("gguf %s: key %q is %s, want %s: %w", f.Name, key, t, want, ErrWrongType)
}

// String returns a string value.
func (f *File) String(key string) (string, error) {
	v, err := f.get(key, String)
	if err != nil {
		return "", err
	}
	return v.x.(string), nil
}

// Uint returns a non-negative integer value of any integer type.
func (f *File) Uint(key string) (uint64, error) {
	v, ok := f.kv[key]
	if !ok {
		return 0, fmt.Errorf("gguf %s: key %q: %w", f.Name, key, ErrNotFound)
	}
	u, ok := v.asUint()
	if !ok {
		return 0, f.wrongType(key, v, "a non-negative integer")
	}
	return u, nil
}

// Int returns an integer value of any integer type that fits int64.
func (f *File) Int(key string) (int64, error) {
	v, ok := f.kv[key]
	if !ok {
		return 0, fmt.Errorf("gguf %s: key %q: %w", f.Name, key, ErrNotFound)
	}
	i, ok := v.asInt()
	if !ok {
		return 0, f.wrongType(key, v, "an integer")
	}
	return i, nil
}

// Float returns a float32 or float64 value.
func (f *File) Float(key string) (float64, error) {
	v, ok := f.kv[key]
	if !ok {
		return 0, fmt.Errorf("gguf %s: key %q: %w", f.Name, key, ErrNotFound)
	}
	switch x := v.x.(type) {
	case float32:
		return float64(x), nil
	case float64:
		return x, nil
	}
	return 0, f.wrongType(key, v, "a float")
}

// Bool returns a bool value.
func (f *File) Bool(key string) (bool, error) {
	v, err := f.get(key, Bool)
	if err != nil {
		return false, err
	}
	return v.x.(bool), nil
}

// Strings returns an array of strings. The slice is shared: do not modify it.
func (f *File) Strings(key string) ([]string, error) {
	v, err := f.get(key, Array)
	if err != nil {
		return nil, err
	}
	s, ok := v.x.([]string)
	if !ok {
		return nil, f.wrongType(key, v, "array of string")
	}
	return s, nil
}

// Float32s returns an array of float32 (float64 elements are converted).
func (f *File) Float32s(key string) ([]float32, error) {
	v, err := f.get(key, Array)
	if err != nil {
		return nil, err
	}
	switch x := v.x.(type) {
	case []float32:
		return append([]float32(nil), x...), nil
	case []float64:
		out := make([]float32, len(x))
		for i, e := range x {
			out[i] = float32(e)
		}
		return out, nil
	}
	return nil, f.wrongType(key, v, "array of float")
}

// Int32s returns an array of integers of any type whose values fit int32.
func (f *File) Int32s(key string) ([]int32, error) {
	v, err := f.get(key, Array)
	if err != nil {
		return nil, err
	}
	if v.elem == Array || v.elem == String || v.elem == Bool || v.elem == Float32 || v.elem == Float64 {
		return nil, f.wrongType(key, v, "array of integer")
	}
	n := v.Len()
	out := make([]int32, n)
	for i := range n {
		e := v.Index(i)
		x, ok := e.asInt()
		if !ok || x < math.MinInt32 || x > math.MaxInt32 {
			return nil, fmt.Errorf("gguf %s: key %q: element %d out of int32 range: %w", f.Name, key, i, ErrWrongType)
		}
		out[i] = int32(x)
	}
	return out, nil
}

// Index returns element i of an array value.
func (v Value) Index(i int) Value {
	switch x := v.x.(type) {
	case []Value:
		return x[i]
	case []string:
		return Value{typ: String, x: x[i]}
	case []bool:
		return Value{typ: Bool, x: x[i]}
	case []uint8:
		return Value{typ: Uint8, x: x[i]}
	case []int8:
		return Value{typ: Int8, x: x[i]}
	case []uint16:
		return Value{typ: Uint16, x: x[i]}
	case []int16:
		return Value{typ: Int16, x: x[i]}
	case []uint32:
		return Value{typ: Uint32, x: x[i]}
	case []int32:
		return Value{typ: Int32, x: x[i]}
	case []float32:
		return Value{typ: Float32, x: x[i]}
	case []uint64:
		return Value{typ: Uint64, x: x[i]}
	case []int64:
		return Value{typ: Int64, x: x[i]}
	case []float64:
		return Value{typ: Float64, x: x[i]}
	}
	panic(fmt.Sprintf("gguf: Index of a %s value", v.typ))
}

// Parse parses a GGUF file held in data; name is used in errors. Tensor
// data aliases data.
func Parse(name string, data []byte) (*File, error) {
	p := &parser{f: &File{Name: name, data: data, Alignment: DefaultAlignment}, data: data, where: "header"}
	if err := p.parse(); err != nil {
		return nil, err
	}
	return p.f, nil
}

type parser struct {
	f     *File
	data  []byte
	off   uint64
	where string
}

func (p *parser) errf(off uint64, err error, format string, args ...any) error {
	if format != "" {
		err = fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), err)
	}
	return &FormatError{File: p.f.Name, Where: p.where, Offset: int64(off), Err: err}
}

func (p *parser) remaining() uint64 { return uint64(len(p.data)) - p.off }

func (p *parser) take(n uint64, what string) ([]byte, error) {
	if n > p.remaining() {
		return nil, p.errf(p.off, ErrTruncated, "%s needs %d bytes, %d left", what, n, p.remaining())
	}
	b := p.data[p.off : p.off+n]
	p.off += n
	return b, nil
}

func (p *parser) u32(what string) (uint32, error) {
	b, err := p.take(4, what)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b), nil
}

func (p *parser) u64(what string) (uint64, error) {
	b, err := p.take(8, what)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b), nil
}

func (p *parser) str(what string, max uint64) (string, error) {
	at := p.off
	n, err := p.u64(what + " length")
	if err != nil {
		return "", err
	}
	if n > max {
		return "", p.errf(at, ErrCorrupt, "%s length %d exceeds the limit %d", what, n, max)
	}
	b, err := p.take(n, what)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

func (p *parser) parse() error {
	b, err := p.take(4, "magic")
	if err != nil {
		return p.errf(0, ErrNotGGUF, "file shorter than the magic")
	}
	if string(b) != Magic {
		return p.errf(0, ErrNotGGUF, "magic %q", b)
	}
	v, err := p.u32("version")
	if err != nil {
		return err
	}
	if v != 2 && v != 3 {
		if bits.ReverseBytes32(v) == 2 || bits.ReverseBytes32(v) == 3 {
			return p.errf(4, ErrVersion, "big-endian GGUF is not supported")
		}
		return p.errf(4, ErrVersion, "version %d (want 2 or 3)", v)
	}
	p.f.Version = v
	nTensors, err := p.u64("tensor count")
	if err != nil {
		return err
	}
	nKV, err := p.u64("metadata count")
	if err != nil {
		return err
	}
	// Each key/value takes at least 8+4+1 bytes and each tensor info
	// 8+4+4+8: counts beyond what the file could hold are lies, and
	// checking them first bounds every allocation below.
	if nKV > p.remaining()/13 {
		return p.errf(16, ErrCorrupt, "metadata count %d cannot fit in %d bytes", nKV, p.remaining())
	}
	if nTensors > p.remaining()/24 {
		return p.errf(8, ErrCorrupt, "tensor count %d cannot fit in %d bytes", nTensors, p.remaining())
	}
	p.f.kv = make(map[string]Value, nKV)
	p.f.keys = make([]string, 0, nKV)
	for i := uint64(0); i < nKV; i++ {
		p.where = fmt.Sprintf("metadata entry %d", i)
		if err := p.parseKV(); err != nil {
			return err
		}
	}
	if err := p.parseAlignment(); err != nil {
		return err
	}
	p.f.tensors = make([]*Tensor, 0, nTensors)
	p.f.byName = make(map[string]*Tensor, nTensors)
	for i := uint64(0); i < nTensors; i++ {
		p.where = fmt.Sprintf("tensor info %d", i)
		if err := p.parseTensorInfo(); err != nil {
			return err
		}
	}
	p.where = "data section"
	start := alignUp(p.off, p.f.Alignment)
	p.f.DataOffset = start
	if nTensors == 0 {
		return nil
	}
	if start > uint64(len(p.data)) {
		return p.errf(p.off, ErrTruncated, "data section would start at %d, past the end", start)
	}
	return p.placeTensors(start)
}

func (p *parser) parseKV() error {
	at := p.off
	key, err := p.str("key", MaxKeyLen)
	if err != nil {
		return err
	}
	p.where = fmt.Sprintf("key %q", key)
	if _, dup := p.f.kv[key]; dup {
		return p.errf(at, ErrCorrupt, "duplicate key")
	}
	t, err := p.u32("value type")
	if err != nil {
		return err
	}
	v, err := p.value(ValueType(t), 0)
	if err != nil {
		return err
	}
	p.f.kv[key] = v
	p.f.keys = append(p.f.keys, key)
	return nil
}

func (p *parser) value(t ValueType, depth int) (Value, error) {
	at := p.off
	if !t.known() {
		return Value{}, p.errf(at, ErrUnknownType, "value type %d", uint32(t))
	}
	switch t {
	case String:
		s, err := p.str("string", math.MaxUint64)
		if err != nil {
			return Value{}, err
		}
		return Value{typ: String, x: s}, nil
	case Array:
		return p.array(depth)
	}
	b, err := p.take(t.size(), t.String())
	if err != nil {
		return Value{}, err
	}
	return scalar(t, b), nil
}

func scalar(t ValueType, b []byte) Value {
	le := binary.LittleEndian
	var x any
	switch t {
	case Uint8:
		x = b[0]
	case Int8:
		x = int8(b[0])
	case Bool:
		x = b[0] != 0
	case Uint16:
		x = le.Uint16(b)
	case Int16:
		x = int16(le.Uint16(b))
	case Uint32:
		x = le.Uint32(b)
	case Int32:
		x = int32(le.Uint32(b))
	case Float32:
		x = math.Float32frombits(le.Uint32(b))
	case Uint64:
		x = le.Uint64(b)
	case Int64:
		x = int64(le.Uint64(b))
	case Float64:
		x = math.Float64frombits(le.Uint64(b))
	}
	return Value{typ: t, x: x}
}

func (p *parser) array(depth int) (Value, error) {
	at := p.off
	if depth >= maxArrayDepth {
		return Value{}, p.errf(at, ErrCorrupt, "arrays nested deeper than %d", maxArrayDepth)
	}
	et, err := p.u32("array element type")
	if err != nil {
		return Value{}, err
	}
	elem := ValueType(et)
	if !elem.known() {
		return Value{}, p.errf(at, ErrUnknownType, "array element type %d", et)
	}
	n, err := p.u64("array length")
	if err != nil {
		return Value{}, err
	}
	if n > p.remaining()/elem.minSize() {
		return Value{}, p.errf(at, ErrCorrupt, "array of %d %s cannot fit in %d bytes", n, elem, p.remaining())
	}
	v := Value{typ: Array, elem: elem}
	switch elem {
	case String:
		s := make([]string, n)
		for i := range s {
			if s[i], err = p.str("string", math.MaxUint64); err != nil {
				return Value{}, err
			}
		}
		v.x = s
	case Array:
		s := make([]Value, n)
		for i := range s {
			if s[i], err = p.value(Array, depth+1); err != nil {
				return Value{}, err
			}
		}
		v.x = s
	default:
		b, err := p.take(n*elem.size(), "array")
		if err != nil {
			return Value{}, err
		}
		v.x = scalarSlice(elem, b, int(n))
	}
	return v, nil
}

func scalarSlice(t ValueType, b []byte, n int) any {
	le := binary.LittleEndian
	switch t {
	case Uint8:
		return append([]uint8(nil), b...)
	case Int8:
		s := make([]int8, n)
		for i := range s {
			s[i] = int8(b[i])
		}
		return s
	case Bool:
		s := make([]bool, n)
		for i := range s {
			s[i] = b[i] != 0
		}
		return s
	case Uint16:
		s := make([]uint16, n)
		for i := range s {
			s[i] = le.Uint16(b[2*i:])
		}
		return s
	case Int16:
		s := make([]int16, n)
		for i := range s {
			s[i] = int16(le.Uint16(b[2*i:]))
		}
		return s
	case Uint32:
		s := make([]uint32, n)
		for i := range s {
			s[i] = le.Uint32(b[4*i:])
		}
		return s
	case Int32:
		s := make([]int32, n)
		for i := range s {
			s[i] = int32(le.Uint32(b[4*i:]))
		}
		return s
	case Float32:
		s := make([]float32, n)
		for i := range s {
			s[i] = math.Float32frombits(le.Uint32(b[4*i:]))
		}
		return s
	case Uint64:
		s := make([]uint64, n)
		for i := range s {
			s[i] = le.Uint64(b[8*i:])
		}
		return s
	case Int64:
		s := make([]int64, n)
		for i := range s {
			s[i] = int64(le.Uint64(b[8*i:]))
		}
		return s
	case Float64:
		s := make([]float64, n)
		for i := range s {
			s[i] = math.Float64frombits(le.Uint64(b[8*i:]))
		}
		return s
	}
	return nil
}

func (p *parser) parseAlignment() error {
	v, ok := p.f.kv["general.alignment"]
	if !ok {
		return nil
	}
	p.where = `key "general.alignment"`
	a, ok := v.x.(uint32)
	if !ok {
		return p.errf(p.off, ErrWrongType, "is %s, want uint32", v.typ)
	}
	if a == 0 || a&(a-1) != 0 || a > maxAlignment {
		return p.errf(p.off, ErrCorrupt, "alignment %d is not a power of two up to %d", a, maxAlignment)
	}
	p.f.Alignment = uint64(a)
	return nil
}

func (p *parser) parseTensorInfo() error {
	at := p.off
	name, err := p.str("tensor name", MaxNameLen)
	if err != nil {
		return err
	}
	p.where = fmt.Sprintf("tensor %q", name)
	if _, dup := p.f.byName[name]; dup {
		return p.errf(at, ErrCorrupt, "duplicate tensor name")
	}
	nd, err := p.u32("dimension count")
	if err != nil {
		return err
	}
	if nd == 0 || nd > MaxDims {
		return p.errf(at, ErrCorrupt, "%d dimensions (want 1 to %d)", nd, MaxDims)
	}
	dims := make([]uint64, nd)
	n := uint64(1)
	for i := range dims {
		if dims[i], err = p.u64("dimension"); err != nil {
			return err
		}
		if dims[i] == 0 || dims[i] > math.MaxInt64 {
			return p.errf(at, ErrCorrupt, "dimension %d is %d", i, dims[i])
		}
		hi, lo := bits.Mul64(n, dims[i])
		if hi != 0 || lo > math.MaxInt64 {
			return p.errf(at, ErrCorrupt, "dimensions %v overflow", dims)
		}
		n = lo
	}
	t, err := p.u32("tensor type")
	if err != nil {
		return err
	}
	typ := Type(t)
	if !typ.Known() {
		return p.errf(at, ErrUnknownType, "tensor type %d", t)
	}
	if dims[0]%typ.BlockSize() != 0 {
		return p.errf(at, ErrCorrupt, "row length %d is not a multiple of the %s block size %d", dims[0], typ, typ.BlockSize())
	}
	off, err := p.u64("tensor offset")
	if err != nil {
		return err
	}
	if off%p.f.Alignment != 0 {
		return p.errf(at, ErrCorrupt, "offset %d is not a multiple of the alignment %d", off, p.f.Alignment)
	}
	tt := &Tensor{Name: name, Type: typ, Dims: dims, Offset: off}
	p.f.tensors = append(p.f.tensors, tt)
	p.f.byName[name] = tt
	return nil
}

// placeTensors checks that every tensor lies inside the data section and
// that no two overlap, then points each at its bytes.
func (p *parser) placeTensors(start uint64) error {
	avail := uint64(len(p.data)) - start
	order := make([]*Tensor, len(p.f.tensors))
	copy(order, p.f.tensors)
	sort.Slice(order, func(i, j int) bool { return order[i].Offset < order[j].Offset })
	var prevEnd uint64
	var prev *Tensor
	for _, t := range order {
		p.where = fmt.Sprintf("tensor %q", t.Name)
		hi, size := bits.Mul64(t.NumElements()/t.Type.BlockSize(), t.Type.TypeSize())
		if hi != 0 || size > avail || t.Offset > avail-size {
			return p.errf(start+min(t.Offset, avail), ErrTruncated,
				"data [%d, +%d) of the data section runs past its end (%d bytes)", t.Offset, size, avail)
		}
		if prev != nil && t.Offset < prevEnd {
			return p.errf(start+t.Offset, ErrCorrupt, "data overlaps tensor %q", prev.Name)
		}
		t.Data = p.data[start+t.Offset : start+t.Offset+size : start+t.Offset+size]
		prev, prevEnd = t, t.Offset+size
	}
	return nil
}

func alignUp(n, a uint64) uint64 {
	if r := n % a; r != 0 {
		return n + a - r
	}
	return n
}
