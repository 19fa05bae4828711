package arch

import (
	"bytes"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/npumesh/npumesh/internal/gguf"
)

func TestRegistry(t *testing.T) {
	if got := Names(); !slices.Contains(got, "llama") || !slices.Contains(got, "qwen2") {
		t.Errorf("Names() = %v", got)
	}
	defer func() {
		if recover() == nil {
			t.Error("registering llama twice did not panic")
		}
	}()
	Register("llama", nil)
}

// file writes a GGUF with the given metadata and a token_embd.weight.
func file(t *testing.T, kv map[string]any) *gguf.File {
	t.Helper()
	w := gguf.NewWriter()
	for k, v := range kv {
		if err := w.Set(k, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.AddTensor("token_embd.weight", gguf.TypeF32, []uint64{8, 4}, make([]byte, 4*32)); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := w.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "m.gguf")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := gguf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func meta(arch string, extra map[string]any) map[string]any {
	kv := map[string]any{
		"general.architecture":                     arch,
		arch + ".context_length":                   uint32(128),
		arch + ".embedding_length":                 uint32(8),
		arch + ".feed_forward_length":              uint32(16),
		arch + ".block_count":                      uint32(1),
		arch + ".attention.head_count":             uint32(2),
		arch + ".attention.layer_norm_rms_epsilon": float32(1e-5),
	}
	for k, v := range extra {
		kv[k] = v
	}
	return kv
}

func TestRead(t *testing.T) {
	tests := []struct {
		name  string
		kv    map[string]any
		check func(p Params) bool
		err   error
	}{
		{"llama", meta("llama", nil), func(p Params) bool {
			return p.Rope == RopeNormal && !p.QKVBias && p.RopeBase == 10000 && p.HeadDim == 4 && p.KVHeads == 2 && p.Vocab == 4 && p.Scaling.Type == ScalingNone
		}, nil},
		{"qwen2", meta("qwen2", map[string]any{"qwen2.rope.freq_base": float32(1e6), "qwen2.attention.head_count_kv": uint32(1)}), func(p Params) bool {
			return p.Rope == RopeNeoX && p.QKVBias && p.RopeBase == 1e6 && p.KVHeads == 1 && p.Arch == "qwen2"
		}, nil},
		{"linear", meta("llama", map[string]any{"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": float32(4)}), func(p Params) bool {
			return p.Scaling == RopeScaling{Type: ScalingLinear, Factor: 4}
		}, nil},
		{"scale_linear", meta("llama", map[string]any{"llama.rope.scale_linear": float32(2)}), func(p Params) bool {
			return p.Scaling == RopeScaling{Type: ScalingLinear, Factor: 2}
		}, nil},
		{"llama3", meta("llama", map[string]any{"llama.rope.scaling.type": "llama3", "llama.rope.scaling.factor": float32(8)}), func(p Params) bool {
			return p.Scaling == RopeScaling{Type: ScalingLlama3, Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OrigContext: 8192}
		}, nil},
		{"yarn", meta("llama", map[string]any{"llama.rope.scaling.type": "yarn"}), nil, ErrUnsupported},
		{"unknown", meta("mamba", nil), nil, ErrUnsupported},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Read(file(t, tc.kv))
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Errorf("got %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil || !tc.check(p) {
				t.Errorf("got %+v, %v", p, err)
			}
		})
	}
}

// Llama 3.1's frequency adjustment, checked against values computed by
// hand from Hugging Face's _compute_llama3_parameters for Llama-3.1-8B
// (base 500000, head size 128, factor 8, low 1, high 4, original 8192).
func TestInvFreqLlama3(t *testing.T) {
	p := Params{RotDim: 128, RopeBase: 500000, Scaling: RopeScaling{Type: ScalingLlama3, Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OrigContext: 8192}}
	got, err := p.InvFreq(nil)
	if err != nil {
		t.Fatal(err)
	}
	base := func(i int) float64 { return math.Pow(500000, -float64(2*i)/128) }
	// i=0: wavelength 2π, below 8192/4: kept.
	// i=63: wavelength ~2.6e6, above 8192: divided by 8.
	// i=30: wavelength 2π/base(30) ≈ 2949, between: smooth ≈ 0.5927.
	wl := 2 * math.Pi / base(30)
	smooth := (8192/wl - 1) / 3
	for _, c := range []struct {
		i    int
		want float64
	}{{0, base(0)}, {63, base(63) / 8}, {30, (1-smooth)*base(30)/8 + smooth*base(30)}} {
		if math.Abs(got[c.i]-c.want) > 1e-12*c.want {
			t.Errorf("pair %d: got %v, want %v", c.i, got[c.i], c.want)
		}
	}
	// Frequency factors from a tensor replace the metadata scheme.
	ff := make([]float32, 64)
	for i := range ff {
		ff[i] = 1
	}
	same, _ := p.InvFreq(ff)
	if same[63] != base(63) {
		t.Errorf("with factors 1: got %v, want %v", same[63], base(63))
	}
	if _, err := p.InvFreq(ff[:3]); err == nil {
		t.Error("3 factors for 64 pairs accepted")
	}
}
