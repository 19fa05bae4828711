package clustertest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Multi-host tests: every coordinator, node and etcd runs in its own
// network namespace on one bridge (NewLAN), so nodes reach coordinators
// only over the LAN, find them with mDNS, and a host can be cut off by
// deleting its veth. The test process reaches the APIs with nsDial.

// lanNode starts `npumesh node --join TOKEN` on h named name; extra flags
// follow (none: the coordinator is found with mDNS).
func lanNode(t *testing.T, h *Host, token, name, model string, extra ...string) *Process {
	t.Helper()
	args := append([]string{"node", "--join", token, "--data-dir", t.TempDir(), "--name", name,
		"--model", model, "--listen", h.IP.String() + ":0", "--metrics-listen", "", "--threads", "1"}, extra...)
	return h.StartNpumesh(t, args...)
}

// cutHost deletes the bridge side of h's veth pair (which deletes both
// ends): h is off the LAN at once, without any TCP reset or FIN.
func cutHost(t *testing.T, lan *LAN, i int) {
	t.Helper()
	if out, err := ipCmd("-n", lan.Bridge, "link", "del", fmt.Sprintf("p%d", i)); err != nil {
		t.Fatalf("delete the veth of host %d: %v\n%s", i, err, out)
	}
}

// TestLANClusterMDNS: one coordinator and three nodes, each in its own
// namespace. The nodes get a join token and nothing else: they find the
// coordinator with mDNS, enroll and serve. Then one node is cut off the
// LAN and killed: it leaves the cluster view within 10 s while requests
// keep succeeding. Then the coordinator restarts: the remaining nodes
// register again by themselves.
func TestLANClusterMDNS(t *testing.T) {
	lan := NewLAN(t, 4)
	ch := lan.Hosts[0]
	model := demoModel(t)
	dir := t.TempDir()
	grpc, apiAddr := ch.IP.String()+":7070", ch.IP.String()+":8080"
	coordArgs := []string{"coordinator", "--data-dir", dir, "--listen", grpc, "--api", apiAddr, "--insecure-http", "--cluster-id", "lan"}
	coord := ch.StartNpumesh(t, coordArgs...)
	coord.WaitLog("advertising on the LAN", 30*time.Second)
	api := newNSAPI(ch, apiAddr)

	token, _, _ := strings.Cut(ch.MustRun(t, 30*time.Second, Binary(t), "token", "create", "--uses", "3", "--data-dir", dir), "\n")
	start := time.Now()
	nodes := map[string]*Process{}
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("lan%d", i)
		nodes[name] = lanNode(t, lan.Hosts[i], token, name, model)
	}
	if !WaitFor(60*time.Second, func() bool { return api.has("lan1", "lan2", "lan3") }) {
		got, err := api.nodes()
		t.Fatalf("cluster view %v (%v) within 60s; want lan1, lan2, lan3", got, err)
	}
	joined := time.Since(start)
	for name, p := range nodes {
		if !strings.Contains(p.Log.String(), "found the coordinator on the LAN") || !strings.Contains(p.Log.String(), "grpc="+grpc) {
			t.Errorf("%s did not find the coordinator with mDNS:\n%s", name, p.Log.String())
		}
	}
	served := map[string]bool{}
	WaitFor(30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if n, err := api.complete(ctx); err == nil {
			served[n] = true
		}
		return len(served) == 3
	})
	t.Logf("join time: 3 nodes enrolled by token via mDNS and listed %s after they started; served by %v", joined.Round(time.Millisecond), served)

	// A node host drops off the LAN (no FIN, no RST), then its process dies.
	l := startLoad(api, 4)
	time.Sleep(time.Second)
	cutHost(t, lan, 3)
	if err := nodes["lan3"].Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	if !WaitFor(10*time.Second, func() bool { return api.has("lan1", "lan2") }) {
		got, err := api.nodes()
		l.finish(t, "node cut off")
		t.Fatalf("10s after cutting lan3 off, the cluster view is %v (%v); want lan1, lan2", got, err)
	}
	t.Logf("node gone: lan3 left the cluster view %s after its veth was deleted", time.Since(cut).Round(time.Millisecond))
	time.Sleep(2 * time.Second) // requests keep succeeding afterwards too
	l.finish(t, "node cut off")

	// The coordinator restarts on the same address; the nodes come back by
	// themselves.
	if err := coord.Stop(); err != nil {
		t.Fatalf("coordinator exit status: %v\n%s", err, coord.Log.String())
	}
	restart := time.Now()
	coord = ch.StartNpumesh(t, coordArgs...)
	if !WaitFor(30*time.Second, func() bool { return api.has("lan1", "lan2") }) {
		got, err := api.nodes()
		t.Fatalf("30s after the coordinator restarted the cluster view is %v (%v); want lan1, lan2", got, err)
	}
	t.Logf("coordinator restart: lan1 and lan2 registered again %s after the restart began", time.Since(restart).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if n, err := api.complete(ctx); err != nil || (n != "lan1" && n != "lan2") {
		t.Errorf("completion after the restart: node %q, %v", n, err)
	}
}

// lanEtcd runs a one-member etcd on h, port 2379, and returns its
// --registry URL.
func lanEtcd(t *testing.T, h *Host) string {
	t.Helper()
	bin := requireEtcd(t)
	p := h.Start(t, nil, bin, etcdArgs(t.TempDir(), h.IP.String(), 2379)...)
	waitEtcd(t, nsDial(h.NS), h.IP.String()+":2379", p)
	return "etcd://" + h.IP.String() + ":2379"
}

// TestLANEtcdCoordinatorFailover: etcd on host 0, coordinators A and B on
// hosts 1 and 2 sharing it (--registry), nodes on hosts 3 and 4, each
// registered with a different coordinator (--coordinator A,B and B,A).
// Each coordinator lists both nodes. The leader is killed (SIGKILL): the
// other is elected and runs the singleton tasks within 10 s, its node
// moves over, and the survivor's API answers every poll and completion
// throughout.
func TestLANEtcdCoordinatorFailover(t *testing.T) {
	lan := NewLAN(t, 5)
	registry := lanEtcd(t, lan.Hosts[0])
	model := demoModel(t)

	type coord struct {
		name     string
		h        *Host
		dir      string
		grpc     string
		p        *Process
		api      *nsAPI
		electLog string
	}
	cs := []*coord{{name: "A", h: lan.Hosts[1], dir: t.TempDir()}, {name: "B", h: lan.Hosts[2], dir: t.TempDir()}}
	for i, c := range cs {
		if i > 0 {
			copyCA(t, cs[0].dir, c.dir) // every coordinator holds the cluster CA
		}
		c.grpc = c.h.IP.String() + ":7070"
		apiAddr := c.h.IP.String() + ":8080"
		c.p = c.h.StartNpumesh(t, "coordinator", "--data-dir", c.dir, "--listen", c.grpc, "--api", apiAddr, "--insecure-http",
			"--registry", registry, "--mdns=false")
		if !WaitFor(30*time.Second, func() bool {
			b, err := os.ReadFile(filepath.Join(c.dir, "run", "coordinator.addr"))
			return err == nil && strings.Contains(string(b), "enroll=")
		}) {
			t.Fatalf("coordinator %s not listening within 30s\n%s", c.name, c.p.Log.String())
		}
		c.api = newNSAPI(c.h, apiAddr)
	}
	const elected = "elected leader"
	leaderOf := func() []*coord {
		var ls []*coord
		for _, c := range cs {
			if strings.Count(c.p.Log.String(), elected) > 0 {
				ls = append(ls, c)
			}
		}
		return ls
	}
	if !WaitFor(15*time.Second, func() bool { return len(leaderOf()) == 1 }) {
		t.Fatalf("want exactly one leader within 15s; leaders: %d", len(leaderOf()))
	}

	// One token, made through A, enrolls a node at each coordinator: the
	// token store is shared.
	token, _, _ := strings.Cut(cs[0].h.MustRun(t, 30*time.Second, Binary(t), "token", "create", "--uses", "2", "--data-dir", cs[0].dir), "\n")
	start := time.Now()
	lanNode(t, lan.Hosts[3], token, "na", model, "--coordinator", cs[0].grpc+","+cs[1].grpc, "--enroll-addr", cs[0].h.IP.String()+":7071")
	lanNode(t, lan.Hosts[4], token, "nb", model, "--coordinator", cs[1].grpc+","+cs[0].grpc, "--enroll-addr", cs[1].h.IP.String()+":7071")
	for _, c := range cs {
		if !WaitFor(60*time.Second, func() bool { return c.api.has("na", "nb") }) {
			got, err := c.api.nodes()
			t.Fatalf("coordinator %s lists %v (%v) within 60s; want na and nb", c.name, got, err)
		}
	}
	t.Logf("join time: both nodes listed by both coordinators %s after they started", time.Since(start).Round(time.Millisecond))
	for _, c := range cs {
		served := map[string]bool{}
		WaitFor(30*time.Second, func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if n, err := c.api.complete(ctx); err == nil {
				served[n] = true
			}
			return len(served) == 2
		})
		if len(served) != 2 {
			t.Errorf("coordinator %s routed only to %v; want both nodes (its own and the other's)", c.name, served)
		}
	}

	leader := leaderOf()[0]
	survivor := cs[0]
	if survivor == leader {
		survivor = cs[1]
	}
	l := startLoad(survivor.api, 4)
	time.Sleep(time.Second)
	if err := leader.p.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if !WaitFor(10*time.Second, func() bool { return strings.Contains(survivor.p.Log.String(), elected) }) {
		l.finish(t, "leader killed")
		t.Fatalf("coordinator %s not elected within 10s of killing %s\n%s", survivor.name, leader.name, survivor.p.Log.String())
	}
	t.Logf("takeover: %s killed, %s elected and running the singleton tasks %s later", leader.name, survivor.name, time.Since(killed).Round(time.Millisecond))
	if !WaitFor(20*time.Second, func() bool { return survivor.api.has("na", "nb") }) {
		got, err := survivor.api.nodes()
		t.Errorf("after the failover %s lists %v (%v); want na and nb", survivor.name, got, err)
	}
	time.Sleep(2 * time.Second)
	l.finish(t, fmt.Sprintf("API of %s while %s was killed", survivor.name, leader.name))
	if !strings.Contains(survivor.p.Log.String(), "node registered") {
		t.Errorf("%s's log shows no registration", survivor.name)
	}
}
