package safetensors

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func readFixture(t *testing.T, model, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "hf", model, file))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The published config.json files of testdata/hf (see SOURCE.md there).
func TestParseConfigPublished(t *testing.T) {
	tests := []struct {
		model string
		want  Config
	}{
		{"tinyllama-1.1b-chat-v1.0", Config{
			Architectures: []string{"LlamaForCausalLM"}, ModelType: "llama",
			HiddenSize: 2048, IntermediateSize: 5632, NumHiddenLayers: 22,
			NumAttentionHeads: 32, NumKeyValueHeads: 4, HeadDim: 64, VocabSize: 32000,
			MaxPositionEmbeddings: 2048, RMSNormEps: 1e-5, HiddenAct: "silu", RopeTheta: 10000,
			TorchDtype: "bfloat16", BOSTokenID: TokenIDs{1}, EOSTokenID: TokenIDs{2},
		}},
		{"llama-3.2-1b", Config{
			Architectures: []string{"LlamaForCausalLM"}, ModelType: "llama",
			HiddenSize: 2048, IntermediateSize: 8192, NumHiddenLayers: 16,
			NumAttentionHeads: 32, NumKeyValueHeads: 8, HeadDim: 64, VocabSize: 128256,
			MaxPositionEmbeddings: 131072, RMSNormEps: 1e-5, HiddenAct: "silu", RopeTheta: 500000,
			RopeScaling: &RopeScaling{
				Type: "llama3", Factor: 32, LowFreqFactor: 1, HighFreqFactor: 4,
				OriginalMaxPositionEmbeddings: 8192,
			},
			TieWordEmbeddings: true, TorchDtype: "bfloat16",
			BOSTokenID: TokenIDs{128000}, EOSTokenID: TokenIDs{128001},
		}},
		{"qwen2.5-0.5b", Config{
			Architectures: []string{"Qwen2ForCausalLM"}, ModelType: "qwen2",
			HiddenSize: 896, IntermediateSize: 4864, NumHiddenLayers: 24,
			NumAttentionHeads: 14, NumKeyValueHeads: 2, HeadDim: 64, VocabSize: 151936,
			MaxPositionEmbeddings: 32768, RMSNormEps: 1e-6, HiddenAct: "silu", RopeTheta: 1e6,
			TieWordEmbeddings: true, TorchDtype: "bfloat16",
			BOSTokenID: TokenIDs{151643}, EOSTokenID: TokenIDs{151643},
			SlidingWindow: 32768, MaxWindowLayers: 24,
		}},
		{"qwen2.5-0.5b-instruct", Config{
			Architectures: []string{"Qwen2ForCausalLM"}, ModelType: "qwen2",
			HiddenSize: 896, IntermediateSize: 4864, NumHiddenLayers: 24,
			NumAttentionHeads: 14, NumKeyValueHeads: 2, HeadDim: 64, VocabSize: 151936,
			MaxPositionEmbeddings: 32768, RMSNormEps: 1e-6, HiddenAct: "silu", RopeTheta: 1e6,
			TieWordEmbeddings: true, TorchDtype: "bfloat16",
			BOSTokenID: TokenIDs{151643}, EOSTokenID: TokenIDs{151645},
			SlidingWindow: 32768, MaxWindowLayers: 21,
		}},
		{"smollm2-135m", Config{
			Architectures: []string{"LlamaForCausalLM"}, ModelType: "llama",
			HiddenSize: 576, IntermediateSize: 1536, NumHiddenLayers: 30,
			NumAttentionHeads: 9, NumKeyValueHeads: 3, HeadDim: 64, VocabSize: 49152,
			MaxPositionEmbeddings: 8192, RMSNormEps: 1e-5, HiddenAct: "silu", RopeTheta: 100000,
			TieWordEmbeddings: true, TorchDtype: "bfloat16",
			BOSTokenID: TokenIDs{0}, EOSTokenID: TokenIDs{0},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.model, func(t *testing.T) {
			c, err := ParseConfig("config.json", readFixture(t, tc.model, "config.json"))
			if err != nil {
				t.Fatal(err)
			}
			if c.Raw["model_type"] == nil {
				t.Error("Raw does not keep the fields")
			}
			got := *c
			got.Raw = nil
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got\n%+v\nwant\n%+v", got, tc.want)
			}
		})
	}
}

func TestConfigBiasAndWindow(t *testing.T) {
	load := func(model string) *Config {
		c, err := ParseConfig(model, readFixture(t, model, "config.json"))
		must(t, err)
		return c
	}
	qwen, llama := load("qwen2.5-0.5b-instruct"), load("llama-3.2-1b")
	if !qwen.QKVBias() || qwen.AttentionBias {
		t.Errorf("qwen2: QKVBias %v, AttentionBias %v; want true, false", qwen.QKVBias(), qwen.AttentionBias)
	}
	if llama.QKVBias() {
		t.Error("llama 3.2: QKVBias true, want false")
	}
	for layer := range 24 {
		if w := qwen.SlidingWindowFor(layer); w != 0 {
			t.Errorf("qwen2 with use_sliding_window false: layer %d window %d, want 0", layer, w)
		}
	}
	if w := llama.SlidingWindowFor(0); w != 0 {
		t.Errorf("llama: window %d, want 0", w)
	}
	cfg := func(extra string) *Config {
		c, err := ParseConfig("c", []byte(`{"hidden_size":64,"num_hidden_layers":4,"num_attention_heads":4,"vocab_size":10`+extra+`}`))
		must(t, err)
		return c
	}
	tests := []struct {
		name  string
		extra string
		want  []int // window per layer
	}{
		{"qwen2 window from max_window_layers", `,"sliding_window":128,"use_sliding_window":true,"max_window_layers":2`, []int{0, 0, 128, 128}},
		{"mistral style", `,"sliding_window":4096`, []int{4096, 4096, 4096, 4096}},
		{"mistral null", `,"sliding_window":null`, []int{0, 0, 0, 0}},
		{"layer_types", `,"sliding_window":512,"layer_types":["sliding_attention","full_attention","sliding_attention","full_attention"]`, []int{512, 0, 512, 0}},
		{"attention_bias", `,"attention_bias":true`, nil},
	}
	for _, tc := range tests {
		c := cfg(tc.extra)
		var got []int
		for l := range tc.want {
			got = append(got, c.SlidingWindowFor(l))
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: windows %v, want %v", tc.name, got, tc.want)
		}
	}
	if !cfg(`,"attention_bias":true`).QKVBias() {
		t.Error("attention_bias true: QKVBias false")
	}
}

// Shapes config.json files take in the wild, beyond the fixtures.
func TestParseConfigShapes(t *testing.T) {
	const base = `"hidden_size":4096,"num_hidden_layers":32,"num_attention_heads":32,"vocab_size":128256,"max_position_embeddings":131072`
	tests := []struct {
		name  string
		json  string
		check func(t *testing.T, c *Config)
	}{
		{"eos list and null pad (Llama 3.1 Instruct)", `{` + base + `,"eos_token_id":[128001,128008,128009],"pad_token_id":null}`, func(t *testing.T, c *Config) {
			if !reflect.DeepEqual(c.EOSTokenID, TokenIDs{128001, 128008, 128009}) || c.PadTokenID != nil || !c.EOSTokenID.Contains(128009) {
				t.Errorf("eos %v, pad %v", c.EOSTokenID, c.PadTokenID)
			}
		}},
		{"null sizes fall back (nemotron)", `{` + base + `,"num_key_value_heads":null,"head_dim":null,"intermediate_size":null}`, func(t *testing.T, c *Config) {
			if c.NumKeyValueHeads != 32 || c.HeadDim != 128 || c.IntermediateSize != 0 {
				t.Errorf("kv %d, head_dim %d, intermediate %d", c.NumKeyValueHeads, c.HeadDim, c.IntermediateSize)
			}
		}},
		{"defaults", `{` + base + `}`, func(t *testing.T, c *Config) {
			if c.RopeTheta != 10000 || c.RMSNormEps != 1e-6 || c.RopeScaling != nil || c.TieWordEmbeddings {
				t.Errorf("theta %g, eps %g, scaling %+v, tie %v", c.RopeTheta, c.RMSNormEps, c.RopeScaling, c.TieWordEmbeddings)
			}
		}},
		{"integral float size", `{` + base + `,"intermediate_size":14336.0}`, func(t *testing.T, c *Config) {
			if c.IntermediateSize != 14336 {
				t.Errorf("intermediate %d", c.IntermediateSize)
			}
		}},
		{"explicit head_dim (Qwen3 style)", `{"hidden_size":1024,"num_hidden_layers":28,"num_attention_heads":16,"num_key_value_heads":8,"head_dim":128,"vocab_size":151936}`, func(t *testing.T, c *Config) {
			if c.HeadDim != 128 {
				t.Errorf("head_dim %d", c.HeadDim)
			}
		}},
		{"linear with legacy type key", `{` + base + `,"rope_scaling":{"type":"linear","factor":4.0}}`, func(t *testing.T, c *Config) {
			if !reflect.DeepEqual(*c.RopeScaling, RopeScaling{Type: "linear", Factor: 4}) {
				t.Errorf("got %+v", c.RopeScaling)
			}
		}},
		{"dynamic", `{` + base + `,"rope_scaling":{"type":"dynamic","factor":8.0}}`, func(t *testing.T, c *Config) {
			if !reflect.DeepEqual(*c.RopeScaling, RopeScaling{Type: "dynamic", Factor: 8, OriginalMaxPositionEmbeddings: 131072}) {
				t.Errorf("got %+v", c.RopeScaling)
			}
		}},
		{"yarn with defaults (Qwen2.5 long context)", `{` + base + `,"rope_scaling":{"factor":4.0,"original_max_position_embeddings":32768,"type":"yarn"}}`, func(t *testing.T, c *Config) {
			want := RopeScaling{Type: "yarn", Factor: 4, OriginalMaxPositionEmbeddings: 32768, BetaFast: 32, BetaSlow: 1}
			if !reflect.DeepEqual(*c.RopeScaling, want) {
				t.Errorf("got %+v, want %+v", c.RopeScaling, want)
			}
		}},
		{"yarn with everything (DeepSeek)", `{` + base + `,"rope_scaling":{"beta_fast":32,"beta_slow":1,"factor":40,"mscale":1.0,"mscale_all_dim":1.0,"original_max_position_embeddings":4096,"type":"yarn","attention_factor":0.9}}`, func(t *testing.T, c *Config) {
			want := RopeScaling{Type: "yarn", Factor: 40, OriginalMaxPositionEmbeddings: 4096, BetaFast: 32, BetaSlow: 1, MScale: 1, MScaleAllDim: 1, AttentionFactor: 0.9}
			if !reflect.DeepEqual(*c.RopeScaling, want) {
				t.Errorf("got %+v, want %+v", c.RopeScaling, want)
			}
		}},
		{"rope_type wins over type", `{` + base + `,"rope_scaling":{"type":"linear","rope_type":"dynamic","factor":2}}`, func(t *testing.T, c *Config) {
			if c.RopeScaling.Type != "dynamic" {
				t.Errorf("got %+v", c.RopeScaling)
			}
		}},
		{"rope_scaling of type default", `{` + base + `,"rope_scaling":{"rope_type":"default"}}`, func(t *testing.T, c *Config) {
			if c.RopeScaling != nil {
				t.Errorf("got %+v", c.RopeScaling)
			}
		}},
		{"longrope as su (Phi-3)", `{"hidden_size":8,"num_hidden_layers":1,"num_attention_heads":2,"vocab_size":10,"rope_scaling":{"type":"su","short_factor":[1,1],"long_factor":[2,3],"original_max_position_embeddings":4096}}`, func(t *testing.T, c *Config) {
			rs := c.RopeScaling
			if rs.Type != "longrope" || !reflect.DeepEqual(rs.LongFactor, []float64{2, 3}) || rs.OriginalMaxPositionEmbeddings != 4096 {
				t.Errorf("got %+v", rs)
			}
		}},
		{"transformers 5 rope_parameters and dtype", `{` + base + `,"dtype":"bfloat16","rope_parameters":{"rope_theta":500000.0,"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}`, func(t *testing.T, c *Config) {
			if c.RopeTheta != 500000 || c.TorchDtype != "bfloat16" || c.RopeScaling == nil || c.RopeScaling.Type != "llama3" || c.RopeScaling.Factor != 8 {
				t.Errorf("theta %g, dtype %q, scaling %+v", c.RopeTheta, c.TorchDtype, c.RopeScaling)
			}
		}},
		{"transformers 5 default rope_parameters", `{` + base + `,"rope_parameters":{"rope_theta":1000000.0,"rope_type":"default"}}`, func(t *testing.T, c *Config) {
			if c.RopeTheta != 1e6 || c.RopeScaling != nil {
				t.Errorf("theta %g, scaling %+v", c.RopeTheta, c.RopeScaling)
			}
		}},
		{"unknown fields kept", `{` + base + `,"quantization_config":{"quant_method":"fp8"}}`, func(t *testing.T, c *Config) {
			if string(c.Raw["quantization_config"]) != `{"quant_method":"fp8"}` {
				t.Errorf("raw: %s", c.Raw["quantization_config"])
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig("config.json", []byte(tc.json))
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	const base = `"hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100`
	tests := []struct {
		name string
		json string
		err  error  // besides ErrConfig
		want string // in the message
	}{
		{"not JSON", `{"hidden_size":`, nil, "invalid JSON"},
		{"not an object", `[1]`, nil, "invalid JSON"},
		{"null", `null`, nil, "not a JSON object"},
		{"missing hidden_size", `{"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100}`, nil, "hidden_size: missing"},
		{"nested text_config", `{"model_type":"llava","text_config":{"hidden_size":64}}`, nil, "text_config, which is not supported"},
		{"hidden_size a string", `{"hidden_size":"64","num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100}`, nil, `hidden_size: "64" is not a number`},
		{"zero layers", `{"hidden_size":64,"num_hidden_layers":0,"num_attention_heads":4,"vocab_size":100}`, nil, "num_hidden_layers: 0 is not an integer from 1"},
		{"fractional heads", `{"hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4.5,"vocab_size":100}`, nil, "num_attention_heads"},
		{"absurd vocab", `{"hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":1e12}`, nil, "vocab_size"},
		{"heads do not divide hidden", `{"hidden_size":66,"num_hidden_layers":2,"num_attention_heads":4,"vocab_size":100}`, nil, "not a multiple of num_attention_heads"},
		{"kv heads do not divide", `{` + base + `,"num_key_value_heads":3}`, nil, "num_key_value_heads: 3 does not divide"},
		{"eps zero", `{` + base + `,"rms_norm_eps":0}`, nil, "rms_norm_eps"},
		{"rope_theta zero", `{` + base + `,"rope_theta":0}`, nil, "rope_theta"},
		{"rope_scaling not an object", `{` + base + `,"rope_scaling":4}`, nil, "rope_scaling: 4 is not an object"},
		{"unknown rope type", `{` + base + `,"rope_scaling":{"type":"mrope","mrope_section":[16,24,24]}}`, ErrUnsupported, `"mrope": not supported`},
		{"linear without factor", `{` + base + `,"rope_scaling":{"type":"linear"}}`, nil, "factor: missing, and linear RoPE scaling needs it"},
		{"negative factor", `{` + base + `,"rope_scaling":{"type":"dynamic","factor":-2}}`, nil, "factor: -2 is not positive"},
		{"llama3 without low_freq_factor", `{` + base + `,"rope_scaling":{"rope_type":"llama3","factor":8,"high_freq_factor":4,"original_max_position_embeddings":8192}}`, nil, "low_freq_factor: missing"},
		{"llama3 without original length", `{` + base + `,"rope_scaling":{"rope_type":"llama3","factor":8,"low_freq_factor":1,"high_freq_factor":4}}`, nil, "original_max_position_embeddings: missing"},
		{"llama3 factors equal", `{` + base + `,"rope_scaling":{"rope_type":"llama3","factor":8,"low_freq_factor":4,"high_freq_factor":4,"original_max_position_embeddings":8192}}`, nil, "high_freq_factor: 4 is not greater than low_freq_factor 4"},
		{"longrope wrong length", `{` + base + `,"rope_scaling":{"type":"longrope","short_factor":[1],"long_factor":[1]}}`, nil, "short_factor: 1 entries, want head_dim/2 = 8"},
		{"per-layer rope_parameters", `{` + base + `,"rope_parameters":{"full_attention":{"rope_type":"default"}}}`, ErrUnsupported, "per-layer-type"},
		{"eos a string", `{` + base + `,"eos_token_id":"</s>"}`, nil, "eos_token_id"},
		{"eos negative", `{` + base + `,"eos_token_id":[2,-1]}`, nil, "token id -1"},
		{"eos fractional", `{` + base + `,"eos_token_id":2.5}`, nil, "token id 2.5"},
		{"layer_types wrong length", `{` + base + `,"layer_types":["full_attention"]}`, nil, "layer_types: 1 entries for 2 layers"},
		{"tie_word_embeddings a string", `{` + base + `,"tie_word_embeddings":"yes"}`, nil, "tie_word_embeddings"},
		{"architectures a string", `{` + base + `,"architectures":"LlamaForCausalLM"}`, nil, "architectures"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig("/m/config.json", []byte(tc.json))
			if !errors.Is(err, ErrConfig) || (tc.err != nil && !errors.Is(err, tc.err)) {
				t.Fatalf("got %v, want ErrConfig and %v", err, tc.err)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "safetensors /m/config.json: ") || !strings.Contains(msg, tc.want) {
				t.Errorf("message %q does not name the file and %q", msg, tc.want)
			}
		})
	}
}

func TestParseGenerationConfig(t *testing.T) {
	g, err := ParseGenerationConfig("generation_config.json", readFixture(t, "qwen2.5-0.5b-instruct", "generation_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	ptr := func(x float64) *float64 { return &x }
	topK, sample := 20, true
	want := GenerationConfig{
		BOSTokenID: TokenIDs{151643}, PadTokenID: TokenIDs{151643}, EOSTokenID: TokenIDs{151645, 151643},
		DoSample: &sample, RepetitionPenalty: ptr(1.1), Temperature: ptr(0.7), TopP: ptr(0.8), TopK: &topK,
	}
	got := *g
	got.Raw = nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%+v\nwant\n%+v", got, want)
	}

	tests := []struct{ json, want string }{
		{`{"temperature":-1}`, "temperature: -1 is not between"},
		{`{"top_p":1.5}`, "top_p: 1.5 is not between 0 and 1"},
		{`{"top_k":2.5}`, "top_k"},
		{`{"repetition_penalty":0}`, "repetition_penalty"},
		{`{"do_sample":"true"}`, "do_sample"},
		{`{"eos_token_id":{}}`, "eos_token_id"},
		{`[]`, "invalid JSON"},
	}
	for _, tc := range tests {
		_, err := ParseGenerationConfig("generation_config.json", []byte(tc.json))
		if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.json, err, tc.want)
		}
	}
	g, err = ParseGenerationConfig("g", []byte(`{"temperature":0,"max_new_tokens":2048,"max_length":null}`))
	if err != nil || g.Temperature == nil || *g.Temperature != 0 || g.TopP != nil || *g.MaxNewTokens != 2048 || g.MaxLength != nil {
		t.Errorf("zero and absent kept apart: got %+v, %v", g, err)
	}
}

func TestTokenIDs(t *testing.T) {
	tests := []struct {
		json string
		want TokenIDs
		ok   bool
	}{
		{`2`, TokenIDs{2}, true},
		{`[1, 2]`, TokenIDs{1, 2}, true},
		{`[]`, TokenIDs{}, true},
		{`null`, nil, true},
		{`2147483647`, TokenIDs{2147483647}, true},
		{`2147483648`, nil, false},
		{`"2"`, nil, false},
		{`[[1]]`, nil, false},
		{`1e3`, nil, false},
	}
	for _, tc := range tests {
		var got TokenIDs
		err := got.UnmarshalJSON([]byte(tc.json))
		if (err == nil) != tc.ok || (tc.ok && !reflect.DeepEqual(got, tc.want)) {
			t.Errorf("%s: got %v, %v; want %v, ok %v", tc.json, got, err, tc.want, tc.ok)
		}
	}
}
