package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/synth"
	"github.com/npumesh/npumesh/internal/testdata"
)

// TestHFFacts: `model add` sends for a safetensors directory what it sends
// for the same model as GGUF (architecture and the engine's default KV
// budget), and that budget is what the engine allocates by default.
func TestHFFacts(t *testing.T) {
	src := filepath.Join(testdata.Dir(t, "stories260K"), "stories260K.gguf")
	dir := filepath.Join(t.TempDir(), "stories-hf")
	if err := synth.WriteHFDir(dir, src); err != nil {
		t.Fatal(err)
	}
	want, err := ggufFacts(src)
	if err != nil {
		t.Fatal(err)
	}
	got, err := hfFacts(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got != want || got.arch != "llama" || got.kvBudget <= 0 {
		t.Fatalf("hfFacts %+v, ggufFacts %+v", got, want)
	}
	m, err := engine.Load(dir, engine.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// The engine allocates whole blocks within the budget.
	if kv := m.KVBudgetBytes(); kv > got.kvBudget || kv <= got.kvBudget-int64(2*2*5*16*32) {
		t.Errorf("engine KV cache %d bytes, hfFacts budget %d", kv, got.kvBudget)
	}

	// Without max_position_embeddings the engine uses 4096 positions; a
	// model_type it does not run still gets a budget, and an error to warn.
	cfg := filepath.Join(dir, "config.json")
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), `"model_type": "llama"`, `"model_type": "gemma"`, 1)
	s = strings.Replace(s, `"max_position_embeddings"`, `"unused_max_position_embeddings"`, 1)
	if s == string(b) {
		t.Fatalf("config.json not edited:\n%s", b)
	}
	if err := os.WriteFile(cfg, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err = hfFacts(dir)
	// 4096 positions, 5 layers, 4 KV heads of 8 floats, f32 K and V:
	// 4096*5*32*2*4 bytes per context, four contexts.
	if err == nil || !strings.Contains(err.Error(), `"gemma"`) || got.arch != "gemma" || got.kvBudget != 4*4096*5*32*2*2 {
		t.Errorf("gemma without max_position_embeddings: %+v, %v", got, err)
	}
}
