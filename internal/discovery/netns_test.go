package discovery_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/clustertest"
	"github.com/npumesh/npumesh/internal/discovery"
)

// The tests below run this test binary again inside network namespaces
// (clustertest.LAN) as helper processes: an advertiser, or a browser that
// prints what it found as JSON. They are race-instrumented like the test.
const helperEnv = "NPUMESH_DISCOVERY_HELPER"

type helperSpec struct {
	Mode    string            `json:"mode"` // advertise, find, browse
	Service discovery.Service `json:"service"`
	FP      string            `json:"fp"`
	Timeout time.Duration     `json:"timeout"`
	Ifaces  []string          `json:"ifaces"`
}

type helperResult struct {
	GRPC, Enroll, Err string
	NotFound          bool
	Services          []discovery.Service
}

func TestHelperProcess(t *testing.T) {
	raw := os.Getenv(helperEnv)
	if raw == "" {
		return // only a helper process for the netns tests below
	}
	var spec helperSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	b := &discovery.Browser{Interfaces: spec.Ifaces, Logger: log, QueryInterval: 250 * time.Millisecond}
	var res helperResult
	switch spec.Mode {
	case "advertise":
		a, err := discovery.NewAdvertiser(discovery.AdvertiserConfig{Service: spec.Service, Interfaces: spec.Ifaces, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		defer stop()
		if err := a.Start(); err != nil {
			t.Fatal(err)
		}
		fmt.Println("ADVERTISING", a.Instance())
		<-ctx.Done()
		a.Stop()
		a.Stop() // a second Stop returns at once
		fmt.Println("STOPPED")
		return
	case "find":
		ctx, cancel := context.WithTimeout(context.Background(), spec.Timeout)
		defer cancel()
		var err error
		res.GRPC, res.Enroll, err = b.FindCoordinator(ctx, spec.FP)
		if err != nil {
			res.Err, res.NotFound = err.Error(), errors.Is(err, discovery.ErrNotFound)
		}
	case "browse":
		var err error
		if res.Services, err = b.Browse(context.Background(), spec.Timeout); err != nil {
			res.Err = err.Error()
		}
	}
	out, _ := json.Marshal(res)
	fmt.Printf("RESULT %s\n", out)
}

// helper runs one helper process in h's namespace.
func helper(t *testing.T, h *clustertest.Host, spec helperSpec) *clustertest.Process {
	t.Helper()
	raw, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return h.Start(t, []string{helperEnv + "=" + string(raw)}, exe, "-test.run=^TestHelperProcess$", "-test.v")
}

// result runs a find or browse helper to the end and decodes its answer.
func result(t *testing.T, h *clustertest.Host, spec helperSpec) helperResult {
	t.Helper()
	p := helper(t, h, spec)
	if ok, err := p.Exited(spec.Timeout + 15*time.Second); !ok || err != nil {
		t.Fatalf("%s helper: exited %v, %v\n%s", spec.Mode, ok, err, p.Log.String())
	}
	log := p.Log.String()
	if strings.Contains(log, "DATA RACE") {
		t.Fatalf("data race in the %s helper:\n%s", spec.Mode, log)
	}
	for _, line := range strings.Split(log, "\n") {
		if v, ok := strings.CutPrefix(line, "RESULT "); ok {
			var r helperResult
			if err := json.Unmarshal([]byte(v), &r); err != nil {
				t.Fatal(err)
			}
			return r
		}
	}
	t.Fatalf("no RESULT line from the %s helper:\n%s", spec.Mode, log)
	return helperResult{}
}

const (
	fpA = "aaaaaaaa11111111aaaaaaaa11111111aaaaaaaa11111111aaaaaaaa11111111"
	fpC = "cccccccc33333333cccccccc33333333cccccccc33333333cccccccc33333333"
	fpX = "eeeeeeee55555555eeeeeeee55555555eeeeeeee55555555eeeeeeee55555555"
)

// TestNetnsFindCoordinator: host 0 runs a coordinator of cluster A and a
// node (two advertisers sharing UDP 5353), host 2 a coordinator of cluster
// C; host 1 finds each cluster's coordinator by fingerprint, nothing for
// an unknown cluster, and lists all three.
func TestNetnsFindCoordinator(t *testing.T) {
	lan := clustertest.NewLAN(t, 3)
	a, b, c := lan.Hosts[0], lan.Hosts[1], lan.Hosts[2]
	ads := []*clustertest.Process{
		helper(t, a, helperSpec{Mode: "advertise", Service: discovery.Service{Role: discovery.RoleCoordinator, Port: 7070, EnrollPort: 7071, CAFingerprint: fpA, ClusterID: "alpha", Version: "test"}}),
		helper(t, a, helperSpec{Mode: "advertise", Service: discovery.Service{Role: discovery.RoleNode, Port: 7072, CAFingerprint: fpA, Name: "n1", Arch: "riscv64", Accelerators: []string{"intel_vpu"}}}),
		helper(t, c, helperSpec{Mode: "advertise", Service: discovery.Service{Role: discovery.RoleCoordinator, Port: 9090, EnrollPort: 9091, CAFingerprint: fpC, ClusterID: "gamma"}}),
	}
	for _, p := range ads {
		p.WaitLog("ADVERTISING", 20*time.Second)
	}

	start := time.Now()
	r := result(t, b, helperSpec{Mode: "find", FP: fpA, Timeout: 10 * time.Second})
	if r.Err != "" || r.GRPC != a.IP.String()+":7070" || r.Enroll != a.IP.String()+":7071" {
		t.Errorf("FindCoordinator(A) = %q, %q, %q; want %s:7070, %s:7071", r.GRPC, r.Enroll, r.Err, a.IP, a.IP)
	}
	t.Logf("found cluster A's coordinator in %s (helper start included)", time.Since(start).Round(time.Millisecond))
	r = result(t, b, helperSpec{Mode: "find", FP: strings.ToUpper(fpC), Timeout: 10 * time.Second})
	if r.Err != "" || r.GRPC != c.IP.String()+":9090" || r.Enroll != c.IP.String()+":9091" {
		t.Errorf("FindCoordinator(C) = %q, %q, %q; want %s:9090, %s:9091", r.GRPC, r.Enroll, r.Err, c.IP, c.IP)
	}
	r = result(t, b, helperSpec{Mode: "find", FP: fpX, Timeout: 2 * time.Second})
	if !r.NotFound || r.GRPC != "" || !strings.Contains(r.Err, "2 coordinator(s) of other clusters") {
		t.Errorf("FindCoordinator(unknown) = %q, %q, %q; want ErrNotFound naming 2 other clusters", r.GRPC, r.Enroll, r.Err)
	}

	r = result(t, b, helperSpec{Mode: "browse", Timeout: 2 * time.Second})
	if r.Err != "" || len(r.Services) != 3 {
		t.Fatalf("Browse: %q, %d services, want 3: %+v", r.Err, len(r.Services), r.Services)
	}
	co, node, other := r.Services[0], r.Services[2], r.Services[1]
	if co.Role != "coordinator" || co.CAFingerprint != fpA || co.ClusterID != "alpha" || co.Version != "test" || co.GRPCAddr() != a.IP.String()+":7070" {
		t.Errorf("first service %+v, want cluster A's coordinator", co)
	}
	if other.Role != "coordinator" || other.CAFingerprint != fpC || other.EnrollAddr() != c.IP.String()+":9091" {
		t.Errorf("second service %+v, want cluster C's coordinator", other)
	}
	if node.Role != "node" || node.Name != "n1" || node.Arch != "riscv64" || strings.Join(node.Accelerators, ",") != "intel_vpu" || node.GRPCAddr() != a.IP.String()+":7072" {
		t.Errorf("third service %+v, want node n1", node)
	}

	for _, p := range ads {
		if err := p.Stop(); err != nil {
			t.Errorf("advertiser exit: %v\n%s", err, p.Log.String())
		}
		if log := p.Log.String(); !strings.Contains(log, "STOPPED") || strings.Contains(log, "DATA RACE") {
			t.Errorf("advertiser did not stop cleanly:\n%s", log)
		}
	}
}

// TestNetnsLoopback: on a host's loopback alone (--mdns-iface lo), an
// advertiser and a browser in the same namespace find each other.
func TestNetnsLoopback(t *testing.T) {
	lan := clustertest.NewLAN(t, 1)
	h := lan.Hosts[0]
	ad := helper(t, h, helperSpec{Mode: "advertise", Ifaces: []string{"lo"}, Service: discovery.Service{Role: discovery.RoleCoordinator, Port: 7070, EnrollPort: 7071, CAFingerprint: fpA}})
	ad.WaitLog("ADVERTISING", 20*time.Second)
	r := result(t, h, helperSpec{Mode: "find", FP: fpA, Ifaces: []string{"lo"}, Timeout: 10 * time.Second})
	if r.Err != "" || r.GRPC != "127.0.0.1:7070" || r.Enroll != "127.0.0.1:7071" {
		t.Errorf("FindCoordinator on lo = %q, %q, %q; want 127.0.0.1:7070, 127.0.0.1:7071", r.GRPC, r.Enroll, r.Err)
	}
}

// TestNetnsCoordinatorStartsLater: a node that starts looking before its
// coordinator is up finds it once it is (machines booting together).
func TestNetnsCoordinatorStartsLater(t *testing.T) {
	lan := clustertest.NewLAN(t, 2)
	a, b := lan.Hosts[0], lan.Hosts[1]
	raw, _ := json.Marshal(helperSpec{Mode: "find", FP: fpA, Timeout: 15 * time.Second})
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	find := b.Start(t, []string{helperEnv + "=" + string(raw)}, exe, "-test.run=^TestHelperProcess$", "-test.v")
	find.WaitLog("writing question", 20*time.Second) // pion's debug log: it has asked, and nobody can answer yet
	helper(t, a, helperSpec{Mode: "advertise", Service: discovery.Service{Role: discovery.RoleCoordinator, Port: 7070, EnrollPort: 7071, CAFingerprint: fpA}}).
		WaitLog("ADVERTISING", 20*time.Second)
	started := time.Now()
	find.WaitLog("RESULT", 20*time.Second)
	if log := find.Log.String(); !strings.Contains(log, `"GRPC":"`+a.IP.String()+`:7070"`) {
		t.Fatalf("finder did not find the late coordinator:\n%s", log)
	}
	t.Logf("found %s after the coordinator started advertising", time.Since(started).Round(time.Millisecond))
}
