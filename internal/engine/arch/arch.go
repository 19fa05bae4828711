// Package arch describes the model architectures the engine runs: for each
// GGUF general.architecture name, how to read its hyperparameters from the
// file's metadata and which variant of the llama-family decoder it is
// (RoPE layout and scaling, QKV biases). Adding a llama-family
// architecture is one new file that calls Register from init; a new kind
// of layer still needs engine code.
//
// The package reads metadata only; it holds no weights and does no
// arithmetic on tensors. It must not import the engine.
package arch

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"

	"github.com/npumesh/npumesh/internal/gguf"
)

// RopeStyle is how a model pairs the dimensions that RoPE rotates.
type RopeStyle int

const (
	// RopeNormal rotates pairs (x[2i], x[2i+1]): ggml's normal mode,
	// used by GGUF llama files (the converter permutes Q and K into it)
	// and by llama2.c.
	RopeNormal RopeStyle = iota
	// RopeNeoX rotates pairs (x[i], x[i+d/2]): Hugging Face's rotate_half
	// and ggml's NeoX mode, used by qwen2 and other checkpoints converted
	// without permutation.
	RopeNeoX
)

// Scaling types of RopeScaling.Type.
const (
	ScalingNone   = ""
	ScalingLinear = "linear" // positions divided by Factor
	ScalingLlama3 = "llama3" // Llama 3.1 per-frequency factors
)

// RopeScaling stretches RoPE to longer contexts than a model was trained on.
type RopeScaling struct {
	Type   string  // ScalingNone, ScalingLinear or ScalingLlama3
	Factor float64 // linear and llama3: the context stretch
	// Llama 3 parameters (Hugging Face rope_scaling names).
	LowFreqFactor, HighFreqFactor float64
	OrigContext                   int
}

// Params are a model's hyperparameters and variant switches.
type Params struct {
	Arch                string
	Dim, Hidden, Layers int
	Heads, KVHeads      int
	HeadDim, RotDim     int
	Vocab, Context      int
	NormEps             float32
	RopeBase            float64
	Rope                RopeStyle
	Scaling             RopeScaling
	// QKVBias: the attention projections have bias vectors
	// (blk.N.attn_q.bias, attn_k.bias, attn_v.bias).
	QKVBias bool
}

// KVDim is the size of one position's keys (or values) in one layer.
func (p *Params) KVDim() int { return p.KVHeads * p.HeadDim }

// QDim is the size of the query projection.
func (p *Params) QDim() int { return p.Heads * p.HeadDim }

// Reader reads an architecture's Params from a GGUF file.
type Reader func(f *gguf.File) (Params, error)

var (
	// mu guards readers, which init functions fill and Load reads.
	mu      sync.RWMutex
	readers = map[string]Reader{}
)

// Register makes an architecture available under its GGUF name. It panics
// when the name is taken, as registering twice is a programming error.
func Register(name string, r Reader) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := readers[name]; dup {
		panic("arch: Register called twice for " + name)
	}
	readers[name] = r
}

// ErrUnsupported is returned for an architecture nobody registered.
var ErrUnsupported = errors.New("architecture not supported")

// Read reads the hyperparameters of the architecture the file names in
// general.architecture.
func Read(f *gguf.File) (Params, error) {
	name, err := f.String("general.architecture")
	if err != nil {
		return Params{}, err
	}
	mu.RLock()
	r, ok := readers[name]
	mu.RUnlock()
	if !ok {
		return Params{}, fmt.Errorf("architecture %q: %w (this engine runs: %v)", name, ErrUnsupported, Names())
	}
	p, err := r(f)
	if err != nil {
		return Params{}, fmt.Errorf("architecture %q: %w", name, err)
	}
	p.Arch = name
	return p, nil
}

// Names lists the registered architectures, sorted.
func Names() []string {
	mu.RLock()
	defer mu.RUnlock()
	names := make([]string, 0, len(readers))
	for n := range readers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// ReadLlamaFamily reads the hyperparameters that llama-family models
// share, under the prefix "<arch>.": sizes, head counts, norm epsilon and
// RoPE base and dimension count. The vocabulary size comes from
// token_embd.weight. It sets no variant switch (normal RoPE, no bias, no
// scaling): the caller adjusts those.
func ReadLlamaFamily(f *gguf.File, arch string) (Params, error) {
	var hp Params
	ints := []struct {
		key      string
		dst      *int
		optional bool
	}{
		{"context_length", &hp.Context, false},
		{"embedding_length", &hp.Dim, false},
		{"feed_forward_length", &hp.Hidden, false},
		{"block_count", &hp.Layers, false},
		{"attention.head_count", &hp.Heads, false},
		{"attention.head_count_kv", &hp.KVHeads, true},
		{"rope.dimension_count", &hp.RotDim, true},
	}
	for _, c := range ints {
		v, err := f.Uint(arch + "." + c.key)
		if c.optional && errors.Is(err, gguf.ErrNotFound) {
			continue
		}
		if err != nil {
			return hp, err
		}
		// Far above any real model; keeps size arithmetic from overflowing.
		if v == 0 || v > 1<<24 {
			return hp, fmt.Errorf("%s.%s is %d", arch, c.key, v)
		}
		*c.dst = int(v)
	}
	if hp.KVHeads == 0 {
		hp.KVHeads = hp.Heads
	}
	if hp.Dim%hp.Heads != 0 || hp.Heads%hp.KVHeads != 0 {
		return hp, fmt.Errorf("%d heads and %d KV heads do not divide embedding length %d", hp.Heads, hp.KVHeads, hp.Dim)
	}
	hp.HeadDim = hp.Dim / hp.Heads
	if hp.RotDim == 0 {
		hp.RotDim = hp.HeadDim
	}
	if hp.RotDim > hp.HeadDim || hp.RotDim%2 != 0 {
		return hp, fmt.Errorf("rope dimension %d does not fit head size %d", hp.RotDim, hp.HeadDim)
	}
	eps, err := f.Float(arch + ".attention.layer_norm_rms_epsilon")
	if err != nil {
		return hp, err
	}
	hp.NormEps = float32(eps)
	hp.RopeBase = 10000
	if b, err := f.Float(arch + ".rope.freq_base"); err == nil {
		hp.RopeBase = b
	} else if !errors.Is(err, gguf.ErrNotFound) {
		return hp, err
	}
	if !(hp.RopeBase > 0) || !(hp.NormEps >= 0) {
		return hp, fmt.Errorf("rope base %v or epsilon %v out of range", hp.RopeBase, hp.NormEps)
	}
	if t, ok := f.Tensor("token_embd.weight"); ok && len(t.Dims) == 2 {
		hp.Vocab = int(t.Dims[1])
	} else {
		return hp, errors.New("tensor token_embd.weight missing or not 2-dimensional")
	}
	return hp, nil
}

// ReadRopeScaling reads <arch>.rope.scaling.* (and the older
// <arch>.rope.scale_linear). Types other than none, linear and llama3
// (YaRN, LongRoPE) are refused rather than run wrong. Llama 3 files from
// llama.cpp's converter usually carry the factors as the rope_freqs.weight
// tensor instead, which the engine applies; the llama3 type here covers
// files that give the parameters as metadata (low_freq_factor,
// high_freq_factor, original_context_length, with Hugging Face's defaults).
func ReadRopeScaling(f *gguf.File, arch string) (RopeScaling, error) {
	var s RopeScaling
	p := arch + ".rope.scaling."
	typ, err := f.String(p + "type")
	if err != nil && !errors.Is(err, gguf.ErrNotFound) {
		return s, err
	}
	optFloat := func(key string, def float64) (float64, error) {
		v, err := f.Float(key)
		if errors.Is(err, gguf.ErrNotFound) {
			return def, nil
		}
		return v, err
	}
	if typ == "" || typ == "none" {
		// Older files: a bare linear factor.
		factor, err := optFloat(arch+".rope.scale_linear", 1)
		if err != nil {
			return s, err
		}
		if factor != 1 {
			typ = ScalingLinear
		} else {
			return s, nil
		}
	}
	if s.Factor, err = optFloat(p+"factor", 0); err != nil {
		return s, err
	}
	if s.Factor == 0 {
		if s.Factor, err = optFloat(arch+".rope.scale_linear", 1); err != nil {
			return s, err
		}
	}
	switch typ {
	case ScalingLinear:
	case ScalingLlama3:
		if s.Factor == 1 {
			s.Factor = 8
		}
		if s.LowFreqFactor, err = optFloat(p+"low_freq_factor", 1); err != nil {
			return s, err
		}
		if s.HighFreqFactor, err = optFloat(p+"high_freq_factor", 4); err != nil {
			return s, err
		}
		orig, err := f.Uint(p + "original_context_length")
		switch {
		case errors.Is(err, gguf.ErrNotFound):
			s.OrigContext = 8192
		case err != nil:
			return s, err
		default:
			s.OrigContext = int(min(orig, 1<<24))
		}
		if !(s.HighFreqFactor > s.LowFreqFactor) || s.OrigContext == 0 {
			return s, fmt.Errorf("llama3 rope scaling: low/high frequency factors %v/%v, original context %d", s.LowFreqFactor, s.HighFreqFactor, s.OrigContext)
		}
	default:
		return s, fmt.Errorf("rope scaling %q: %w (supported: linear, llama3)", typ, ErrUnsupported)
	}
	if !(s.Factor > 0) || math.IsInf(s.Factor, 0) {
		return s, fmt.Errorf("rope scaling factor %v out of range", s.Factor)
	}
	s.Type = typ
	return s, nil
}

// InvFreq returns the angle per position of each rotated pair i (RotDim/2
// of them): RopeBase^(-2i/RotDim), divided by freqFactors[i] when the
// file has a rope_freqs.weight tensor (nil otherwise), and adjusted by the
// scaling. With freqFactors the llama3 metadata scaling is not applied
// again: the tensor already holds it, as in llama.cpp.
func (p *Params) InvFreq(freqFactors []float32) ([]float64, error) {
	n := p.RotDim / 2
	if freqFactors != nil && len(freqFactors) != n {
		return nil, fmt.Errorf("rope_freqs.weight has %d factors, want %d", len(freqFactors), n)
	}
	out := make([]float64, n)
	for i := range out {
		f := math.Pow(p.RopeBase, -float64(2*i)/float64(p.RotDim))
		switch {
		case freqFactors != nil:
			f /= float64(freqFactors[i])
		case p.Scaling.Type == ScalingLlama3:
			f = llama3Freq(f, &p.Scaling)
		}
		if p.Scaling.Type == ScalingLinear {
			f /= p.Scaling.Factor
		}
		if !(f > 0) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("rope frequency %d is %v", i, f)
		}
		out[i] = f
	}
	return out, nil
}

// llama3Freq is Hugging Face's _compute_llama3_parameters for one
// frequency: long wavelengths are slowed by Factor, short ones kept, and
// those between interpolated smoothly.
func llama3Freq(f float64, s *RopeScaling) float64 {
	orig := float64(s.OrigContext)
	lowWavelen := orig / s.LowFreqFactor
	highWavelen := orig / s.HighFreqFactor
	wavelen := 2 * math.Pi / f
	switch {
	case wavelen < highWavelen:
		return f
	case wavelen > lowWavelen:
		return f / s.Factor
	}
	smooth := (orig/wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor)
	return (1-smooth)*f/s.Factor + smooth*f
}
