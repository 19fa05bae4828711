package clustertest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/discovery"
	"github.com/npumesh/npumesh/internal/pki"
)

// lanCoordinator runs `npumesh coordinator` on h's LAN address, port 7070
// (enrollment 7071), and waits until it advertises itself.
func lanCoordinator(t *testing.T, h *Host, clusterID string) (dataDir string, p *Process) {
	t.Helper()
	dataDir = t.TempDir()
	p = h.StartNpumesh(t, "coordinator", "--data-dir", dataDir, "--listen", h.IP.String()+":7070",
		"--api", "127.0.0.1:0", "--cluster-id", clusterID)
	p.WaitLog("advertising on the LAN", 30*time.Second)
	return dataDir, p
}

// caFingerprint is the SHA-256 of the CA in a coordinator data dir.
func caFingerprint(t *testing.T, dataDir string) string {
	t.Helper()
	ca, err := pki.LoadCA(filepath.Join(dataDir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	return ca.Fingerprint()
}

// discover runs `npumesh discover --json` on h.
func discover(t *testing.T, h *Host, args ...string) []discovery.Service {
	t.Helper()
	out := h.MustRun(t, 30*time.Second, Binary(t), append([]string{"discover", "--json", "--timeout", "2s"}, args...)...)
	var ss []discovery.Service
	if err := json.Unmarshal([]byte(out), &ss); err != nil {
		t.Fatalf("discover --json: %v\n%s", err, out)
	}
	return ss
}

// TestMDNSJoinWithoutCoordinator: two clusters on one LAN (coordinators on
// hosts 0 and 2); a machine on host 1 given only a join token of the first
// finds its coordinator with mDNS, enrolls and registers there, and then
// advertises itself as a node. `npumesh discover` lists all of it.
func TestMDNSJoinWithoutCoordinator(t *testing.T) {
	lan := NewLAN(t, 3)
	a, b, c := lan.Hosts[0], lan.Hosts[1], lan.Hosts[2]
	start := time.Now()
	dirA, _ := lanCoordinator(t, a, "alpha")
	dirC, _ := lanCoordinator(t, c, "gamma")
	fpA, fpC := caFingerprint(t, dirA), caFingerprint(t, dirC)
	t.Logf("two coordinators up and advertising in %s", time.Since(start).Round(time.Millisecond))

	start = time.Now()
	ss := discover(t, b)
	if len(ss) != 2 {
		t.Fatalf("discover found %d services, want the 2 coordinators: %+v", len(ss), ss)
	}
	byFP := map[string]discovery.Service{}
	for _, s := range ss {
		byFP[s.CAFingerprint] = s
	}
	for _, w := range []struct {
		fp, cluster string
		h           *Host
	}{{fpA, "alpha", a}, {fpC, "gamma", c}} {
		s, ok := byFP[w.fp]
		if !ok || s.Role != "coordinator" || s.ClusterID != w.cluster || s.GRPCAddr() != w.h.IP.String()+":7070" || s.EnrollAddr() != w.h.IP.String()+":7071" {
			t.Errorf("coordinator of %s: got %+v (found %v)", w.cluster, s, ok)
		}
	}
	if got := discover(t, b, "--ca-sha256", fpC); len(got) != 1 || got[0].ClusterID != "gamma" {
		t.Errorf("discover --ca-sha256 <gamma> = %+v, want gamma's coordinator only", got)
	}
	t.Logf("discover (2 s each) took %s", time.Since(start).Round(time.Millisecond))

	// token create prints the token on stdout's only line, notes on stderr.
	token, _, _ := strings.Cut(a.MustRun(t, 30*time.Second, Binary(t), "token", "create", "--data-dir", dirA), "\n")
	start = time.Now()
	node := b.StartNpumesh(t, "node", "--join", token, "--data-dir", t.TempDir(), "--name", "lan-node",
		"--model", demoModel(t), "--listen", b.IP.String()+":0", "--metrics-listen", "", "--threads", "1")
	node.WaitLog("found the coordinator on the LAN", 40*time.Second)
	if log := node.Log.String(); !strings.Contains(log, "grpc="+a.IP.String()+":7070") {
		t.Errorf("the node did not pick cluster alpha's coordinator:\n%s", log)
	}
	ok := WaitFor(30*time.Second, func() bool {
		out, err := a.Run(10*time.Second, Binary(t), "node", "ls", "--data-dir", dirA)
		return err == nil && strings.Contains(out, "lan-node") && strings.Contains(out, "connected")
	})
	if !ok {
		t.Fatalf("lan-node not connected to alpha's coordinator within 30s\n%s", node.Log.String())
	}
	t.Logf("join by token alone: connected %s after the node started", time.Since(start).Round(time.Millisecond))
	for _, line := range strings.Split(node.Log.String(), "\n") {
		if strings.Contains(line, "LAN") || strings.Contains(line, "enroll") || strings.Contains(line, "regist") {
			t.Logf("node: %s", line)
		}
	}

	var nodes []discovery.Service
	WaitFor(15*time.Second, func() bool {
		nodes = nil
		for _, s := range discover(t, c) {
			if s.Role == "node" {
				nodes = append(nodes, s)
			}
		}
		return len(nodes) == 1
	})
	if len(nodes) != 1 || nodes[0].Name != "lan-node" || nodes[0].CAFingerprint != fpA || nodes[0].Addr.String() != b.IP.String() || nodes[0].Arch == "" {
		t.Errorf("discover from host 2: nodes %+v, want lan-node of cluster alpha on %s", nodes, b.IP)
	}

	// The table form, as a person reads it.
	out := c.MustRun(t, 30*time.Second, Binary(t), "discover", "--timeout", "2s")
	for _, want := range []string{"ROLE", "coordinator", "alpha", "gamma", "lan-node", a.IP.String() + ":7071"} {
		if !strings.Contains(out, want) {
			t.Errorf("discover table lacks %q:\n%s", want, out)
		}
	}
	if testing.Verbose() {
		os.Stdout.WriteString(out)
	}
}

// TestMDNSNotOnLoopback: a coordinator listening on loopback (as under
// `npumesh up`) does not advertise, and --mdns=false turns it off.
func TestMDNSNotOnLoopback(t *testing.T) {
	lan := NewLAN(t, 2)
	a, b := lan.Hosts[0], lan.Hosts[1]
	dirLoop, dirOff := t.TempDir(), t.TempDir()
	loop := a.StartNpumesh(t, "coordinator", "--data-dir", dirLoop, "--listen", "127.0.0.1:7070", "--api", "127.0.0.1:0")
	off := a.StartNpumesh(t, "coordinator", "--data-dir", dirOff, "--listen", a.IP.String()+":7080", "--api", "127.0.0.1:0", "--mdns=false")
	for _, d := range []string{dirLoop, dirOff} {
		if !WaitFor(30*time.Second, func() bool {
			b, err := os.ReadFile(filepath.Join(d, "run", "coordinator.addr"))
			return err == nil && strings.Contains(string(b), "enroll=")
		}) {
			t.Fatalf("coordinator with data dir %s not listening within 30s\n%s%s", d, loop.Log.String(), off.Log.String())
		}
	}
	if ss := discover(t, b); len(ss) != 0 {
		t.Errorf("discover found %+v; want nothing", ss)
	}
	for _, p := range []*Process{loop, off} {
		if strings.Contains(p.Log.String(), "advertising on the LAN") {
			t.Errorf("coordinator advertised:\n%s", p.Log.String())
		}
	}
}
