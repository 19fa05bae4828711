package clustertest

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/testdata"
)

// promServer is a real Prometheus server started by a test.
type promServer struct {
	URL string // http://127.0.0.1:PORT
	log *syncBuffer
}

// startPrometheus runs Debian's prometheus on a free loopback port with a
// temporary config and storage, scraping the given loopback targets every
// second. The config has nothing else (no remote write, no alertmanager,
// no service discovery), so it reaches nothing but those targets. The
// server is stopped at test cleanup.
func startPrometheus(t *testing.T, targets ...string) *promServer {
	t.Helper()
	exe, err := exec.LookPath("prometheus")
	if err != nil {
		testdata.Missing(t, "prometheus, the server, for the metrics test (apt-get install prometheus)")
	}
	for _, tg := range targets {
		if !strings.HasPrefix(tg, "127.") {
			t.Fatalf("scrape target %q is not on loopback", tg)
		}
	}
	dir := t.TempDir()
	quoted := make([]string, len(targets))
	for i, tg := range targets {
		quoted[i] = strconv.Quote(tg)
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: npumesh
    metrics_path: /metrics
    scheme: http
    static_configs:
      - targets: [%s]
`, strings.Join(quoted, ", "))
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := FreeAddr(t)
	p := &promServer{URL: "http://" + addr, log: &syncBuffer{}}
	cmd := exec.Command(exe,
		"--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--storage.tsdb.retention.time=1h",
		"--log.level=warn",
	)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = p.log, p.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} // never outlive the test binary
	if err := cmd.Start(); err != nil {
		t.Fatalf("start prometheus: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("prometheus log:\n%s", p.log.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(p.URL + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case <-done:
			t.Fatalf("prometheus exited before it was ready:\n%s", p.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready within 30s (last error %v):\n%s", err, p.log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// query runs an instant PromQL query and returns the first sample's value,
// with ok false when the result is empty.
func (p *promServer) query(q string) (v float64, ok bool, err error) {
	resp, err := http.Get(p.URL + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return 0, false, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, false, err
	}
	if r.Status != "success" {
		return 0, false, fmt.Errorf("query %s: %s", q, r.Error)
	}
	if len(r.Data.Result) == 0 {
		return 0, false, nil
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	v, err = strconv.ParseFloat(s, 64)
	return v, err == nil, err
}

// waitQuery polls q until cond holds for its value.
func (p *promServer) waitQuery(t *testing.T, q string, timeout time.Duration, cond func(float64) bool) float64 {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		v, ok, err := p.query(q)
		if err == nil && ok && cond(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("PromQL %s: no acceptable value within %s (last %v, present %v, err %v)", q, timeout, v, ok, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// TestPrometheusScrapesCoordinator runs a real Prometheus against a 2-node
// cluster under a bounded load and checks the request counter and the TTFT
// histogram through PromQL, as an operator's dashboard would query them.
func TestPrometheusScrapesCoordinator(t *testing.T) {
	if _, err := exec.LookPath("prometheus"); err != nil {
		testdata.Missing(t, "prometheus, the server, for the metrics test (apt-get install prometheus)")
	}
	c := Start(t, Options{Nodes: 2})
	target := strings.TrimPrefix(c.API, "http://")
	p := startPrometheus(t, target)

	// Scrapes work before the load starts, so rate() sees it begin.
	p.waitQuery(t, `up{job="npumesh"}`, 20*time.Second, func(v float64) bool { return v == 1 })

	// 40 requests, 4 at a time, paced over a few seconds.
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				status, _, body, err := c.Post(ctx, "/v1/completions", map[string]any{"model": c.Model, "prompt": "Once upon a time", "max_tokens": 32, "temperature": 0.8, "seed": w*10 + i})
				cancel()
				if err != nil || status != http.StatusOK {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("status %d err %v body %s", status, err, body))
					mu.Unlock()
				}
				time.Sleep(400 * time.Millisecond) // spread over several scrapes
			}
		}()
	}
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d of 40 requests failed: %s", len(failures), failures[0])
	}
	t.Logf("40 requests in %s", time.Since(start).Round(time.Millisecond))

	total := p.waitQuery(t, `sum(npumesh_requests_total)`, 20*time.Second, func(v float64) bool { return v >= 40 })
	p90 := p.waitQuery(t, `histogram_quantile(0.9, sum(rate(npumesh_time_to_first_token_seconds_bucket[30s])) by (le))`, 20*time.Second,
		func(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) && v > 0 })
	t.Logf("PromQL: sum(npumesh_requests_total) = %v, TTFT p90 over 30s = %.4fs", total, p90)
	if p90 > 30 {
		t.Errorf("TTFT p90 = %vs, want under the largest bucket (the load is tiny)", p90)
	}

	// Prometheus scrapes what the config names and nothing else.
	resp, err := http.Get(p.URL + "/api/v1/targets")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var targets struct {
		Data struct {
			Active []struct {
				ScrapeURL string `json:"scrapeUrl"`
				Health    string `json:"health"`
			} `json:"activeTargets"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&targets); err != nil {
		t.Fatal(err)
	}
	if n := len(targets.Data.Active); n != 1 || targets.Data.Active[0].ScrapeURL != c.API+"/metrics" || targets.Data.Active[0].Health != "up" {
		t.Errorf("active targets = %+v, want exactly %s/metrics, up", targets.Data.Active, c.API)
	}
}
