package node

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/npumesh/npumesh/internal/accel"
	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/pki"
)

func TestNodeMetricNamesLint(t *testing.T) {
	ca, err := pki.InitCA(filepath.Join(t.TempDir(), "ca"))
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := ca.EnsureBundle(filepath.Join(t.TempDir(), "n"), pki.IssueRequest{Name: "n1", Role: pki.RoleNode})
	if err != nil {
		t.Fatal(err)
	}
	// The fixture of an Intel laptop gives temperatures and power.
	root, err := filepath.Abs("../accel/testdata/intel-mtl-laptop")
	if err != nil {
		t.Fatal(err)
	}
	be, err := LoadBuiltin(filepath.Join("..", "demo", "stories260K.gguf"), engine.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(Config{Coordinators: []string{"127.0.0.1:1"}, TLS: b, SysRoot: root, Backends: []Backend{be}})
	if err != nil {
		t.Fatal(err)
	}
	n.sampler = accel.NewSampler(root, accel.DefaultInterval)
	n.metrics.requests.WithLabelValues("m", "ok").Inc()
	n.metrics.promptToks.WithLabelValues("m").Add(3)
	n.metrics.outToks.WithLabelValues("m").Add(5)
	mfs, err := n.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) < 5 {
		t.Fatalf("only %d metric families", len(mfs))
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, want := range []string{"npumesh_node_kv_blocks", "npumesh_node_prefix_cache_hits_total", "npumesh_node_requests_total", "npumesh_node_in_flight_requests"} {
		if !names[want] {
			t.Errorf("metric %s is missing", want)
		}
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "npumesh_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
}
