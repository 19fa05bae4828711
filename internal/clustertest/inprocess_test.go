package clustertest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/coordinator"
	"github.com/npumesh/npumesh/internal/demo"
	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/node"
	"github.com/npumesh/npumesh/internal/pki"
)

// inProcess runs a coordinator and n nodes in this process, so the race
// detector sees the coordinator and node code (the process tests run the
// shipped binary, built without it).
type inProcess struct {
	api    string
	cancel []context.CancelFunc
	done   []chan error
}

func startInProcess(t *testing.T, nodes int, modelPath string) *inProcess {
	t.Helper()
	return startInProcessWith(t, nodes, modelPath, func(int, *node.Config) {})
}

// startInProcessWith lets the test adjust each node's config (by index).
func startInProcessWith(t testing.TB, nodes int, modelPath string, adjust func(i int, cfg *node.Config)) *inProcess {
	t.Helper()
	return startInProcessOpts(t, inProcessOptions{nodes: nodes, model: modelPath, node: adjust})
}

// inProcessOptions configure startInProcessOpts.
type inProcessOptions struct {
	nodes int
	model string
	// engine is each node's engine options; Threads 0 means 1.
	engine engine.Options
	// node and coord, when set, adjust each node's config (by index) and
	// the coordinator's.
	node  func(i int, cfg *node.Config)
	coord func(cfg *coordinator.Config)
}

func startInProcessOpts(t testing.TB, o inProcessOptions) *inProcess {
	t.Helper()
	nodes, modelPath := o.nodes, o.model
	if o.engine.Threads == 0 {
		o.engine.Threads = 1
	}
	dir := t.TempDir()
	ca, err := pki.InitCA(filepath.Join(dir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(&testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	lo := []net.IP{net.IPv4(127, 0, 0, 1)}
	cb, _, err := ca.EnsureBundle(filepath.Join(dir, "coord"), pki.IssueRequest{Name: "coordinator", Role: pki.RoleCoordinator, IPs: lo})
	if err != nil {
		t.Fatal(err)
	}
	ccfg := coordinator.Config{Listen: "127.0.0.1:0", API: "127.0.0.1:0", TLS: cb, Logger: log, HeartbeatInterval: 200 * time.Millisecond}
	if o.coord != nil {
		o.coord(&ccfg)
	}
	co, err := coordinator.New(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr, apiAddr, err := co.Listen()
	if err != nil {
		t.Fatal(err)
	}
	p := &inProcess{api: "http://" + apiAddr.String()}
	run := func(f func(ctx context.Context) error) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- f(ctx) }()
		p.cancel = append(p.cancel, cancel)
		p.done = append(p.done, done)
	}
	run(co.Run)
	for i := 0; i < nodes; i++ {
		name := fmt.Sprintf("node-%d", i+1)
		nb, _, err := ca.EnsureBundle(filepath.Join(dir, name), pki.IssueRequest{Name: name, Role: pki.RoleNode, IPs: lo})
		if err != nil {
			t.Fatal(err)
		}
		b, err := node.LoadBuiltin(modelPath, o.engine)
		if err != nil {
			t.Fatal(err)
		}
		cfg := node.Config{Listen: "127.0.0.1:0", Coordinators: []string{grpcAddr.String()}, TLS: nb, Backends: []node.Backend{b}, Logger: log.With("n", name)}
		if o.node != nil {
			o.node(i, &cfg)
		}
		n, err := node.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		run(n.Run)
	}
	t.Cleanup(p.stop)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if got := p.nodeCount(t); got == nodes {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d nodes did not register", nodes)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p
}

// stop cancels nodes first, then the coordinator, and waits for every Run.
func (p *inProcess) stop() {
	for i := len(p.cancel) - 1; i >= 0; i-- {
		p.cancel[i]()
		<-p.done[i]
	}
	p.cancel, p.done = nil, nil
}

func (p *inProcess) nodeView(t testing.TB) []map[string]any {
	resp, err := http.Get(p.api + "/api/v1/nodes")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v struct {
		Nodes []map[string]any `json:"nodes"`
	}
	json.NewDecoder(resp.Body).Decode(&v)
	return v.Nodes
}

func (p *inProcess) nodeCount(t testing.TB) int { return len(p.nodeView(t)) }

type testWriter struct{ t testing.TB }

func (w *testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func TestInProcessConcurrentAndCancel(t *testing.T) {
	model, err := demo.Install(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p := startInProcess(t, 2, model)
	want := expectedGreedy(t)

	// Concurrent streamed and non-streamed requests, all greedy: all equal.
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(stream bool) {
			defer wg.Done()
			body := fmt.Sprintf(`{"model":"stories260K","prompt":"","max_tokens":200,"temperature":0,"stream":%v}`, stream)
			resp, err := http.Post(p.api+"/v1/completions", "application/json", strings.NewReader(body))
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body)
			text := ""
			if stream {
				for _, line := range strings.Split(string(raw), "\n") {
					data, ok := strings.CutPrefix(line, "data: ")
					if !ok || data == "[DONE]" {
						continue
					}
					var ch completion
					json.Unmarshal([]byte(data), &ch)
					if len(ch.Choices) > 0 {
						text += ch.Choices[0].Text
					}
				}
			} else {
				var cr completion
				json.Unmarshal(raw, &cr)
				if len(cr.Choices) > 0 {
					text = cr.Choices[0].Text
				}
			}
			if !strings.HasPrefix(text, want) {
				errs <- fmt.Errorf("stream=%v: status %d: text %q\nbody tail: %s", stream, resp.StatusCode, text, raw[max(0, len(raw)-300):])
			}
		}(i%2 == 0)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// A client that hangs up mid-stream frees the node at once.
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, p.api+"/v1/completions",
		strings.NewReader(`{"model":"stories260K","prompt":"Once","stream":true,"max_tokens":500}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		busy := 0.0
		for _, n := range p.nodeView(t) {
			busy += n["in_flight"].(float64)
		}
		if busy == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("in-flight requests remain 5s after the client hung up: %v", p.nodeView(t))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
