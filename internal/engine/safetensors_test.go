package engine

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/npumesh/npumesh/internal/safetensors"
	"github.com/npumesh/npumesh/internal/synth"
)

// storiesHFDir converts the stories260K GGUF into a Hugging Face directory
// (synth.WriteHFDir: HF names and shapes, Q/K rows back in rotate-half
// order, config.json, tokenizer.json); edit, when set, may then change a
// tensor's name, shape or data (returning "" drops it; an "I32:" prefix on
// the name writes it with that dtype).
func storiesHFDir(t *testing.T, edit func(name string, shape []int, data []byte) (string, []int, []byte)) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "stories260K-hf")
	if err := synth.WriteHFDir(dir, storiesPath(t)); err != nil {
		t.Fatal(err)
	}
	if edit == nil {
		return dir
	}
	path := filepath.Join(dir, "model.safetensors")
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	w := safetensors.NewWriter()
	for _, tt := range f.Tensors() {
		name, shape, data := edit(tt.Name, slices.Clone(tt.Shape), slices.Clone(tt.Data))
		if name == "" {
			continue
		}
		dtype := tt.DType
		if n, ok := strings.CutPrefix(name, "I32:"); ok {
			name, dtype = n, safetensors.I32
		}
		if err := w.Add(name, dtype, shape, data); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	if err := w.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestLoadHFSafetensors(t *testing.T) {
	dir := storiesHFDir(t, nil)
	m, err := Load(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	info := m.Info()
	if info.ID != "stories260K-hf" || info.Arch != "llama" || info.Parameters != 292800 || info.Quantization != "F32" {
		t.Errorf("info %+v", info)
	}
	text, _, _, err := generate(t, m, context.Background(), Request{MaxTokens: 200})
	if err != nil {
		t.Fatal(err)
	}
	if want := expectedGreedy(t); !strings.HasPrefix(text, want) {
		t.Errorf("got\n%q\nwant\n%q", text, want)
	}
	// The tokenizer.json agrees with the GGUF's SentencePiece tokenizer.
	g := loadStories(t, Options{})
	for _, s := range []string{"Once upon a time, there was a little girl named Lily.", " She liked to play!"} {
		a, err1 := m.Tokenizer().Encode(s, true)
		b, err2 := g.Tokenizer().Encode(s, true)
		if err1 != nil || err2 != nil || !slices.Equal(a, b) {
			t.Errorf("Encode(%q): HF %v %v, GGUF %v %v", s, a, err1, b, err2)
		}
	}
}

func TestLoadHFSafetensorsErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		edit func(name string, shape []int, data []byte) (string, []int, []byte)
		want []string
	}{
		{"missing", func(n string, s []int, d []byte) (string, []int, []byte) {
			if n == "model.layers.2.mlp.up_proj.weight" {
				return "", nil, nil
			}
			return n, s, d
		}, []string{`"model.layers.2.mlp.up_proj.weight" not found`}},
		{"shape", func(n string, s []int, d []byte) (string, []int, []byte) {
			if n == "model.layers.1.mlp.gate_proj.weight" {
				return n, []int{s[1], s[0]}, d
			}
			return n, s, d
		}, []string{"model.safetensors", `"model.layers.1.mlp.gate_proj.weight" has shape`}},
		{"dtype", func(n string, s []int, d []byte) (string, []int, []byte) {
			if n == "model.layers.3.input_layernorm.weight" {
				return "I32:" + n, s, d
			}
			return n, s, d
		}, []string{"model.safetensors", `"model.layers.3.input_layernorm.weight" has dtype I32`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := storiesHFDir(t, c.edit)
			m, err := Load(dir, Options{})
			if err == nil {
				m.Close()
				t.Fatal("no error")
			}
			t.Log(err)
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}
