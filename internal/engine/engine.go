// Package engine runs language models on the CPU in pure Go: it loads a
// GGUF file, tokenizes, runs the transformer forward pass (its matrix
// products are package kernels', on a worker Pool per Model), samples and
// streams text. It is the built-in backend behind the node daemon.
//
// Concurrent Generate calls on one Model are decoded together: a scheduler
// goroutine owned by the Model runs one step at a time for every running
// sequence, so each weight matrix is read once per step for all of them.
// Keys and values live in a paged cache (package kvcache) whose full
// blocks outlive their request, so a prompt that repeats a cached prefix
// skips computing it. The engine knows nothing of the network (no
// net/http, no gRPC).
package engine

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/npumesh/npumesh/internal/engine/arch"
	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/kernels"
	"github.com/npumesh/npumesh/internal/kvcache"
	"github.com/npumesh/npumesh/internal/tokenizer"
)

// Options tune Load.
type Options struct {
	// ID is the model id; default: the file name without ".gguf". It
	// also seeds the KV cache's block hashes (kvcache/blockhash).
	ID string
	// Threads is the number of goroutines a matrix product is split
	// across; 0 means runtime.NumCPU().
	Threads int
	// ContextLength is the number of positions (prompt and completion);
	// 0 means the model's own.
	ContextLength int
	// KVBudgetBytes caps the memory of the KV cache, shared by all
	// running sequences and the cached prefixes of finished ones. 0 means
	// four full contexts, but at most 4 GiB; any budget is raised to hold
	// at least one full context. Memory is taken as blocks are first used.
	KVBudgetBytes int64
	// BlockSize is the number of positions per KV cache block, the unit
	// of prefix reuse; 0 means kvcache.DefaultBlockSize (16).
	BlockSize int
	// KVType is how the KV cache stores keys and values: "f16" (IEEE half
	// floats; "" means f16, as llama.cpp's default) or "f32". f16 holds
	// twice the positions in a budget and halves what attention reads; f32
	// keeps every number of a step in float32 (the reference tests use it).
	KVType string
	// PrefillChunk is the number of prompt tokens a sequence runs per
	// step, so that a long prompt does not stall the decoding of others;
	// 0 means 64.
	PrefillChunk int
	// MaxBatch is the number of sequences decoded together at most;
	// further requests wait for a place. 0 means 32.
	MaxBatch int
	// OnCacheEvent, when set, receives the hashes of KV blocks stored and
	// evicted, for the router's prefix scoring. It is called on the
	// scheduler goroutine and must not block.
	OnCacheEvent func(kvcache.Event)
	// Quantize, when set ("q8_0" or "q4_0"; also "q4_1", "q5_0", "q5_1",
	// "q4_K", "q6_K"), converts every F32, F16 and BF16 weight matrix to
	// that type while loading. Unlike the file's own weights, which are
	// used in place from the mapping, the converted matrices are new
	// buffers (the memory of the quantized model); the originals' pages
	// are released from the resident set once converted (on unix). A
	// matrix whose rows are not a whole number of the type's blocks (a
	// 172-wide FFN of a toy model) keeps its type; quantized matrices of
	// the file are left alone.
	Quantize string
	// Layers, when set, loads one stage of a pipeline: the layers
	// [Lo, Hi), with the token embedding only when Lo is 0 and the output
	// head only when Hi is the model's last layer (stage.go). The zero
	// value loads the whole model.
	Layers LayerRange
	// Downstream, set on a first stage that is not also the last, carries
	// each step's hidden states to the rest of the pipeline; the tokens
	// sampled there come back through Model.StageResults. MicroBatches
	// is how many groups the running sequences are split into, so that
	// while later stages work on one group the first computes the next
	// (usually the number of stages on machines of their own); 0 or 1
	// sends every running sequence in each step.
	Downstream   Downstream
	MicroBatches int
}

// Defaults of Options.
const (
	defaultPrefillChunk = 64
	defaultMaxBatch     = 32
	defaultKVContexts   = 4
	defaultKVMaxBytes   = 4 << 30
)

// ModelInfo describes a loaded model.
type ModelInfo struct {
	ID            string
	Arch          string // general.architecture, e.g. "llama"
	ContextLength int
	Parameters    uint64 // number of weights
	// SizeBytes is the bytes of tensor data and Quantization the type of
	// most weight bytes ("F16", "Q4_0"), both as computed with: after
	// Options.Quantize converted what it could.
	SizeBytes    uint64
	Quantization string
	// BlockSize is the KV cache block size: a router hashes prompts with
	// blockhash.Chain(ID, tokens, BlockSize) to find cached prefixes.
	BlockSize int
	// Layers is the model's number of layers; Stage the layers this
	// Model holds (all of them unless loaded as a pipeline stage).
	Layers int
	Stage  LayerRange
	// The model's shape, for planning pipeline stages: the hidden size;
	// the weight bytes of one layer (the first), of the token embedding
	// and of the output norm and head (the embedding again when tied);
	// and the KV-cache bytes one layer needs per position.
	Dim                  int
	LayerBytes           int64
	EmbedBytes           int64
	HeadBytes            int64
	KVBytesPerLayerToken int64
}

// Model is a loaded model. Its methods are safe for concurrent use.
type Model struct {
	info    ModelInfo
	hp      hparams
	w       weights
	tok     modelTokenizer // *tokenizer.SPM (GGUF) or *tokenizer.HF (safetensors)
	threads int
	// pool runs the matrix products on threads workers; Close stops it.
	pool      *kernels.Pool
	stepBytes int64 // StepWeightBytes
	// weightBufs are the off-heap buffers of converted and packed weights
	// (quantizeWeights, packWeights); Close frees them.
	weightBufs [][]byte
	// chatTemplate is the model's Jinja chat template, "" when it has none.
	chatTemplate string
	cache        *kvcache.Cache
	kvHalf       bool // the cache stores half floats (Options.KVType)
	sched        *scheduler
	// stage is the layers held; first and last stages hold the
	// embedding and the head (stage.go). stageMu serializes the forward
	// passes of StageRunners, which share the pool.
	stage   LayerRange
	stageMu sync.Mutex
	// layerNanos is LayerSeconds in nanoseconds (stage.go).
	layerNanos atomic.Int64

	// mu guards closed and file: Generate holds it shared for its whole
	// run, so Close (exclusive) waits for running generations before it
	// stops the scheduler and unmaps the weights they read.
	mu     sync.RWMutex
	closed bool
	file   io.Closer // *gguf.File or *safetensors.Model
}

// ErrClosed is returned by Generate after Close.
var ErrClosed = errors.New("engine: model closed")

// Load opens a GGUF model (an architecture registered in package arch:
// llama, qwen2; weights of any type package kernels multiplies: F32, F16,
// BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) and prepares it for
// Generate. The weights stay in the file's read-only mapping until Close
// (except those Options.Quantize converts).
func Load(path string, opts Options) (*Model, error) {
	if opts.Threads < 0 || opts.ContextLength < 0 || opts.KVBudgetBytes < 0 || opts.BlockSize < 0 || opts.PrefillChunk < 0 || opts.MaxBatch < 0 {
		return nil, fmt.Errorf("load model %q: negative option in %+v", path, opts)
	}
	if _, err := kvHalf(opts.KVType); err != nil {
		return nil, fmt.Errorf("load model %q: %w", path, err)
	}
	if isDir(path) { // a Hugging Face safetensors directory (safetensors.go)
		m, err := loadHF(path, opts)
		if err != nil {
			return nil, fmt.Errorf("load model %q: %w", path, err)
		}
		return m, nil
	}
	f, err := gguf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load model %q: %w", path, err)
	}
	m, err := newModel(f, opts)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("load model %q: %w", path, err)
	}
	return m, nil
}

func newModel(f *gguf.File, opts Options) (*Model, error) {
	hp, err := arch.Read(f)
	if err != nil {
		return nil, err
	}
	if opts.ContextLength > 0 {
		hp.Context = opts.ContextLength
	}
	tok, err := tokenizerFromGGUF(f)
	if err != nil {
		return nil, err
	}
	if tok.VocabSize() != hp.Vocab {
		return nil, fmt.Errorf("tokenizer has %d tokens, token_embd.weight %d rows", tok.VocabSize(), hp.Vocab)
	}
	w, err := loadWeights(f, &hp)
	if err != nil {
		return nil, err
	}
	id := opts.ID
	if id == "" {
		id = strings.TrimSuffix(filepath.Base(f.Name), ".gguf")
	}
	m, converted, threads, err := prepareModel(&hp, w, tok, id, opts)
	if err != nil {
		return nil, err
	}
	m.file = f
	// A model without a template is served with the node's fallback.
	m.chatTemplate, _ = f.String("tokenizer.chat_template")
	bytesByType := map[gguf.Type]uint64{}
	for _, t := range f.Tensors() {
		typ, size := t.Type, uint64(len(t.Data))
		if c, ok := converted[t.Name]; ok {
			typ, size = c.typ, uint64(len(c.data))
		}
		m.info.Parameters += t.NumElements()
		m.info.SizeBytes += size
		if len(t.Dims) >= 2 {
			bytesByType[typ] += size
		}
	}
	m.start(opts, threads, bytesByType)
	return m, nil
}

// start names the quantization after the type holding most weight bytes (as
// "Q4_K" names a file whose norms are F32), then starts the worker pool and
// the scheduler. Both loaders (GGUF, safetensors) end here.
func (m *Model) start(opts Options, threads int, bytesByType map[gguf.Type]uint64) {
	var most uint64
	for typ, n := range bytesByType {
		if n > most || n == most && typ.String() < m.info.Quantization {
			most, m.info.Quantization = n, typ.String()
		}
	}
	chunk := opts.PrefillChunk
	if chunk == 0 {
		chunk = defaultPrefillChunk
	}
	maxBatch := opts.MaxBatch
	if maxBatch == 0 {
		maxBatch = defaultMaxBatch
	}
	m.pool = kernels.NewPool(threads)
	m.sched = startScheduler(m, chunk, maxBatch, opts.Downstream, opts.MicroBatches)
}

// newCache sizes the KV cache: the budget asked for, or the default, but
// never less than one full context, so that one sequence always fits. The
// budget is that of the whole model; a pipeline stage gets the same number
// of blocks, each holding only its own layers, so that every stage of a
// pipeline has room for the same positions.
func newCache(hp *hparams, layers int, id string, half bool, opts Options) (*kvcache.Cache, error) {
	elem := kvcache.ElemBytes(half)
	bs := opts.BlockSize
	if bs == 0 {
		bs = kvcache.DefaultBlockSize
	}
	blockBytes, context := kvContextBytes(hp.Layers, hp.KVDim(), hp.Context, bs, elem)
	blocks := kvBudget(context, opts.KVBudgetBytes) / blockBytes
	stageBlockBytes, _ := kvContextBytes(layers, hp.KVDim(), 0, bs, elem)
	return kvcache.New(kvcache.Config{
		ModelID: id, BlockSize: bs, Layers: layers, KVDim: hp.KVDim(), Half: half,
		BudgetBytes: blocks * stageBlockBytes, OnEvent: opts.OnCacheEvent,
	})
}

// kvContextBytes is the size of one KV block of bs positions and of a
// full context of contextLen positions in such blocks, elem bytes a number.
func kvContextBytes(layers, kvDim, contextLen, bs int, elem int64) (block, context int64) {
	block = elem * 2 * int64(layers) * int64(bs) * int64(kvDim)
	return block, int64((contextLen+bs-1)/bs) * block
}

// DefaultKVBudgetBytes is the KV cache memory Load gives a model of layers
// layers, KV dimension kvDim and contextLen positions when every KV option
// is left at its default: four full contexts of f16 keys and values in
// 16-position blocks, at most 4 GiB. Placement reserves it for a model
// before any node has loaded it.
func DefaultKVBudgetBytes(layers, kvDim, contextLen int) int64 {
	_, context := kvContextBytes(layers, kvDim, contextLen, kvcache.DefaultBlockSize, kvcache.ElemBytes(true))
	return kvBudget(context, 0)
}

// kvBudget is the KV budget for a context of context bytes when asked
// bytes are asked for (Options.KVBudgetBytes; 0: the default of
// defaultKVContexts contexts, at most defaultKVMaxBytes), never less than
// one context.
func kvBudget(context, asked int64) int64 {
	if asked == 0 {
		asked = min(defaultKVContexts*context, defaultKVMaxBytes)
	}
	return max(asked, context)
}

// kvHalf reads Options.KVType: true for half floats.
func kvHalf(t string) (bool, error) {
	switch strings.ToLower(t) {
	case "", "f16":
		return true, nil
	case "f32":
		return false, nil
	}
	return false, fmt.Errorf("KV cache type %q: use f16 or f32", t)
}

// ChatTemplate returns the model's own Jinja chat template (GGUF
// tokenizer.chat_template), or "" when the file has none.
func (m *Model) ChatTemplate() string { return m.chatTemplate }

// SpecialTokens returns the text of the BOS and EOS tokens, as chat
// templates write them ("" for a model without one).
func (m *Model) SpecialTokens() (bos, eos string) {
	if id := m.tok.BOS(); id >= 0 {
		bos = m.tok.Token(id)
	}
	if id := m.tok.EOS(); id >= 0 {
		eos = m.tok.Token(id)
	}
	return bos, eos
}

// Info describes the model.
func (m *Model) Info() ModelInfo { return m.info }

// StepWeightBytes is the number of weight bytes one decode step reads:
// every matrix and vector in the types computed with (after
// Options.Quantize), except the token embedding, of which only a row is
// read unless it is also the output head. Divided into the memory
// bandwidth it bounds the decode rate of one sequence.
func (m *Model) StepWeightBytes() int64 { return m.stepBytes }

// stepWeightBytes computes StepWeightBytes at load.
func stepWeightBytes(w *weights) int64 {
	n := int64(len(w.outNorm))*4 + w.output.bytes()
	for _, l := range w.layers {
		n += 4 * int64(len(l.attnNorm)+len(l.ffnNorm)+len(l.bq)+len(l.bk)+len(l.bv))
		for _, mt := range []*matrix{&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down} {
			n += mt.bytes()
		}
	}
	return n
}

// Tokenizer returns the model's tokenizer.
func (m *Model) Tokenizer() tokenizer.Tokenizer { return m.tok }

// CacheStats returns the KV cache's block counts.
func (m *Model) CacheStats() kvcache.Stats { return m.cache.Stats() }

// KVBudgetBytes is the memory the KV cache may use (its capacity in blocks
// times the bytes of one block).
func (m *Model) KVBudgetBytes() int64 {
	return int64(m.cache.Stats().Capacity) * m.cache.BlockBytes()
}

// Close waits for running Generate calls to return, stops the scheduler
// and releases the weights. Cancel the calls' contexts first to make it
// prompt.
func (m *Model) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	m.sched.stop()
	m.pool.Close()
	m.w = weights{}
	for _, b := range m.weightBufs {
		freeWeights(b)
	}
	m.weightBufs = nil
	return m.file.Close()
}

// hparams are the architecture's hyperparameters (package arch).
type hparams = arch.Params

// tokenizerFromGGUF builds the tokenizer that tokenizer.ggml.model names.
func tokenizerFromGGUF(f *gguf.File) (modelTokenizer, error) {
	model, err := f.String("tokenizer.ggml.model")
	if err != nil {
		return nil, err
	}
	switch model {
	case "llama":
		return spmFromGGUF(f)
	case "gpt2":
		return bpeFromGGUF(f) // gguf_bpe.go
	}
	return nil, fmt.Errorf("tokenizer %q is not supported (this engine reads: llama, gpt2)", model)
}

// spmFromGGUF builds the SentencePiece tokenizer from tokenizer.ggml.*.
func spmFromGGUF(f *gguf.File) (*tokenizer.SPM, error) {
	var err error
	cfg := tokenizer.SPMConfig{AddBOS: true, AddSpacePrefix: true}
	if cfg.Tokens, err = f.Strings("tokenizer.ggml.tokens"); err != nil {
		return nil, err
	}
	if cfg.Scores, err = f.Float32s("tokenizer.ggml.scores"); err != nil && !errors.Is(err, gguf.ErrNotFound) {
		return nil, err
	}
	types, err := f.Int32s("tokenizer.ggml.token_type")
	if err != nil && !errors.Is(err, gguf.ErrNotFound) {
		return nil, err
	}
	if types != nil {
		cfg.Types = make([]tokenizer.SPMTokenType, len(types))
		for i, t := range types {
			cfg.Types[i] = tokenizer.SPMTokenType(t)
		}
	}
	// Ids are stored as uint32 with 0xFFFFFFFF (or any id past the
	// vocabulary) meaning none.
	optID := func(key string, def int32) (int32, error) {
		v, err := f.Uint(key)
		switch {
		case errors.Is(err, gguf.ErrNotFound):
			return def, nil
		case err != nil:
			return 0, err
		case v >= uint64(len(cfg.Tokens)):
			return -1, nil
		}
		return int32(v), nil
	}
	if cfg.BOS, err = optID("tokenizer.ggml.bos_token_id", 1); err != nil {
		return nil, err
	}
	if cfg.EOS, err = optID("tokenizer.ggml.eos_token_id", 2); err != nil {
		return nil, err
	}
	if cfg.UNK, err = optID("tokenizer.ggml.unknown_token_id", 0); err != nil {
		return nil, err
	}
	for _, key := range []string{"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"} {
		id, err := optID(key, -1)
		if err != nil {
			return nil, err
		}
		if id >= 0 {
			cfg.EOG = append(cfg.EOG, id)
		}
	}
	optBool := func(key string, dst *bool) error {
		v, err := f.Bool(key)
		if errors.Is(err, gguf.ErrNotFound) {
			return nil
		}
		*dst = v
		return err
	}
	for key, dst := range map[string]*bool{
		"tokenizer.ggml.add_bos_token":    &cfg.AddBOS,
		"tokenizer.ggml.add_eos_token":    &cfg.AddEOS,
		"tokenizer.ggml.add_space_prefix": &cfg.AddSpacePrefix,
	} {
		if err := optBool(key, dst); err != nil {
			return nil, err
		}
	}
	if cfg.AddBOS && cfg.BOS < 0 {
		cfg.AddBOS = false
	}
	if cfg.BOS < 0 {
		return nil, errors.New("the vocabulary has no BOS token, which an empty prompt needs")
	}
	tok, err := tokenizer.NewSPM(cfg)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	return tok, nil
}

// loadMatrix returns the named 2-D tensor, checked against its expected
// shape, without copying its data.
func loadMatrix(f *gguf.File, name string, cols, rows int) (matrix, error) {
	t, ok := f.Tensor(name)
	if !ok {
		return matrix{}, fmt.Errorf("tensor %q: %w", name, gguf.ErrNotFound)
	}
	if len(t.Dims) != 2 || t.Dims[0] != uint64(cols) || t.Dims[1] != uint64(rows) {
		return matrix{}, fmt.Errorf("tensor %q has shape %v, want [%d %d]", name, t.Dims, cols, rows)
	}
	return newMatrix(name, t.Type, t.Data, cols, rows)
}

// loadVector returns a 1-D tensor as float32 (a copy: vectors are small).
func loadVector(f *gguf.File, name string, n int) ([]float32, error) {
	t, ok := f.Tensor(name)
	if !ok {
		return nil, fmt.Errorf("tensor %q: %w", name, gguf.ErrNotFound)
	}
	if len(t.Dims) != 1 || t.Dims[0] != uint64(n) {
		return nil, fmt.Errorf("tensor %q has shape %v, want [%d]", name, t.Dims, n)
	}
	m, err := newMatrix(name, t.Type, t.Data, n, 1)
	if err != nil {
		return nil, err
	}
	out := make([]float32, n)
	m.row(out, 0)
	return out, nil
}
