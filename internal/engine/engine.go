// Package engine runs language models on the CPU in pure Go: it loads a
// GGUF file, tokenizes, runs the transformer forward pass with a KV cache
// per request, samples and streams text. It is the built-in backend behind
// the node daemon. It knows nothing of the network (no net/http, no gRPC)
// and nothing of scheduling across requests: each Generate call owns its
// cache, and the weights are shared read-only.
package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"unsafe"

	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/tokenizer"
)

// Options tune Load.
type Options struct {
	// ID is the model id; default: the file name without ".gguf".
	ID string
	// Threads is the number of goroutines a matrix-vector product is
	// split across; 0 means runtime.NumCPU().
	Threads int
	// ContextLength is the number of positions (prompt and completion);
	// 0 means the model's own.
	ContextLength int
}

// ModelInfo describes a loaded model.
type ModelInfo struct {
	ID            string
	Arch          string // general.architecture, e.g. "llama"
	ContextLength int
	Parameters    uint64 // number of weights
	SizeBytes     uint64 // bytes of tensor data
	Quantization  string // type of most weight bytes, e.g. "F32", "F16"
}

// Model is a loaded model. Its methods are safe for concurrent use.
type Model struct {
	info    ModelInfo
	hp      hparams
	w       weights
	tok     *tokenizer.SPM
	threads int
	// chatTemplate is the model's Jinja chat template, "" when it has none.
	chatTemplate string

	// mu guards closed and file: Generate holds it shared for its whole
	// run, so Close (exclusive) waits for running generations before it
	// unmaps the weights they read.
	mu     sync.RWMutex
	closed bool
	file   *gguf.File
}

// ErrClosed is returned by Generate after Close.
var ErrClosed = errors.New("engine: model closed")

// Load opens a GGUF model (architecture "llama", F32 or F16 weights) and
// prepares it for Generate. The weights stay in the file's read-only
// mapping until Close.
func Load(path string, opts Options) (*Model, error) {
	if opts.Threads < 0 || opts.ContextLength < 0 {
		return nil, fmt.Errorf("load model %q: negative Threads (%d) or ContextLength (%d)", path, opts.Threads, opts.ContextLength)
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
	arch, err := f.String("general.architecture")
	if err != nil {
		return nil, err
	}
	if arch != "llama" {
		return nil, fmt.Errorf("architecture %q is not supported (this engine runs: llama)", arch)
	}
	hp, err := readHparams(f, arch)
	if err != nil {
		return nil, err
	}
	if opts.ContextLength > 0 {
		hp.ctx = opts.ContextLength
	}
	tok, err := spmFromGGUF(f)
	if err != nil {
		return nil, err
	}
	if tok.VocabSize() != hp.vocab {
		return nil, fmt.Errorf("tokenizer has %d tokens, token_embd.weight %d rows", tok.VocabSize(), hp.vocab)
	}
	w, err := loadWeights(f, hp)
	if err != nil {
		return nil, err
	}
	id := opts.ID
	if id == "" {
		id = strings.TrimSuffix(filepath.Base(f.Name), ".gguf")
	}
	threads := opts.Threads
	if threads == 0 {
		threads = runtime.NumCPU()
	}
	m := &Model{hp: hp, w: w, tok: tok, threads: threads, file: f}
	// A model without a template is served with the node's fallback.
	m.chatTemplate, _ = f.String("tokenizer.chat_template")
	m.info = ModelInfo{ID: id, Arch: arch, ContextLength: hp.ctx}
	bytesByType := map[gguf.Type]uint64{}
	for _, t := range f.Tensors() {
		m.info.Parameters += t.NumElements()
		m.info.SizeBytes += uint64(len(t.Data))
		if len(t.Dims) >= 2 {
			bytesByType[t.Type] += uint64(len(t.Data))
		}
	}
	// The type holding most weight bytes names the quantization, as
	// "Q4_K" names a file whose norms are F32.
	var most uint64
	for typ, n := range bytesByType {
		if n > most || n == most && typ.String() < m.info.Quantization {
			most, m.info.Quantization = n, typ.String()
		}
	}
	return m, nil
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

// Tokenizer returns the model's tokenizer.
func (m *Model) Tokenizer() tokenizer.Tokenizer { return m.tok }

// Close waits for running Generate calls to return and releases the
// weights. Cancel their contexts first to make it prompt.
func (m *Model) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	m.w = weights{}
	return m.file.Close()
}

// ropeStyle is how a model pairs the dimensions that RoPE rotates.
type ropeStyle int

const (
	// ropeAdjacent rotates pairs (x[2i], x[2i+1]): ggml's normal mode,
	// used by GGUF llama files (the converter permutes Q and K into it)
	// and by llama2.c.
	ropeAdjacent ropeStyle = iota
	// ropeHalf rotates pairs (x[i], x[i+d/2]): Hugging Face's
	// rotate_half and ggml's NeoX mode, for checkpoints used as trained.
	ropeHalf
)

type hparams struct {
	dim, hidden, layers int
	heads, kvHeads      int
	headDim, rotDim     int
	vocab, ctx          int
	eps                 float32
	ropeBase            float64
	rope                ropeStyle
}

func (h *hparams) kvDim() int { return h.kvHeads * h.headDim }

// readHparams reads <arch>.* metadata and checks it is consistent.
func readHparams(f *gguf.File, arch string) (hparams, error) {
	var hp hparams
	ints := []struct {
		key      string
		dst      *int
		optional bool
	}{
		{"context_length", &hp.ctx, false},
		{"embedding_length", &hp.dim, false},
		{"feed_forward_length", &hp.hidden, false},
		{"block_count", &hp.layers, false},
		{"attention.head_count", &hp.heads, false},
		{"attention.head_count_kv", &hp.kvHeads, true},
		{"rope.dimension_count", &hp.rotDim, true},
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
	if hp.kvHeads == 0 {
		hp.kvHeads = hp.heads
	}
	if hp.dim%hp.heads != 0 || hp.heads%hp.kvHeads != 0 {
		return hp, fmt.Errorf("%d heads and %d KV heads do not divide embedding length %d", hp.heads, hp.kvHeads, hp.dim)
	}
	hp.headDim = hp.dim / hp.heads
	if hp.rotDim == 0 {
		hp.rotDim = hp.headDim
	}
	if hp.rotDim > hp.headDim || hp.rotDim%2 != 0 {
		return hp, fmt.Errorf("rope dimension %d does not fit head size %d", hp.rotDim, hp.headDim)
	}
	eps, err := f.Float(arch + ".attention.layer_norm_rms_epsilon")
	if err != nil {
		return hp, err
	}
	hp.eps = float32(eps)
	hp.ropeBase = 10000
	if b, err := f.Float(arch + ".rope.freq_base"); err == nil {
		hp.ropeBase = b
	} else if !errors.Is(err, gguf.ErrNotFound) {
		return hp, err
	}
	if !(hp.ropeBase > 0) || !(hp.eps >= 0) {
		return hp, fmt.Errorf("rope base %v or epsilon %v out of range", hp.ropeBase, hp.eps)
	}
	if t, ok := f.Tensor("token_embd.weight"); ok && len(t.Dims) == 2 {
		hp.vocab = int(t.Dims[1])
	} else {
		return hp, errors.New("tensor token_embd.weight missing or not 2-dimensional")
	}
	hp.rope = ropeAdjacent
	return hp, nil
}

// spmFromGGUF builds the SentencePiece tokenizer from tokenizer.ggml.*.
func spmFromGGUF(f *gguf.File) (*tokenizer.SPM, error) {
	model, err := f.String("tokenizer.ggml.model")
	if err != nil {
		return nil, err
	}
	if model != "llama" {
		return nil, fmt.Errorf("tokenizer %q is not supported (this engine reads: llama)", model)
	}
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
// shape, without copying F32/F16 data.
func loadMatrix(f *gguf.File, name string, cols, rows int) (matrix, error) {
	t, ok := f.Tensor(name)
	if !ok {
		return matrix{}, fmt.Errorf("tensor %q: %w", name, gguf.ErrNotFound)
	}
	if len(t.Dims) != 2 || t.Dims[0] != uint64(cols) || t.Dims[1] != uint64(rows) {
		return matrix{}, fmt.Errorf("tensor %q has shape %v, want [%d %d]", name, t.Dims, cols, rows)
	}
	return tensorMatrix(t, cols, rows)
}

// tensorMatrix views t's data as a matrix of rows rows of cols elements.
func tensorMatrix(t *gguf.Tensor, cols, rows int) (matrix, error) {
	name := t.Name
	m := matrix{rows: rows, cols: cols}
	switch t.Type {
	case gguf.TypeF32:
		m.f32 = asFloat32s(t.Data)
	case gguf.TypeF16:
		m.f16 = asUint16s(t.Data)
	default:
		return matrix{}, fmt.Errorf("tensor %q has type %s; this engine computes with F32 and F16 only so far", name, t.Type)
	}
	return m, nil
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
	m, err := tensorMatrix(t, n, 1)
	if err != nil {
		return nil, err
	}
	out := make([]float32, n)
	m.row(out, 0)
	return out, nil
}

// littleEndian is whether this machine stores numbers as GGUF does, so
// that tensor bytes can be used as []float32 in place.
var littleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

func asFloat32s(b []byte) []float32 {
	n := len(b) / 4
	if littleEndian && uintptr(unsafe.Pointer(unsafe.SliceData(b)))%4 == 0 {
		return unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(b))), n)
	}
	out := make([]float32, n)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

func asUint16s(b []byte) []uint16 {
	n := len(b) / 2
	if littleEndian && uintptr(unsafe.Pointer(unsafe.SliceData(b)))%2 == 0 {
		return unsafe.Slice((*uint16)(unsafe.Pointer(unsafe.SliceData(b))), n)
	}
	out := make([]uint16, n)
	for i := range out {
		out[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	return out
}
