// Package clustertest starts real npumesh clusters for tests: it builds the
// binary once, runs `npumesh up` (coordinator and node daemons as separate
// processes on loopback) and offers helpers to find, kill and query them.
// Only tests import it.
package clustertest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/testdata"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
	buildDir  string
)

// Binary builds cmd/npumesh once per test process (CGO_ENABLED=0, as
// shipped) and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		root := testdata.Root(t)
		buildDir, buildErr = os.MkdirTemp("", "npumesh-bin-")
		if buildErr != nil {
			return
		}
		buildPath = filepath.Join(buildDir, "npumesh")
		cmd := exec.Command("go", "build", "-o", buildPath, "./cmd/npumesh")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

// Cleanup removes the built binary; call it from TestMain after m.Run.
func Cleanup() {
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
}

// FreeAddr returns a loopback address with a port that was free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Cluster is a running `npumesh up`.
type Cluster struct {
	t       testing.TB
	Cmd     *exec.Cmd
	API     string // http://127.0.0.1:PORT
	DataDir string
	Model   string
	APIKey  string
	Log     *syncBuffer
	done    chan struct{}
	waitErr error
}

// Options for Start.
type Options struct {
	Nodes int
	// Args are extra flags for `npumesh up`.
	Args []string
	// DataDir defaults to a fresh temp dir.
	DataDir string
	// APIKey, when set, is required by the API; the helpers send it.
	APIKey string
}

// Start runs `npumesh up` and waits until it reports the cluster up and all
// nodes are registered. The cluster is stopped (SIGTERM) at test cleanup.
func Start(t testing.TB, o Options) *Cluster {
	t.Helper()
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.DataDir == "" {
		o.DataDir = t.TempDir()
	}
	api := FreeAddr(t)
	args := append([]string{"up", "--nodes", strconv.Itoa(o.Nodes), "--api", api, "--data-dir", o.DataDir}, o.Args...)
	if o.APIKey != "" {
		keyFile := filepath.Join(o.DataDir, "api-keys")
		if err := os.WriteFile(keyFile, []byte("# test keys\n"+o.APIKey+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--api-key-file", keyFile)
	}
	cmd := exec.Command(Binary(t), args...)
	c := &Cluster{t: t, Cmd: cmd, API: "http://" + api, DataDir: o.DataDir, APIKey: o.APIKey, Log: &syncBuffer{}, done: make(chan struct{})}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = c.Log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			c.Log.Write([]byte("[stdout] " + line + "\n"))
			if strings.HasPrefix(line, "npumesh is up") {
				select {
				case ready <- line:
				default:
				}
			}
		}
	}()
	go func() { c.waitErr = cmd.Wait(); close(c.done) }()
	t.Cleanup(func() {
		c.Stop()
		if t.Failed() {
			t.Logf("npumesh up log:\n%s", c.Log.String())
		}
	})
	select {
	case line := <-ready:
		if i := strings.Index(line, "serving \""); i >= 0 {
			c.Model = strings.TrimSuffix(line[i+len("serving \""):], "\"")
		}
	case <-c.done:
		t.Fatalf("npumesh up exited before it was ready: %v\n%s", c.waitErr, c.Log.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("npumesh up not ready within 60s\n%s", c.Log.String())
	}
	c.WaitNodes(o.Nodes, 30*time.Second)
	return c
}

// Stop sends SIGTERM and waits for up to exit (killing it after 30 s).
func (c *Cluster) Stop() error {
	if !terminate(c.Cmd, c.done, 30*time.Second) {
		return fmt.Errorf("npumesh up did not stop within 30s of SIGTERM")
	}
	return c.waitErr
}

// Done is closed when the up process has exited.
func (c *Cluster) Done() <-chan struct{} { return c.done }

// Node is one entry of GET /api/v1/nodes.
type Node struct {
	Name     string   `json:"name"`
	Address  string   `json:"address"`
	State    string   `json:"state"`
	Arch     string   `json:"arch"`
	Models   []string `json:"models"`
	InFlight int      `json:"in_flight"`
	Served   uint64   `json:"served"`
}

// Nodes fetches the cluster view.
func (c *Cluster) Nodes() ([]Node, error) {
	req, err := http.NewRequest(http.MethodGet, c.API+"/api/v1/nodes", nil)
	if err != nil {
		return nil, err
	}
	c.authorize(req)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var v struct {
		Nodes []Node `json:"nodes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return nil, err
	}
	return v.Nodes, nil
}

// WaitNodes waits until exactly n nodes are listed.
func (c *Cluster) WaitNodes(n int, timeout time.Duration) []Node {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		nodes, err := c.Nodes()
		if err == nil && len(nodes) == n {
			return nodes
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("want %d nodes within %s; have %d (err %v)", n, timeout, len(nodes), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Proc is a child process of up.
type Proc struct {
	PID  int
	Args []string
}

// Role is "coordinator" or "node".
func (p Proc) Role() string {
	if len(p.Args) > 1 {
		return p.Args[1]
	}
	return ""
}

// Name is the node's certificate directory name (node-1, ...) or "coordinator".
func (p Proc) Name() string {
	for i, a := range p.Args {
		if a == "--tls-dir" && i+1 < len(p.Args) {
			return filepath.Base(p.Args[i+1])
		}
	}
	return ""
}

// Children lists the live child processes of up.
func (c *Cluster) Children() []Proc { return ChildrenOf(c.Cmd.Process.Pid) }

// ChildrenOf lists the live processes whose parent is pid, from /proc.
func ChildrenOf(pid int) []Proc {
	ents, _ := os.ReadDir("/proc")
	var out []Proc
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Fields after the ")" that ends the command name: state ppid ...
		s := string(stat)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 || f[0] == "Z" {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); ppid != pid {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		out = append(out, Proc{PID: p, Args: strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")})
	}
	return out
}

// Alive reports whether pid exists and is not a zombie.
func Alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && !strings.HasPrefix(strings.TrimSpace(s[i+1:]), "Z")
}

// Post sends a JSON body to path and returns the status, headers and body.
func (c *Cluster) Post(ctx context.Context, path string, body any) (int, http.Header, []byte, error) {
	var rd io.Reader
	switch b := body.(type) {
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			return 0, nil, nil, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.API+path, rd)
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	c.authorize(req)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, out, err
}

func (c *Cluster) authorize(req *http.Request) {
	if c.APIKey != "" && req.Header.Get("Authorization") == "" {
		req.Header.Set("Authorization", "Bearer "+c.APIKey)
	}
}

// CoordinatorGRPC is the coordinator's gRPC address, from its address file.
func (c *Cluster) CoordinatorGRPC() string {
	b, err := os.ReadFile(filepath.Join(c.DataDir, "run", "coordinator.addr"))
	if err != nil {
		c.t.Fatalf("coordinator address file: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "grpc="); ok {
			return v
		}
	}
	c.t.Fatalf("no grpc= line in the coordinator address file %q", b)
	return ""
}

// syncBuffer is a goroutine-safe log buffer.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
