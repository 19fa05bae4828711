package clustertest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Process is one npumesh process started by a test, stopped (SIGTERM, then
// SIGKILL) at cleanup.
type Process struct {
	t       testing.TB
	Cmd     *exec.Cmd
	Log     *syncBuffer // stdout and stderr
	Started time.Time
	done    chan struct{}
	waitErr error
}

// StartProcess runs the npumesh binary with args.
func StartProcess(t testing.TB, args ...string) *Process {
	t.Helper()
	p := &Process{t: t, Cmd: exec.Command(Binary(t), args...), Log: &syncBuffer{}, done: make(chan struct{})}
	p.Cmd.Stdout, p.Cmd.Stderr = p.Log, p.Log
	p.Started = time.Now()
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.waitErr = p.Cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("log of npumesh %s:\n%s", strings.Join(args, " "), p.Log.String())
		}
	})
	return p
}

// Stop sends SIGTERM and waits (killing after 15 s); it returns the exit
// status.
func (p *Process) Stop() error {
	terminate(p.Cmd, p.done, 15*time.Second)
	return p.waitErr
}

// Exited waits up to timeout for the process to exit by itself and reports
// whether it did, with its exit status.
func (p *Process) Exited(timeout time.Duration) (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	case <-time.After(timeout):
		return false, nil
	}
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Coordinator is a `npumesh coordinator --data-dir` process on fixed
// loopback ports, which Restart keeps, so nodes find it again.
type Coordinator struct {
	t       testing.TB
	DataDir string
	// GRPC, API and Enroll are the addresses it listens on.
	GRPC, API, Enroll string
	args              []string
	*Process
}

// StartCoordinator runs a coordinator with its state in dataDir (a fresh
// temp dir when empty) and extra args, and waits until it listens.
func StartCoordinator(t testing.TB, dataDir string, args ...string) *Coordinator {
	t.Helper()
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	c := &Coordinator{t: t, DataDir: dataDir, GRPC: FreeAddr(t), API: FreeAddr(t), Enroll: FreeAddr(t)}
	c.args = append([]string{"coordinator", "--data-dir", dataDir, "--listen", c.GRPC, "--api", c.API, "--enroll-listen", c.Enroll}, args...)
	c.start()
	return c
}

func (c *Coordinator) start() {
	c.t.Helper()
	addrFile := filepath.Join(c.DataDir, "run", "coordinator.addr")
	os.Remove(addrFile)
	c.Process = StartProcess(c.t, c.args...)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if b, err := os.ReadFile(addrFile); err == nil && bytes.Contains(b, []byte("enroll=")) {
			return
		}
		select {
		case <-c.done:
			c.t.Fatalf("coordinator exited before listening: %v\n%s", c.waitErr, c.Log.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("coordinator not listening within 30s\n%s", c.Log.String())
		}
	}
}

// Restart stops the coordinator process and starts a new one with the same
// data dir, ports and flags.
func (c *Coordinator) Restart() {
	c.t.Helper()
	if err := c.Stop(); err != nil {
		c.t.Fatalf("coordinator exit status: %v\n%s", err, c.Log.String())
	}
	c.start()
}

// CLI runs an admin command (token ..., node revoke ...) against this
// coordinator with the defaults that `--data-dir` gives.
func (c *Coordinator) CLI(args ...string) (stdout, stderr string, err error) {
	cmd := exec.Command(Binary(c.t), append(args, "--data-dir", c.DataDir)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// MustCLI is CLI failing the test on a non-zero exit.
func (c *Coordinator) MustCLI(args ...string) string {
	c.t.Helper()
	out, errOut, err := c.CLI(args...)
	if err != nil {
		c.t.Fatalf("npumesh %s: %v\n%s%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// Token creates a join token with `npumesh token create` and extra args.
func (c *Coordinator) Token(args ...string) string {
	c.t.Helper()
	return strings.TrimSpace(c.MustCLI(append([]string{"token", "create"}, args...)...))
}

// Nodes fetches the coordinator's cluster view.
func (c *Coordinator) Nodes() ([]Node, error) {
	resp, err := http.Get("http://" + c.API + "/api/v1/nodes")
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

// HasNode reports whether name is in the cluster view.
func (c *Coordinator) HasNode(name string) bool {
	nodes, _ := c.Nodes()
	for _, n := range nodes {
		if n.Name == name {
			return true
		}
	}
	return false
}

// Complete sends a small greedy completion and returns the name of the
// node that served it (X-Npumesh-Node), or an error.
func (c *Coordinator) Complete(ctx context.Context, model string) (string, error) {
	body := fmt.Sprintf(`{"model":%q,"prompt":"Once upon a time","max_tokens":4,"temperature":0}`, model)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+c.API+"/v1/completions", strings.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d", resp.StatusCode)
	}
	return resp.Header.Get("X-Npumesh-Node"), nil
}

// WaitFor polls cond every 20 ms until it holds or timeout passes, and
// reports whether it held.
func WaitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
