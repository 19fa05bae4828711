package clustertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/npumesh/npumesh/internal/coordinator"
	"github.com/npumesh/npumesh/internal/node"
	"github.com/npumesh/npumesh/internal/pki"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// catalogNode configures one in-process node of catalogCluster.
type catalogNode struct {
	name  string
	quota int64
	hook  func(sha string, index int, data []byte) []byte
}

// catCluster is an in-process coordinator with a model catalog and nodes
// that pull, on loopback with real gRPC servers.
type catCluster struct {
	grpcAddr, api string
	adminDir      string
	admin         pb.AdminServiceClient
	stores        map[string]string // node -> model store dir
	modelDir      string
	ca            *pki.CA
}

func catalogCluster(t *testing.T, quota int64, nodes []catalogNode) *catCluster {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.InitCA(filepath.Join(dir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(&testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	lo := []net.IP{net.IPv4(127, 0, 0, 1)}
	cb, _, err := ca.EnsureBundle(filepath.Join(dir, "coord"), pki.IssueRequest{Name: "coordinator", Role: pki.RoleCoordinator, IPs: lo})
	if err != nil {
		t.Fatal(err)
	}
	adminDir := filepath.Join(dir, "admin")
	admin, _, err := ca.EnsureBundle(adminDir, pki.IssueRequest{Name: "admin", Role: pki.RoleClient})
	if err != nil {
		t.Fatal(err)
	}
	cc := &catCluster{adminDir: adminDir, stores: map[string]string{}, modelDir: filepath.Join(dir, "coord-models"), ca: ca}
	co, err := coordinator.New(coordinator.Config{
		Listen: "127.0.0.1:0", API: "127.0.0.1:0", TLS: cb, Logger: log,
		ModelDir: cc.modelDir, ModelQuota: quota,
	})
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr, apiAddr, err := co.Listen()
	if err != nil {
		t.Fatal(err)
	}
	cc.grpcAddr, cc.api = grpcAddr.String(), "http://"+apiAddr.String()
	var wg sync.WaitGroup
	var cancels []context.CancelFunc
	run := func(f func(context.Context) error) {
		ctx, cancel := context.WithCancel(context.Background())
		cancels = append(cancels, cancel)
		wg.Add(1)
		go func() { defer wg.Done(); _ = f(ctx) }()
	}
	run(co.Run)
	for _, nc := range nodes {
		nb, _, err := ca.EnsureBundle(filepath.Join(dir, nc.name), pki.IssueRequest{Name: nc.name, Role: pki.RoleNode, IPs: lo})
		if err != nil {
			t.Fatal(err)
		}
		store := filepath.Join(dir, nc.name+"-models")
		cc.stores[nc.name] = store
		n, err := node.New(node.Config{
			Listen: "127.0.0.1:0", Coordinators: []string{cc.grpcAddr}, TLS: nb, Logger: log, DrainTimeout: time.Second,
			Pull: &node.PullConfig{Dir: store, Quota: nc.quota, Threads: 1, Interval: 200 * time.Millisecond, ServeHook: nc.hook},
		})
		if err != nil {
			t.Fatal(err)
		}
		run(n.Run)
	}
	conn, err := grpc.NewClient(cc.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(admin.ClientTLS(pki.Identity{Role: pki.RoleCoordinator}))))
	if err != nil {
		t.Fatal(err)
	}
	cc.admin = pb.NewAdminServiceClient(conn)
	t.Cleanup(func() {
		conn.Close()
		for i := len(cancels) - 1; i >= 0; i-- {
			cancels[i]()
		}
		wg.Wait()
	})
	if !WaitFor(10*time.Second, func() bool {
		resp, err := http.Get(cc.api + "/api/v1/nodes")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var v struct{ Nodes []any }
		return json.NewDecoder(resp.Body).Decode(&v) == nil && len(v.Nodes) == len(nodes)
	}) {
		t.Fatalf("%d nodes did not register within 10s", len(nodes))
	}
	return cc
}

// addModel runs `npumesh model add` against the cluster.
func (cc *catCluster) addModel(t *testing.T, path string, args ...string) string {
	t.Helper()
	cmd := exec.Command(Binary(t), append([]string{"model", "add", path, "--coordinator", cc.grpcAddr, "--tls-dir", cc.adminDir}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("npumesh model add: %v\n%s", err, out)
	}
	return string(out)
}

func (cc *catCluster) model(t *testing.T, name string) *pb.CatalogModel {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cc.admin.ListCatalog(ctx, &pb.ListCatalogRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range resp.GetModels() {
		if m.GetName() == name {
			return m
		}
	}
	return nil
}

// replicas returns node -> state of the model's replicas.
func replicas(m *pb.CatalogModel) map[string]*pb.ReplicaStatus {
	out := map[string]*pb.ReplicaStatus{}
	for _, r := range m.GetReplicaStatus() {
		out[r.GetNode()] = r
	}
	return out
}

func waitLoaded(t *testing.T, cc *catCluster, name string, n int, timeout time.Duration) *pb.CatalogModel {
	t.Helper()
	var m *pb.CatalogModel
	if !WaitFor(timeout, func() bool {
		m = cc.model(t, name)
		k := 0
		for _, r := range m.GetReplicaStatus() {
			if r.GetState() == "loaded" {
				k++
			}
		}
		return k >= n
	}) {
		t.Fatalf("%s not loaded on %d nodes within %s: %v", name, n, timeout, m)
	}
	return m
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// checkStore fails when a store holds a partial file, or a blob whose
// content is not its name, or not wantBlobs blobs (-1: any number).
func checkStore(t *testing.T, dir string, wantBlobs int) {
	t.Helper()
	if ents, _ := os.ReadDir(filepath.Join(dir, "partial")); len(ents) != 0 {
		t.Errorf("%s: %d partial files left", dir, len(ents))
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "blobs"))
	if wantBlobs >= 0 && len(ents) != wantBlobs {
		t.Errorf("%s: got %d blobs, want %d", dir, len(ents), wantBlobs)
	}
	for _, e := range ents {
		if got := fileSHA(t, filepath.Join(dir, "blobs", e.Name())); got != e.Name() {
			t.Errorf("blob %s has sha256 %s", e.Name(), got)
		}
	}
}

// TestModelCorruptChunkRefetched: a peer serves a corrupted chunk; the
// puller detects it, fetches it again from the coordinator, and no
// corrupted file ever reaches the store.
func TestModelCorruptChunkRefetched(t *testing.T) {
	var corrupted atomic.Int32
	hook := func(sha string, index int, data []byte) []byte {
		if index != 1 {
			return data
		}
		corrupted.Add(1)
		bad := bytes.Clone(data)
		bad[len(bad)/2] ^= 0xff
		return bad
	}
	cc := catalogCluster(t, 0, []catalogNode{{name: "node-a", hook: hook}, {name: "node-b", hook: hook}})
	path := SynthModel(t)
	cc.addModel(t, path, "--name", "syn", "--replicas", "1")
	first := waitLoaded(t, cc, "syn", 1, 60*time.Second).GetReplicaStatus()[0].GetNode()
	second := "node-a"
	if first == "node-a" {
		second = "node-b"
	}
	// The same model again with 2 replicas: nothing to upload, one more node.
	out := cc.addModel(t, path, "--name", "syn", "--replicas", "2")
	if !strings.Contains(out, "uploaded 0 B") {
		t.Errorf("re-adding the same model uploaded data:\n%s", out)
	}
	waitLoaded(t, cc, "syn", 2, 60*time.Second)
	if corrupted.Load() == 0 {
		t.Fatalf("%s never served the corrupted chunk to %s (it should have been tried first)", first, second)
	}
	want := fileSHA(t, path)
	if got := fileSHA(t, filepath.Join(cc.stores[second], "models", "syn", "synth.gguf")); got != want {
		t.Fatalf("pulled file sha256 %s, want %s", got, want)
	}
	checkStore(t, cc.stores[second], 1)
	// The refetch came from the coordinator.
	resp, err := http.Get(cc.api + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), fmt.Sprintf(`npumesh_model_transfer_sent_bytes_by_node_total{node=%q}`, second)) {
		t.Errorf("the coordinator sent nothing to %s after the corrupted chunk", second)
	}
	t.Logf("%s served %d corrupted chunk(s); %s detected and refetched them", first, corrupted.Load(), second)

	// model rm: the catalog forgets it, nodes unload it and delete its files.
	if b, err := exec.Command(Binary(t), "model", "rm", "syn", "--coordinator", cc.grpcAddr, "--tls-dir", cc.adminDir).CombinedOutput(); err != nil {
		t.Fatalf("model rm: %v\n%s", err, b)
	}
	if cc.model(t, "syn") != nil {
		t.Fatal("syn still in the catalog after model rm")
	}
	for _, dir := range []string{cc.stores["node-a"], cc.stores["node-b"], cc.modelDir} {
		if !WaitFor(10*time.Second, func() bool {
			ents, _ := os.ReadDir(filepath.Join(dir, "blobs"))
			return len(ents) == 0
		}) {
			t.Errorf("%s still holds blobs after model rm", dir)
		}
	}
	if !WaitFor(10*time.Second, func() bool {
		resp, err := http.Get(cc.api + "/v1/models")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return !strings.Contains(string(b), `"syn"`)
	}) {
		t.Error("syn still served after model rm")
	}
}

// TestModelQuotaOverflow: a model that does not fit a node's disk quota
// fails with a clear reason in `model ls` and leaves nothing partial.
func TestModelQuotaOverflow(t *testing.T) {
	cc := catalogCluster(t, 0, []catalogNode{{name: "node-small", quota: 4 << 20}})
	path := SynthModel(t)
	cc.addModel(t, path, "--name", "big", "--replicas", "1")
	var r *pb.ReplicaStatus
	if !WaitFor(30*time.Second, func() bool {
		r = replicas(cc.model(t, "big"))["node-small"]
		return r.GetState() == "failed"
	}) {
		t.Fatalf("no failed replica within 30s: %v", r)
	}
	if !strings.Contains(r.GetReason(), "quota") || !strings.Contains(r.GetReason(), "free") {
		t.Errorf("reason %q does not say the quota is exceeded", r.GetReason())
	}
	checkStore(t, cc.stores["node-small"], 0)
	// The CLI shows it.
	out, err := exec.Command(Binary(t), "model", "ls", "--coordinator", cc.grpcAddr, "--tls-dir", cc.adminDir).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "failed") || !strings.Contains(string(out), "quota") {
		t.Fatalf("model ls: %v\n%s", err, out)
	}
	t.Logf("model ls:\n%s", out)

	// The coordinator's own quota refuses an upload up front.
	cq := catalogCluster(t, 1<<20, []catalogNode{{name: "node-x"}})
	cmd := exec.Command(Binary(t), "model", "add", path, "--coordinator", cq.grpcAddr, "--tls-dir", cq.adminDir)
	out, err = cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "quota") {
		t.Fatalf("upload over the coordinator's quota: err %v\n%s", err, out)
	}
	checkStore(t, cq.modelDir, 0)
}

func randomGGUF(t *testing.T, size int) string {
	t.Helper()
	b := make([]byte, size)
	rand.Read(b)
	copy(b, "GGUF")
	p := filepath.Join(t.TempDir(), "blob.gguf")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestNodeToNodeRolePolicy: a node's mTLS port lets another node (a peer
// pulling a model) call FetchChunks and nothing else.
func TestNodeToNodeRolePolicy(t *testing.T) {
	cc := catalogCluster(t, 0, []catalogNode{{name: "node-a"}})
	resp, err := http.Get(cc.api + "/api/v1/nodes")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		Nodes []struct{ Name, Address string }
	}
	json.NewDecoder(resp.Body).Decode(&v)
	resp.Body.Close()
	if len(v.Nodes) != 1 {
		t.Fatalf("nodes %v", v.Nodes)
	}
	peer, _, err := cc.ca.EnsureBundle(filepath.Join(t.TempDir(), "peer"), pki.IssueRequest{Name: "peer", Role: pki.RoleNode})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(v.Nodes[0].Address, grpc.WithTransportCredentials(credentials.NewTLS(peer.ClientTLS(pki.Identity{Role: pki.RoleNode, Name: "node-a"}))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc := pb.NewNodeServiceClient(conn)
	fc, err := nc.FetchChunks(ctx, &pb.FetchChunksRequest{Model: "none", Sha256: strings.Repeat("0", 64), Indexes: []uint32{0}})
	if err == nil {
		_, err = fc.Recv()
	}
	if status.Code(err) != codes.NotFound {
		t.Errorf("peer FetchChunks: %v, want NotFound (allowed, no such model)", err)
	}
	g, err := nc.Generate(ctx, &pb.GenerateRequest{Model: "x", MaxTokens: 1})
	if err == nil {
		_, err = g.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("peer Generate: %v, want PermissionDenied", err)
	}
	if _, err := nc.Info(ctx, &pb.InfoRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("peer Info: %v, want PermissionDenied", err)
	}
	// A client certificate may not fetch chunks.
	admin, err := pki.LoadBundle(cc.adminDir)
	if err != nil {
		t.Fatal(err)
	}
	aconn, err := grpc.NewClient(v.Nodes[0].Address, grpc.WithTransportCredentials(credentials.NewTLS(admin.ClientTLS(pki.Identity{Role: pki.RoleNode, Name: "node-a"}))))
	if err != nil {
		t.Fatal(err)
	}
	defer aconn.Close()
	fc, err = pb.NewNodeServiceClient(aconn).FetchChunks(ctx, &pb.FetchChunksRequest{Model: "none"})
	if err == nil {
		_, err = fc.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("client FetchChunks: %v, want PermissionDenied", err)
	}
}
