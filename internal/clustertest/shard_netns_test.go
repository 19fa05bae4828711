package clustertest

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/linkemu"
)

// nsListen opens a TCP listener inside namespace ns.
func nsListen(ns, addr string) (l net.Listener, err error) {
	err = InNetns(ns, func() error {
		l, err = net.Listen("tcp", addr)
		return err
	})
	return l, err
}

// shapeHost puts a tbf qdisc on the egress of h's LAN interface.
func shapeHost(t *testing.T, h *Host, rate string) {
	t.Helper()
	args := []string{"netns", "exec", h.NS, "tc", "qdisc", "add", "dev", h.Iface, "root", "tbf", "rate", rate, "burst", "256kb", "latency", "50ms"}
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// TestPipelineOverShapedLinks: the demo model as 3 pipeline stages on
// three hosts in network namespaces, each link emulating WiFi-7: a tbf
// qdisc at 2 Gbit/s on every node host's interface, and in front of every
// node a delay relay (linkemu, inside the node's namespace) adding 1 ms
// each way, so every hop between stages and to the coordinator has a
// 2 ms round trip. The greedy text with f32 activations equals upstream's;
// the test prints the decode time per token and the bytes per token that
// crossed into the later stages (payload 64 floats x 4 bytes).
func TestPipelineOverShapedLinks(t *testing.T) {
	lan := NewLAN(t, 4)
	ch := lan.Hosts[0]
	model := demoModel(t)
	dir := t.TempDir()
	grpc, apiAddr := ch.IP.String()+":7070", ch.IP.String()+":8080"
	coord := ch.StartNpumesh(t, "coordinator", "--data-dir", dir, "--listen", grpc, "--api", apiAddr, "--insecure-http",
		"--cluster-id", "shard", "--shard", "stories260K=3:f32")
	coord.WaitLog("advertising on the LAN", 30*time.Second)
	api := newNSAPI(ch, apiAddr)
	api.c.Timeout = 60 * time.Second
	token, _, _ := strings.Cut(ch.MustRun(t, 30*time.Second, Binary(t), "token", "create", "--uses", "3", "--data-dir", dir), "\n")
	var relays []*linkemu.Relay
	for i := 1; i <= 3; i++ {
		h := lan.Hosts[i]
		shapeHost(t, h, "2gbit")
		nodeAddr := fmt.Sprintf("%s:%d", h.IP, 7100+i)
		ln, err := nsListen(h.NS, fmt.Sprintf("%s:%d", h.IP, 7200+i))
		if err != nil {
			t.Fatal(err)
		}
		r, err := linkemu.Serve(ln, nodeAddr, linkemu.WiFi7, nsDial(h.NS))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		relays = append(relays, r)
		name := fmt.Sprintf("stage%d", i)
		// The node listens on a fixed port behind its relay and
		// advertises the relay (a later --listen overrides lanNode's).
		lanNode(t, h, token, name, model, "--listen", nodeAddr, "--advertise", ln.Addr().String())
	}
	if !WaitFor(60*time.Second, func() bool { return api.has("stage1", "stage2", "stage3") }) {
		got, err := api.nodes()
		t.Fatalf("cluster view %v (%v); want stage1..3", got, err)
	}
	want := expectedGreedy(t)
	var first, last time.Time
	res, err := streamFollowClient(context.Background(), api.c, "http://"+apiAddr, map[string]any{"model": "stories260K", "prompt": "", "max_tokens": 200, "temperature": 0},
		func(n int, _ string) {
			if n == 1 {
				first = time.Now()
			}
			last = time.Now()
		})
	if err != nil {
		t.Fatal(err)
	}
	if res.errMsg != "" || res.text != want {
		t.Fatalf("3 stages over shaped links: error %q\n got %q\nwant %q\ncoordinator log:\n%s", res.errMsg, res.text, want, coord.Log.String())
	}
	var later int64
	for _, r := range relays {
		up, _ := r.Stats()
		later += up
	}
	perTok := last.Sub(first) / time.Duration(max(res.chunks-1, 1))
	fmt.Printf("pipeline over emulated WiFi-7 (tbf 2gbit + 2 ms RTT relays), 3 stages, f32: %v per token; %d bytes into the nodes in all (%d tokens)\n",
		perTok.Round(10*time.Microsecond), later, res.chunks)
}
