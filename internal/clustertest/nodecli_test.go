package clustertest

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/demo"
	"github.com/npumesh/npumesh/internal/pki"
)

// TestNodeConfigUpstream runs cluster B (a coordinator and one
// `npumesh node --config`, as processes) whose node serves a model through
// cluster A, another npumesh (`up`), as its upstream server, plus a builtin
// model given with --model. Completions, streams and chat through B give A's
// greedy text; a misnamed upstream model is a 400; when A stops, B stops
// listing the upstream model and keeps serving the builtin one.
func TestNodeConfigUpstream(t *testing.T) {
	bin := Binary(t)
	want := expectedGreedy(t)
	a := Start(t, Options{Nodes: 1})
	dir := t.TempDir()
	modelPath, err := demo.Install(filepath.Join(dir, "models"))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.InitCA(filepath.Join(dir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	lo := []net.IP{net.IPv4(127, 0, 0, 1)}
	for _, id := range []struct {
		name string
		role pki.Role
	}{{"coordinator", pki.RoleCoordinator}, {"gateway", pki.RoleNode}} {
		if _, _, err := ca.EnsureBundle(filepath.Join(dir, id.name), pki.IssueRequest{Name: id.name, Role: id.role, IPs: lo}); err != nil {
			t.Fatal(err)
		}
	}
	cfg := map[string]any{"models": []map[string]any{
		{"id": "stories-up", "backend": "upstream", "upstream": map[string]any{
			"url": a.API + "/v1", "model": "stories260K", "health_interval": "200ms", "token_prompts": true,
		}},
		{"id": "misnamed", "backend": "upstream", "upstream": map[string]any{
			"url": a.API + "/v1", "model": "no-such-model", "health_path": "/healthz",
		}},
	}}
	cfgPath := filepath.Join(dir, "node.json")
	raw, _ := json.MarshalIndent(cfg, "", "  ")
	if err := os.WriteFile(cfgPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}

	api := FreeAddr(t)
	addrFile := filepath.Join(dir, "coordinator.addr")
	start := func(args ...string) *exec.Cmd {
		t.Helper()
		cmd := exec.Command(bin, args...)
		var log syncBuffer
		cmd.Stdout, cmd.Stderr = &log, &log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Signal(os.Interrupt)
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(20 * time.Second):
				cmd.Process.Kill()
				<-done
			}
			if t.Failed() {
				t.Logf("%s log:\n%s", args[0], log.String())
			}
		})
		return cmd
	}
	start("coordinator", "--listen", "127.0.0.1:0", "--api", api, "--tls-dir", filepath.Join(dir, "coordinator"), "--addr-file", addrFile)
	var grpcAddr string
	for deadline := time.Now().Add(20 * time.Second); grpcAddr == ""; time.Sleep(50 * time.Millisecond) {
		if b, err := os.ReadFile(addrFile); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, "grpc="); ok {
					grpcAddr = v
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("coordinator did not write its address file")
		}
	}
	start("node", "--coordinator", grpcAddr, "--tls-dir", filepath.Join(dir, "gateway"), "--metrics-listen", "",
		"--config", cfgPath, "--model", "tiny="+modelPath, "--threads", "1")
	b := &Cluster{t: t, API: "http://" + api}
	waitModels(t, b, []string{"misnamed", "stories-up", "tiny"}, 30*time.Second)

	ctx := context.Background()
	status, hdr, body, err := b.Post(ctx, "/v1/completions", map[string]any{"model": "stories-up", "prompt": "", "max_tokens": 200, "temperature": 0})
	if err != nil || status != 200 {
		t.Fatalf("completion through the upstream: status %d err %v body %s", status, err, body)
	}
	var cr completion
	if err := json.Unmarshal(body, &cr); err != nil {
		t.Fatal(err)
	}
	if got := cr.Choices[0].Text; !strings.HasPrefix(got, want) {
		t.Fatalf("greedy text through the upstream differs\ngot:  %q\nwant: %q", got, want)
	}
	if cr.Usage.PromptTokens != 1 || cr.Usage.CompletionTokens != 200 || cr.Choices[0].FinishReason != "length" {
		t.Errorf("usage %+v finish %q, want 1+200 tokens and finish length", cr.Usage, cr.Choices[0].FinishReason)
	}
	if hdr.Get("X-Npumesh-Node") != "gateway" {
		t.Errorf("X-Npumesh-Node = %q, want gateway", hdr.Get("X-Npumesh-Node"))
	}

	text, usage, _ := streamCompletion(t, b, map[string]any{
		"model": "stories-up", "prompt": "", "max_tokens": 200, "temperature": 0,
		"stream": true, "stream_options": map[string]any{"include_usage": true},
	})
	if text != cr.Choices[0].Text || usage["completion_tokens"] != 200 {
		t.Fatalf("stream: usage %v, text equal to the non-streamed one: %v", usage, text == cr.Choices[0].Text)
	}

	// A token-id prompt passes through (token_prompts is set).
	status, _, body, _ = b.Post(ctx, "/v1/completions", map[string]any{"model": "stories-up", "prompt": []int{1}, "max_tokens": 200, "temperature": 0})
	if status != 200 || !bytes.Contains(body, []byte(jsonString(t, want[:40]))) {
		t.Fatalf("token prompt: status %d body %.300s", status, body)
	}

	chat := map[string]any{"messages": []map[string]string{{"role": "user", "content": "Once upon a time"}}, "max_tokens": 30, "temperature": 0}
	chatText := func(c *Cluster, model string) string {
		t.Helper()
		chat["model"] = model
		status, _, body, err := c.Post(ctx, "/v1/chat/completions", chat)
		if err != nil || status != 200 {
			t.Fatalf("chat on %s: status %d err %v body %s", model, status, err, body)
		}
		var r struct {
			Choices []struct {
				Message struct{ Content string } `json:"message"`
			} `json:"choices"`
		}
		json.Unmarshal(body, &r)
		if len(r.Choices) != 1 || r.Choices[0].Message.Content == "" {
			t.Fatalf("chat on %s: body %s", model, body)
		}
		return r.Choices[0].Message.Content
	}
	if got, direct := chatText(b, "stories-up"), chatText(a, "stories260K"); got != direct {
		t.Fatalf("chat through the upstream = %q, want A's own answer %q", got, direct)
	}

	status, _, body, _ = b.Post(ctx, "/v1/completions", map[string]any{"model": "misnamed", "prompt": "hi", "max_tokens": 5})
	if status != 400 || !bytes.Contains(body, []byte("404")) || !bytes.Contains(body, []byte("no-such-model")) {
		t.Fatalf("misnamed upstream model: status %d body %s, want 400 naming the upstream's 404", status, body)
	}

	// A goes away: B stops listing its model and keeps the builtin one.
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	waitModels(t, b, []string{"tiny"}, 10*time.Second)
	status, _, body, _ = b.Post(ctx, "/v1/completions", map[string]any{"model": "stories-up", "prompt": "hi", "max_tokens": 5})
	if status == 200 {
		t.Fatalf("stories-up answered 200 with its upstream down: %s", body)
	}
	status, _, body, _ = b.Post(ctx, "/v1/completions", map[string]any{"model": "tiny", "prompt": "", "max_tokens": 200, "temperature": 0})
	if status != 200 || !bytes.Contains(body, []byte(jsonString(t, want[:40]))) {
		t.Fatalf("builtin model beside the upstream one: status %d body %.300s", status, body)
	}
}

func jsonString(t *testing.T, s string) string {
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Trim(string(b), `"`)
}

// waitModels waits until GET /v1/models lists exactly want.
func waitModels(t *testing.T, c *Cluster, want []string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var got []string
	for {
		got = got[:0]
		if resp, err := http.Get(c.API + "/v1/models"); err == nil {
			var list struct {
				Data []struct {
					ID string `json:"id"`
				} `json:"data"`
			}
			json.NewDecoder(resp.Body).Decode(&list)
			resp.Body.Close()
			for _, m := range list.Data {
				got = append(got, m.ID)
			}
			slices.Sort(got)
			if slices.Equal(got, want) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("models %v, want %v within %s", got, want, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestNodeConfigErrors checks that a bad node config stops the node with
// one line naming the file, the entry and what to fix.
func TestNodeConfigErrors(t *testing.T) {
	bin := Binary(t)
	dir := t.TempDir()
	ca, err := pki.InitCA(filepath.Join(dir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ca.EnsureBundle(filepath.Join(dir, "n"), pki.IssueRequest{Name: "n", Role: pki.RoleNode}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, config string
		want         []string
	}{
		{"syntax", "{\"models\": [\n  {\"id\": \"a\",}\n]}", []string{"line 2, column", "invalid character"}},
		{"unknown field", `{"models": [{"id": "a", "pth": "/m.gguf"}]}`, []string{`unknown field "pth"`}},
		{"wrong type", `{"models": [{"id": 7}]}`, []string{"line 1", "string"}},
		{"no models", `{"models": []}`, []string{"no models"}},
		{"unknown backend", `{"models": [{"id": "a", "backend": "tpu"}]}`, []string{"models[0] (a)", `unknown backend "tpu"`}},
		{"builtin without path", `{"models": [{"id": "a"}]}`, []string{"models[0] (a)", `"path"`}},
		{"upstream without url", `{"models": [{"id": "a", "backend": "upstream", "upstream": {}}]}`, []string{"models[0] (a)", "upstream.url"}},
		{"upstream without id", `{"models": [{"backend": "upstream", "upstream": {"url": "http://127.0.0.1:1/v1"}}]}`, []string{`"id" is required`}},
		{"bad url", `{"models": [{"id": "a", "backend": "upstream", "upstream": {"url": "localhost:8000"}}]}`, []string{"http(s)"}},
		{"bad duration", `{"models": [{"id": "a", "backend": "upstream", "upstream": {"url": "http://127.0.0.1:1/v1", "health_interval": "soon"}}]}`, []string{"health_interval", "2s"}},
		{"unset key env", `{"models": [{"id": "a", "backend": "upstream", "upstream": {"url": "http://127.0.0.1:1/v1", "api_key_env": "NPUMESH_TEST_UNSET_KEY"}}]}`, []string{"NPUMESH_TEST_UNSET_KEY", "unset"}},
		{"duplicate id", `{"models": [{"id": "a", "path": "/x.gguf"}, {"id": "a", "path": "/y.gguf"}]}`, []string{"models[1] (a)", "twice"}},
		{"missing model file", `{"models": [{"id": "a", "path": "missing.gguf"}]}`, []string{"missing.gguf"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "node.json")
			if err := os.WriteFile(path, []byte(tc.config), 0o600); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(bin, "node", "--coordinator", "127.0.0.1:1", "--tls-dir", filepath.Join(dir, "n"), "--metrics-listen", "", "--config", path)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err == nil {
				t.Fatal("exit 0, want a failure")
			}
			msg := strings.TrimRight(stderr.String(), "\n")
			if strings.Count(msg, "\n") != 0 || !strings.HasPrefix(msg, "npumesh: ") {
				t.Fatalf("stderr is not one npumesh: line:\n%s", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("stderr %q does not mention %q", msg, w)
				}
			}
		})
	}
}

// TestNodeInfo runs `npumesh node info` on this machine.
func TestNodeInfo(t *testing.T) {
	bin := Binary(t)
	out, err := exec.Command(bin, "node", "info").CombinedOutput()
	if err != nil {
		t.Fatalf("node info: %v\n%s", err, out)
	}
	text := string(out)
	for _, w := range []string{"CPU ", "Memory ", "GiB total", "Accelerators", "Telemetry"} {
		if !strings.Contains(text, w) {
			t.Errorf("node info output lacks %q:\n%s", w, text)
		}
	}
	t.Logf("node info:\n%s", text)

	out, err = exec.Command(bin, "node", "info", "--json").Output()
	if err != nil {
		t.Fatalf("node info --json: %v", err)
	}
	var v struct {
		Hardware struct {
			CPU struct {
				Model   string `json:"model"`
				Logical int    `json:"logical_cores"`
			} `json:"cpu"`
			Memory struct {
				Total uint64 `json:"total_bytes"`
			} `json:"memory"`
			Accelerators []json.RawMessage `json:"accelerators"`
		} `json:"hardware"`
		Telemetry struct {
			Window       float64 `json:"window_seconds"`
			Temperatures []struct {
				Celsius float64 `json:"celsius"`
			} `json:"temperatures"`
		} `json:"telemetry"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("node info --json: %v\n%s", err, out)
	}
	h := v.Hardware
	if h.CPU.Model == "" || h.CPU.Logical <= 0 || h.Memory.Total == 0 || h.Accelerators == nil {
		t.Errorf("hardware %+v: want a CPU model, cores, memory and an accelerator list", h)
	}
	if !strings.Contains(text, h.CPU.Model) {
		t.Errorf("text output does not name the CPU %q", h.CPU.Model)
	}
	if v.Telemetry.Window < 0.4 {
		t.Errorf("telemetry window %.3fs, want the two samples ~0.5s apart", v.Telemetry.Window)
	}
	// Temperatures: required where the kernel exposes a readable sensor.
	zones, _ := filepath.Glob("/sys/class/thermal/thermal_zone*/temp")
	hw, _ := filepath.Glob("/sys/class/hwmon/hwmon*/temp*_input")
	readable := false
	for _, p := range append(zones, hw...) {
		if b, err := os.ReadFile(p); err == nil && len(bytes.TrimSpace(b)) > 0 {
			readable = true
		}
	}
	switch {
	case readable && len(v.Telemetry.Temperatures) == 0:
		t.Error("this machine has readable temperature sensors but node info shows none")
	case !readable:
		t.Log("this machine exposes no temperature sensor (no /sys/class/thermal zone or hwmon temp); none expected")
	}
}
