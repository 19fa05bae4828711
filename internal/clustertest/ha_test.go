package clustertest

import (
	"context"
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
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/npumesh/npumesh/internal/coordinator"
	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/node"
	"github.com/npumesh/npumesh/internal/pki"
	"github.com/npumesh/npumesh/internal/testdata"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// requireEtcd returns the etcd server binary, or skips (fails under
// CI=true) when it is not installed.
func requireEtcd(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("etcd")
	if err != nil {
		testdata.Missing(t, "etcd, the server (Debian package etcd-server: apt-get install -y etcd-server)")
	}
	return p
}

// etcdArgs are the flags of a one-member etcd on ip with client port
// cport and peer port cport+1.
func etcdArgs(dataDir, ip string, cport int) []string {
	client := fmt.Sprintf("http://%s:%d", ip, cport)
	peer := fmt.Sprintf("http://%s:%d", ip, cport+1)
	return []string{"--name", "e0", "--data-dir", dataDir,
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "e0=" + peer, "--log-level", "warn"}
}

// startLocalEtcd runs etcd on loopback and returns its client URL.
func startLocalEtcd(t *testing.T) string {
	t.Helper()
	bin := requireEtcd(t)
	var port int
	for {
		// Two free neighbouring ports: client and peer.
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port = l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port+1))
		l.Close()
		if err == nil {
			l2.Close()
			break
		}
	}
	cmd := exec.Command(bin, etcdArgs(t.TempDir(), "127.0.0.1", port)...)
	p := &Process{t: t, Cmd: cmd, Log: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.Log, p.Log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.waitErr = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("etcd log:\n%s", p.Log.String())
		}
	})
	url := fmt.Sprintf("127.0.0.1:%d", port)
	waitEtcd(t, nil, url, p)
	return url
}

// waitEtcd waits until the etcd at hostport answers, dialing with dial
// (nil: from the test's own namespace).
func waitEtcd(t *testing.T, dial func(ctx context.Context, network, addr string) (net.Conn, error), hostport string, p *Process) {
	t.Helper()
	ok := WaitFor(30*time.Second, func() bool {
		select {
		case <-p.done:
			t.Fatalf("etcd exited: %v\n%s", p.waitErr, p.Log.String())
		default:
		}
		c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: dial}}
		resp, err := c.Get("http://" + hostport + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if !ok {
		t.Fatalf("etcd at %s not healthy within 30s\n%s", hostport, p.Log.String())
	}
}

func etcdClient(t *testing.T, hostport string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + hostport}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// TestEtcdStoreSerializesUpdates: two coordinators' stores (separate etcd
// clients) increment one counter concurrently; no update is lost, a failed
// f changes nothing, and Seed only fills an empty etcd.
func TestEtcdStoreSerializesUpdates(t *testing.T) {
	ep := startLocalEtcd(t)
	a := coordinator.NewEtcdStore(etcdClient(t, ep), "/t/")
	b := coordinator.NewEtcdStore(etcdClient(t, ep), "/t/")
	ctx := context.Background()

	seeded, err := a.Seed(ctx, &coordinator.State{Tokens: map[string]*coordinator.TokenRecord{
		"tok": {ID: "tok", Expires: time.Now().Add(time.Hour)},
	}})
	if err != nil || !seeded {
		t.Fatalf("Seed on an empty etcd = %v, %v; want true, nil", seeded, err)
	}
	if seeded, err := b.Seed(ctx, &coordinator.State{}); err != nil || seeded {
		t.Fatalf("second Seed = %v, %v; want false, nil", seeded, err)
	}

	const perStore = 40
	var wg sync.WaitGroup
	errs := make(chan error, 2*perStore)
	for _, s := range []*coordinator.EtcdStore{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perStore {
				errs <- s.Update(ctx, func(st *coordinator.State) error {
					st.Tokens["tok"].Uses++
					return nil
				})
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	boom := fmt.Errorf("boom")
	if err := a.Update(ctx, func(st *coordinator.State) error { st.Tokens["tok"].Uses = -1; return boom }); err != boom {
		t.Fatalf("failing Update returned %v, want its error", err)
	}
	st, err := b.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Tokens["tok"].Uses; got != 2*perStore {
		t.Fatalf("uses after %d concurrent updates: got %d, want %d", 2*perStore, got, 2*perStore)
	}
	if st.Revoked == nil || st.Nodes == nil || st.RevokedSerials == nil {
		t.Errorf("Load returned nil maps: %+v", st)
	}
}

// TestParseEtcdURL covers the --registry forms.
func TestParseEtcdURL(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // joined endpoints, or "error"
	}{
		{"etcd://h1:2379,h2:2380", "http://h1:2379 http://h2:2380"},
		{"etcd://10.0.0.1", "http://10.0.0.1:2379"},
		{"etcd://[::1]:2379/", "http://[::1]:2379"},
		{"http://h1:2379", "error"},
		{"etcd://", "error"},
	} {
		eps, err := coordinator.ParseEtcdURL(tc.in)
		got := strings.Join(eps, " ")
		if err != nil {
			got = "error"
		}
		if got != tc.want {
			t.Errorf("ParseEtcdURL(%q) = %q (%v), want %q", tc.in, got, err, tc.want)
		}
	}
}

// copyCA gives a second coordinator's data dir the cluster CA of the
// first, as an operator copies DATA-DIR/ca to every coordinator.
func copyCA(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(to, "ca"), 0o700); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(filepath.Join(from, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(from, "ca", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, "ca", e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStaticSeedsFailover: a node given --coordinator A,B registers with
// A; when A hangs (SIGSTOP: its connections stay open, nothing answers)
// the node notices the missing heartbeat acks, moves to B by itself, and
// serves there; when B is killed outright it goes back to A (resumed).
func TestStaticSeedsFailover(t *testing.T) {
	model := demoModel(t)
	a := StartCoordinator(t, "")
	dirB := t.TempDir()
	copyCA(t, a.DataDir, dirB)
	b := StartCoordinator(t, dirB)
	token := a.Token()
	args := joinArgs(a, token, "seeded", filepath.Join(t.TempDir(), "node"), model)
	for i, v := range args {
		if v == a.GRPC {
			args[i] = a.GRPC + "," + b.GRPC
		}
	}
	start := time.Now()
	node := StartProcess(t, args...)
	waitServed(t, a, "stories260K", "seeded", 60*time.Second)
	t.Logf("join: served through A %s after the node started", time.Since(start).Round(time.Millisecond))

	if err := a.Cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Cmd.Process.Signal(syscall.SIGCONT) })
	stopped := time.Now()
	waitServed(t, b, "stories260K", "seeded", 20*time.Second)
	t.Logf("A hung: the node serves through B %s later", time.Since(stopped).Round(time.Millisecond))
	if !strings.Contains(node.Log.String(), "acknowledged no heartbeat") {
		t.Errorf("the node did not report the silent coordinator:\n%s", node.Log.String())
	}

	if err := a.Cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err := b.Cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	waitServed(t, a, "stories260K", "seeded", 20*time.Second)
	t.Logf("B killed: the node serves through A again %s later", time.Since(killed).Round(time.Millisecond))
}

// nsDial dials from inside network namespace ns: the socket is made on an
// OS thread moved into ns (locked and never unlocked, so the thread ends
// with its goroutine); the connection then works from any thread.
func nsDial(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return DialInNetns(ctx, ns, network, addr)
	}
}

// nsAPI is a coordinator's HTTP API reached inside a namespace.
type nsAPI struct {
	addr string // HOST:PORT
	c    *http.Client
}

func newNSAPI(h *Host, addr string) *nsAPI {
	return &nsAPI{addr: addr, c: &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{DialContext: nsDial(h.NS), MaxIdleConnsPerHost: 16},
	}}
}

// nodes lists the names in the cluster view.
func (a *nsAPI) nodes() ([]string, error) {
	resp, err := a.c.Get("http://" + a.addr + "/api/v1/nodes")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /api/v1/nodes: status %d", resp.StatusCode)
	}
	var v struct {
		Nodes []struct {
			Name string `json:"name"`
		} `json:"nodes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return nil, err
	}
	var names []string
	for _, n := range v.Nodes {
		names = append(names, n.Name)
	}
	return names, nil
}

// has reports whether the cluster view lists exactly want (in any order).
func (a *nsAPI) has(want ...string) bool {
	got, err := a.nodes()
	if err != nil || len(got) != len(want) {
		return false
	}
	for _, w := range want {
		found := false
		for _, g := range got {
			found = found || g == w
		}
		if !found {
			return false
		}
	}
	return true
}

// complete sends a small greedy completion and returns the serving node.
func (a *nsAPI) complete(ctx context.Context) (string, error) {
	body := `{"model":"stories260K","prompt":"Once upon a time","max_tokens":4,"temperature":0}`
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+a.addr+"/v1/completions", strings.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	return resp.Header.Get("X-Npumesh-Node"), nil
}

// load keeps sending completions (and cluster-view reads) until stop is
// called, and returns how many of each failed, with the first errors.
type load struct {
	stop                  context.CancelFunc
	wg                    sync.WaitGroup
	mu                    sync.Mutex // guards the fields below
	ok, failed            int
	polls, failedPolls    int
	errors                []string
	servedBy              map[string]int
	longestPoll, longestC time.Duration
}

func startLoad(a *nsAPI, clients int) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{stop: cancel, servedBy: map[string]int{}}
	note := func(format string, args ...any) {
		if len(l.errors) < 10 {
			l.errors = append(l.errors, fmt.Sprintf(format, args...))
		}
	}
	for range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for ctx.Err() == nil {
				rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
				t0 := time.Now()
				node, err := a.complete(rctx)
				rcancel()
				l.mu.Lock()
				l.longestC = max(l.longestC, time.Since(t0))
				if err != nil {
					l.failed++
					note("%s completion: %v", time.Now().Format("15:04:05.000"), err)
				} else {
					l.ok++
					l.servedBy[node]++
				}
				l.mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for ctx.Err() == nil {
			t0 := time.Now()
			_, err := a.nodes()
			l.mu.Lock()
			l.polls++
			l.longestPoll = max(l.longestPoll, time.Since(t0))
			if err != nil {
				l.failedPolls++
				note("%s poll: %v", time.Now().Format("15:04:05.000"), err)
			}
			l.mu.Unlock()
			time.Sleep(50 * time.Millisecond)
		}
	}()
	return l
}

// finish stops the load and fails t if any request or poll failed.
func (l *load) finish(t *testing.T, what string) {
	t.Helper()
	l.stop()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	t.Logf("%s: %d completions ok (by node %v), %d failed (longest %s); %d cluster-view polls, %d failed (longest %s)",
		what, l.ok, l.servedBy, l.failed, l.longestC.Round(time.Millisecond), l.polls, l.failedPolls, l.longestPoll.Round(time.Millisecond))
	if l.failed > 0 || l.failedPolls > 0 || l.ok == 0 || l.polls == 0 {
		t.Errorf("%s: want every completion and poll to succeed; errors: %s", what, strings.Join(l.errors, "; "))
	}
}

// TestEtcdRegistryInProcess runs two coordinators sharing an etcd and two
// nodes in this process, so the race detector sees the registry code:
// both coordinators list both nodes, a revocation through one cuts the
// node off the other too, exactly one leads, and when the
// leader stops the other leads (at once: a stopping coordinator revokes
// its lease) and takes over its node.
func TestEtcdRegistryInProcess(t *testing.T) {
	ep := startLocalEtcd(t)
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
	type coord struct {
		co     *coordinator.Coordinator
		grpc   string
		api    string
		cancel context.CancelFunc
		done   chan error
	}
	var cs []*coord
	for _, id := range []string{"A", "B"} {
		cb, _, err := ca.EnsureBundle(filepath.Join(dir, "coord-"+id), pki.IssueRequest{Name: "coordinator", Role: pki.RoleCoordinator, IPs: lo})
		if err != nil {
			t.Fatal(err)
		}
		cli := etcdClient(t, ep)
		co, err := coordinator.New(coordinator.Config{
			Listen: "127.0.0.1:0", API: "127.0.0.1:0", TLS: cb, Logger: log.With("coord", id), HeartbeatInterval: 200 * time.Millisecond,
			CA: ca, Store: coordinator.NewEtcdStore(cli, "/ip/"),
			Etcd: &coordinator.EtcdRegistry{Client: cli, Prefix: "/ip/", TTL: 2 * time.Second, ID: id},
		})
		if err != nil {
			t.Fatal(err)
		}
		g, a, err := co.Listen()
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		c := &coord{co: co, grpc: g.String(), api: "http://" + a.String(), cancel: cancel, done: make(chan error, 1)}
		go func() { c.done <- co.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-c.done })
		cs = append(cs, c)
	}
	model := demoModel(t)
	for i, name := range []string{"n1", "n2"} {
		nb, _, err := ca.EnsureBundle(filepath.Join(dir, name), pki.IssueRequest{Name: name, Role: pki.RoleNode, IPs: lo})
		if err != nil {
			t.Fatal(err)
		}
		b, err := node.LoadBuiltin(model, engine.Options{Threads: 1})
		if err != nil {
			t.Fatal(err)
		}
		seeds := []string{cs[i].grpc, cs[1-i].grpc}
		n, err := node.New(node.Config{Listen: "127.0.0.1:0", Coordinators: seeds, TLS: nb, Backends: []node.Backend{b}, Logger: log.With("n", name)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- n.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done }) // runs before the coordinators' cleanups
	}
	listed := func(api string) []string {
		resp, err := http.Get(api + "/api/v1/nodes")
		if err != nil {
			return nil
		}
		defer resp.Body.Close()
		var v struct {
			Nodes []struct {
				Name string `json:"name"`
			} `json:"nodes"`
		}
		json.NewDecoder(resp.Body).Decode(&v)
		var names []string
		for _, n := range v.Nodes {
			names = append(names, n.Name)
		}
		return names
	}
	for _, c := range cs {
		if !WaitFor(15*time.Second, func() bool { return strings.Join(listed(c.api), ",") == "n1,n2" }) {
			t.Fatalf("coordinator at %s lists %v; want n1,n2", c.api, listed(c.api))
		}
	}
	// A revocation through A cuts n2, whose heartbeats go to B, off both.
	ab, _, err := ca.EnsureBundle(filepath.Join(dir, "admin"), pki.IssueRequest{Name: "admin", Role: pki.RoleClient})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(cs[0].grpc, grpc.WithTransportCredentials(credentials.NewTLS(ab.ClientTLS(pki.Identity{Role: pki.RoleCoordinator}))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
	_, err = pb.NewAdminServiceClient(conn).RevokeNode(rctx, &pb.RevokeNodeRequest{Name: "n2", Reason: "test"})
	rcancel()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if !WaitFor(5*time.Second, func() bool { return strings.Join(listed(c.api), ",") == "n1" }) {
			t.Fatalf("after revoking n2 through A, %s lists %v; want n1", c.api, listed(c.api))
		}
	}
	time.Sleep(time.Second) // n2 keeps trying: it must stay out
	for _, c := range cs {
		if got := strings.Join(listed(c.api), ","); got != "n1" {
			t.Fatalf("a second after revoking n2, %s lists %s; want n1", c.api, got)
		}
	}

	leaders := func() (ls []int) {
		for i, c := range cs {
			if c.co.IsLeader() {
				ls = append(ls, i)
			}
		}
		return ls
	}
	if !WaitFor(10*time.Second, func() bool { return len(leaders()) == 1 }) {
		t.Fatalf("leaders %v; want exactly one", leaders())
	}
	l := leaders()[0]
	s := cs[1-l]
	stopped := time.Now()
	cs[l].cancel()
	if !WaitFor(5*time.Second, s.co.IsLeader) {
		t.Fatal("the other coordinator did not take over within 5s of the leader stopping")
	}
	t.Logf("takeover after a clean stop: %s", time.Since(stopped).Round(time.Millisecond))
	<-cs[l].done
	cs[l].done <- nil // for the cleanup
	if !WaitFor(15*time.Second, func() bool { return strings.Join(listed(s.api), ",") == "n1" }) {
		t.Fatalf("survivor lists %v; want n1", listed(s.api))
	}
}
