package clustertest

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/npumesh/npumesh/internal/pki"
	"github.com/npumesh/npumesh/internal/testdata"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// TestQemuCluster runs one node daemon per release architecture, the
// foreign ones (arm64, riscv64 on an amd64 host) under qemu user-mode
// emulation, against a native coordinator over mTLS on loopback, with
// certificates made by the CLI and the binaries `make release` builds.
//
// Each node must report its own architecture and produce, for the demo
// model, the same greedy tokens as the native node, which must match
// upstream's text. On arm64 and riscv64 there is no assembly, so this runs
// the engine's portable Go code as those machines execute it (qemu emulates
// the instruction set, floating point included; it is not a test on a
// board).
func TestQemuCluster(t *testing.T) {
	for _, arch := range ReleaseArches {
		Emulator(t, arch) // fail or skip before building anything
	}
	want := expectedGreedy(t)
	rel := MakeRelease(t)
	start := time.Now()
	host := rel.Binary(runtime.GOARCH)
	model := filepath.Join(testdata.Root(t), "internal", "demo", "stories260K.gguf")

	dir := t.TempDir()
	caDir := filepath.Join(dir, "ca")
	if out, err := exec.Command(host, "ca", "init", "--dir", caDir).CombinedOutput(); err != nil {
		t.Fatalf("npumesh ca init: %v\n%s", err, out)
	}
	IssueCert(t, host, caDir, "coordinator", "coordinator", filepath.Join(dir, "coordinator"))
	// The test calls each node's Generate itself, which only a
	// coordinator-role certificate may do.
	IssueCert(t, host, caDir, "tester", "coordinator", filepath.Join(dir, "tester"))
	for _, arch := range ReleaseArches {
		IssueCert(t, host, caDir, "node-"+arch, "node", filepath.Join(dir, "node-"+arch))
	}

	addrFile := filepath.Join(dir, "coordinator.addr")
	coord := StartDaemon(t, "coordinator", exec.Command(host, "coordinator",
		"--listen", "127.0.0.1:0", "--api", "127.0.0.1:0",
		"--tls-dir", filepath.Join(dir, "coordinator"), "--addr-file", addrFile))
	addrs := coord.WaitAddrFile(t, addrFile, 30*time.Second)
	if addrs["grpc"] == "" || addrs["api"] == "" {
		t.Fatalf("coordinator address file %v lacks grpc= or api=", addrs)
	}
	cluster := &Cluster{t: t, API: "http://" + addrs["api"]}

	nodes := map[string]*Daemon{}
	for _, arch := range ReleaseArches {
		name := "node-" + arch
		nodes[arch] = StartDaemon(t, name, ArchCommand(t, arch, rel.Binary(arch), "node",
			"--coordinator", addrs["grpc"], "--listen", "127.0.0.1:0", "--metrics-listen", "",
			"--tls-dir", filepath.Join(dir, name), "--model", model, "--name", name))
	}
	listed := waitNodes(t, cluster, nodes, 2*time.Minute)
	t.Logf("coordinator and %d nodes up in %s", len(listed), time.Since(start).Round(time.Millisecond))

	addrOf := map[string]string{}
	for _, n := range listed {
		arch, ok := strings.CutPrefix(n.Name, "node-")
		if !ok || nodes[arch] == nil {
			t.Fatalf("unexpected node %+v", n)
		}
		if n.Arch != arch {
			t.Errorf("node %s reports arch %q, want %q", n.Name, n.Arch, arch)
		}
		if n.State != "ready" || !slices.Contains(n.Models, "stories260K") {
			t.Errorf("node %s: state %q models %v, want ready with stories260K", n.Name, n.State, n.Models)
		}
		addrOf[arch] = n.Address
	}

	tester, err := pki.LoadBundle(filepath.Join(dir, "tester"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]greedyResult{}
	for _, arch := range ReleaseArches {
		t0 := time.Now()
		r, err := greedyOn(tester, addrOf[arch], "node-"+arch, 200)
		if err != nil {
			t.Fatalf("Generate on node-%s (%s): %v", arch, addrOf[arch], err)
		}
		t.Logf("node-%s: %d tokens in %s", arch, len(r.ids), time.Since(t0).Round(time.Millisecond))
		if r.finish != "length" || r.completion != 200 || len(r.ids) != 200 {
			t.Errorf("node-%s: finish %q, %d completion tokens, %d ids; want length, 200, 200", arch, r.finish, r.completion, len(r.ids))
		}
		got[arch] = r
	}
	native := got[runtime.GOARCH]
	if !strings.HasPrefix(native.text, want) {
		t.Fatalf("native node's greedy text differs from upstream\ngot:  %q\nwant: %q", native.text, want)
	}
	for _, arch := range ReleaseArches {
		if r := got[arch]; r.text != native.text || !slices.Equal(r.ids, native.ids) {
			t.Errorf("node-%s's greedy output differs from the %s node's\ngot:  %q\nwant: %q", arch, runtime.GOARCH, r.text, native.text)
		}
	}

	// Through the coordinator's API too: it dials whichever node it picks.
	status, hdr, body, err := cluster.Post(context.Background(), "/v1/completions",
		map[string]any{"model": "stories260K", "prompt": "", "max_tokens": 200, "temperature": 0})
	if err != nil || status != 200 {
		t.Fatalf("completion through the coordinator: status %d err %v body %s", status, err, body)
	}
	var cr completion
	if err := json.Unmarshal(body, &cr); err != nil || len(cr.Choices) != 1 || cr.Choices[0].Text != native.text {
		t.Errorf("completion through the coordinator (node %s) = %s, want the nodes' text", hdr.Get("X-Npumesh-Node"), body)
	}

	// SIGTERM reaches the daemons through qemu: each drains and exits 0.
	for _, arch := range ReleaseArches {
		if err := nodes[arch].Stop(60 * time.Second); err != nil {
			t.Errorf("node-%s after SIGTERM: %v", arch, err)
		}
	}
	if err := coord.Stop(30 * time.Second); err != nil {
		t.Errorf("coordinator after SIGTERM: %v", err)
	}
	t.Logf("emulated cluster test took %s (make release before it: %s)", time.Since(start).Round(time.Millisecond), rel.Took.Round(time.Second))
}

// TestQemuKernels runs internal/kernels' own tests, cross-compiled for each
// foreign release architecture, under qemu user-mode emulation. Those
// architectures have no assembly kernels, so this checks the portable Go
// kernels as arm64 and riscv64 execute them, all of them and at every
// size the tests take (TestQemuCluster reaches only those the demo
// model's forward pass calls).
func TestQemuKernels(t *testing.T) {
	root := testdata.Root(t)
	for _, arch := range ReleaseArches {
		if arch == runtime.GOARCH {
			continue
		}
		t.Run(arch, func(t *testing.T) {
			Emulator(t, arch)
			bin := filepath.Join(t.TempDir(), "kernels-"+arch+".test")
			build := exec.Command("go", "test", "-c", "-o", bin, "./internal/kernels")
			build.Dir = root
			build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
			if out, err := build.CombinedOutput(); err != nil {
				t.Fatalf("go test -c for %s: %v\n%s", arch, err, out)
			}
			if _, err := os.Stat(bin); err != nil {
				t.Fatalf("go test -c wrote no test binary (internal/kernels has no tests?): %v", err)
			}
			t0 := time.Now()
			// TestEnvForcesGeneric re-executes the test binary, which
			// qemu-user cannot follow without binfmt_misc; what it checks
			// (NPUMESH_KERNELS=generic over assembly) is moot where the
			// generic kernels are the only ones.
			cmd := ArchCommand(t, arch, bin, "-test.timeout", "5m", "-test.v", "-test.skip", "^TestEnvForcesGeneric$")
			cmd.Dir = filepath.Join(root, "internal", "kernels")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("internal/kernels tests under qemu (%s): %v\n%s", arch, err, out)
			}
			t.Logf("internal/kernels tests passed under qemu in %s (%d PASS, %d SKIP lines)", time.Since(t0).Round(time.Millisecond),
				strings.Count(string(out), "--- PASS"), strings.Count(string(out), "--- SKIP"))
		})
	}
}

// waitNodes waits until every daemon in nodes is listed by the coordinator,
// failing at once when one of them exits.
func waitNodes(t *testing.T, c *Cluster, nodes map[string]*Daemon, timeout time.Duration) []Node {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		listed, err := c.Nodes()
		if err == nil && len(listed) == len(nodes) {
			return listed
		}
		for _, d := range nodes {
			select {
			case <-d.Done():
				t.Fatalf("%s exited before it registered: %v\n%s", d.Name, d.waitErr, d.Log.String())
			default:
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("want %d nodes within %s; have %d (err %v)", len(nodes), timeout, len(listed), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type greedyResult struct {
	text       string
	ids        []int32
	finish     string
	completion int32
}

// greedyOn calls NodeService.Generate on one node directly (not through the
// coordinator's router): no prompt, so generation starts from BOS, greedy.
// The node is dialed expecting exactly its identity, npumesh://node/<name>.
func greedyOn(b *pki.Bundle, addr, name string, maxTokens int32) (greedyResult, error) {
	var r greedyResult
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(b.ClientTLS(pki.Identity{Role: pki.RoleNode, Name: name}))))
	if err != nil {
		return r, err
	}
	defer conn.Close()
	// Generous for an emulated riscv64: it takes seconds.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	st, err := pb.NewNodeServiceClient(conn).Generate(ctx, &pb.GenerateRequest{
		RequestId: "qemu-" + name,
		Model:     "stories260K",
		Prompt:    &pb.GenerateRequest_Text{Text: ""},
		Sampling:  &pb.SamplingParams{Temperature: 0},
		MaxTokens: maxTokens,
	})
	if err != nil {
		return r, err
	}
	var text strings.Builder
	for {
		msg, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return r, err
		}
		if d := msg.GetDelta(); d != nil {
			text.WriteString(d.GetText())
			r.ids = append(r.ids, d.GetIds()...)
		}
		if f := msg.GetFinal(); f != nil {
			r.finish = f.GetFinishReason()
			r.completion = f.GetUsage().GetCompletionTokens()
		}
	}
	r.text = text.String()
	return r, nil
}
