package node

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/modelstore"
	"github.com/npumesh/npumesh/internal/synth"
	"github.com/npumesh/npumesh/internal/testdata"
)

func TestPickSourceByThroughput(t *testing.T) {
	p := &puller{rates: map[string]float64{}}
	srcs := []source{{node: "peer-a", addr: "a"}, {node: "peer-b", addr: "b"}, {addr: "coord"}}
	banned := map[string]time.Time{}
	// Unmeasured sources are tried first, in the coordinator's order.
	for _, want := range []string{"peer-a", "peer-b", "coordinator"} {
		got, ok := p.pickSource(srcs, banned)
		if !ok || got.key() != want {
			t.Fatalf("pick = %q, want %q", got.key(), want)
		}
		p.measure(got, map[string]int64{"peer-a": 10 << 20, "peer-b": 40 << 20, "coordinator": 20 << 20}[want], time.Second)
	}
	if got, _ := p.pickSource(srcs, banned); got.key() != "peer-b" {
		t.Fatalf("pick = %q, want the fastest, peer-b", got.key())
	}
	// A banned source is skipped until its ban ends.
	banned["peer-b"] = time.Now().Add(time.Minute)
	if got, _ := p.pickSource(srcs, banned); got.key() != "coordinator" {
		t.Fatalf("pick with peer-b banned = %q, want coordinator", got.key())
	}
	banned["peer-b"] = time.Now().Add(-time.Second)
	if got, _ := p.pickSource(srcs, banned); got.key() != "peer-b" {
		t.Fatalf("pick after the ban = %q, want peer-b", got.key())
	}
	// A source that slows down loses its place.
	p.measure(source{node: "peer-b"}, 1<<20, time.Second)
	p.measure(source{node: "peer-b"}, 1<<20, time.Second)
	if got, _ := p.pickSource(srcs, banned); got.key() != "coordinator" {
		t.Fatalf("pick after peer-b slowed = %q, want coordinator", got.key())
	}
}

// storeModel puts the files of the model at path into st as a finished
// pull leaves them (verified chunk by chunk, committed) and returns its
// manifest.
func storeModel(t *testing.T, st *modelstore.Store, name, path string) *modelstore.Manifest {
	t.Helper()
	m, err := modelstore.Build(name, path, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range m.Files {
		file := path
		if m.Format == modelstore.FormatSafetensors {
			file = filepath.Join(path, f.Name)
		}
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		w, err := st.NewWriter(f, m.ChunkSize)
		if err != nil {
			t.Fatal(err)
		}
		for i := range f.Chunks {
			if err := w.WriteChunk(i, data[int64(i)*m.ChunkSize:int64(i)*m.ChunkSize+m.ChunkLen(f, i)]); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// TestPulledSafetensorsLoads: a pulled Hugging Face safetensors directory
// is loaded with the built-in engine like a GGUF file; one the engine
// cannot run ends failed with the engine's reason, for good (its files are
// complete and verified, so loading them again cannot help).
func TestPulledSafetensorsLoads(t *testing.T) {
	src := filepath.Join(testdata.Dir(t, "stories260K"), "stories260K.gguf")
	hf := filepath.Join(t.TempDir(), "stories-hf")
	if err := synth.WriteHFDir(hf, src); err != nil {
		t.Fatal(err)
	}
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
	st, err := modelstore.Open(filepath.Join(t.TempDir(), "store"), 0)
	if err != nil {
		t.Fatal(err)
	}
	p := &puller{
		n:     &Node{log: slog.New(slog.NewTextHandler(io.Discard, nil)), backends: map[string]Backend{}},
		cfg:   PullConfig{Threads: 1},
		store: st, models: map[string]*pullState{}, rates: map[string]float64{}, conns: map[string]*grpc.ClientConn{},
		rate: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "rate"}, []string{"model"}),
	}
	p.n.pull = p
	run := func(name, path string) *pullState {
		m := storeModel(t, st, name, path)
		if m.Format != modelstore.FormatSafetensors {
			t.Fatalf("%s: format %s", path, m.Format)
		}
		s := &pullState{state: "pulling", total: m.Size(), digest: m.Digest(), manifest: m}
		p.models[name] = s
		p.run(context.Background(), s, nil, "")
		return s
	}

	s := run("stories-hf", hf)
	if s.state != "loaded" || s.backend == nil {
		t.Fatalf("state %q reason %q", s.state, s.reason)
	}
	defer s.backend.Close()
	if i := s.backend.Info(); i.ID != "stories-hf" || i.Arch != "llama" || i.Backend != "builtin" || i.Parameters != 292800 {
		t.Errorf("info %+v", i)
	}
	if mi := p.n.pulledModelInfos(); len(mi) != 1 || mi[0].GetState() != "loaded" || mi[0].GetArch() != "llama" || mi[0].GetProgress() != 1 {
		t.Errorf("heartbeat model infos %v", mi)
	}
	var text strings.Builder
	if _, err := s.backend.Generate(context.Background(), Request{Request: engine.Request{MaxTokens: 12}}, func(d engine.Delta) error {
		text.WriteString(d.Text)
		return nil
	}); err != nil || !strings.HasPrefix(text.String(), "Once upon a time") {
		t.Errorf("generate: %q, %v", text.String(), err)
	}

	s = run("gemma-hf", gemma)
	if s.state != "failed" || s.backend != nil || !s.retryAt.IsZero() {
		t.Fatalf("unsupported model: state %q backend %v retry at %v", s.state, s.backend, s.retryAt)
	}
	if !strings.Contains(s.reason, `model_type "gemma"`) || !strings.Contains(s.reason, "llama, qwen2") {
		t.Errorf("reason %q does not carry the engine's", s.reason)
	}
	t.Logf("reason: %s", s.reason)
}
