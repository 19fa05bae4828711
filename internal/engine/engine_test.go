package engine

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"go/parser"
	"go/token"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/npumesh/npumesh/internal/engine/arch"
	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/kernels"
	"github.com/npumesh/npumesh/internal/testdata"
	"github.com/npumesh/npumesh/internal/tokenizer"
)

func storiesPath(t testing.TB) string {
	return filepath.Join(testdata.Dir(t, "stories260K"), "stories260K.gguf")
}

func loadStories(t testing.TB, opts Options) *Model {
	t.Helper()
	m, err := Load(storiesPath(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func expectedGreedy(t testing.TB) string {
	b, err := os.ReadFile(filepath.Join(testdata.Dir(t, "stories260K"), "expected_greedy_noprompt_200steps.txt"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// generate runs req and collects the text and ids of every Delta.
func generate(t testing.TB, m *Model, ctx context.Context, req Request) (string, []int32, Result, error) {
	var text strings.Builder
	var ids []int32
	res, err := m.Generate(ctx, req, func(d Delta) error {
		text.WriteString(d.Text)
		ids = append(ids, d.IDs...)
		return nil
	})
	return text.String(), ids, res, err
}

func seed(s uint64) *uint64 { return &s }

// llama2.c's `run -n 200` runs 200 positions (BOS and 199 generated tokens
// fed back) and prints the 200 tokens sampled there: MaxTokens 200.
// Both KV cache types give llama2.c's text (the default, f16, and f32).
func TestGreedyMatchesLlama2c(t *testing.T) {
	for _, tc := range []struct {
		threads int
		kv      string
	}{{1, ""}, {4, ""}, {1, "f32"}} {
		threads := tc.threads
		m := loadStories(t, Options{Threads: threads, KVType: tc.kv})
		text, ids, res, err := generate(t, m, context.Background(), Request{MaxTokens: 200})
		if err != nil {
			t.Fatal(err)
		}
		if want := expectedGreedy(t); text != want {
			t.Errorf("threads %d, KV %q: got\n%q\nwant\n%q", threads, tc.kv, text, want)
		}
		if res != (Result{PromptTokens: 1, CompletionTokens: 200, FinishReason: FinishLength}) {
			t.Errorf("got %+v", res)
		}
		if len(ids) != 200 || tokenizer.Decode(m.Tokenizer(), ids) != text {
			t.Errorf("%d ids, decoding to %q", len(ids), tokenizer.Decode(m.Tokenizer(), ids))
		}
	}
}

func TestInfo(t *testing.T) {
	m := loadStories(t, Options{})
	want := ModelInfo{ID: "stories260K", Arch: "llama", ContextLength: 2048, Parameters: 292800, SizeBytes: 1171200, Quantization: "F32", BlockSize: 16, Layers: 5, Stage: LayerRange{0, 5},
		Dim: 64, LayerBytes: 4 * (64*64 + 2*64*32 + 64*64 + 3*64*172 + 2*64), EmbedBytes: 4 * 512 * 64, HeadBytes: 4 * (512*64 + 64), KVBytesPerLayerToken: 2 * 2 * 32}
	if got := m.Info(); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	// A float32 cache takes twice the bytes per position.
	if got := loadStories(t, Options{KVType: "f32"}).Info().KVBytesPerLayerToken; got != 2*4*32 {
		t.Errorf("f32 KV: %d bytes per layer and token, want %d", got, 2*4*32)
	}
	m2 := loadStories(t, Options{ID: "tiny", ContextLength: 64})
	if got := m2.Info(); got.ID != "tiny" || got.ContextLength != 64 {
		t.Errorf("got %+v", got)
	}
}

func TestPromptIDsAndText(t *testing.T) {
	m := loadStories(t, Options{})
	fromText, _, res1, err := generate(t, m, context.Background(), Request{Prompt: "Once upon a time", MaxTokens: 20})
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := m.Tokenizer().Encode("Once upon a time", true)
	fromIDs, _, res2, err := generate(t, m, context.Background(), Request{PromptIDs: ids, MaxTokens: 20})
	if err != nil {
		t.Fatal(err)
	}
	if fromText != fromIDs || res1 != res2 || res1.PromptTokens != 5 {
		t.Errorf("text prompt: %q %+v; id prompt: %q %+v", fromText, res1, fromIDs, res2)
	}
	// The continuation of the greedy story's own start is the rest of it.
	if want := strings.TrimPrefix(expectedGreedy(t), "Once upon a time"); !strings.HasPrefix(want, fromText) || fromText == "" {
		t.Errorf("got %q, want a prefix of %q", fromText, want[:80])
	}
}

func TestSeededSampling(t *testing.T) {
	m := loadStories(t, Options{})
	req := Request{Temperature: 0.9, TopK: 40, TopP: 0.95, Seed: seed(42), MaxTokens: 60}
	a, _, _, err := generate(t, m, context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	b, _, _, _ := generate(t, m, context.Background(), req)
	if a != b {
		t.Errorf("same seed, different text:\n%q\n%q", a, b)
	}
	req.Seed = seed(43)
	c, _, _, _ := generate(t, m, context.Background(), req)
	if c == a {
		t.Errorf("seeds 42 and 43 gave the same text %q", a)
	}
	// Each filter alone, and no seed, still produce text.
	for _, r := range []Request{
		{Temperature: 1, MaxTokens: 30},
		{Temperature: 1, TopK: 1, MaxTokens: 30, Seed: seed(1)},
		{Temperature: 0.5, TopP: 0.5, MaxTokens: 30, Seed: seed(1)},
	} {
		text, _, res, err := generate(t, m, context.Background(), r)
		if err != nil || res.CompletionTokens == 0 || text == "" && res.FinishReason != FinishStop {
			t.Errorf("%+v: %q %+v %v", r, text, res, err)
		}
	}
	// Top-k 1 is greedy whatever the temperature.
	g, _, _, _ := generate(t, m, context.Background(), Request{Temperature: 5, TopK: 1, MaxTokens: 200, Seed: seed(7)})
	if g != expectedGreedy(t) {
		t.Errorf("top-k 1: got %q", g)
	}
}

func TestStopStrings(t *testing.T) {
	m := loadStories(t, Options{})
	full := expectedGreedy(t)
	tests := []struct {
		stop []string
		want string
	}{
		{[]string{"Lily"}, "Once upon a time, there was a little girl named "},
		{[]string{"\n"}, full[:strings.Index(full, "\n")]},
		{[]string{"park. One", "nothing"}, full[:strings.Index(full, "park. One")]},
		{[]string{"zzz", "Lily's mom"}, full[:strings.Index(full, "Lily's mom")]},
		{[]string{"e"}, "Onc"},
	}
	for _, tc := range tests {
		var deltas []Delta
		res, err := m.Generate(context.Background(), Request{Stop: tc.stop, MaxTokens: 200}, func(d Delta) error {
			deltas = append(deltas, d)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		var text strings.Builder
		for _, d := range deltas {
			text.WriteString(d.Text)
		}
		if text.String() != tc.want || res.FinishReason != FinishStop {
			t.Errorf("stop %q: got %q (%s), want %q", tc.stop, text.String(), res.FinishReason, tc.want)
		}
	}
	// A stop string that never matches changes nothing, though text that
	// could begin it ("L", "Li") is held back on the way.
	text, _, res, _ := generate(t, m, context.Background(), Request{Stop: []string{"Lily!"}, MaxTokens: 200})
	if text != full || res.FinishReason != FinishLength {
		t.Errorf("unmatched stop: got %q %+v", text, res)
	}
}

func TestCancel(t *testing.T) {
	m := loadStories(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	res, err := m.Generate(ctx, Request{}, func(d Delta) error {
		if n++; n == 3 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) || res.CompletionTokens > 5 {
		t.Errorf("got %+v, %v; want context.Canceled after about 3 tokens", res, err)
	}
	if _, err := m.Generate(ctx, Request{}, func(Delta) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: got %v", err)
	}
	boom := errors.New("client gone")
	if _, err := m.Generate(context.Background(), Request{}, func(Delta) error { return boom }); !errors.Is(err, boom) {
		t.Errorf("emit error: got %v", err)
	}
}

func TestConcurrentGenerate(t *testing.T) {
	m := loadStories(t, Options{Threads: 2})
	want := expectedGreedy(t)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			text, _, _, err := generate(t, m, context.Background(), Request{MaxTokens: 200})
			if err == nil && text != want {
				err = errors.New("got " + strconv.Quote(text))
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func TestContextEnd(t *testing.T) {
	m := loadStories(t, Options{ContextLength: 10})
	_, ids, res, err := generate(t, m, context.Background(), Request{})
	if err != nil || res.CompletionTokens != 9 || len(ids) != 9 || res.FinishReason != FinishLength {
		t.Errorf("got %+v, %d ids, %v; want 9 tokens, length", res, len(ids), err)
	}
	// A prompt that fills the context leaves no room: length, no tokens.
	full := make([]int32, 10)
	for i := range full {
		full[i] = 1
	}
	if _, _, res, err := generate(t, m, context.Background(), Request{PromptIDs: full}); err != nil || res.CompletionTokens != 0 || res.FinishReason != FinishLength {
		t.Errorf("full context: got %+v, %v", res, err)
	}
}

func TestInvalidRequests(t *testing.T) {
	m := loadStories(t, Options{ContextLength: 16})
	tests := []struct {
		name  string
		req   Request
		want  error
		param string
	}{
		{"negative temperature", Request{Temperature: -1}, ErrInvalidParam, "temperature"},
		{"NaN temperature", Request{Temperature: float32(math.NaN())}, ErrInvalidParam, "temperature"},
		{"top_p", Request{TopP: 1.5}, ErrInvalidParam, "top_p"},
		{"top_k", Request{TopK: -1}, ErrInvalidParam, "top_k"},
		{"max_tokens", Request{MaxTokens: -1}, ErrInvalidParam, "max_tokens"},
		{"empty stop", Request{Stop: []string{""}}, ErrInvalidParam, "stop"},
		{"empty ids", Request{PromptIDs: []int32{}}, ErrInvalidParam, "prompt"},
		{"id too large", Request{PromptIDs: []int32{1, 512}}, ErrTokenRange, "prompt"},
		{"negative id", Request{PromptIDs: []int32{-1}}, ErrTokenRange, "prompt"},
		{"prompt too long", Request{Prompt: strings.Repeat("Once upon a time ", 10)}, ErrPromptTooLong, "prompt"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := m.Generate(context.Background(), tc.req, func(Delta) error { return nil })
			var ire *InvalidRequestError
			if !errors.Is(err, ErrInvalidRequest) || !errors.Is(err, tc.want) || !errors.As(err, &ire) || ire.Param != tc.param {
				t.Errorf("got %v, want %v on %s", err, tc.want, tc.param)
			}
		})
	}
}

func TestClose(t *testing.T) {
	m, err := Load(storiesPath(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Generate(context.Background(), Request{}, func(Delta) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("after Close: got %v", err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// rewrite copies the stories GGUF with edits: edit may change a tensor
// (return keep=false to drop it), kv sets or replaces metadata, and more
// may add to the writer.
func rewrite(t *testing.T, edit func(tt *gguf.Tensor) (typ gguf.Type, dims []uint64, data []byte, keep bool), kv map[string]any, more ...func(w *gguf.Writer)) string {
	t.Helper()
	f, err := gguf.Open(storiesPath(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := gguf.NewWriter()
	for _, k := range f.Keys() {
		v, _ := f.Value(k)
		if err := w.Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	for k, v := range kv {
		if err := w.Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range f.Tensors() {
		typ, dims, data, keep := tt.Type, tt.Dims, tt.Data, true
		if edit != nil {
			typ, dims, data, keep = edit(tt)
		}
		if !keep {
			continue
		}
		if err := w.AddTensor(tt.Name, typ, dims, data); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range more {
		f(w)
	}
	var buf bytes.Buffer
	if _, err := w.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "edited.gguf")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestTiedOutput(t *testing.T) {
	path := rewrite(t, func(tt *gguf.Tensor) (gguf.Type, []uint64, []byte, bool) {
		return tt.Type, tt.Dims, tt.Data, tt.Name != "output.weight"
	}, nil)
	m, err := Load(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// stories260K was trained with tied embeddings: output.weight is a
	// copy of token_embd.weight, so the text must not change.
	text, _, _, err := generate(t, m, context.Background(), Request{MaxTokens: 200})
	if err != nil || text != expectedGreedy(t) {
		t.Errorf("tied output: got %q, %v", text, err)
	}
}

func TestF16ToF32(t *testing.T) {
	for _, v := range []float32{0, 1, -2, 0.5, 65504, -0.000061035156, 0.000000059604645, 3.140625} {
		if got := kernels.F16ToF32(kernels.F32ToF16(v)); got != v {
			t.Errorf("%v round trips to %v", v, got)
		}
	}
}

// F16 weights (every matrix converted) give nearly the same logits.
func TestF16Weights(t *testing.T) {
	path := rewrite(t, func(tt *gguf.Tensor) (gguf.Type, []uint64, []byte, bool) {
		if len(tt.Dims) != 2 {
			return tt.Type, tt.Dims, tt.Data, true
		}
		out := make([]byte, len(tt.Data)/2)
		for i := range len(out) / 2 {
			binary.LittleEndian.PutUint16(out[2*i:], kernels.F32ToF16(math.Float32frombits(binary.LittleEndian.Uint32(tt.Data[4*i:]))))
		}
		return gguf.TypeF16, tt.Dims, out, true
	}, nil)
	m16, err := Load(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m16.Close()
	if q := m16.Info().Quantization; q != "F16" {
		t.Errorf("quantization %q, want F16", q)
	}
	m32 := loadStories(t, Options{})
	ids, _ := m32.Tokenizer().Encode(expectedGreedy(t), true)
	s16, s32 := newSingle(t, m16), newSingle(t, m32)
	var worst float64
	for pos, id := range ids[:50] {
		l16, l32 := s16.forward(id, pos), s32.forward(id, pos)
		for i := range l32 {
			worst = max(worst, math.Abs(float64(l16[i]-l32[i])))
		}
	}
	if worst > 0.05 {
		t.Errorf("F16 logits differ by up to %v", worst)
	}
	text, _, _, err := generate(t, m16, context.Background(), Request{MaxTokens: 30})
	if err != nil || !strings.HasPrefix(expectedGreedy(t), text[:40]) {
		t.Errorf("F16 greedy: %q, %v", text, err)
	}
}

// permuteRows reorders each head's rows of a Q or K matrix from the
// adjacent-pair layout to rotate-half: row 2i goes to i, row 2i+1 to
// i+hd/2. This is the inverse of llama.cpp's convert permute.
func permuteRows(m matrix, hd int) matrix {
	out := m
	out.data = make([]byte, len(m.data))
	rb := m.rowBytes
	for r := range m.rows {
		h, j := r/hd, r%hd
		dst := h*hd + j/2
		if j%2 == 1 {
			dst += hd / 2
		}
		copy(out.data[dst*rb:(dst+1)*rb], m.data[r*rb:(r+1)*rb])
	}
	return out
}

func TestRopeLayouts(t *testing.T) {
	// A float32 KV cache: the two layouts round differently, and half
	// floats would amplify that past the tolerance of this comparison.
	adj := loadStories(t, Options{KVType: "f32"})
	// half shares the read-only weights; only Q/K and the style differ.
	half := &Model{hp: adj.hp, w: adj.w, tok: adj.tok, threads: 1, cache: adj.cache}
	half.hp.Rope = arch.RopeNeoX
	half.w.layers = append([]layer(nil), adj.w.layers...)
	for i := range half.w.layers {
		half.w.layers[i].wq = permuteRows(adj.w.layers[i].wq, adj.hp.HeadDim)
		half.w.layers[i].wk = permuteRows(adj.w.layers[i].wk, adj.hp.HeadDim)
	}
	ids, _ := adj.Tokenizer().Encode(expectedGreedy(t), true)
	sa, sh := newSingle(t, adj), newSingle(t, half)
	var worst float64
	for pos, id := range ids[:100] {
		la, lh := sa.forward(id, pos), sh.forward(id, pos)
		for i := range la {
			worst = max(worst, math.Abs(float64(la[i]-lh[i])))
		}
	}
	if worst > 1e-4 {
		t.Errorf("rotate-half on permuted weights differs from adjacent pairs by %v", worst)
	}
	// And the style matters: rotate-half on unpermuted weights differs.
	wrong := &Model{hp: adj.hp, w: adj.w, tok: adj.tok, threads: 1, cache: adj.cache}
	wrong.hp.Rope = arch.RopeNeoX
	sa, sw := newSingle(t, adj), newSingle(t, wrong)
	var la, lw []float32
	for pos, id := range ids[:10] {
		la, lw = sa.forward(id, pos), sw.forward(id, pos)
	}
	if la[argmax(la)] == lw[argmax(la)] {
		t.Error("rope style had no effect")
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.gguf")
	os.WriteFile(junk, []byte("not a model at all"), 0o644)
	tests := []struct {
		name string
		path func() string
		opts Options
		want string
	}{
		{"missing", func() string { return filepath.Join(dir, "none.gguf") }, Options{}, "no such file"},
		{"not gguf", func() string { return junk }, Options{}, "not a GGUF file"},
		{"arch", func() string { return rewrite(t, nil, map[string]any{"general.architecture": "mamba"}) }, Options{}, `architecture "mamba"`},
		{"missing tensor", func() string {
			return rewrite(t, func(tt *gguf.Tensor) (gguf.Type, []uint64, []byte, bool) {
				return tt.Type, tt.Dims, tt.Data, tt.Name != "blk.3.ffn_up.weight"
			}, nil)
		}, Options{}, `"blk.3.ffn_up.weight"`},
		{"shape", func() string {
			return rewrite(t, func(tt *gguf.Tensor) (gguf.Type, []uint64, []byte, bool) {
				if tt.Name == "blk.0.attn_k.weight" {
					return tt.Type, []uint64{32, 64}, tt.Data, true
				}
				return tt.Type, tt.Dims, tt.Data, true
			}, nil)
		}, Options{}, `"blk.0.attn_k.weight" has shape [32 64]`},
		{"unsupported type", func() string {
			return rewrite(t, func(tt *gguf.Tensor) (gguf.Type, []uint64, []byte, bool) {
				if tt.Name == "blk.1.attn_q.weight" {
					return gguf.TypeIQ4_NL, tt.Dims, make([]byte, 64*64/32*18), true
				}
				return tt.Type, tt.Dims, tt.Data, true
			}, nil)
		}, Options{}, "type IQ4_NL"},
		{"quantize option", func() string { return storiesPath(t) }, Options{Quantize: "q3_k"}, `quantize "q3_k"`},
		{"heads", func() string { return rewrite(t, nil, map[string]any{"llama.attention.head_count_kv": uint32(3)}) }, Options{}, "KV heads"},
		{"tokenizer", func() string { return rewrite(t, nil, map[string]any{"tokenizer.ggml.model": "bert"}) }, Options{}, `tokenizer "bert"`},
		{"options", func() string { return storiesPath(t) }, Options{Threads: -1}, "negative"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.path()
			m, err := Load(path, tc.opts)
			if err == nil {
				m.Close()
				t.Fatal("loaded")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
				t.Errorf("got %q, want it to name %s and say %q", err, path, tc.want)
			}
		})
	}
}

func TestSampler(t *testing.T) {
	logits := []float32{1, 3, 2, 3}
	if got := newSampler(0, 0, 0, 1).sample(logits); got != 1 {
		t.Errorf("greedy: got %d, want the first maximum 1", got)
	}
	// Top-k 2 over the two equal maxima never picks anything else.
	s := newSampler(1, 0, 2, 1)
	seen := map[int32]int{}
	for range 1000 {
		seen[s.sample(logits)]++
	}
	if len(seen) != 2 || seen[1] == 0 || seen[3] == 0 {
		t.Errorf("top-k 2: %v", seen)
	}
	// Top-p 0.5 keeps only the most likely token of a peaked distribution.
	s = newSampler(1, 0.5, 0, 1)
	for range 100 {
		if got := s.sample([]float32{0, 10, 0, 0}); got != 1 {
			t.Fatalf("top-p: got %d", got)
		}
	}
}

// The engine must stay off the network stack (ARCHITECTURE.md).
func TestNoNetworkImports(t *testing.T) {
	// This package, arch and the KV cache packages.
	var files []string
	for _, pattern := range []string{"*.go", "arch/*.go", "../kvcache/*.go", "../kvcache/blockhash/*.go"} {
		m, err := filepath.Glob(pattern)
		if err != nil || len(m) == 0 {
			t.Fatalf("no files match %s: %v", pattern, err)
		}
		files = append(files, m...)
	}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if path == "net" || strings.HasPrefix(path, "net/") || strings.Contains(path, "grpc") {
				t.Errorf("%s imports %s", name, path)
			}
		}
	}
}

// A completion continues its prompt: the first generated piece keeps its
// leading space (SentencePiece strips it only at the start of the text).
func TestContinuationKeepsLeadingSpace(t *testing.T) {
	m := loadStories(t, Options{})
	text, _, _, err := generate(t, m, context.Background(), Request{Prompt: "Once upon a time,", MaxTokens: 3})
	if err != nil {
		t.Fatal(err)
	}
	if want := " there was"; !strings.HasPrefix(text, want) {
		t.Fatalf("continuation of %q = %q, want prefix %q", "Once upon a time,", text, want)
	}
}
