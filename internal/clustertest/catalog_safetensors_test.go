package clustertest

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/synth"
	"github.com/npumesh/npumesh/internal/testdata"
)

// stModel is one model of `npumesh model ls --json`, with the fields this
// test checks.
type stModel struct {
	Name          string `json:"name"`
	Format        string `json:"format"`
	Arch          string `json:"arch"`
	KVBudgetBytes int64  `json:"kv_budget_bytes"`
	Status        []struct {
		Node   string `json:"node"`
		State  string `json:"state"`
		Reason string `json:"reason"`
	} `json:"replica_status"`
}

func stModelLS(t *testing.T, dataDir, name string) *stModel {
	t.Helper()
	out, err := exec.Command(Binary(t), "model", "ls", "--json", "--data-dir", dataDir).Output()
	if err != nil {
		t.Fatalf("npumesh model ls: %v", err)
	}
	var ms []stModel
	if err := json.Unmarshal(out, &ms); err != nil {
		t.Fatalf("model ls --json: %v\n%s", err, out)
	}
	for i := range ms {
		if ms[i].Name == name {
			return &ms[i]
		}
	}
	return nil
}

// TestModelSafetensorsUp: a Hugging Face safetensors directory (stories260K
// converted from its GGUF) added to the catalog of a 3-node cluster (real
// processes) with 2 replicas is pulled and loaded by the built-in engine on
// 2 nodes and serves upstream's greedy text; a safetensors model whose
// architecture the engine does not run ends failed on every node with the
// engine's reason.
func TestModelSafetensorsUp(t *testing.T) {
	src := filepath.Join(testdata.Dir(t, "stories260K"), "stories260K.gguf")
	dir := filepath.Join(t.TempDir(), "stories-hf")
	if err := synth.WriteHFDir(dir, src); err != nil {
		t.Fatal(err)
	}
	// What the engine allocates for the model by default, which the CLI
	// sends as the KV budget (whole blocks: 4 contexts of 512 positions).
	local, err := engine.Load(dir, engine.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	wantKV := local.KVBudgetBytes()
	local.Close()

	c := Start(t, Options{Nodes: 3})
	out, err := exec.Command(Binary(t), "model", "add", dir, "--replicas", "2", "--data-dir", c.DataDir, "--wait", "90s").CombinedOutput()
	if err != nil {
		t.Fatalf("model add: %v\n%s", err, out)
	}
	t.Logf("model add:\n%s", out)
	if !strings.Contains(string(out), "added stories-hf: safetensors") || strings.Contains(string(out), "warning") {
		t.Errorf("model add output:\n%s", out)
	}
	m := stModelLS(t, c.DataDir, "stories-hf")
	if m == nil {
		t.Fatal("stories-hf not in model ls")
	}
	var loaded []string
	for _, r := range m.Status {
		if r.State == "loaded" {
			loaded = append(loaded, r.Node)
		}
	}
	if len(loaded) != 2 || m.Format != "safetensors" || m.Arch != "llama" || m.KVBudgetBytes != wantKV {
		t.Fatalf("model ls: %+v; want loaded on 2 nodes, safetensors, llama, KV budget %d", m, wantKV)
	}
	// Each of them holds the directory, verified, as the engine opens it
	// (`up` gives node N the store DATA-DIR/nodes/N/models).
	for _, n := range loaded {
		for _, f := range []string{"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"} {
			if got, want := fileSHA(t, filepath.Join(c.DataDir, "nodes", n, "models", "models", "stories-hf", f)), fileSHA(t, filepath.Join(dir, f)); got != want {
				t.Errorf("%s: %s has sha256 %s, want %s", n, f, got, want)
			}
		}
		checkStore(t, filepath.Join(c.DataDir, "nodes", n, "models"), 4)
	}

	// Greedy from an empty prompt: the tokenizer.json post-processor adds
	// BOS, as the GGUF tokenizer does, so the text is upstream's.
	want := expectedGreedy(t)
	served := map[string]bool{}
	for range 4 {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		code, hdr, body, err := c.Post(ctx, "/v1/completions", map[string]any{"model": "stories-hf", "prompt": "", "max_tokens": 200, "temperature": 0})
		cancel()
		if err != nil || code != http.StatusOK {
			t.Fatalf("completion on stories-hf: %v %d %s", err, code, body)
		}
		var cr completion
		if err := json.Unmarshal(body, &cr); err != nil {
			t.Fatal(err)
		}
		if got := cr.Choices[0].Text; !strings.HasPrefix(got, want) {
			t.Fatalf("greedy text differs from upstream\ngot:  %q\nwant: %q", got, want)
		}
		if cr.Usage.CompletionTokens != 200 || cr.Choices[0].FinishReason != "length" {
			t.Errorf("usage %+v finish %q, want 200 tokens and length", cr.Usage, cr.Choices[0].FinishReason)
		}
		node := hdr.Get("X-Npumesh-Node")
		if !slices.Contains(loaded, node) {
			t.Fatalf("served by %q, want one of %v", node, loaded)
		}
		served[node] = true
	}
	t.Logf("served by %v", served)

	// An architecture the engine does not run: the CLI warns, and every
	// node that gets it (a failed replica is replaced by another node)
	// reports it failed with the engine's reason.
	gemma := filepath.Join(t.TempDir(), "gemma-hf")
	if err := synth.WriteHFDir(gemma, src); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(gemma, "config.json")
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, bytes.Replace(b, []byte(`"model_type": "llama"`), []byte(`"model_type": "gemma"`), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(Binary(t), "model", "add", gemma, "--replicas", "1", "--data-dir", c.DataDir).CombinedOutput()
	if err != nil {
		t.Fatalf("model add gemma-hf: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "warning: the built-in engine cannot read this model") || !strings.Contains(string(out), `"gemma"`) {
		t.Errorf("model add of an unsupported architecture does not warn:\n%s", out)
	}
	var g *stModel
	if !WaitFor(90*time.Second, func() bool {
		g = stModelLS(t, c.DataDir, "gemma-hf")
		failed := 0
		for _, r := range g.Status {
			if r.State == "failed" && strings.Contains(r.Reason, `model_type "gemma"`) && strings.Contains(r.Reason, "llama, qwen2") {
				failed++
			}
		}
		return failed == 3
	}) {
		t.Fatalf("gemma-hf not failed on all 3 nodes with the engine's reason: %+v", g)
	}
	ls, _ := exec.Command(Binary(t), "model", "ls", "--data-dir", c.DataDir).CombinedOutput()
	t.Logf("model ls:\n%s", ls)
	// The good model is unaffected.
	if m := stModelLS(t, c.DataDir, "stories-hf"); m == nil {
		t.Fatal("stories-hf left the catalog")
	} else {
		n := 0
		for _, r := range m.Status {
			if r.State == "loaded" {
				n++
			}
		}
		if n != 2 {
			t.Errorf("stories-hf after gemma-hf: %+v", m)
		}
	}
}
