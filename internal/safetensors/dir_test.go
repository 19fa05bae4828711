package safetensors

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// tinyTensors are a two-layer llama-shaped model in miniature: the HF names
// a loader looks up, with shapes small enough to write in a test.
var tinyTensors = []struct {
	name  string
	shape []int
}{
	{"model.embed_tokens.weight", []int{10, 8}},
	{"model.layers.0.input_layernorm.weight", []int{8}},
	{"model.layers.0.self_attn.q_proj.weight", []int{8, 8}},
	{"model.layers.0.self_attn.q_proj.bias", []int{8}},
	{"model.layers.0.mlp.down_proj.weight", []int{8, 16}},
	{"model.layers.1.input_layernorm.weight", []int{8}},
	{"model.layers.1.self_attn.q_proj.weight", []int{8, 8}},
	{"model.layers.1.mlp.down_proj.weight", []int{8, 16}},
	{"model.norm.weight", []int{8}},
}

// tensorData is distinct, reproducible content for a tensor.
func tensorData(name string, size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(i*7 + len(name))
	}
	return b
}

func writeShard(t *testing.T, path string, names ...string) {
	t.Helper()
	w := NewWriter()
	w.SetMetadata("format", "pt")
	for _, tt := range tinyTensors {
		for _, n := range names {
			if n == tt.name {
				size, _ := byteSize(BF16, tt.shape)
				must(t, w.Add(tt.name, BF16, tt.shape, tensorData(tt.name, int(size))))
			}
		}
	}
	must(t, w.WriteFile(path))
}

func allNames() []string {
	var names []string
	for _, tt := range tinyTensors {
		names = append(names, tt.name)
	}
	return names
}

// modelDir makes a directory with a published config.json and the tiny
// tensors, in one file or in shards (shards[i] lists the names of shard i).
func modelDir(t *testing.T, fixture string, shards [][]string) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{ConfigFile, GenerationConfigFile} {
		if b, err := os.ReadFile(filepath.Join("testdata", "hf", fixture, f)); err == nil {
			must(t, os.WriteFile(filepath.Join(dir, f), b, 0o644))
		}
	}
	if shards == nil {
		writeShard(t, filepath.Join(dir, WeightsFile), allNames()...)
		return dir
	}
	weightMap := map[string]string{}
	for i, names := range shards {
		file := "model-0000" + itoa(i+1) + "-of-0000" + itoa(len(shards)) + ".safetensors"
		writeShard(t, filepath.Join(dir, file), names...)
		for _, n := range names {
			weightMap[n] = file
		}
	}
	writeIndex(t, dir, weightMap)
	return dir
}

func writeIndex(t *testing.T, dir string, weightMap map[string]string) {
	t.Helper()
	b, err := json.MarshalIndent(map[string]any{"metadata": map[string]any{"total_size": 1234}, "weight_map": weightMap}, "", "  ")
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dir, IndexFile), b, 0o644))
}

func checkTensors(t *testing.T, m *Model) {
	t.Helper()
	for _, tt := range tinyTensors {
		got, err := m.Lookup(tt.name)
		if err != nil {
			t.Fatal(err)
		}
		size, _ := byteSize(BF16, tt.shape)
		if got.DType != BF16 || !reflect.DeepEqual(got.Shape, tt.shape) || !bytes.Equal(got.Data, tensorData(tt.name, int(size))) {
			t.Errorf("%s: got %s %v (%d bytes)", tt.name, got.DType, got.Shape, len(got.Data))
		}
	}
	if !reflect.DeepEqual(m.Names(), sortedNames()) {
		t.Errorf("Names: got %v", m.Names())
	}
}

func sortedNames() []string {
	n := allNames()
	slices.Sort(n)
	return n
}

func TestOpenDirSingleFile(t *testing.T) {
	dir := modelDir(t, "qwen2.5-0.5b-instruct", nil)
	must(t, os.WriteFile(filepath.Join(dir, TokenizerFile), []byte(`{}`), 0o644))
	m, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	checkTensors(t, m)
	if m.Config.ModelType != "qwen2" || !m.Config.TieWordEmbeddings {
		t.Errorf("config: got %+v", m.Config)
	}
	if m.Generation == nil || !m.Generation.EOSTokenID.Contains(151645) {
		t.Errorf("generation config: got %+v", m.Generation)
	}
	if m.TokenizerPath != filepath.Join(dir, TokenizerFile) || m.TokenizerConfigPath != "" ||
		m.GenerationConfigPath != filepath.Join(dir, GenerationConfigFile) {
		t.Errorf("paths: tokenizer %q, tokenizer config %q, generation %q", m.TokenizerPath, m.TokenizerConfigPath, m.GenerationConfigPath)
	}
	if len(m.Files()) != 1 {
		t.Errorf("%d files, want 1", len(m.Files()))
	}
	_, err = m.Lookup("lm_head.weight")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `"lm_head.weight"`) || !strings.Contains(err.Error(), dir) {
		t.Errorf("missing tensor: got %v", err)
	}
	if _, ok := m.Tensor("lm_head.weight"); ok {
		t.Error("Tensor found a tensor that is not there")
	}
}

func TestOpenDirSharded(t *testing.T) {
	names := allNames()
	dir := modelDir(t, "llama-3.2-1b", [][]string{names[:3], names[3:7], names[7:]})
	must(t, os.WriteFile(filepath.Join(dir, TokenizerConfigFile), []byte(`{}`), 0o644))
	m, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	checkTensors(t, m)
	if m.Generation != nil || m.GenerationConfigPath != "" || m.TokenizerPath != "" || m.TokenizerConfigPath == "" {
		t.Errorf("side files: %+v", m)
	}
	if m.Config.RopeScaling == nil || m.Config.RopeScaling.Type != "llama3" {
		t.Errorf("config: got %+v", m.Config.RopeScaling)
	}
	files := m.Files()
	if len(files) != 3 {
		t.Fatalf("%d files opened, want each of the 3 shards once", len(files))
	}
	q, _ := m.Tensor("model.layers.0.self_attn.q_proj.bias")
	if q.File != files[1].Name || !strings.HasSuffix(q.File, "model-00002-of-00003.safetensors") {
		t.Errorf("q_proj.bias is in %s, want the second shard", q.File)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if f.data != nil || f.unmap != nil {
			t.Errorf("%s still mapped after Close", f.Name)
		}
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// transformers reads model.safetensors before the index; so do we.
func TestOpenDirPrefersSingleFile(t *testing.T) {
	dir := modelDir(t, "smollm2-135m", nil)
	writeIndex(t, dir, map[string]string{"model.norm.weight": "missing.safetensors"})
	m, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	checkTensors(t, m)
}

func TestOpenDirErrors(t *testing.T) {
	names := allNames()
	tests := []struct {
		name  string
		setup func(t *testing.T) string
		err   error
		want  []string // in the message
	}{
		{"no config.json", func(t *testing.T) string {
			dir := modelDir(t, "smollm2-135m", nil)
			must(t, os.Remove(filepath.Join(dir, ConfigFile)))
			return dir
		}, fs.ErrNotExist, []string{"no config.json"}},
		{"bad config.json", func(t *testing.T) string {
			dir := modelDir(t, "smollm2-135m", nil)
			must(t, os.WriteFile(filepath.Join(dir, ConfigFile), []byte(`{"hidden_size":-1}`), 0o644))
			return dir
		}, ErrConfig, []string{"config.json: hidden_size"}},
		{"bad generation_config.json", func(t *testing.T) string {
			dir := modelDir(t, "smollm2-135m", nil)
			must(t, os.WriteFile(filepath.Join(dir, GenerationConfigFile), []byte(`{"top_p":7}`), 0o644))
			return dir
		}, ErrConfig, []string{"generation_config.json: top_p"}},
		{"no weights", func(t *testing.T) string {
			dir := modelDir(t, "smollm2-135m", nil)
			must(t, os.Remove(filepath.Join(dir, WeightsFile)))
			must(t, os.WriteFile(filepath.Join(dir, "pytorch_model.bin"), nil, 0o644))
			return dir
		}, ErrNoWeights, []string{"neither model.safetensors nor model.safetensors.index.json", "pytorch_model.bin is not supported"}},
		{"truncated single file", func(t *testing.T) string {
			dir := modelDir(t, "smollm2-135m", nil)
			p := filepath.Join(dir, WeightsFile)
			b, _ := os.ReadFile(p)
			must(t, os.WriteFile(p, b[:len(b)-3], 0o644))
			return dir
		}, ErrTruncated, []string{WeightsFile + `: tensor "model.norm.weight"`}},
		{"shard missing", func(t *testing.T) string {
			dir := modelDir(t, "smollm2-135m", [][]string{names[:4], names[4:]})
			must(t, os.Remove(filepath.Join(dir, "model-00002-of-00002.safetensors")))
			return dir
		}, fs.ErrNotExist, []string{"shard model-00002-of-00002.safetensors is missing"}},
		{"tensor missing from its shard", func(t *testing.T) string {
			dir := modelDir(t, "smollm2-135m", [][]string{names[:4], names[4:]})
			writeIndex(t, dir, map[string]string{
				names[0]: "model-00001-of-00002.safetensors",
				names[5]: "model-00001-of-00002.safetensors", // it is in shard 2
			})
			return dir
		}, ErrNotFound, []string{`tensor "` + names[5] + `" is not in model-00001-of-00002.safetensors`}},
		{"tensor absent everywhere", func(t *testing.T) string {
			dir := modelDir(t, "smollm2-135m", [][]string{names})
			writeIndex(t, dir, map[string]string{names[0]: "model-00001-of-00001.safetensors", "lm_head.weight": "model-00001-of-00001.safetensors"})
			return dir
		}, ErrNotFound, []string{`"lm_head.weight"`, IndexFile}},
		{"tensor in two shards", func(t *testing.T) string {
			dir := modelDir(t, "smollm2-135m", [][]string{names[:5], names[4:]})
			return dir
		}, ErrCorrupt, []string{`tensor "` + names[4] + `" is in both`}},
		{"corrupt shard", func(t *testing.T) string {
			dir := modelDir(t, "smollm2-135m", [][]string{names[:4], names[4:]})
			p := filepath.Join(dir, "model-00002-of-00002.safetensors")
			b, _ := os.ReadFile(p)
			must(t, os.WriteFile(p, append(b, 0), 0o644))
			return dir
		}, ErrCorrupt, []string{"model-00002-of-00002.safetensors: data buffer"}},
		{"shard outside the directory", func(t *testing.T) string {
			dir := modelDir(t, "smollm2-135m", [][]string{names})
			writeIndex(t, dir, map[string]string{names[0]: "../model-00001-of-00001.safetensors"})
			return dir
		}, ErrConfig, []string{`shard "../model-00001-of-00001.safetensors" is not a .safetensors file name`}},
		{"bad index", func(t *testing.T) string {
			dir := modelDir(t, "smollm2-135m", [][]string{names})
			must(t, os.WriteFile(filepath.Join(dir, IndexFile), []byte(`{"weight_map":[]}`), 0o644))
			return dir
		}, ErrConfig, []string{IndexFile + ": weight_map"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.setup(t)
			m, err := OpenDir(dir)
			if !errors.Is(err, tc.err) {
				if m != nil {
					m.Close()
				}
				t.Fatalf("got %v, want %v", err, tc.err)
			}
			if m != nil {
				t.Error("OpenDir returned a Model with its error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("message %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestParseIndex(t *testing.T) {
	x, err := ParseIndex("index", []byte(`{"metadata":{"total_size":2471645608,"total_parameters":1235814400},
		"weight_map":{"a":"model-00002-of-00002.safetensors","b":"model-00001-of-00002.safetensors","c":"model-00002-of-00002.safetensors"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if x.TotalSize != 2471645608 || !reflect.DeepEqual(x.Shards(), []string{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}) {
		t.Errorf("got %+v, shards %v", x, x.Shards())
	}
	if x, err := ParseIndex("index", []byte(`{"weight_map":{"a":"m.safetensors"}}`)); err != nil || x.TotalSize != 0 {
		t.Errorf("no metadata: got %+v, %v", x, err)
	}
	bad := []struct{ json, want string }{
		{`{}`, "no weight_map"},
		{`{"weight_map":null}`, "no weight_map"},
		{`{"weight_map":{}}`, "weight_map is empty"},
		{`{"weight_map":{"a":1}}`, "not an object of file names"},
		{`{"weight_map":{"a":"m.bin"}}`, `shard "m.bin"`},
		{`{"weight_map":{"a":".safetensors"}}`, "shard"},
		{`{"weight_map":{"a":"/etc/m.safetensors"}}`, "shard"},
		{`{"weight_map":{"a":"sub/m.safetensors"}}`, "shard"},
		{`{"weight_map":{"a":"sub\\m.safetensors"}}`, "shard"},
		{`{"weight_map":{"a":"m\u0000.safetensors"}}`, "shard"},
		{`{"metadata":{"total_size":-5},"weight_map":{"a":"m.safetensors"}}`, "total_size"},
		{`{"metadata":[],"weight_map":{"a":"m.safetensors"}}`, "metadata"},
		{`"x"`, "invalid JSON"},
	}
	for _, tc := range bad {
		_, err := ParseIndex("index", []byte(tc.json))
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.json, err, tc.want)
		}
	}
}
