package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// The byte-exact outputs of the reference implementation's own tests
// (huggingface/safetensors, safetensors/src/tensor.rs: test_serialization,
// test_serialization_forced_alignement, test_empty).
func TestWriterMatchesReference(t *testing.T) {
	floats := f32s(0, 1, 2, 3, 4, 5)
	tests := []struct {
		name  string
		build func(w *Writer)
		want  []byte
	}{
		{"serialization", func(w *Writer) {
			must(t, w.Add("attn.0", F32, []int{1, 2, 3}, floats))
		}, []byte{
			64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100,
			116, 121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34,
			58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115,
			101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0, 0, 0, 0, 0, 0, 128, 63,
			0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64,
		}},
		{"forced alignment", func(w *Writer) {
			must(t, w.Add("attn0", F32, []int{1, 1, 2, 3}, floats))
		}, []byte{
			72, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 48, 34, 58, 123, 34, 100, 116,
			121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58,
			91, 49, 44, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102,
			115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 32, 32, 32, 32, 32,
			32, 32, 0, 0, 0, 0, 0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0,
			160, 64,
		}},
		{"empty", func(w *Writer) {}, []byte{8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32}},
		{"empty with metadata", func(w *Writer) { w.SetMetadata("framework", "pt") }, []byte{
			40, 0, 0, 0, 0, 0, 0, 0, 123, 34, 95, 95, 109, 101, 116, 97, 100, 97, 116, 97, 95,
			95, 34, 58, 123, 34, 102, 114, 97, 109, 101, 119, 111, 114, 107, 34, 58, 34, 112,
			116, 34, 125, 125, 32, 32, 32, 32, 32,
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := NewWriter()
			tc.build(w)
			var buf bytes.Buffer
			n, err := w.WriteTo(&buf)
			if err != nil {
				t.Fatal(err)
			}
			if n != int64(buf.Len()) {
				t.Errorf("WriteTo returned %d, wrote %d", n, buf.Len())
			}
			if !bytes.Equal(buf.Bytes(), tc.want) {
				t.Errorf("got\n%q\nwant\n%q", buf.Bytes(), tc.want)
			}
			if _, err := Parse(tc.name, buf.Bytes()); err != nil {
				t.Errorf("parse back: %v", err)
			}
		})
	}
}

// A round trip through Writer and Parse keeps every tensor, lays data out
// widest dtype first then by name, and aligns each tensor to its element
// size.
func TestWriterRoundTrip(t *testing.T) {
	type in struct {
		name  string
		dtype DType
		shape []int
	}
	ins := []in{
		{"model.norm.weight", F16, []int{3}},
		{"model.embed_tokens.weight", BF16, []int{5, 3}},
		{"lm_head.weight", F32, []int{5, 3}},
		{"a.scale", F8_E4M3, []int{7}},
		{"position_ids", I64, []int{1, 3}},
		{"b.weight", F32, []int{1}},
		{"scalar", F64, nil},
		{"empty", F32, []int{0, 4}},
		{"packed", F4, []int{2, 3}},
		{"quoted \"<name>\" & \u00e9", U8, []int{2}},
	}
	w := NewWriter()
	w.SetMetadata("format", "pt")
	w.SetMetadata("source", "<npumesh & co>")
	want := map[string][]byte{}
	for i, x := range ins {
		size, err := byteSize(x.dtype, x.shape)
		must(t, err)
		data := bytes.Repeat([]byte{byte(i + 1)}, int(size))
		want[x.name] = data
		if i%2 == 0 {
			must(t, w.Add(x.name, x.dtype, x.shape, data))
		} else {
			must(t, w.AddFunc(x.name, x.dtype, x.shape, func(out io.Writer) error {
				// Write in two pieces, as a streaming converter would.
				if _, err := out.Write(data[:len(data)/2]); err != nil {
					return err
				}
				_, err := out.Write(data[len(data)/2:])
				return err
			}))
		}
	}
	var buf bytes.Buffer
	if _, err := w.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	hl := binary.LittleEndian.Uint64(b)
	if hl%8 != 0 {
		t.Errorf("header length %d is not a multiple of 8", hl)
	}
	if !bytes.Contains(b, []byte(`"source":"<npumesh & co>"`)) || !bytes.Contains(b, []byte(`"quoted \"<name>\" & é"`)) {
		t.Errorf("header escapes HTML characters: %s", b[8:8+hl])
	}
	f, err := Parse("round", b)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"format": "pt", "source": "<npumesh & co>"}; !reflect.DeepEqual(f.Metadata, want) {
		t.Errorf("metadata: got %v, want %v", f.Metadata, want)
	}
	var order []string
	for _, tt := range f.Tensors() {
		order = append(order, tt.Name)
		if !bytes.Equal(tt.Data, want[tt.Name]) {
			t.Errorf("%s: data differs", tt.Name)
		}
		if align := max(tt.DType.Bits()/8, 1); (f.DataOffset+tt.Offset)%int64(align) != 0 {
			t.Errorf("%s: %s data at file offset %d is not %d-aligned", tt.Name, tt.DType, f.DataOffset+tt.Offset, align)
		}
	}
	wantOrder := []string{
		"position_ids", "scalar", // I64, F64
		"b.weight", "empty", "lm_head.weight", // F32 by name
		"model.embed_tokens.weight", "model.norm.weight", // BF16, F16
		"a.scale", `quoted "<name>" & é`, "packed", // F8_E4M3, U8, F4
	}
	if !reflect.DeepEqual(order, wantOrder) {
		t.Errorf("data order:\ngot  %q\nwant %q", order, wantOrder)
	}
	for _, x := range ins {
		tt, ok := f.Tensor(x.name)
		if !ok || tt.DType != x.dtype || len(tt.Shape) != len(x.shape) || (len(x.shape) > 0 && !reflect.DeepEqual(tt.Shape, x.shape)) {
			t.Errorf("%s: got %+v, want %s %v", x.name, tt, x.dtype, x.shape)
		}
	}
}

func TestWriterRejects(t *testing.T) {
	w := NewWriter()
	must(t, w.Add("t", F32, []int{2}, seq(8)))
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"duplicate", w.Add("t", F32, []int{2}, seq(8)), `"t" added twice`},
		{"reserved name", w.Add("__metadata__", U8, []int{1}, seq(1)), "reserved"},
		{"short data", w.Add("u", F32, []int{2}, seq(7)), "7 bytes of data, want 8"},
		{"negative dimension", w.Add("u", U8, []int{-1}, nil), "dimension -1"},
		{"absurd dimension", w.Add("u", U8, []int{0, MaxDim + 1}, nil), "dimension"},
		{"too many dimensions", w.Add("u", U8, make([]int, MaxRank+1), nil), "dimensions"},
		{"unknown dtype", w.Add("u", DType(200), []int{1}, seq(1)), "unknown dtype"},
		{"packed mid-byte", w.AddFunc("u", F6_E2M3, []int{3}, nil), "whole bytes"},
	}
	for _, tc := range tests {
		if tc.err == nil || !strings.Contains(tc.err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.name, tc.err, tc.want)
		}
	}
	if got := len(w.tensors); got != 1 {
		t.Errorf("%d tensors after rejected adds, want 1", got)
	}
}

func TestWriterFuncSize(t *testing.T) {
	fail := errors.New("source failed")
	tests := []struct {
		name  string
		write func(io.Writer) error
		want  string
	}{
		{"too few bytes", func(w io.Writer) error { _, err := w.Write(seq(3)); return err }, "wrote 3 bytes, want 4"},
		{"too many bytes", func(w io.Writer) error { _, err := w.Write(seq(5)); return err }, "1 bytes more than"},
		{"error", func(io.Writer) error { return fail }, "source failed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := NewWriter()
			must(t, w.AddFunc("t", F32, []int{1}, tc.write))
			_, err := w.WriteTo(io.Discard)
			if err == nil || !strings.Contains(err.Error(), `tensor "t"`) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error naming the tensor and %q", err, tc.want)
			}
		})
	}
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "out.safetensors")
	w := NewWriter()
	must(t, w.Add("t", U8, []int{3}, seq(3)))
	must(t, w.WriteFile(p))
	bad := NewWriter()
	must(t, bad.AddFunc("t", U8, []int{3}, func(io.Writer) error { return errors.New("boom") }))
	if err := bad.WriteFile(p); err == nil {
		t.Fatal("a failed write reported success")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != "out.safetensors" {
		t.Errorf("directory holds %v, want only out.safetensors", entries)
	}
	f, err := Open(p)
	if err != nil {
		t.Fatalf("the good file was damaged by the failed write: %v", err)
	}
	defer f.Close()
	if tt, _ := f.Tensor("t"); !bytes.Equal(tt.Data, seq(3)) {
		t.Errorf("got %v", tt.Data)
	}
}
