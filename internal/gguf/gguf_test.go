package gguf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/npumesh/npumesh/internal/testdata"
)

// raw builds GGUF bytes field by field, so tests can write what the Writer
// refuses to.
type raw struct{ bytes.Buffer }

func (r *raw) u32(v uint32) *raw { binary.Write(&r.Buffer, binary.LittleEndian, v); return r }
func (r *raw) u64(v uint64) *raw { binary.Write(&r.Buffer, binary.LittleEndian, v); return r }
func (r *raw) str(s string) *raw { r.u64(uint64(len(s))); r.WriteString(s); return r }
func (r *raw) header(nTensors, nKV uint64) *raw {
	r.WriteString("GGUF")
	return r.u32(3).u64(nTensors).u64(nKV)
}
func (r *raw) tensor(name string, typ Type, off uint64, dims ...uint64) *raw {
	r.str(name).u32(uint32(len(dims)))
	for _, d := range dims {
		r.u64(d)
	}
	return r.u32(uint32(typ)).u64(off)
}

// data pads to the default alignment and appends n zero bytes.
func (r *raw) data(n int) []byte {
	for r.Len()%DefaultAlignment != 0 {
		r.WriteByte(0)
	}
	r.Write(make([]byte, n))
	return r.Bytes()
}

func f32bytes(v ...float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

func sample(t *testing.T, align uint32) []byte {
	t.Helper()
	w := NewWriter()
	if align != 0 {
		if err := w.SetAlignment(align); err != nil {
			t.Fatal(err)
		}
	}
	inner1, _ := ValueOf([]int32{1, 2, 3})
	inner2, _ := ValueOf([]int32{})
	sets := []struct {
		k string
		v any
	}{
		{"general.architecture", "llama"},
		{"u8", uint8(200)}, {"i8", int8(-3)}, {"u16", uint16(60000)}, {"i16", int16(-30000)},
		{"u32", uint32(4e9)}, {"i32", int32(-2e9)}, {"f32", float32(1.5)}, {"b", true},
		{"u64", uint64(1 << 60)}, {"i64", int64(-1 << 60)}, {"f64", 2.25},
		{"strs", []string{"a", "", "▁héllo"}}, {"f32s", []float32{0.5, -1}}, {"i32s", []int32{-1, 7}},
		{"bools", []bool{true, false}}, {"nested", []Value{inner1, inner2}},
	}
	for _, s := range sets {
		if err := w.Set(s.k, s.v); err != nil {
			t.Fatal(err)
		}
	}
	must(t, w.AddTensor("a", TypeF32, []uint64{3}, f32bytes(1, 2, 3)))
	must(t, w.AddTensor("b", TypeF16, []uint64{2, 2}, []byte{0, 0x3c, 0, 0x40, 0, 0, 0, 0xc0}))
	must(t, w.AddTensor("q", TypeQ4_0, []uint64{64}, make([]byte, 36)))
	var buf bytes.Buffer
	if _, err := w.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestWriterRoundTrip(t *testing.T) {
	for _, align := range []uint32{0, 64} {
		b := sample(t, align)
		f, err := Parse("sample", b)
		if err != nil {
			t.Fatalf("align %d: %v", align, err)
		}
		wantAlign := uint64(DefaultAlignment)
		if align != 0 {
			wantAlign = uint64(align)
		}
		if f.Alignment != wantAlign || f.DataOffset%wantAlign != 0 {
			t.Errorf("alignment %d, data offset %d; want alignment %d", f.Alignment, f.DataOffset, wantAlign)
		}
		if s, err := f.String("general.architecture"); err != nil || s != "llama" {
			t.Errorf("architecture: got %q, %v", s, err)
		}
		if u, err := f.Uint("u32"); err != nil || u != 4e9 {
			t.Errorf("u32: got %d, %v", u, err)
		}
		if _, err := f.Uint("i8"); !errors.Is(err, ErrWrongType) {
			t.Errorf("Uint of a negative: got %v, want ErrWrongType", err)
		}
		if i, err := f.Int("i64"); err != nil || i != -1<<60 {
			t.Errorf("i64: got %d, %v", i, err)
		}
		if x, err := f.Float("f32"); err != nil || x != 1.5 {
			t.Errorf("f32: got %v, %v", x, err)
		}
		if x, err := f.Float("f64"); err != nil || x != 2.25 {
			t.Errorf("f64: got %v, %v", x, err)
		}
		if x, err := f.Bool("b"); err != nil || !x {
			t.Errorf("b: got %v, %v", x, err)
		}
		if s, err := f.Strings("strs"); err != nil || !reflect.DeepEqual(s, []string{"a", "", "▁héllo"}) {
			t.Errorf("strs: got %q, %v", s, err)
		}
		if s, err := f.Float32s("f32s"); err != nil || !reflect.DeepEqual(s, []float32{0.5, -1}) {
			t.Errorf("f32s: got %v, %v", s, err)
		}
		if s, err := f.Int32s("i32s"); err != nil || !reflect.DeepEqual(s, []int32{-1, 7}) {
			t.Errorf("i32s: got %v, %v", s, err)
		}
		if _, err := f.Strings("missing"); !errors.Is(err, ErrNotFound) {
			t.Errorf("missing key: got %v, want ErrNotFound", err)
		}
		if _, err := f.String("u8"); !errors.Is(err, ErrWrongType) || !strings.Contains(err.Error(), `"u8"`) {
			t.Errorf("wrong type: got %v, want ErrWrongType naming the key", err)
		}
		nv, _ := f.Value("nested")
		if nv.ElemType() != Array || nv.Len() != 2 || !reflect.DeepEqual(nv.Index(0).Interface(), []int32{1, 2, 3}) || nv.Index(1).Len() != 0 {
			t.Errorf("nested: got %#v", nv)
		}
		for k, want := range map[string]any{"u8": uint8(200), "i8": int8(-3), "u16": uint16(60000), "i16": int16(-30000), "i32": int32(-2e9), "u64": uint64(1 << 60), "bools": []bool{true, false}} {
			v, _ := f.Value(k)
			if !reflect.DeepEqual(v.Interface(), want) {
				t.Errorf("%s: got %#v, want %#v", k, v.Interface(), want)
			}
		}
		a, ok := f.Tensor("a")
		if !ok || !bytes.Equal(a.Data, f32bytes(1, 2, 3)) || a.Type != TypeF32 {
			t.Errorf("tensor a: got %+v", a)
		}
		q, _ := f.Tensor("q")
		if len(q.Data) != 36 || q.NumElements() != 64 {
			t.Errorf("tensor q: %d bytes, %d elements", len(q.Data), q.NumElements())
		}
		for _, tt := range f.Tensors() {
			if (f.DataOffset+tt.Offset)%wantAlign != 0 {
				t.Errorf("tensor %s at %d not aligned", tt.Name, tt.Offset)
			}
		}
		if got := len(f.Keys()); got != 17+boolInt(align != 0) {
			t.Errorf("got %d keys", got)
		}
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestWriterRejects(t *testing.T) {
	w := NewWriter()
	if err := w.AddTensor("x", TypeF32, []uint64{2}, make([]byte, 4)); err == nil {
		t.Error("short data accepted")
	}
	if err := w.AddTensor("x", TypeQ8_0, []uint64{31}, make([]byte, 34)); err == nil {
		t.Error("row length not a multiple of the block accepted")
	}
	if err := w.SetAlignment(3); err == nil {
		t.Error("alignment 3 accepted")
	}
	if err := w.Set("k", struct{}{}); err == nil {
		t.Error("struct value accepted")
	}
}

func TestTypeSizes(t *testing.T) {
	for typ, want := range map[Type][2]uint64{
		TypeF32: {1, 4}, TypeF16: {1, 2}, TypeBF16: {1, 2}, TypeQ4_0: {32, 18}, TypeQ4_1: {32, 20},
		TypeQ5_0: {32, 22}, TypeQ5_1: {32, 24}, TypeQ8_0: {32, 34}, TypeQ2_K: {256, 84}, TypeQ3_K: {256, 110},
		TypeQ4_K: {256, 144}, TypeQ5_K: {256, 176}, TypeQ6_K: {256, 210}, TypeQ8_K: {256, 292},
		TypeIQ4_XS: {256, 136}, TypeTQ1_0: {256, 54}, TypeIQ1_M: {256, 56},
	} {
		if got := [2]uint64{typ.BlockSize(), typ.TypeSize()}; got != want {
			t.Errorf("%s: got block %d size %d, want %v", typ, got[0], got[1], want)
		}
	}
	if Type(4).Known() || Type(4).String() != "Type(4)" {
		t.Error("removed type 4 is known")
	}
}

func TestCorrupt(t *testing.T) {
	big := uint64(1) << 62
	tests := []struct {
		name string
		data func() []byte
		want error
		in   string // must appear in the message
	}{
		{"empty", func() []byte { return nil }, ErrNotGGUF, "header"},
		{"magic", func() []byte { return []byte("GGUX\x03\x00\x00\x00") }, ErrNotGGUF, "magic"},
		{"version 1", func() []byte { r := &raw{}; r.WriteString("GGUF"); r.u32(1).u64(0).u64(0); return r.Bytes() }, ErrVersion, "version 1"},
		{"big endian", func() []byte { r := &raw{}; r.WriteString("GGUF"); r.u32(3 << 24).u64(0).u64(0); return r.Bytes() }, ErrVersion, "big-endian"},
		{"kv count", func() []byte { return (&raw{}).header(0, big).Bytes() }, ErrCorrupt, "metadata count"},
		{"tensor count", func() []byte { return (&raw{}).header(big, 0).Bytes() }, ErrCorrupt, "tensor count"},
		{"key length", func() []byte { r := (&raw{}).header(0, 1); r.u64(big).u64(0).u64(0); return r.Bytes() }, ErrCorrupt, "key length"},
		{"string length", func() []byte {
			return (&raw{}).header(0, 1).str("k").u32(uint32(String)).u64(big).Bytes()
		}, ErrTruncated, `key "k"`},
		{"array length", func() []byte {
			return (&raw{}).header(0, 1).str("arr").u32(uint32(Array)).u32(uint32(Uint64)).u64(big).Bytes()
		}, ErrCorrupt, `key "arr"`},
		{"string array length", func() []byte {
			return (&raw{}).header(0, 1).str("arr").u32(uint32(Array)).u32(uint32(String)).u64(1 << 40).Bytes()
		}, ErrCorrupt, "cannot fit"},
		{"value type", func() []byte { return (&raw{}).header(0, 1).str("k").u32(13).u64(0).Bytes() }, ErrUnknownType, `key "k"`},
		{"element type", func() []byte {
			return (&raw{}).header(0, 1).str("k").u32(uint32(Array)).u32(99).u64(0).Bytes()
		}, ErrUnknownType, "element type 99"},
		{"nesting", func() []byte {
			r := (&raw{}).header(0, 1).str("deep").u32(uint32(Array))
			for range 20 {
				r.u32(uint32(Array)).u64(1)
			}
			return r.Bytes()
		}, ErrCorrupt, "nested"},
		{"duplicate key", func() []byte {
			return (&raw{}).header(0, 2).str("k").u32(uint32(Uint32)).u32(0).str("k").u32(uint32(Uint32)).u32(0).Bytes()
		}, ErrCorrupt, "duplicate key"},
		{"alignment", func() []byte {
			return (&raw{}).header(0, 1).str("general.alignment").u32(uint32(Uint32)).u32(24).Bytes()
		}, ErrCorrupt, "power of two"},
		{"alignment type", func() []byte {
			return (&raw{}).header(0, 1).str("general.alignment").u32(uint32(Uint64)).u64(32).Bytes()
		}, ErrWrongType, "general.alignment"},
		{"no dims", func() []byte { return (&raw{}).header(1, 0).tensor("t", TypeF32, 0).data(4) }, ErrCorrupt, `tensor "t"`},
		{"5 dims", func() []byte { return (&raw{}).header(1, 0).tensor("t", TypeF32, 0, 1, 1, 1, 1, 1).data(4) }, ErrCorrupt, "5 dimensions"},
		{"zero dim", func() []byte { return (&raw{}).header(1, 0).tensor("t", TypeF32, 0, 4, 0).data(4) }, ErrCorrupt, "dimension 1 is 0"},
		{"dim overflow", func() []byte { return (&raw{}).header(1, 0).tensor("t", TypeF32, 0, 1<<40, 1<<40).data(4) }, ErrCorrupt, "overflow"},
		{"huge size", func() []byte { return (&raw{}).header(1, 0).tensor("t", TypeF32, 0, 1<<61).data(4) }, ErrTruncated, `tensor "t"`},
		{"tensor type", func() []byte { return (&raw{}).header(1, 0).tensor("t", Type(5), 0, 4).data(4) }, ErrUnknownType, `tensor "t"`},
		{"block", func() []byte { return (&raw{}).header(1, 0).tensor("t", TypeQ4_0, 0, 33).data(64) }, ErrCorrupt, "block size"},
		{"unaligned", func() []byte { return (&raw{}).header(1, 0).tensor("t", TypeF32, 4, 1).data(64) }, ErrCorrupt, "alignment"},
		{"out of range", func() []byte { return (&raw{}).header(1, 0).tensor("t", TypeF32, 64, 4).data(64) }, ErrTruncated, `tensor "t"`},
		{"short data", func() []byte { return (&raw{}).header(1, 0).tensor("t", TypeF32, 0, 4).data(15) }, ErrTruncated, "runs past"},
		{"overlap", func() []byte {
			return (&raw{}).header(2, 0).tensor("a", TypeF32, 0, 16).tensor("b", TypeF32, 32, 16).data(128)
		}, ErrCorrupt, `overlaps tensor "a"`},
		{"duplicate tensor", func() []byte {
			return (&raw{}).header(2, 0).tensor("a", TypeF32, 0, 1).tensor("a", TypeF32, 32, 1).data(64)
		}, ErrCorrupt, "duplicate tensor"},
		{"name length", func() []byte {
			return (&raw{}).header(1, 0).tensor(strings.Repeat("n", MaxNameLen+1), TypeF32, 0, 1).data(4)
		}, ErrCorrupt, "tensor name length"},
		{"no data section", func() []byte { return (&raw{}).header(1, 0).tensor("t", TypeF32, 0, 1).Bytes() }, ErrTruncated, "data section"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("bad.gguf", tc.data())
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			var fe *FormatError
			if !errors.As(err, &fe) || !strings.Contains(err.Error(), "bad.gguf") || !strings.Contains(err.Error(), tc.in) {
				t.Fatalf("got %q, want a FormatError naming the file and %q", err, tc.in)
			}
		})
	}
}

// Every strict prefix of a valid file is an error, never a panic.
func TestTruncated(t *testing.T) {
	b := sample(t, 0)
	for n := range len(b) {
		if _, err := Parse("cut", b[:n]); err == nil {
			t.Fatalf("prefix of %d of %d bytes parsed", n, len(b))
		}
	}
}

func TestOpenStories(t *testing.T) {
	f, err := Open(filepath.Join(testdata.Dir(t, "stories260K"), "stories260K.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Version != 3 || len(f.Tensors()) != 48 {
		t.Errorf("version %d, %d tensors; want 3, 48", f.Version, len(f.Tensors()))
	}
	if a, _ := f.String("general.architecture"); a != "llama" {
		t.Errorf("architecture %q", a)
	}
	toks, err := f.Strings("tokenizer.ggml.tokens")
	if err != nil || len(toks) != 512 || toks[1] != "<s>" {
		t.Errorf("tokens: %d, %v", len(toks), err)
	}
	e, ok := f.Tensor("token_embd.weight")
	if !ok || !reflect.DeepEqual(e.Dims, []uint64{64, 512}) || e.Type != TypeF32 || len(e.Data) != 64*512*4 {
		t.Errorf("token_embd: %+v", e)
	}
	if eps, err := f.Float("llama.attention.layer_norm_rms_epsilon"); err != nil || math.Abs(eps-1e-5) > 1e-9 {
		t.Errorf("eps %v, %v", eps, err)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(filepath.Join(dir, "missing.gguf")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: got %v", err)
	}
	empty := filepath.Join(dir, "empty.gguf")
	os.WriteFile(empty, nil, 0o644)
	if _, err := Open(empty); !errors.Is(err, ErrNotGGUF) || !strings.Contains(err.Error(), empty) {
		t.Errorf("empty file: got %v", err)
	}
	cut := filepath.Join(dir, "cut.gguf")
	b := sample(t, 0)
	os.WriteFile(cut, b[:len(b)-1], 0o644)
	if _, err := Open(cut); !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), `tensor "q"`) {
		t.Errorf("truncated file: got %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add(sample(&testing.T{}, 0))
	f.Add((&raw{}).header(1, 0).tensor("t", TypeF32, 0, 4).data(16))
	f.Add((&raw{}).header(0, 1).str("k").u32(uint32(Array)).u32(uint32(Array)).u64(1).u32(uint32(String)).u64(1).str("x").Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := Parse("fuzz", b)
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v is not a FormatError", err)
			}
			return
		}
		for _, tt := range file.Tensors() {
			if uint64(len(tt.Data)) != tt.NumElements()/tt.Type.BlockSize()*tt.Type.TypeSize() {
				t.Fatalf("tensor %s: %d bytes", tt.Name, len(tt.Data))
			}
		}
		// A parsed file survives a write/parse round trip of its metadata.
		w := NewWriter()
		for _, k := range file.Keys() {
			v, _ := file.Value(k)
			if k == "general.alignment" {
				continue
			}
			if err := w.Set(k, v); err != nil {
				t.Fatal(err)
			}
		}
		var buf bytes.Buffer
		if _, err := w.WriteTo(&buf); err != nil {
			t.Fatal(err)
		}
		if _, err := Parse("rewritten", buf.Bytes()); err != nil {
			t.Fatalf("rewritten: %v", err)
		}
	})
}
