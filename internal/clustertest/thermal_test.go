package clustertest

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/demo"
	"github.com/npumesh/npumesh/internal/node"
)

// thermalRoot writes a minimal /sys with one thermal zone at celsius and a
// passive trip point at 80 °C, as the kernel's thermal sysfs ABI lays it out.
func thermalRoot(t *testing.T, celsius int) string {
	root := t.TempDir()
	z := filepath.Join(root, "sys", "class", "thermal", "thermal_zone0")
	if err := os.MkdirAll(z, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{
		"type": "x86_pkg_temp", "temp": fmt.Sprint(celsius * 1000),
		"trip_point_0_type": "passive", "trip_point_0_temp": "80000",
	} {
		if err := os.WriteFile(filepath.Join(z, name), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// TestThermalThrottlingGetsLessWork runs two nodes whose telemetry (read
// from an injected sysfs root) says one is cool and one is throttling at a
// passive trip point. Under the same load, the router must give the hot node
// a clearly smaller share. Why: capability-aware routing counts queued work
// in time, (queued+1)/speed, and a throttling node runs at a quarter speed,
// so it gets a request only when the cool node has 4 or more queued.
//
// The load is 4 concurrent clients. Both nodes share this machine's cores and
// the "hot" one is not really slower, so at higher concurrency it would win
// back share by finishing its short queue faster, which a node that is really
// throttled would not; 4 clients keep the test about the routing decision.
func TestThermalThrottlingGetsLessWork(t *testing.T) {
	model, err := demo.Install(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	roots := []string{thermalRoot(t, 45), thermalRoot(t, 95)}
	p := startInProcessWith(t, 2, model, func(i int, cfg *node.Config) {
		cfg.SysRoot = roots[i]
		cfg.TelemetryInterval = 100 * time.Millisecond
	})
	// Wait until the coordinator has the hot node's telemetry.
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(p.api + "/metrics")
		if err == nil {
			b := new(strings.Builder)
			_, _ = fmt.Fprint(b, readAll(resp))
			if strings.Contains(b.String(), `npumesh_node_throttled{node="node-2"} 1`) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the coordinator never saw node-2 throttling")
		}
		time.Sleep(50 * time.Millisecond)
	}
	const total, conc = 80, 4
	var mu sync.Mutex
	share := map[string]int{}
	var wg sync.WaitGroup
	sem := make(chan struct{}, conc)
	for i := 0; i < total; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			resp, err := http.Post(p.api+"/v1/completions", "application/json", strings.NewReader(`{"model":"stories260K","prompt":"Once","max_tokens":48}`))
			if err != nil {
				t.Error(err)
				return
			}
			readAll(resp)
			mu.Lock()
			share[resp.Header.Get("X-Npumesh-Node")]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	hot := float64(share["node-2"]) / total
	t.Logf("%d requests at concurrency %d: cool node-1 served %d, throttling node-2 served %d (%.0f%%)", total, conc, share["node-1"], share["node-2"], 100*hot)
	if share["node-1"]+share["node-2"] != total {
		t.Fatalf("shares %v do not add up to %d", share, total)
	}
	if hot >= 0.25 {
		t.Fatalf("the throttling node served %.0f%% of the load; want clearly less than the cool node (< 25%%)", 100*hot)
	}
}

func readAll(resp *http.Response) string {
	defer resp.Body.Close()
	b := new(strings.Builder)
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String()
		}
	}
}
