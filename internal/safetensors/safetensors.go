// Package safetensors reads and writes .safetensors files and opens Hugging
// Face model directories (config.json, generation_config.json, single-file
// or sharded weights). Open maps a file read-only and hands out tensor data
// as slices of the mapping, so weights are never copied; every length,
// offset, shape and dtype in a header is checked against the file before it
// is used, so a hostile or half-downloaded file yields an error naming the
// file and the tensor, not a crash or a huge allocation. It parses
// config.json but implements no architecture, and it knows nothing of the
// network.
package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"unicode/utf8"
)

// Limits that keep a hostile header from asking for absurd work.
const (
	// MaxHeaderSize is the largest JSON header accepted. The reference
	// implementation (huggingface/safetensors) uses the same 100 MB limit,
	// so no file it writes or reads is refused here.
	MaxHeaderSize = 100_000_000
	// MaxRank is the largest number of dimensions of a tensor.
	MaxRank = 16
	// MaxDim is the largest single dimension. Tensors with data are bounded
	// by the file anyway; this bounds empty ones (a zero dimension) so that
	// strides computed from their shape cannot overflow.
	MaxDim = 1 << 40
)

// Sentinel errors, wrapped in a *FormatError or in the errors of OpenDir
// and the config parsers.
var (
	ErrTruncated      = errors.New("truncated")
	ErrHeaderTooLarge = errors.New("header too large")
	ErrCorrupt        = errors.New("corrupt")
	ErrUnknownDType   = errors.New("unknown dtype")
	ErrUnsupported    = errors.New("not supported")
	ErrNotFound       = errors.New("not found")
	ErrNoWeights      = errors.New("no safetensors weights")
	ErrConfig         = errors.New("invalid config")
)

// FormatError says which file, and which part of it, is malformed.
type FormatError struct {
	File  string // the name given to Open or Parse
	Where string // "header", `tensor "lm_head.weight"`, `key "__metadata__"`
	Err   error  // one of the sentinels above, wrapped with detail
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("safetensors %s: %s: %v", e.File, e.Where, e.Err)
}

func (e *FormatError) Unwrap() error { return e.Err }

// DType is a tensor element type. The values follow the order of the
// reference implementation's enum (increasing alignment), which the Writer
// uses to lay out data.
type DType uint8

// The dtypes of the format. Only F32, F16 and BF16 are meant for compute
// (see ComputeSupported); the others are parsed and their sizes checked.
const (
	InvalidDType DType = iota
	BOOL
	F4
	F6_E2M3
	F6_E3M2
	U8
	I8
	F8_E5M2
	F8_E4M3
	F8_E8M0
	I16
	U16
	F16
	BF16
	I32
	U32
	F32
	C64
	F64
	I64
	U64
	numDTypes
)

var dtypeNames = [numDTypes]string{
	BOOL: "BOOL", F4: "F4", F6_E2M3: "F6_E2M3", F6_E3M2: "F6_E3M2",
	U8: "U8", I8: "I8", F8_E5M2: "F8_E5M2", F8_E4M3: "F8_E4M3", F8_E8M0: "F8_E8M0",
	I16: "I16", U16: "U16", F16: "F16", BF16: "BF16",
	I32: "I32", U32: "U32", F32: "F32", C64: "C64", F64: "F64", I64: "I64", U64: "U64",
}

var dtypeBits = [numDTypes]uint64{
	BOOL: 8, F4: 4, F6_E2M3: 6, F6_E3M2: 6,
	U8: 8, I8: 8, F8_E5M2: 8, F8_E4M3: 8, F8_E8M0: 8,
	I16: 16, U16: 16, F16: 16, BF16: 16,
	I32: 32, U32: 32, F32: 32, C64: 64, F64: 64, I64: 64, U64: 64,
}

// ParseDType returns the dtype named as in a header ("F32", "BF16", ...).
func ParseDType(s string) (DType, bool) {
	for d := BOOL; d < numDTypes; d++ {
		if dtypeNames[d] == s {
			return d, true
		}
	}
	return InvalidDType, false
}

func (d DType) String() string {
	if d.Known() {
		return dtypeNames[d]
	}
	return "DType(" + strconv.Itoa(int(d)) + ")"
}

// Known reports whether d is one of the format's dtypes.
func (d DType) Known() bool { return d > InvalidDType && d < numDTypes }

// Bits is the size of one element in bits (4 and 6 for the packed float
// formats), 0 for an unknown dtype.
func (d DType) Bits() int {
	if !d.Known() {
		return 0
	}
	return int(dtypeBits[d])
}

// ComputeSupported reports whether the engine computes with d: F32, F16
// and BF16. Quantized or integer tensors must be converted first.
func (d DType) ComputeSupported() bool { return d == F32 || d == F16 || d == BF16 }

// Tensor describes one tensor. Data aliases the file's mapping: it is valid
// until the File (or Model) is closed and must not be written. Data is not
// necessarily aligned to the element size: files written without header
// padding (MLX does this) place tensors at any byte.
type Tensor struct {
	Name  string
	DType DType
	// Shape is in PyTorch order: Shape[len-1] is the contiguous dimension.
	// A scalar has an empty shape; a zero dimension means no data.
	Shape []int
	// Offset is where the data starts, relative to the data buffer that
	// follows the header.
	Offset int64
	Data   []byte
	// File is the name of the file holding the tensor, for errors.
	File string
}

// NumElements is the product of the shape (1 for a scalar).
func (t *Tensor) NumElements() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// CheckCompute returns an error naming the file and tensor when its dtype
// is not one the engine computes with.
func (t *Tensor) CheckCompute() error {
	if t.DType.ComputeSupported() {
		return nil
	}
	return fmt.Errorf("safetensors %s: tensor %q: dtype %s: %w for compute (want F32, F16 or BF16; convert or dequantize the model first)",
		t.File, t.Name, t.DType, ErrUnsupported)
}

// File is a parsed .safetensors file. Its methods are safe for concurrent
// use; Close must not run while tensor data is still in use.
type File struct {
	Name string // path or name given to Open/Parse, used in errors
	// Metadata is the header's free-form "__metadata__" map (nil when
	// absent), e.g. {"format": "pt"}.
	Metadata map[string]string
	// DataOffset is where the data buffer starts in the file: 8 plus the
	// header length.
	DataOffset int64

	tensors []*Tensor // in data order
	byName  map[string]*Tensor
	data    []byte
	unmap   func() error
}

// Tensors returns the tensors in the order of their data.
func (f *File) Tensors() []*Tensor { return slices.Clone(f.tensors) }

// Tensor returns the named tensor.
func (f *File) Tensor(name string) (*Tensor, bool) {
	t, ok := f.byName[name]
	return t, ok
}

// Size is the size of the file in bytes.
func (f *File) Size() int64 { return int64(len(f.data)) }

// Close releases the mapping; tensor data must not be used afterwards.
func (f *File) Close() error {
	f.data = nil
	if f.unmap == nil {
		return nil
	}
	u := f.unmap
	f.unmap = nil
	if err := u(); err != nil {
		return fmt.Errorf("safetensors %s: unmap: %w", f.Name, err)
	}
	return nil
}

// Parse parses a safetensors file held in data; name is used in errors.
// Tensor data aliases data.
//
// It enforces the format as the reference implementation does: a header of
// at most MaxHeaderSize bytes of UTF-8 JSON starting with '{' (trailing
// spaces allowed), no duplicate names, string-to-string "__metadata__",
// each tensor's byte range exactly the size its dtype and shape imply, and
// the ranges covering the data buffer completely, without overlaps or holes
// (the spec forbids holes so that a file cannot smuggle other content) and
// without trailing bytes.
func Parse(name string, data []byte) (*File, error) {
	ferr := func(where string, sentinel error, format string, args ...any) error {
		return &FormatError{File: name, Where: where, Err: fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), sentinel)}
	}
	if len(data) < 8 {
		return nil, ferr("header", ErrTruncated, "file is %d bytes, shorter than the 8-byte header length", len(data))
	}
	n := binary.LittleEndian.Uint64(data)
	if n > MaxHeaderSize {
		return nil, ferr("header", ErrHeaderTooLarge, "header length %d exceeds the limit of %d bytes (is this a safetensors file?)", n, MaxHeaderSize)
	}
	if n > uint64(len(data)-8) {
		return nil, ferr("header", ErrTruncated, "header length %d runs past the end of the %d-byte file", n, len(data))
	}
	header := data[8 : 8+n]
	if len(header) == 0 || header[0] != '{' {
		return nil, ferr("header", ErrCorrupt, "header does not start with '{' (is this a safetensors file?)")
	}
	if !utf8.Valid(header) {
		return nil, ferr("header", ErrCorrupt, "header is not valid UTF-8")
	}
	f := &File{Name: name, DataOffset: int64(8 + n), data: data, byName: map[string]*Tensor{}}
	type span struct {
		t          *Tensor
		begin, end uint64
	}
	var spans []span
	dec := json.NewDecoder(bytes.NewReader(header))
	dec.UseNumber()
	where := "header"
	inValue := false // a failure inside a value, not between keys
	err := walkObject(dec, func(key string) error {
		inValue = true
		if key == "__metadata__" {
			where = `key "__metadata__"`
			m, err := readStringMap(dec)
			if err != nil {
				return err
			}
			f.Metadata = m
		} else {
			where = fmt.Sprintf("tensor %q", key)
			t, begin, end, err := readTensorInfo(dec)
			if err != nil {
				return err
			}
			t.Name, t.File = key, name
			f.byName[key] = t
			spans = append(spans, span{t, begin, end})
		}
		inValue = false
		return nil
	})
	if err == nil {
		where = "header"
		err = expectEOF(dec)
	}
	if err != nil {
		if dup := (*dupKeyError)(nil); errors.As(err, &dup) && !inValue {
			// A repeated top-level key: name the repeated tensor, not
			// the one before it.
			where = fmt.Sprintf("tensor %q", dup.key)
			if dup.key == "__metadata__" {
				where = `key "__metadata__"`
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = errors.New("the JSON ends early")
		}
		if !errors.Is(err, ErrUnknownDType) {
			err = fmt.Errorf("invalid header: %w: %w", err, ErrCorrupt)
		}
		return nil, &FormatError{File: name, Where: where, Err: err}
	}

	// Sorting by (begin, end) puts empty tensors sharing an offset before
	// the tensor that starts there; with full coverage enforced, the end of
	// the previous span is the end of everything before.
	slices.SortStableFunc(spans, func(a, b span) int {
		if c := cmpU64(a.begin, b.begin); c != 0 {
			return c
		}
		return cmpU64(a.end, b.end)
	})
	avail := uint64(len(data)) - 8 - n
	var prevEnd uint64
	var prev *Tensor
	for _, s := range spans {
		t := s.t
		where := fmt.Sprintf("tensor %q", t.Name)
		if s.begin > s.end {
			return nil, ferr(where, ErrCorrupt, "data_offsets [%d, %d) begin after they end", s.begin, s.end)
		}
		size, err := byteSize(t.DType, t.Shape)
		if err != nil {
			return nil, ferr(where, ErrCorrupt, "%s %v: %v", t.DType, t.Shape, err)
		}
		if s.end-s.begin != size {
			return nil, ferr(where, ErrCorrupt, "data_offsets [%d, %d) span %d bytes, but %s %v needs %d",
				s.begin, s.end, s.end-s.begin, t.DType, t.Shape, size)
		}
		if s.begin < prevEnd {
			return nil, ferr(where, ErrCorrupt, "data [%d, %d) overlaps tensor %q", s.begin, s.end, prev.Name)
		}
		if s.begin > prevEnd {
			return nil, ferr(where, ErrCorrupt, "data starts at %d, leaving bytes [%d, %d) of the data buffer unindexed (the format forbids holes)",
				s.begin, prevEnd, s.begin)
		}
		if s.end > avail {
			return nil, ferr(where, ErrTruncated, "data [%d, %d) runs past the end of the %d-byte data buffer; the file is incomplete, download it again",
				s.begin, s.end, avail)
		}
		start := 8 + n + s.begin
		t.Offset = int64(s.begin)
		t.Data = data[start : start+size : start+size]
		prev, prevEnd = t, s.end
		f.tensors = append(f.tensors, t)
	}
	if prevEnd != avail {
		return nil, ferr("data buffer", ErrCorrupt, "%d bytes after the last tensor are not indexed (the format forbids trailing data)", avail-prevEnd)
	}
	return f, nil
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// byteSize is the number of bytes shape elements of d take, checked for
// overflow and for packed types that would not end on a byte boundary.
func byteSize(d DType, shape []int) (uint64, error) {
	n := uint64(1)
	for _, x := range shape {
		hi, lo := bits.Mul64(n, uint64(x))
		if hi != 0 {
			return 0, errors.New("element count overflows")
		}
		n = lo
	}
	hi, nbits := bits.Mul64(n, uint64(d.Bits()))
	if hi != 0 {
		return 0, errors.New("size overflows")
	}
	if nbits%8 != 0 {
		return 0, fmt.Errorf("%d elements of %d bits do not fill whole bytes", n, d.Bits())
	}
	return nbits / 8, nil
}

// walkObject reads a JSON object from dec, calling fn for each key; fn must
// consume the value. Duplicate keys are an error: the format disallows
// them and encoding/json would silently keep the last.
func walkObject(dec *json.Decoder, fn func(key string) error) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok != json.Delim('{') {
		return fmt.Errorf("got %s, want a JSON object", describe(tok))
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, ok := tok.(string)
		if !ok {
			return fmt.Errorf("got %s, want a key", describe(tok))
		}
		if seen[key] {
			return &dupKeyError{key}
		}
		seen[key] = true
		if err := fn(key); err != nil {
			return err
		}
	}
	_, err = dec.Token() // the closing brace; More would have failed otherwise
	return err
}

type dupKeyError struct{ key string }

func (e *dupKeyError) Error() string { return fmt.Sprintf("duplicate key %q", e.key) }

func expectEOF(dec *json.Decoder) error {
	if tok, err := dec.Token(); err != io.EOF {
		if err != nil {
			return err
		}
		return fmt.Errorf("unexpected %s after the header object", describe(tok))
	}
	return nil
}

func describe(tok json.Token) string {
	switch x := tok.(type) {
	case json.Delim:
		return fmt.Sprintf("'%s'", x)
	case string:
		return fmt.Sprintf("string %q", x)
	case json.Number:
		return "number " + string(x)
	case nil:
		return "null"
	}
	return fmt.Sprintf("%v", tok)
}

func skipValue(dec *json.Decoder) error {
	var skip json.RawMessage
	return dec.Decode(&skip)
}

func readStringMap(dec *json.Decoder) (map[string]string, error) {
	m := map[string]string{}
	err := walkObject(dec, func(key string) error {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		s, ok := tok.(string)
		if !ok {
			return fmt.Errorf("value of %q is %s; __metadata__ values must be strings", key, describe(tok))
		}
		m[key] = s
		return nil
	})
	return m, err
}

// readUints reads a JSON array of non-negative integers. Tokens keep
// quoted numbers and floats apart, which decoding into []json.Number would
// not.
func readUints(dec *json.Decoder, field string, max int) ([]uint64, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if tok != json.Delim('[') {
		return nil, fmt.Errorf("%s is %s, want an array", field, describe(tok))
	}
	out := []uint64{}
	for dec.More() {
		if len(out) == max {
			return nil, fmt.Errorf("%s has more than %d elements", field, max)
		}
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		num, ok := tok.(json.Number)
		if !ok {
			return nil, fmt.Errorf("%s holds %s, want non-negative integers", field, describe(tok))
		}
		u, err := strconv.ParseUint(string(num), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%s holds %s, want non-negative integers", field, num)
		}
		out = append(out, u)
	}
	_, err = dec.Token()
	return out, err
}

func readTensorInfo(dec *json.Decoder) (t *Tensor, begin, end uint64, err error) {
	t = &Tensor{}
	var haveDType, haveShape, haveOffsets bool
	err = walkObject(dec, func(key string) error {
		switch key {
		case "dtype":
			tok, err := dec.Token()
			if err != nil {
				return err
			}
			s, ok := tok.(string)
			if !ok {
				return fmt.Errorf("dtype is %s, want a string", describe(tok))
			}
			d, ok := ParseDType(s)
			if !ok {
				return fmt.Errorf("dtype %q: %w", s, ErrUnknownDType)
			}
			t.DType, haveDType = d, true
		case "shape":
			dims, err := readUints(dec, "shape", MaxRank)
			if err != nil {
				return err
			}
			t.Shape = make([]int, len(dims))
			for i, d := range dims {
				if d > MaxDim || d > math.MaxInt {
					return fmt.Errorf("shape %v: dimension %d is absurdly large", dims, d)
				}
				t.Shape[i] = int(d)
			}
			haveShape = true
		case "data_offsets":
			offs, err := readUints(dec, "data_offsets", 2)
			if err != nil {
				return err
			}
			if len(offs) != 2 {
				return fmt.Errorf("data_offsets has %d elements, want [begin, end]", len(offs))
			}
			begin, end, haveOffsets = offs[0], offs[1], true
		default:
			// The reference implementation ignores unknown fields too.
			return skipValue(dec)
		}
		return nil
	})
	if err != nil {
		return nil, 0, 0, err
	}
	switch {
	case !haveDType:
		err = errors.New("no dtype")
	case !haveShape:
		err = errors.New("no shape")
	case !haveOffsets:
		err = errors.New("no data_offsets")
	}
	return t, begin, end, err
}
