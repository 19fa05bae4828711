package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// file assembles a safetensors file from a header and a data buffer, with
// no padding, so tests control every byte.
func file(header string, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	b = append(b, header...)
	return append(b, data...)
}

func f32s(xs ...float32) []byte {
	var b []byte
	for _, x := range xs {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
	}
	return b
}

func seq(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

func TestParse(t *testing.T) {
	// Tensors listed out of data order, unknown fields, trailing padding.
	h := `{"b":{"dtype":"F16","shape":[2],"data_offsets":[8,12],"extra":[1,{"x":null}]},` +
		`"__metadata__":{"format":"pt","note":"<&>"},` +
		`"a":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]}}   `
	data := append(f32s(1, 2), 0x00, 0x3c, 0x00, 0x40)
	f, err := Parse("x.safetensors", file(h, data))
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"format": "pt", "note": "<&>"}; !reflect.DeepEqual(f.Metadata, want) {
		t.Errorf("metadata: got %v, want %v", f.Metadata, want)
	}
	if got, want := f.DataOffset, int64(8+len(h)); got != want {
		t.Errorf("DataOffset: got %d, want %d", got, want)
	}
	var names []string
	for _, tt := range f.Tensors() {
		names = append(names, tt.Name)
	}
	if want := []string{"a", "b"}; !reflect.DeepEqual(names, want) {
		t.Errorf("tensor order: got %v, want %v", names, want)
	}
	a, ok := f.Tensor("a")
	if !ok {
		t.Fatal("tensor a not found")
	}
	want := &Tensor{Name: "a", DType: F32, Shape: []int{1, 2}, Offset: 0, Data: f32s(1, 2), File: "x.safetensors"}
	if !reflect.DeepEqual(a, want) {
		t.Errorf("tensor a: got %+v, want %+v", a, want)
	}
	b, _ := f.Tensor("b")
	if b.DType != F16 || b.Offset != 8 || !bytes.Equal(b.Data, data[8:]) || b.NumElements() != 2 {
		t.Errorf("tensor b: got %+v", b)
	}
	if cap(b.Data) != len(b.Data) {
		t.Errorf("tensor data capacity %d reaches past its %d bytes", cap(b.Data), len(b.Data))
	}
	if _, ok := f.Tensor("__metadata__"); ok {
		t.Error("__metadata__ is listed as a tensor")
	}
	if f.Size() != int64(len(h)+8+len(data)) {
		t.Errorf("Size: got %d", f.Size())
	}
}

func TestParseAccepts(t *testing.T) {
	tests := []struct {
		name   string
		header string
		data   []byte
		check  func(t *testing.T, f *File)
	}{
		{"no tensors", `{}`, nil, func(t *testing.T, f *File) {
			if len(f.Tensors()) != 0 || f.Metadata != nil {
				t.Errorf("got %d tensors, metadata %v", len(f.Tensors()), f.Metadata)
			}
		}},
		{"scalar", `{"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}`, f32s(3), func(t *testing.T, f *File) {
			s, _ := f.Tensor("s")
			if len(s.Shape) != 0 || s.NumElements() != 1 || len(s.Data) != 4 {
				t.Errorf("scalar: got %+v", s)
			}
		}},
		{"empty tensors share an offset", `{"e1":{"dtype":"F32","shape":[0,5],"data_offsets":[4,4]},` +
			`"t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},` +
			`"e0":{"dtype":"BF16","shape":[3,0],"data_offsets":[0,0]},` +
			`"u":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}`, seq(8), func(t *testing.T, f *File) {
			e, _ := f.Tensor("e1")
			if e.NumElements() != 0 || len(e.Data) != 0 || e.Offset != 4 {
				t.Errorf("empty tensor: got %+v", e)
			}
		}},
		{"packed F4", `{"p":{"dtype":"F4","shape":[2,3],"data_offsets":[0,3]}}`, seq(3), nil},
		{"packed F6", `{"p":{"dtype":"F6_E3M2","shape":[4],"data_offsets":[0,3]}}`, seq(3), nil},
		{"whitespace inside the JSON", "{ \"t\" : {\n\"dtype\":\t\"I64\", \"shape\" : [ 1 ] ,\"data_offsets\":[0, 8]} }\n ", seq(8), nil},
		{"empty metadata", `{"__metadata__":{}}`, nil, func(t *testing.T, f *File) {
			if f.Metadata == nil || len(f.Metadata) != 0 {
				t.Errorf("metadata: got %#v, want an empty map", f.Metadata)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, err := Parse("ok.safetensors", file(tc.header, tc.data))
			if err != nil {
				t.Fatal(err)
			}
			if tc.check != nil {
				tc.check(t, f)
			}
		})
	}
}

func TestDTypes(t *testing.T) {
	bits := map[string]int{
		"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
		"F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
		"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
	}
	seen := 0
	for d := DType(0); d < 64; d++ {
		if !d.Known() {
			if d.Bits() != 0 {
				t.Errorf("%s: Bits %d for an unknown dtype", d, d.Bits())
			}
			continue
		}
		seen++
		if got, want := d.Bits(), bits[d.String()]; got != want {
			t.Errorf("%s: got %d bits, want %d", d, got, want)
		}
		if p, ok := ParseDType(d.String()); !ok || p != d {
			t.Errorf("ParseDType(%q): got %v, %v", d.String(), p, ok)
		}
		// One element of each dtype (two for the packed ones) parses.
		n := 1
		for n*d.Bits()%8 != 0 {
			n++
		}
		size := n * d.Bits() / 8
		h := `{"t":{"dtype":"` + d.String() + `","shape":[` + itoa(n) + `],"data_offsets":[0,` + itoa(size) + `]}}`
		if _, err := Parse("dtype", file(h, seq(size))); err != nil {
			t.Errorf("%s: %v", d, err)
		}
		if got, want := d.ComputeSupported(), d == F32 || d == F16 || d == BF16; got != want {
			t.Errorf("%s: ComputeSupported %v, want %v", d, got, want)
		}
	}
	if seen != len(bits) {
		t.Errorf("%d known dtypes, want %d", seen, len(bits))
	}
	if _, ok := ParseDType("f32"); ok {
		t.Error(`ParseDType("f32") accepted a lower-case name`)
	}
}

func TestCheckCompute(t *testing.T) {
	ok := &Tensor{Name: "w", DType: BF16, File: "m.safetensors"}
	if err := ok.CheckCompute(); err != nil {
		t.Errorf("BF16: %v", err)
	}
	bad := &Tensor{Name: "w", DType: F8_E4M3, File: "m.safetensors"}
	err := bad.CheckCompute()
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), `m.safetensors: tensor "w": dtype F8_E4M3`) {
		t.Errorf("F8_E4M3: got %v", err)
	}
}

// Every validation failure, with the sentinel it wraps and the part of
// the file its message must name.
func TestParseErrors(t *testing.T) {
	big := make([]byte, 8)
	binary.LittleEndian.PutUint64(big, MaxHeaderSize+1)
	huge := make([]byte, 8)
	binary.LittleEndian.PutUint64(huge, math.MaxUint64)
	past := binary.LittleEndian.AppendUint64(nil, 100)
	past = append(past, "{}"...)
	f32t := func(name, offs string) string {
		return `"` + name + `":{"dtype":"F32","shape":[2],"data_offsets":` + offs + `}`
	}
	tests := []struct {
		name  string
		input []byte
		err   error
		where string // must appear in the message
	}{
		{"empty file", nil, ErrTruncated, "header"},
		{"shorter than the length", []byte{2, 0, 0}, ErrTruncated, "header"},
		{"header length absurd", big, ErrHeaderTooLarge, "header"},
		{"header length 2^64-1", huge, ErrHeaderTooLarge, "header"},
		{"header beyond the file", past, ErrTruncated, "header length 100 runs past the end"},
		{"zero-length header", file("", nil), ErrCorrupt, "header"},
		{"header not an object", file(`[1,2]`, nil), ErrCorrupt, "does not start with '{'"},
		{"leading space", file(` {}`, nil), ErrCorrupt, "does not start with '{'"},
		{"invalid UTF-8", file("{\"\xff\":1}", nil), ErrCorrupt, "UTF-8"},
		{"invalid JSON", file(`{"t":`, nil), ErrCorrupt, "invalid header"},
		{"garbage after the object", file(`{}x`, nil), ErrCorrupt, "header"},
		{"second object", file(`{}{}`, nil), ErrCorrupt, "after the header object"},
		{"NUL padding", file("{}\x00\x00", nil), ErrCorrupt, "header"},
		{"tensor not an object", file(`{"t":5}`, nil), ErrCorrupt, `tensor "t"`},
		{"no dtype", file(`{"t":{"shape":[],"data_offsets":[0,0]}}`, nil), ErrCorrupt, `tensor "t": invalid header: no dtype`},
		{"no shape", file(`{"t":{"dtype":"F32","data_offsets":[0,0]}}`, nil), ErrCorrupt, `tensor "t": invalid header: no shape`},
		{"no data_offsets", file(`{"t":{"dtype":"F32","shape":[0]}}`, nil), ErrCorrupt, `tensor "t": invalid header: no data_offsets`},
		{"unknown dtype", file(`{"t":{"dtype":"Q4_0","shape":[2],"data_offsets":[0,2]}}`, seq(2)), ErrUnknownDType, `tensor "t": dtype "Q4_0"`},
		{"lower-case dtype", file(`{"t":{"dtype":"f16","shape":[1],"data_offsets":[0,2]}}`, seq(2)), ErrUnknownDType, `tensor "t"`},
		{"dtype not a string", file(`{"t":{"dtype":7,"shape":[1],"data_offsets":[0,1]}}`, seq(1)), ErrCorrupt, `tensor "t"`},
		{"negative dimension", file(`{"t":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}}`, nil), ErrCorrupt, `tensor "t"`},
		{"fractional dimension", file(`{"t":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}}`, seq(1)), ErrCorrupt, `tensor "t"`},
		{"float dimension", file(`{"t":{"dtype":"U8","shape":[2.0],"data_offsets":[0,2]}}`, seq(2)), ErrCorrupt, `tensor "t"`},
		{"exponent dimension", file(`{"t":{"dtype":"U8","shape":[1e1],"data_offsets":[0,10]}}`, seq(10)), ErrCorrupt, `tensor "t"`},
		{"quoted dimension", file(`{"t":{"dtype":"U8","shape":["2"],"data_offsets":[0,2]}}`, seq(2)), ErrCorrupt, `tensor "t"`},
		{"shape null", file(`{"t":{"dtype":"U8","shape":null,"data_offsets":[0,1]}}`, seq(1)), ErrCorrupt, `tensor "t"`},
		{"nested shape", file(`{"t":{"dtype":"U8","shape":[[1]],"data_offsets":[0,1]}}`, seq(1)), ErrCorrupt, `tensor "t"`},
		{"absurd dimension", file(`{"t":{"dtype":"U8","shape":[0,1099511627777],"data_offsets":[0,0]}}`, nil), ErrCorrupt, "absurdly large"},
		{"dimension past uint64", file(`{"t":{"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,0]}}`, nil), ErrCorrupt, `tensor "t"`},
		{"too many dimensions", file(`{"t":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}}`, seq(1)), ErrCorrupt, "more than 16"},
		{"element count overflows", file(`{"t":{"dtype":"U8","shape":[1099511627776,1099511627776,0],"data_offsets":[0,0]}}`, nil), ErrCorrupt, "overflows"},
		{"byte size overflows", file(`{"t":{"dtype":"U64","shape":[1099511627776,16777216],"data_offsets":[0,0]}}`, nil), ErrCorrupt, "overflows"},
		{"packed type ends mid-byte", file(`{"t":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}`, seq(2)), ErrCorrupt, "whole bytes"},
		{"one offset", file(`{"t":{"dtype":"U8","shape":[1],"data_offsets":[0]}}`, seq(1)), ErrCorrupt, "want [begin, end]"},
		{"three offsets", file(`{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}`, seq(1)), ErrCorrupt, `tensor "t"`},
		{"negative offset", file(`{"t":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}}`, seq(1)), ErrCorrupt, `tensor "t"`},
		{"begin after end", file(`{"t":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}`, seq(4)), ErrCorrupt, "begin after they end"},
		{"size does not match the shape", file(`{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, seq(4)), ErrCorrupt, "span 4 bytes, but F32 [2] needs 8"},
		{"end past the file", file(`{`+f32t("t", "[0,8]")+`}`, seq(5)), ErrTruncated, `tensor "t": data [0, 8) runs past the end of the 5-byte data buffer`},
		{"offsets far out of range", file(`{"t":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551614,18446744073709551615]}}`, seq(1)), ErrCorrupt, `tensor "t"`},
		{"overlap", file(`{`+f32t("a", "[0,8]")+`,`+f32t("b", "[4,12]")+`}`, seq(12)), ErrCorrupt, `tensor "b": data [4, 12) overlaps tensor "a"`},
		{"same range twice", file(`{`+f32t("a", "[0,8]")+`,`+f32t("b", "[0,8]")+`}`, seq(8)), ErrCorrupt, "overlaps"},
		{"hole between tensors", file(`{`+f32t("a", "[0,8]")+`,`+f32t("b", "[12,20]")+`}`, seq(20)), ErrCorrupt, `tensor "b": data starts at 12, leaving bytes [8, 12)`},
		{"hole at the start", file(`{`+f32t("a", "[4,12]")+`}`, seq(12)), ErrCorrupt, "leaving bytes [0, 4)"},
		{"trailing bytes", file(`{`+f32t("a", "[0,8]")+`}`, seq(9)), ErrCorrupt, "data buffer: 1 bytes after the last tensor"},
		{"data but no tensors", file(`{}`, seq(3)), ErrCorrupt, "3 bytes after the last tensor"},
		{"duplicate tensor", file(`{`+f32t("a", "[0,8]")+`,`+f32t("a", "[8,16]")+`}`, seq(16)), ErrCorrupt, `tensor "a": invalid header: duplicate key "a"`},
		{"duplicate field", file(`{"t":{"dtype":"U8","dtype":"I8","shape":[1],"data_offsets":[0,1]}}`, seq(1)), ErrCorrupt, `tensor "t": invalid header: duplicate key "dtype"`},
		{"duplicate metadata", file(`{"__metadata__":{},"__metadata__":{}}`, nil), ErrCorrupt, `key "__metadata__"`},
		{"metadata value not a string", file(`{"__metadata__":{"n":1}}`, nil), ErrCorrupt, `key "__metadata__": invalid header: value of "n" is number 1`},
		{"metadata not an object", file(`{"__metadata__":"pt"}`, nil), ErrCorrupt, `key "__metadata__"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("bad.safetensors", tc.input)
			if !errors.Is(err, tc.err) {
				t.Fatalf("got %v, want %v", err, tc.err)
			}
			var fe *FormatError
			if !errors.As(err, &fe) || fe.File != "bad.safetensors" {
				t.Fatalf("got %#v, want a *FormatError naming the file", err)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "safetensors bad.safetensors: ") || !strings.Contains(msg, tc.where) {
				t.Errorf("message %q does not name the file and %q", msg, tc.where)
			}
		})
	}
}

// Every strict prefix of a valid file is an error, never a panic, and one
// that keeps the header names the tensor cut short.
func TestTruncated(t *testing.T) {
	w := NewWriter()
	must(t, w.Add("a.weight", F32, []int{2, 3}, seq(24)))
	must(t, w.Add("b.weight", BF16, []int{5}, seq(10)))
	var buf bytes.Buffer
	if _, err := w.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	for n := range len(b) {
		_, err := Parse("cut", b[:n])
		if err == nil {
			t.Fatalf("prefix of %d of %d bytes parsed", n, len(b))
		}
		if !errors.Is(err, ErrTruncated) {
			t.Fatalf("prefix of %d bytes: got %v, want ErrTruncated", n, err)
		}
	}
	_, err := Parse("cut", b[:len(b)-1])
	if !strings.Contains(err.Error(), `tensor "b.weight"`) || !strings.Contains(err.Error(), "download it again") {
		t.Errorf("got %v, want the cut tensor named and advice", err)
	}
}

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "model.safetensors")
	w := NewWriter()
	w.SetMetadata("format", "pt")
	must(t, w.Add("model.embed_tokens.weight", F16, []int{4, 2}, seq(16)))
	must(t, w.WriteFile(p))
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	e, ok := f.Tensor("model.embed_tokens.weight")
	if !ok || !bytes.Equal(e.Data, seq(16)) || e.File != p || f.Name != p {
		t.Errorf("got %+v", e)
	}
	if f.Metadata["format"] != "pt" {
		t.Errorf("metadata: got %v", f.Metadata)
	}
	if err := f.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(filepath.Join(dir, "missing.safetensors")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: got %v", err)
	}
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: got %v", err)
	}
	for _, n := range []int{0, 5} {
		p := filepath.Join(dir, "short.safetensors")
		must(t, os.WriteFile(p, seq(n), 0o644))
		if _, err := Open(p); !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), p) {
			t.Errorf("%d-byte file: got %v", n, err)
		}
	}
	p := filepath.Join(dir, "bad.safetensors")
	must(t, os.WriteFile(p, file(`{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, seq(7)), 0o644))
	if _, err := Open(p); !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), p+`: tensor "t"`) {
		t.Errorf("truncated file: got %v", err)
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
