package engine

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"

	"github.com/npumesh/npumesh/internal/engine/arch"
	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/kvcache"
	"github.com/npumesh/npumesh/internal/safetensors"
	"github.com/npumesh/npumesh/internal/tokenizer"
)

// modelTokenizer is what the engine needs of a tokenizer: package
// tokenizer's SPM (GGUF) and HF (tokenizer.json) both implement it.
type modelTokenizer interface {
	tokenizer.Tokenizer
	Token(id int32) string
	EOS() int32
}

var (
	_ modelTokenizer = (*tokenizer.SPM)(nil)
	_ modelTokenizer = (*tokenizer.HF)(nil)
	_ io.Closer      = (*gguf.File)(nil)
	_ io.Closer      = (*safetensors.Model)(nil)
)

// isDir reports whether path is a directory (a Hugging Face model).
func isDir(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.IsDir()
}

// loadHF loads a Hugging Face safetensors directory: config.json,
// model.safetensors (or shards) and tokenizer.json.
func loadHF(dir string, opts Options) (*Model, error) {
	st, err := safetensors.OpenDir(dir)
	if err != nil {
		return nil, err
	}
	m, err := newHFModel(st, opts)
	if err != nil {
		st.Close()
		return nil, err
	}
	return m, nil
}

// hfParams maps config.json to the engine's hyperparameters.
func hfParams(c *safetensors.Config) (hparams, error) {
	var hp hparams
	switch c.ModelType {
	case "llama", "qwen2":
	default:
		return hp, fmt.Errorf("config.json: model_type %q: %w (this engine runs from safetensors: llama, qwen2)", c.ModelType, arch.ErrUnsupported)
	}
	if c.HiddenAct != "" && c.HiddenAct != "silu" {
		return hp, fmt.Errorf("config.json: hidden_act %q is not supported (silu only)", c.HiddenAct)
	}
	if c.ModelType == "llama" && (c.MLPBias || c.AttentionBias) {
		// attention_bias also puts a bias on o_proj, which the engine lacks.
		return hp, fmt.Errorf("config.json: llama attention_bias and mlp_bias are not supported")
	}
	hp = hparams{
		Arch: c.ModelType, Dim: c.HiddenSize, Hidden: c.IntermediateSize, Layers: c.NumHiddenLayers,
		Heads: c.NumAttentionHeads, KVHeads: c.NumKeyValueHeads, HeadDim: c.HeadDim,
		Vocab: c.VocabSize, Context: c.MaxPositionEmbeddings, NormEps: float32(c.RMSNormEps),
		RopeBase: c.RopeTheta, Rope: arch.RopeNeoX, QKVBias: c.QKVBias(),
	}
	hp.RotDim = hp.HeadDim
	if hp.Dim <= 0 || hp.Hidden <= 0 || hp.Layers <= 0 || hp.Heads <= 0 || hp.KVHeads <= 0 || hp.HeadDim <= 0 || hp.HeadDim%2 != 0 || hp.Heads%hp.KVHeads != 0 || hp.Vocab <= 0 {
		return hp, fmt.Errorf("config.json: implausible sizes %+v", hp)
	}
	if hp.Context <= 0 {
		hp.Context = 4096
	}
	if s := c.RopeScaling; s != nil {
		switch s.Type {
		case arch.ScalingLinear:
			hp.Scaling = arch.RopeScaling{Type: arch.ScalingLinear, Factor: s.Factor}
		case arch.ScalingLlama3:
			hp.Scaling = arch.RopeScaling{Type: arch.ScalingLlama3, Factor: s.Factor,
				LowFreqFactor: s.LowFreqFactor, HighFreqFactor: s.HighFreqFactor, OrigContext: s.OriginalMaxPositionEmbeddings}
		default:
			return hp, fmt.Errorf("config.json: rope_scaling type %q is not supported (linear, llama3)", s.Type)
		}
	}
	if c.ModelType == "qwen2" && c.UseSlidingWindow {
		return hp, fmt.Errorf("config.json: use_sliding_window is not supported")
	}
	return hp, nil
}

func newHFModel(st *safetensors.Model, opts Options) (*Model, error) {
	hp, err := hfParams(st.Config)
	if err != nil {
		return nil, err
	}
	if opts.ContextLength > 0 {
		hp.Context = opts.ContextLength
	}
	tok, err := tokenizer.FromHFDir(st.Dir)
	if err != nil {
		return nil, err
	}
	if tok.VocabSize() > hp.Vocab {
		return nil, fmt.Errorf("tokenizer.json has %d tokens, config.json vocab_size %d", tok.VocabSize(), hp.Vocab)
	}
	w, err := loadHFWeights(st, &hp)
	if err != nil {
		return nil, err
	}
	id := opts.ID
	if id == "" {
		id = filepath.Base(filepath.Clean(st.Dir))
	}
	m, converted, threads, err := prepareModel(&hp, w, tok, id, opts)
	if err != nil {
		return nil, err
	}
	m.file = st
	if tmpl, ok := tok.ChatTemplate(""); ok {
		m.chatTemplate = tmpl
	}
	bytesByType := map[gguf.Type]uint64{}
	for _, name := range st.Names() {
		t, _ := st.Tensor(name)
		typ, _ := ggufType(t.DType)
		size := uint64(len(t.Data))
		if c, ok := converted[name]; ok {
			typ, size = c.typ, uint64(len(c.data))
		}
		m.info.Parameters += uint64(t.NumElements())
		m.info.SizeBytes += size
		if len(t.Shape) >= 2 {
			bytesByType[typ] += size
		}
	}
	m.start(opts, threads, bytesByType)
	return m, nil
}

// prepareModel quantizes (Options.Quantize) and builds the Model and its
// cache, before the scheduler starts.
func prepareModel(hp *hparams, w weights, tok modelTokenizer, id string, opts Options) (*Model, map[string]matrix, int, error) {
	threads := opts.Threads
	if threads == 0 {
		threads = runtime.NumCPU()
	}
	// The model's shape: sizes of what a stage does not hold are taken
	// before selectLayers drops it (and before Quantize would convert it).
	shape := ModelInfo{Layers: hp.Layers, Dim: hp.Dim, EmbedBytes: int64(len(w.embd.data)),
		HeadBytes: int64(len(w.output.data) + 4*len(w.outNorm))}
	half, err := kvHalf(opts.KVType)
	if err != nil {
		return nil, nil, 0, err
	}
	shape.KVBytesPerLayerToken = 2 * kvcache.ElemBytes(half) * int64(hp.KVDim())
	stage, err := selectLayers(hp, &w, opts.Layers)
	if err != nil {
		return nil, nil, 0, err
	}
	var converted map[string]matrix
	var bufs [][]byte // off-heap weights, for Close; freed here on error
	fail := func(err error) (*Model, map[string]matrix, int, error) {
		for _, b := range bufs {
			freeWeights(b)
		}
		return nil, nil, 0, err
	}
	if opts.Quantize != "" {
		typ, err := parseQuantize(opts.Quantize)
		if err != nil {
			return nil, nil, 0, err
		}
		var arena []byte
		if converted, arena, err = quantizeWeights(&w, typ, threads); err != nil {
			return nil, nil, 0, err
		}
		if arena != nil {
			bufs = append(bufs, arena)
		}
	}
	one := weights{layers: w.layers[:1]}
	shape.LayerBytes = stepWeightBytes(&one)
	if w.embd.data != nil {
		shape.EmbedBytes = int64(len(w.embd.data))
	}
	if w.output.data != nil {
		shape.HeadBytes = int64(len(w.output.data) + 4*len(w.outNorm))
	}
	m := &Model{hp: *hp, w: w, tok: tok, threads: threads, stepBytes: stepWeightBytes(&w), stage: stage, kvHalf: half}
	if m.cache, err = newCache(hp, len(w.layers), id, half, opts); err != nil {
		return fail(err)
	}
	packed, err := packWeights(&m.w, threads)
	if err != nil {
		return fail(err)
	}
	m.weightBufs = append(bufs, packed...)
	m.info = shape
	m.info.ID, m.info.Arch, m.info.ContextLength, m.info.BlockSize, m.info.Stage = id, hp.Arch, hp.Context, m.cache.BlockSize(), stage
	return m, converted, threads, nil
}

// ggufType is the compute type of a safetensors dtype: the bytes are the
// same (little-endian, row-major, rows contiguous).
func ggufType(d safetensors.DType) (gguf.Type, bool) {
	switch d {
	case safetensors.F32:
		return gguf.TypeF32, true
	case safetensors.F16:
		return gguf.TypeF16, true
	case safetensors.BF16:
		return gguf.TypeBF16, true
	}
	return 0, false
}

// hfTensor returns the named tensor checked against shape (PyTorch order).
func hfTensor(st *safetensors.Model, name string, shape ...int) (*safetensors.Tensor, gguf.Type, error) {
	t, ok := st.Tensor(name)
	if !ok {
		return nil, 0, fmt.Errorf("tensor %q not found in the safetensors weights (model.safetensors or its shards)", name)
	}
	typ, ok := ggufType(t.DType)
	if !ok {
		return nil, 0, fmt.Errorf("%s: tensor %q has dtype %s; this engine reads F32, F16 and BF16", t.File, name, t.DType)
	}
	if len(t.Shape) != len(shape) {
		return nil, 0, fmt.Errorf("%s: tensor %q has shape %v, want %v", t.File, name, t.Shape, shape)
	}
	for i := range shape {
		if t.Shape[i] != shape[i] {
			return nil, 0, fmt.Errorf("%s: tensor %q has shape %v, want %v", t.File, name, t.Shape, shape)
		}
	}
	return t, typ, nil
}

func hfMatrix(st *safetensors.Model, name string, rows, cols int) (matrix, error) {
	t, typ, err := hfTensor(st, name, rows, cols)
	if err != nil {
		return matrix{}, err
	}
	m, err := newMatrix(name, typ, t.Data, cols, rows)
	if err != nil {
		return matrix{}, fmt.Errorf("%s: %w", t.File, err)
	}
	return m, nil
}

func hfVector(st *safetensors.Model, name string, n int) ([]float32, error) {
	t, typ, err := hfTensor(st, name, n)
	if err != nil {
		return nil, err
	}
	m, err := newMatrix(name, typ, t.Data, n, 1)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.File, err)
	}
	out := make([]float32, n)
	m.row(out, 0)
	return out, nil
}

// loadHFWeights maps the Hugging Face llama/qwen2 tensors. Q and K stay in
// HF's rotate-half order, which hp.Rope (RopeNeoX) computes with.
func loadHFWeights(st *safetensors.Model, hp *hparams) (weights, error) {
	var w weights
	var err error
	if w.embd, err = hfMatrix(st, "model.embed_tokens.weight", hp.Vocab, hp.Dim); err != nil {
		return w, err
	}
	if w.outNorm, err = hfVector(st, "model.norm.weight", hp.Dim); err != nil {
		return w, err
	}
	if _, ok := st.Tensor("lm_head.weight"); ok || !st.Config.TieWordEmbeddings {
		if w.output, err = hfMatrix(st, "lm_head.weight", hp.Vocab, hp.Dim); err != nil {
			return w, err
		}
	} else {
		w.output = w.embd
	}
	w.layers = make([]layer, hp.Layers)
	for i := range w.layers {
		l := &w.layers[i]
		p := fmt.Sprintf("model.layers.%d.", i)
		vectors := []struct {
			name string
			dst  *[]float32
			n    int
		}{{"input_layernorm.weight", &l.attnNorm, hp.Dim}, {"post_attention_layernorm.weight", &l.ffnNorm, hp.Dim}}
		if hp.QKVBias {
			vectors = append(vectors, []struct {
				name string
				dst  *[]float32
				n    int
			}{{"self_attn.q_proj.bias", &l.bq, hp.QDim()}, {"self_attn.k_proj.bias", &l.bk, hp.KVDim()}, {"self_attn.v_proj.bias", &l.bv, hp.KVDim()}}...)
		}
		for _, v := range vectors {
			if *v.dst, err = hfVector(st, p+v.name, v.n); err != nil {
				return w, err
			}
		}
		for _, m := range []struct {
			name       string
			dst        *matrix
			rows, cols int
		}{
			{"self_attn.q_proj", &l.wq, hp.QDim(), hp.Dim},
			{"self_attn.k_proj", &l.wk, hp.KVDim(), hp.Dim},
			{"self_attn.v_proj", &l.wv, hp.KVDim(), hp.Dim},
			{"self_attn.o_proj", &l.wo, hp.Dim, hp.QDim()},
			{"mlp.gate_proj", &l.gate, hp.Hidden, hp.Dim},
			{"mlp.up_proj", &l.up, hp.Hidden, hp.Dim},
			{"mlp.down_proj", &l.down, hp.Dim, hp.Hidden},
		} {
			if *m.dst, err = hfMatrix(st, p+m.name+".weight", m.rows, m.cols); err != nil {
				return w, err
			}
		}
	}
	if w.invFreq, err = hp.InvFreq(nil); err != nil {
		return w, err
	}
	return w, nil
}
