package coordinator

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/npumesh/npumesh/internal/pki"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// TestMetricNamesLint runs client_golang's promlint over every metric the
// coordinator exposes, with each labelled family populated.
func TestMetricNamesLint(t *testing.T) {
	ca, err := pki.InitCA(filepath.Join(t.TempDir(), "ca"))
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := ca.EnsureBundle(filepath.Join(t.TempDir(), "c"), pki.IssueRequest{Name: "c", Role: pki.RoleCoordinator})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{Listen: "127.0.0.1:0", API: "127.0.0.1:0", TLS: b})
	if err != nil {
		t.Fatal(err)
	}
	m := testMember("n1", 1, false, "m")
	m.telemetry = &pb.Telemetry{MaxTemperatureCelsius: 55, PowerWatts: 12}
	c.reg.members["n1"] = m
	obs := c.observe("m")
	obs.node = "n1"
	obs.token()
	obs.token()
	obs.done(&pb.Final{Usage: &pb.Usage{PromptTokens: 3, CompletionTokens: 2}}, nil)
	c.metrics.retries.WithLabelValues("m").Inc()
	c.metrics.migrations.WithLabelValues("m").Inc()

	mfs, err := c.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, want := range []string{"npumesh_requests_total", "npumesh_time_to_first_token_seconds", "npumesh_inter_token_latency_seconds",
		"npumesh_completion_tokens_total", "npumesh_in_flight_requests", "npumesh_node_temperature_celsius", "npumesh_node_power_watts",
		"npumesh_retries_total", "npumesh_migrations_total", "npumesh_certificate_expiry_timestamp_seconds", "npumesh_nodes"} {
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
