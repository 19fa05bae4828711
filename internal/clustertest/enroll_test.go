package clustertest

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/demo"
	"github.com/npumesh/npumesh/internal/pki"
)

// demoModel installs the demo model once per test into a temp dir.
func demoModel(t *testing.T) string {
	t.Helper()
	p, err := demo.Install(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// joinArgs are the flags of a node process joining c as name.
func joinArgs(c *Coordinator, token, name, dataDir, model string, extra ...string) []string {
	args := []string{"node", "--coordinator", c.GRPC, "--enroll-addr", c.Enroll, "--data-dir", dataDir,
		"--name", name, "--model", model, "--listen", "127.0.0.1:0", "--metrics-listen", "", "--threads", "1"}
	if token != "" {
		args = append(args, "--join", token)
	}
	return append(args, extra...)
}

// expectJoinFails runs a node that must exit non-zero, with want in its log.
func expectJoinFails(t *testing.T, args []string, want string) *Process {
	t.Helper()
	p := StartProcess(t, args...)
	exited, err := p.Exited(30 * time.Second)
	if !exited {
		t.Fatalf("node still running; want it to exit with %q\n%s", want, p.Log.String())
	}
	if err == nil {
		t.Fatalf("node exited 0; want a failure with %q\n%s", want, p.Log.String())
	}
	if !strings.Contains(p.Log.String(), want) {
		t.Fatalf("node log lacks %q:\n%s", want, p.Log.String())
	}
	return p
}

func readLeaf(t *testing.T, dir string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, pki.BundleCertFile))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s: no PEM", dir)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// waitServed waits until a completion is served by node name.
func waitServed(t *testing.T, c *Coordinator, model, name string, timeout time.Duration) {
	t.Helper()
	ok := WaitFor(timeout, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		got, err := c.Complete(ctx, model)
		return err == nil && got == name
	})
	if !ok {
		t.Fatalf("node %s served no request within %s", name, timeout)
	}
}

// TestJoinServes is the happy path with real processes: `npumesh token
// create`, then `npumesh node --join` as a separate process, which enrolls
// and serves requests through the coordinator's API. It logs the time from
// starting the node to its first served request.
func TestJoinServes(t *testing.T) {
	model := demoModel(t)
	c := StartCoordinator(t, "")
	token := c.Token("--ttl", "10m")
	tok, err := pki.ParseJoinToken(token)
	if err != nil {
		t.Fatalf("token create printed %q: %v", token, err)
	}
	ca, err := pki.LoadCA(filepath.Join(c.DataDir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	if tok.CAFingerprint != ca.Fingerprint() {
		t.Errorf("token names CA %s, the cluster's is %s", tok.CAFingerprint, ca.Fingerprint())
	}
	// Only the hash of the secret is stored.
	state, _ := os.ReadFile(filepath.Join(c.DataDir, "state.json"))
	if strings.Contains(string(state), tok.Secret) || !strings.Contains(string(state), pki.HashSecret(tok.Secret)) {
		t.Errorf("state.json holds the secret or lacks its hash:\n%s", state)
	}
	if out := c.MustCLI("token", "ls"); strings.Contains(out, tok.Secret) || !strings.Contains(out, tok.ID) || !strings.Contains(out, "1/1") {
		t.Errorf("token ls:\n%s", out)
	}

	nodeDir := filepath.Join(t.TempDir(), "node")
	start := time.Now()
	StartProcess(t, joinArgs(c, token, "joiner", nodeDir, model)...)
	var first time.Duration
	ok := WaitFor(60*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		name, err := c.Complete(ctx, "stories260K")
		if err == nil && name == "joiner" {
			first = time.Since(start)
			return true
		}
		return false
	})
	if !ok {
		t.Fatalf("the joined node served nothing within 60s")
	}
	t.Logf("join time: %v from starting `npumesh node --join` to its first served request", first.Round(time.Millisecond))

	// The bundle is on the node's disk, the key private.
	for name, want := range map[string]os.FileMode{pki.BundleKeyFile: 0o600, pki.BundleCertFile: 0o644, pki.BundleCAFile: 0o644} {
		fi, err := os.Stat(filepath.Join(nodeDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", name, fi.Mode().Perm(), want)
		}
	}
	leaf := readLeaf(t, nodeDir)
	if life := leaf.NotAfter.Sub(time.Now()); life < 6*24*time.Hour || life > 7*24*time.Hour {
		t.Errorf("node certificate valid for %v, want the 7-day default", life)
	}
	if out := c.MustCLI("token", "ls"); !strings.Contains(out, "used up") || !strings.Contains(out, "0/1") {
		t.Errorf("token ls after one join:\n%s", out)
	}
	if out := c.MustCLI("node", "ls"); !strings.Contains(out, "joiner") || !strings.Contains(out, "connected") || !strings.Contains(out, pki.SerialHex(leaf)) {
		t.Errorf("node ls:\n%s", out)
	}
	// token rm deletes.
	c.MustCLI("token", "rm", tok.ID)
	if out := c.MustCLI("token", "ls"); strings.Contains(out, tok.ID) {
		t.Errorf("token ls after rm:\n%s", out)
	}
}

// TestEnrollRefusals checks each refused join with real processes.
func TestEnrollRefusals(t *testing.T) {
	model := demoModel(t)
	c := StartCoordinator(t, "")
	dir := t.TempDir()

	t.Run("expired token", func(t *testing.T) {
		token := c.Token("--ttl", "1s")
		time.Sleep(1100 * time.Millisecond) // let it expire
		expectJoinFails(t, joinArgs(c, token, "late", filepath.Join(dir, "late"), model), "expired")
	})

	t.Run("used-up token", func(t *testing.T) {
		token := c.Token("--uses", "1")
		first := StartProcess(t, joinArgs(c, token, "first", filepath.Join(dir, "first"), model)...)
		if !WaitFor(30*time.Second, func() bool { return c.HasNode("first") }) {
			t.Fatalf("first node did not join:\n%s", first.Log.String())
		}
		expectJoinFails(t, joinArgs(c, token, "second", filepath.Join(dir, "second"), model), "used up")
		first.Stop()
	})

	t.Run("wrong secret", func(t *testing.T) {
		token := c.Token()
		tok, _ := pki.ParseJoinToken(token)
		forged, _ := pki.NewJoinToken(tok.CAFingerprint)
		forged.ID = tok.ID // the right id, another secret
		expectJoinFails(t, joinArgs(c, forged.String(), "forger", filepath.Join(dir, "forger"), model), "unknown token id or wrong secret")
		if _, err := os.Stat(filepath.Join(dir, "forger", pki.BundleCertFile)); err == nil {
			t.Errorf("a refused node has a certificate")
		}
		// The attempt did not use the token up.
		if out := c.MustCLI("token", "ls"); !strings.Contains(out, tok.ID+"  valid") {
			t.Errorf("token ls after a forged attempt:\n%s", out)
		}
	})

	t.Run("another cluster's CA", func(t *testing.T) {
		// A token of cluster A presented to cluster B's coordinator: the
		// node refuses B during the handshake, before sending the secret.
		other := StartCoordinator(t, "")
		token := c.Token()
		args := joinArgs(c, token, "lost", filepath.Join(dir, "lost"), model)
		for i, a := range args {
			if a == "--enroll-addr" {
				args[i+1] = other.Enroll
			}
		}
		expectJoinFails(t, args, "does not hold the CA the join token names")
		// B never saw an enrollment request.
		time.Sleep(200 * time.Millisecond)
		if log := other.Log.String(); strings.Contains(log, "enroll") && strings.Contains(log, "lost") {
			t.Errorf("the other coordinator received the enrollment:\n%s", log)
		}
		if out := c.MustCLI("token", "ls"); !strings.Contains(out, "valid") {
			t.Errorf("token not intact:\n%s", out)
		}
	})
}

// TestRevokeCutsNode revokes a live node: it leaves the cluster view at once,
// cannot come back (handshakes refused), cannot re-enroll under its name,
// and may enroll again after unrevoke with a fresh key.
func TestRevokeCutsNode(t *testing.T) {
	model := demoModel(t)
	c := StartCoordinator(t, "")
	token := c.Token("--uses", "3")
	dir := t.TempDir()
	n := StartProcess(t, joinArgs(c, token, "victim", filepath.Join(dir, "victim"), model)...)
	waitServed(t, c, "stories260K", "victim", 30*time.Second)

	start := time.Now()
	out := c.MustCLI("node", "revoke", "victim", "--reason", "test")
	if !strings.Contains(out, "disconnected") {
		t.Errorf("revoke output: %s", out)
	}
	if !WaitFor(2*time.Second, func() bool { return !c.HasNode("victim") }) {
		t.Fatalf("revoked node still in the cluster view after 2s")
	}
	t.Logf("revoked node left the cluster view %v after `node revoke` returned", time.Since(start).Round(time.Millisecond))
	// Its heartbeat stream ended, and its attempts to come back are refused.
	if !WaitFor(10*time.Second, func() bool {
		log := n.Log.String()
		return strings.Contains(log, "coordinator session ended") && strings.Contains(log, "bad certificate")
	}) {
		t.Fatalf("node log shows no cut stream and refused handshake:\n%s", n.Log.String())
	}
	time.Sleep(1500 * time.Millisecond) // several reconnect attempts
	if c.HasNode("victim") {
		t.Fatalf("revoked node registered again")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Complete(ctx, "stories260K"); err == nil {
		t.Errorf("a request was served with only the revoked node around")
	}
	if out := c.MustCLI("node", "ls"); !strings.Contains(out, "revoked") {
		t.Errorf("node ls:\n%s", out)
	}
	n.Stop()

	// Re-enrollment under the revoked name is refused, even with a valid token.
	expectJoinFails(t, joinArgs(c, token, "victim", filepath.Join(dir, "victim-again"), model), "revoked")

	// After unrevoke, a fresh key may enroll under the name; the old
	// certificate stays refused.
	c.MustCLI("node", "unrevoke", "victim")
	StartProcess(t, joinArgs(c, token, "victim", filepath.Join(dir, "victim-new"), model)...)
	waitServed(t, c, "stories260K", "victim", 30*time.Second)
}

// TestCertExpiredWhileOff: a node whose short-lived certificate expired
// while it was stopped cannot start without a token, and re-enrolls (under
// the same name) with one.
func TestCertExpiredWhileOff(t *testing.T) {
	model := demoModel(t)
	c := StartCoordinator(t, "", "--node-cert-ttl", "5s")
	token := c.Token("--uses", "2")
	nodeDir := filepath.Join(t.TempDir(), "sleeper")
	n := StartProcess(t, joinArgs(c, token, "sleeper", nodeDir, model)...)
	if !WaitFor(20*time.Second, func() bool { return c.HasNode("sleeper") }) {
		t.Fatalf("node did not join")
	}
	n.Stop()
	leaf := readLeaf(t, nodeDir)
	time.Sleep(time.Until(leaf.NotAfter) + time.Second) // expire while off

	p := expectJoinFails(t, joinArgs(c, "", "", nodeDir, model), "has expired")
	if !strings.Contains(p.Log.String(), "--join") {
		t.Errorf("the error does not say how to re-enroll:\n%s", p.Log.String())
	}
	// With a token it enrolls again, keeping its name (no --name given).
	args := joinArgs(c, token, "", nodeDir, model)
	for i, a := range args {
		if a == "--name" {
			args = append(args[:i:i], args[i+2:]...)
			break
		}
	}
	StartProcess(t, args...)
	waitServed(t, c, "stories260K", "sleeper", 30*time.Second)
	if newLeaf := readLeaf(t, nodeDir); !newLeaf.NotAfter.After(leaf.NotAfter) {
		t.Errorf("certificate not replaced")
	}
}

// TestCertRenewal: with 3-second certificates the node renews itself at two
// thirds of each lifetime and keeps serving well past the first expiry; the
// renewals after the first authenticate with renewed certificates, so the
// hot-reloaded client certificate is what the coordinator accepts.
func TestCertRenewal(t *testing.T) {
	model := demoModel(t)
	c := StartCoordinator(t, "", "--node-cert-ttl", "3s")
	token := c.Token()
	nodeDir := filepath.Join(t.TempDir(), "renewer")
	n := StartProcess(t, joinArgs(c, token, "renewer", nodeDir, model)...)
	waitServed(t, c, "stories260K", "renewer", 30*time.Second)
	first := readLeaf(t, nodeDir)
	time.Sleep(time.Until(first.NotAfter) + 4*time.Second)
	if got := strings.Count(n.Log.String(), "certificate renewed"); got < 2 {
		t.Fatalf("%d renewals logged, want at least 2:\n%s", got, n.Log.String())
	}
	if last := readLeaf(t, nodeDir); !last.NotAfter.After(time.Now()) || last.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Errorf("the bundle on disk was not renewed (expires %v)", last.NotAfter)
	}
	waitServed(t, c, "stories260K", "renewer", 10*time.Second)
	if !c.HasNode("renewer") {
		t.Errorf("node left the cluster during renewals")
	}
}

// TestCoordinatorStateSurvivesRestart restarts the coordinator process:
// tokens, revocations and node identities are all still there, and the CA
// is the same (the old token still enrolls).
func TestCoordinatorStateSurvivesRestart(t *testing.T) {
	model := demoModel(t)
	c := StartCoordinator(t, "")
	token := c.Token("--uses", "2", "--description", "restart test")
	tok, _ := pki.ParseJoinToken(token)
	dir := t.TempDir()
	StartProcess(t, joinArgs(c, token, "keeper", filepath.Join(dir, "keeper"), model)...)
	waitServed(t, c, "stories260K", "keeper", 30*time.Second)
	c.MustCLI("node", "revoke", "outcast")
	keeperSerial := pki.SerialHex(readLeaf(t, filepath.Join(dir, "keeper")))

	c.Restart()

	tokens := c.MustCLI("token", "ls")
	if !strings.Contains(tokens, tok.ID) || !strings.Contains(tokens, "1/2") || !strings.Contains(tokens, "restart test") {
		t.Errorf("token ls after restart:\n%s", tokens)
	}
	nodes := c.MustCLI("node", "ls")
	if !strings.Contains(nodes, "outcast") || !strings.Contains(nodes, "revoked") || !strings.Contains(nodes, keeperSerial) {
		t.Errorf("node ls after restart:\n%s", nodes)
	}
	// The node finds the restarted coordinator by itself.
	waitServed(t, c, "stories260K", "keeper", 30*time.Second)
	// The revocation holds, and the old token still works (same CA).
	expectJoinFails(t, joinArgs(c, token, "outcast", filepath.Join(dir, "outcast"), model), "revoked")
	StartProcess(t, joinArgs(c, token, "second", filepath.Join(dir, "second"), model)...)
	waitServed(t, c, "stories260K", "second", 30*time.Second)
}

// TestJoinCLIErrors: misuse of the enrollment and admin commands prints
// one line saying what to do.
func TestJoinCLIErrors(t *testing.T) {
	bin := Binary(t)
	dir := t.TempDir()
	token := "npm1.abcdefgh." + strings.Repeat("a2", 16) + "." + strings.Repeat("ab", 32)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"token", "create", "--data-dir", dir}, "no coordinator address"},
		{[]string{"token", "create", "--ttl", "0s", "--data-dir", dir}, "--ttl"},
		{[]string{"token", "ls", "--coordinator", "127.0.0.1:1", "--tls-dir", filepath.Join(dir, "none")}, "npumesh cert issue"},
		{[]string{"node", "revoke"}, "accepts 1 arg"},
		{[]string{"node", "--coordinator", "127.0.0.1:1", "--join", "npm1.bogus", "--data-dir", dir, "--model", "m.gguf"}, "invalid join token"},
		{[]string{"node", "--coordinator", "127.0.0.1:1", "--data-dir", dir, "--model", "m.gguf"}, "a node certificate is required"},
		{[]string{"node", "--coordinator", "127.0.0.1:1", "--tls-dir", dir, "--join", token, "--model", "m.gguf"}, "one or the other"},
		{[]string{"node", "--coordinator", "127.0.0.1:1", "--join", token, "--data-dir", filepath.Join(dir, "n"), "--name", "n", "--model", "m.gguf"}, "cannot reach the coordinator's enrollment listener"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			cmd := exec.Command(bin, tc.args...)
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Run(); err == nil {
				t.Fatalf("exit 0, want non-zero")
			}
			lines := strings.Split(strings.TrimRight(stderr.String(), "\n"), "\n")
			last := lines[len(lines)-1] // log lines may come first
			if !strings.HasPrefix(last, "npumesh: ") || !strings.Contains(last, tc.want) {
				t.Fatalf("stderr ends with %q, want an npumesh: line mentioning %q\n%s", last, tc.want, stderr.String())
			}
		})
	}
}
