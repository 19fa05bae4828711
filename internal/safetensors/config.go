package safetensors

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
)

// Bounds on config values: far above any published model, low enough that
// products of them (weights per layer, KV cache sizes) cannot overflow.
const (
	maxHidden      = 1 << 20
	maxLayers      = 1 << 12
	maxHeads       = 1 << 12
	maxHeadDim     = 1 << 12
	maxVocab       = 1 << 24
	maxPositions   = 1 << 30
	maxTokenID     = math.MaxInt32
	maxTokenIDList = 1 << 10
)

// TokenIDs holds a token id field that config files write as one integer,
// a list of integers, or null (e.g. "eos_token_id": [128001, 128008]).
type TokenIDs []int

// UnmarshalJSON accepts an integer, a list of integers or null.
func (t *TokenIDs) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if string(b) == "null" {
		*t = nil
		return nil
	}
	var raw []json.RawMessage
	if len(b) > 0 && b[0] == '[' {
		if err := json.Unmarshal(b, &raw); err != nil {
			return err
		}
		if len(raw) > maxTokenIDList {
			return fmt.Errorf("%d token ids (at most %d)", len(raw), maxTokenIDList)
		}
	} else {
		raw = []json.RawMessage{b}
	}
	ids := make(TokenIDs, 0, len(raw))
	for _, r := range raw {
		id, err := strconv.ParseInt(string(bytes.TrimSpace(r)), 10, 64)
		if err != nil || id < 0 || id > maxTokenID {
			return fmt.Errorf("token id %s is not an integer from 0 to %d", r, maxTokenID)
		}
		ids = append(ids, int(id))
	}
	*t = ids
	return nil
}

// Contains reports whether id is one of t.
func (t TokenIDs) Contains(id int) bool { return slices.Contains(t, id) }

// Config is a parsed Hugging Face config.json of a decoder-only model
// (llama, qwen2 and their relatives). Defaults that transformers applies
// for those architectures are filled in; fields that are absent and have
// no such default are zero.
type Config struct {
	Architectures         []string // e.g. ["LlamaForCausalLM"]
	ModelType             string   // e.g. "llama", "qwen2"
	HiddenSize            int
	IntermediateSize      int // 0 when absent or null (some MoE configs)
	NumHiddenLayers       int
	NumAttentionHeads     int
	NumKeyValueHeads      int // NumAttentionHeads when absent
	HeadDim               int // HiddenSize / NumAttentionHeads when absent
	VocabSize             int
	MaxPositionEmbeddings int     // 0 when absent
	RMSNormEps            float64 // 1e-6 when absent, transformers' default
	HiddenAct             string  // e.g. "silu"; "" when absent
	RopeTheta             float64 // 10000 when absent, transformers' default
	// RopeScaling is nil for plain RoPE ("default" or absent).
	RopeScaling       *RopeScaling
	TieWordEmbeddings bool
	// TorchDtype is the dtype the weights were saved in ("bfloat16"), from
	// torch_dtype or, in transformers 5 configs, dtype.
	TorchDtype string
	BOSTokenID TokenIDs
	EOSTokenID TokenIDs
	PadTokenID TokenIDs
	// AttentionBias is the attention_bias field: in llama, biases on the
	// q, k, v and o projections. Use QKVBias for whether q, k and v have
	// biases, which qwen2 has without saying so.
	AttentionBias bool
	MLPBias       bool
	// SlidingWindow is the window size in tokens, 0 when absent or null.
	// Whether a layer uses it is SlidingWindowFor's business.
	SlidingWindow int
	// UseSlidingWindow and MaxWindowLayers are qwen2's switches: the window
	// applies only when UseSlidingWindow is set, and then only from layer
	// MaxWindowLayers on.
	UseSlidingWindow bool
	MaxWindowLayers  int
	// LayerTypes, when present (transformers 5), says per layer
	// "full_attention" or "sliding_attention".
	LayerTypes []string
	// Raw holds every field of the file, for architecture-specific ones.
	Raw map[string]json.RawMessage
}

// RopeScaling is rope_scaling (or, in transformers 5 configs, the scaling
// part of rope_parameters). Which fields matter depends on Type.
type RopeScaling struct {
	// Type is "linear", "dynamic", "yarn", "llama3" or "longrope", from
	// rope_type or the older type key ("su" is read as "longrope").
	Type   string
	Factor float64 // all types; 0 only for longrope without one
	// OriginalMaxPositionEmbeddings is the pre-training context length.
	// For dynamic and yarn it is MaxPositionEmbeddings when absent, as in
	// transformers; llama3 requires it.
	OriginalMaxPositionEmbeddings int
	LowFreqFactor, HighFreqFactor float64 // llama3
	BetaFast, BetaSlow            float64 // yarn: 32 and 1 when absent
	// AttentionFactor scales attention for yarn and longrope; 0 when
	// absent, meaning the engine derives it from Factor as transformers does.
	AttentionFactor      float64
	MScale, MScaleAllDim float64   // yarn (DeepSeek); 0 when absent
	ShortFactor          []float64 // longrope, HeadDim/2 entries
	LongFactor           []float64 // longrope, HeadDim/2 entries
}

// QKVBias reports whether the q, k and v projections have biases: when
// attention_bias says so, and always for qwen2, whose attention hard-codes
// them (its o projection has none).
func (c *Config) QKVBias() bool { return c.AttentionBias || c.ModelType == "qwen2" }

// SlidingWindowFor returns the attention window of layer (0-based), 0 for
// full attention. layer_types decides when present; otherwise qwen2-style
// configs (with use_sliding_window) window only layers from
// MaxWindowLayers on when UseSlidingWindow is set, and other configs
// (mistral) window every layer when sliding_window is set.
func (c *Config) SlidingWindowFor(layer int) int {
	if c.SlidingWindow == 0 {
		return 0
	}
	if len(c.LayerTypes) > 0 {
		if layer >= 0 && layer < len(c.LayerTypes) && c.LayerTypes[layer] == "sliding_attention" {
			return c.SlidingWindow
		}
		return 0
	}
	if _, ok := c.Raw["use_sliding_window"]; ok {
		if c.UseSlidingWindow && layer >= c.MaxWindowLayers {
			return c.SlidingWindow
		}
		return 0
	}
	return c.SlidingWindow
}

// fields reads typed values out of a JSON object, treating null as
// absent, and remembers the first error with the field's name.
type fields struct {
	name string
	raw  map[string]json.RawMessage
	err  error
}

func parseObject(name string, data []byte) (*fields, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("safetensors %s: invalid JSON: %v: %w", name, err, ErrConfig)
	}
	if raw == nil {
		return nil, fmt.Errorf("safetensors %s: not a JSON object: %w", name, ErrConfig)
	}
	return &fields{name: name, raw: raw}, nil
}

func (f *fields) fail(key, format string, args ...any) {
	if f.err == nil {
		f.err = fmt.Errorf("safetensors %s: %s: %w: %w", f.name, key, fmt.Errorf(format, args...), ErrConfig)
	}
}

func (f *fields) get(key string) (json.RawMessage, bool) {
	r, ok := f.raw[key]
	if !ok || string(bytes.TrimSpace(r)) == "null" {
		return nil, false
	}
	return r, true
}

func (f *fields) float(key string) (float64, bool) {
	r, ok := f.get(key)
	if !ok {
		return 0, false
	}
	var x float64
	if err := json.Unmarshal(r, &x); err != nil || !finite(x) {
		f.fail(key, "%s is not a number", short(r))
		return 0, false
	}
	return x, true
}

// integer accepts integral floats too ("max_position_embeddings": 2048.0),
// which Python's json module would hand transformers as a float it then
// uses as an int.
func (f *fields) integer(key string, lo, hi int) (int, bool) {
	x, ok := f.float(key)
	if !ok {
		return 0, false
	}
	if x != math.Trunc(x) || x < float64(lo) || x > float64(hi) {
		f.fail(key, "%s is not an integer from %d to %d", short(f.raw[key]), lo, hi)
		return 0, false
	}
	return int(x), true
}

func (f *fields) bool(key string) bool {
	r, ok := f.get(key)
	if !ok {
		return false
	}
	var b bool
	if err := json.Unmarshal(r, &b); err != nil {
		f.fail(key, "%s is not true or false", short(r))
	}
	return b
}

func (f *fields) string(key string) string {
	r, ok := f.get(key)
	if !ok {
		return ""
	}
	var s string
	if err := json.Unmarshal(r, &s); err != nil {
		f.fail(key, "%s is not a string", short(r))
	}
	return s
}

func (f *fields) strings(key string) []string {
	r, ok := f.get(key)
	if !ok {
		return nil
	}
	var s []string
	if err := json.Unmarshal(r, &s); err != nil {
		f.fail(key, "%s is not a list of strings", short(r))
	}
	return s
}

func (f *fields) floats(key string) []float64 {
	r, ok := f.get(key)
	if !ok {
		return nil
	}
	var s []float64
	if err := json.Unmarshal(r, &s); err != nil {
		f.fail(key, "%s is not a list of numbers", short(r))
		return nil
	}
	for _, x := range s {
		if !finite(x) {
			f.fail(key, "holds a non-finite number")
		}
	}
	return s
}

func (f *fields) tokenIDs(key string) TokenIDs {
	r, ok := f.get(key)
	if !ok {
		return nil
	}
	var t TokenIDs
	if err := json.Unmarshal(r, &t); err != nil {
		f.fail(key, "%v", err)
	}
	return t
}

func (f *fields) object(key string) *fields {
	r, ok := f.get(key)
	if !ok {
		return nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(r, &raw); err != nil {
		f.fail(key, "%s is not an object", short(r))
		return nil
	}
	return &fields{name: f.name + ": " + key, raw: raw}
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// short quotes a JSON value for an error message, cut to a readable length.
func short(r json.RawMessage) string {
	s := string(bytes.TrimSpace(r))
	if len(s) > 40 {
		s = s[:40] + "..."
	}
	return s
}

// ParseConfig parses config.json; name is used in errors. Beyond types it
// checks what an engine relies on: positive sizes within sane bounds,
// heads that divide evenly, and RoPE scaling with the factors its type
// needs.
func ParseConfig(name string, data []byte) (*Config, error) {
	f, err := parseObject(name, data)
	if err != nil {
		return nil, err
	}
	c := &Config{Raw: f.raw}
	c.Architectures = f.strings("architectures")
	c.ModelType = f.string("model_type")
	c.HiddenAct = f.string("hidden_act")
	c.TorchDtype = f.string("torch_dtype")
	if c.TorchDtype == "" {
		c.TorchDtype = f.string("dtype")
	}
	required := func(key string, hi int) int {
		v, ok := f.integer(key, 1, hi)
		if !ok && f.err == nil {
			hint := ""
			if _, nested := f.raw["text_config"]; nested {
				hint = " (the model nests its language model under text_config, which is not supported)"
			}
			f.fail(key, "missing%s", hint)
		}
		return v
	}
	c.HiddenSize = required("hidden_size", maxHidden)
	c.NumHiddenLayers = required("num_hidden_layers", maxLayers)
	c.NumAttentionHeads = required("num_attention_heads", maxHeads)
	c.VocabSize = required("vocab_size", maxVocab)
	c.IntermediateSize, _ = f.integer("intermediate_size", 1, 4*maxHidden)
	c.MaxPositionEmbeddings, _ = f.integer("max_position_embeddings", 1, maxPositions)
	if kv, ok := f.integer("num_key_value_heads", 1, maxHeads); ok {
		c.NumKeyValueHeads = kv
	} else {
		c.NumKeyValueHeads = c.NumAttentionHeads
	}
	if hd, ok := f.integer("head_dim", 1, maxHeadDim); ok {
		c.HeadDim = hd
	} else if f.err == nil {
		if c.HiddenSize%c.NumAttentionHeads != 0 {
			f.fail("head_dim", "missing, and hidden_size %d is not a multiple of num_attention_heads %d", c.HiddenSize, c.NumAttentionHeads)
		}
		c.HeadDim = c.HiddenSize / c.NumAttentionHeads
	}
	if f.err == nil && c.NumAttentionHeads%c.NumKeyValueHeads != 0 {
		f.fail("num_key_value_heads", "%d does not divide num_attention_heads %d", c.NumKeyValueHeads, c.NumAttentionHeads)
	}
	c.RMSNormEps = 1e-6
	if eps, ok := f.float("rms_norm_eps"); ok {
		if eps <= 0 || eps >= 1 {
			f.fail("rms_norm_eps", "%g is not between 0 and 1", eps)
		}
		c.RMSNormEps = eps
	}
	c.TieWordEmbeddings = f.bool("tie_word_embeddings")
	c.BOSTokenID = f.tokenIDs("bos_token_id")
	c.EOSTokenID = f.tokenIDs("eos_token_id")
	c.PadTokenID = f.tokenIDs("pad_token_id")
	c.AttentionBias = f.bool("attention_bias")
	c.MLPBias = f.bool("mlp_bias")
	c.SlidingWindow, _ = f.integer("sliding_window", 0, maxPositions)
	c.UseSlidingWindow = f.bool("use_sliding_window")
	c.MaxWindowLayers, _ = f.integer("max_window_layers", 0, maxLayers)
	c.LayerTypes = f.strings("layer_types")
	if len(c.LayerTypes) > 0 && len(c.LayerTypes) != c.NumHiddenLayers && f.err == nil {
		f.fail("layer_types", "%d entries for %d layers", len(c.LayerTypes), c.NumHiddenLayers)
	}
	parseRope(f, c)
	if f.err != nil {
		return nil, f.err
	}
	return c, nil
}

// parseRope reads rope_theta and rope_scaling, or the rope_parameters
// object that replaces both in transformers 5.
func parseRope(f *fields, c *Config) {
	c.RopeTheta = 10000
	scaling := f.object("rope_scaling")
	if p := f.object("rope_parameters"); p != nil {
		if _, ok := p.get("rope_type"); !ok {
			if _, ok := p.get("rope_theta"); !ok {
				f.fail("rope_parameters", "per-layer-type RoPE parameters: %w", ErrUnsupported)
				return
			}
		}
		scaling = p
	}
	theta, ok := f.float("rope_theta")
	if scaling != nil {
		if t, ok2 := scaling.float("rope_theta"); ok2 {
			theta, ok = t, true
		}
	}
	if ok {
		if theta <= 0 {
			f.fail("rope_theta", "%g is not positive", theta)
		}
		c.RopeTheta = theta
	}
	if scaling == nil || f.err != nil {
		return
	}
	typ := scaling.string("rope_type")
	if typ == "" {
		typ = scaling.string("type")
	}
	if typ == "su" {
		typ = "longrope"
	}
	rs := &RopeScaling{Type: typ}
	positive := func(k string, need bool) float64 {
		x, ok := scaling.float(k)
		if !ok {
			if need && scaling.err == nil {
				scaling.fail(k, "missing, and %s RoPE scaling needs it", typ)
			}
			return 0
		}
		if x <= 0 {
			scaling.fail(k, "%g is not positive", x)
		}
		return x
	}
	origPos := func(need bool) int {
		n, ok := scaling.integer("original_max_position_embeddings", 1, maxPositions)
		if !ok {
			if need && scaling.err == nil {
				scaling.fail("original_max_position_embeddings", "missing, and %s RoPE scaling needs it", typ)
			}
			return c.MaxPositionEmbeddings
		}
		return n
	}
	switch typ {
	case "", "default":
		rs = nil
	case "linear":
		rs.Factor = positive("factor", true)
	case "dynamic":
		rs.Factor = positive("factor", true)
		rs.OriginalMaxPositionEmbeddings = origPos(false)
	case "yarn":
		rs.Factor = positive("factor", true)
		rs.OriginalMaxPositionEmbeddings = origPos(false)
		rs.AttentionFactor = positive("attention_factor", false)
		rs.BetaFast, rs.BetaSlow = 32, 1
		if b := positive("beta_fast", false); b != 0 {
			rs.BetaFast = b
		}
		if b := positive("beta_slow", false); b != 0 {
			rs.BetaSlow = b
		}
		rs.MScale = positive("mscale", false)
		rs.MScaleAllDim = positive("mscale_all_dim", false)
	case "llama3":
		rs.Factor = positive("factor", true)
		rs.LowFreqFactor = positive("low_freq_factor", true)
		rs.HighFreqFactor = positive("high_freq_factor", true)
		rs.OriginalMaxPositionEmbeddings = origPos(true)
		if scaling.err == nil && rs.HighFreqFactor <= rs.LowFreqFactor {
			// The smoothing between the two divides by their difference.
			scaling.fail("high_freq_factor", "%g is not greater than low_freq_factor %g", rs.HighFreqFactor, rs.LowFreqFactor)
		}
	case "longrope":
		rs.Factor = positive("factor", false)
		rs.AttentionFactor = positive("attention_factor", false)
		rs.OriginalMaxPositionEmbeddings = origPos(false)
		rs.ShortFactor = scaling.floats("short_factor")
		rs.LongFactor = scaling.floats("long_factor")
		for _, l := range []struct {
			k string
			v []float64
		}{{"short_factor", rs.ShortFactor}, {"long_factor", rs.LongFactor}} {
			if scaling.err == nil && len(l.v) != c.HeadDim/2 {
				scaling.fail(l.k, "%d entries, want head_dim/2 = %d", len(l.v), c.HeadDim/2)
			}
		}
	default:
		scaling.fail("rope_type", "%q: %w (known: linear, dynamic, yarn, llama3, longrope)", typ, ErrUnsupported)
	}
	if scaling.err != nil {
		f.err = scaling.err
		return
	}
	c.RopeScaling = rs
}

// GenerationConfig is a parsed generation_config.json: the sampling
// defaults the model's authors recommend. Pointer fields are nil when
// absent, so "absent" and "zero" stay apart.
type GenerationConfig struct {
	BOSTokenID        TokenIDs
	EOSTokenID        TokenIDs
	PadTokenID        TokenIDs
	DoSample          *bool
	Temperature       *float64
	TopP              *float64
	TopK              *int
	MinP              *float64
	RepetitionPenalty *float64
	MaxLength         *int
	MaxNewTokens      *int
	// Raw holds every field of the file.
	Raw map[string]json.RawMessage
}

// ParseGenerationConfig parses generation_config.json; name is used in
// errors.
func ParseGenerationConfig(name string, data []byte) (*GenerationConfig, error) {
	f, err := parseObject(name, data)
	if err != nil {
		return nil, err
	}
	g := &GenerationConfig{Raw: f.raw}
	g.BOSTokenID = f.tokenIDs("bos_token_id")
	g.EOSTokenID = f.tokenIDs("eos_token_id")
	g.PadTokenID = f.tokenIDs("pad_token_id")
	if _, ok := f.get("do_sample"); ok {
		b := f.bool("do_sample")
		g.DoSample = &b
	}
	optFloat := func(key string, lo, hi float64) *float64 {
		x, ok := f.float(key)
		if !ok {
			return nil
		}
		if x < lo || x > hi {
			f.fail(key, "%g is not between %g and %g", x, lo, hi)
		}
		return &x
	}
	optInt := func(key string) *int {
		x, ok := f.integer(key, 0, maxPositions)
		if !ok {
			return nil
		}
		return &x
	}
	g.Temperature = optFloat("temperature", 0, math.MaxFloat64)
	g.TopP = optFloat("top_p", 0, 1)
	g.MinP = optFloat("min_p", 0, 1)
	g.RepetitionPenalty = optFloat("repetition_penalty", math.SmallestNonzeroFloat64, math.MaxFloat64)
	g.TopK = optInt("top_k")
	g.MaxLength = optInt("max_length")
	g.MaxNewTokens = optInt("max_new_tokens")
	if f.err != nil {
		return nil, f.err
	}
	return g, nil
}
