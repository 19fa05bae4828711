package safetensors

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func FuzzParse(f *testing.F) {
	w := NewWriter()
	w.SetMetadata("format", "pt")
	must(f, w.Add("a", F32, []int{2, 2}, seq(16)))
	must(f, w.Add("b", BF16, []int{3}, seq(6)))
	must(f, w.Add("e", F16, []int{0, 3}, nil))
	must(f, w.Add("p", F4, []int{4}, seq(2)))
	var buf bytes.Buffer
	if _, err := w.WriteTo(&buf); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add(file(`{}`, nil))
	f.Add(file(`{"s":{"dtype":"F64","shape":[],"data_offsets":[0,8]}}`, seq(8)))
	f.Add(file(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`, seq(12)))
	f.Add(file(`{"__metadata__":{"k":"v"},"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, seq(1)))
	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := Parse("fuzz", b)
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) || fe.File != "fuzz" || !strings.HasPrefix(err.Error(), "safetensors fuzz: ") {
				t.Fatalf("error %v is not a FormatError naming the file", err)
			}
			return
		}
		// The tensors tile the data buffer exactly, each with the size
		// its dtype and shape imply.
		end := file.DataOffset
		for _, tt := range file.Tensors() {
			size, err := byteSize(tt.DType, tt.Shape)
			if err != nil || uint64(len(tt.Data)) != size {
				t.Fatalf("tensor %q: %d bytes for %s %v (%v)", tt.Name, len(tt.Data), tt.DType, tt.Shape, err)
			}
			if file.DataOffset+tt.Offset != end {
				t.Fatalf("tensor %q at %d, want %d", tt.Name, file.DataOffset+tt.Offset, end)
			}
			end += int64(size)
		}
		if end != int64(len(b)) {
			t.Fatalf("tensors end at %d of %d bytes", end, len(b))
		}
		// What parses survives a Writer round trip unchanged.
		w := NewWriter()
		for k, v := range file.Metadata {
			w.SetMetadata(k, v)
		}
		for _, tt := range file.Tensors() {
			if err := w.Add(tt.Name, tt.DType, tt.Shape, tt.Data); err != nil {
				t.Fatalf("rewrite: %v", err)
			}
		}
		var out bytes.Buffer
		if _, err := w.WriteTo(&out); err != nil {
			t.Fatalf("rewrite: %v", err)
		}
		again, err := Parse("rewritten", out.Bytes())
		if err != nil {
			t.Fatalf("rewritten file: %v", err)
		}
		if len(again.Tensors()) != len(file.Tensors()) || len(again.Metadata) != len(file.Metadata) {
			t.Fatalf("rewritten file has %d tensors and %d metadata keys, want %d and %d",
				len(again.Tensors()), len(again.Metadata), len(file.Tensors()), len(file.Metadata))
		}
		for _, tt := range file.Tensors() {
			u, ok := again.Tensor(tt.Name)
			if !ok || u.DType != tt.DType || len(u.Shape) != len(tt.Shape) || !bytes.Equal(u.Data, tt.Data) {
				t.Fatalf("tensor %q changed in the round trip", tt.Name)
			}
		}
	})
}

func FuzzParseConfig(f *testing.F) {
	for _, model := range []string{"tinyllama-1.1b-chat-v1.0", "llama-3.2-1b", "qwen2.5-0.5b", "qwen2.5-0.5b-instruct", "smollm2-135m"} {
		b, err := os.ReadFile(filepath.Join("testdata", "hf", model, ConfigFile))
		must(f, err)
		f.Add(b)
	}
	g, err := os.ReadFile(filepath.Join("testdata", "hf", "qwen2.5-0.5b-instruct", GenerationConfigFile))
	must(f, err)
	f.Add(g)
	f.Add([]byte(`{"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"vocab_size":10,"rope_scaling":{"type":"longrope","short_factor":[1,1],"long_factor":[1,1]}}`))
	f.Add([]byte(`{"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"vocab_size":10,"rope_parameters":{"rope_type":"yarn","factor":4,"rope_theta":1e6}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if c, err := ParseConfig("config.json", b); err != nil {
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("error %v does not wrap ErrConfig", err)
			}
		} else {
			// What an engine relies on after a successful parse.
			if c.HiddenSize <= 0 || c.NumHiddenLayers <= 0 || c.VocabSize <= 0 || c.HeadDim <= 0 ||
				c.NumKeyValueHeads <= 0 || c.NumAttentionHeads%c.NumKeyValueHeads != 0 {
				t.Fatalf("inconsistent sizes: %+v", c)
			}
			if c.RopeTheta <= 0 || c.RMSNormEps <= 0 {
				t.Fatalf("theta %g, eps %g", c.RopeTheta, c.RMSNormEps)
			}
			if rs := c.RopeScaling; rs != nil {
				if rs.Type == "llama3" && (rs.HighFreqFactor <= rs.LowFreqFactor || rs.LowFreqFactor <= 0 || rs.OriginalMaxPositionEmbeddings <= 0) {
					t.Fatalf("llama3 scaling %+v", rs)
				}
				if rs.Type != "longrope" && rs.Factor <= 0 {
					t.Fatalf("scaling %+v", rs)
				}
				if rs.Type == "longrope" && (len(rs.ShortFactor) != c.HeadDim/2 || len(rs.LongFactor) != c.HeadDim/2) {
					t.Fatalf("longrope %+v for head_dim %d", rs, c.HeadDim)
				}
			}
			for l := range c.NumHiddenLayers {
				if w := c.SlidingWindowFor(l); w < 0 {
					t.Fatalf("layer %d window %d", l, w)
				}
			}
		}
		if g, err := ParseGenerationConfig("generation_config.json", b); err != nil {
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("error %v does not wrap ErrConfig", err)
			}
		} else if g.TopP != nil && (*g.TopP < 0 || *g.TopP > 1) {
			t.Fatalf("top_p %g", *g.TopP)
		}
	})
}

func FuzzParseIndex(f *testing.F) {
	f.Add([]byte(`{"metadata":{"total_size":2471645608},"weight_map":{"lm_head.weight":"model-00002-of-00002.safetensors","model.embed_tokens.weight":"model-00001-of-00002.safetensors"}}`))
	f.Add([]byte(`{"weight_map":{"a":"../x.safetensors"}}`))
	f.Add([]byte(`{"weight_map":{}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		x, err := ParseIndex("index.json", b)
		if err != nil {
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("error %v does not wrap ErrConfig", err)
			}
			return
		}
		shards := x.Shards()
		if len(x.WeightMap) == 0 || len(shards) == 0 || len(shards) > MaxShards || x.TotalSize < 0 {
			t.Fatalf("got %+v", x)
		}
		for _, s := range shards {
			// Nothing that could leave the model directory.
			if filepath.Base(s) != s || !filepath.IsLocal(s) || strings.ContainsAny(s, `/\`) {
				t.Fatalf("shard %q", s)
			}
		}
		if !reflect.DeepEqual(shards, x.Shards()) {
			t.Fatal("Shards is not deterministic")
		}
	})
}
