package node

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/npumesh/npumesh/internal/accel"
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
	n, err := New(Config{Coordinators: []string{"127.0.0.1:1"}, TLS: b, SysRoot: root})
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
