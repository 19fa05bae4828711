package clustertest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/testdata"
)

// ReleaseArches are the architectures `make release` builds.
var ReleaseArches = []string{"amd64", "arm64", "riscv64"}

// qemuNames maps GOARCH to the name qemu uses for it.
var qemuNames = map[string]string{"amd64": "x86_64", "arm64": "aarch64", "riscv64": "riscv64"}

// Emulator returns the qemu user-mode emulator that runs linux/arch binaries
// on this machine, or "" when arch is the host's own. It is Debian's
// qemu-user-static (/usr/bin/qemu-ARCH-static), called directly rather than
// through binfmt_misc so that tests do not depend on the host's binfmt
// registration. A missing emulator fails the test under CI=true and skips
// it elsewhere.
func Emulator(t testing.TB, arch string) string {
	t.Helper()
	if arch == runtime.GOARCH {
		return ""
	}
	q, ok := qemuNames[arch]
	if !ok {
		t.Fatalf("no qemu name known for GOARCH %q", arch)
	}
	path := "/usr/bin/qemu-" + q + "-static"
	if _, err := os.Stat(path); err != nil {
		testdata.Missing(t, "%s to run linux/%s binaries (apt-get install qemu-user-static)", path, arch)
	}
	return path
}

// ArchCommand runs bin, a linux/arch binary, with args: directly on its own
// architecture, under Emulator(arch) on any other.
func ArchCommand(t testing.TB, arch, bin string, args ...string) *exec.Cmd {
	t.Helper()
	if q := Emulator(t, arch); q != "" {
		return exec.Command(q, append([]string{bin}, args...)...)
	}
	return exec.Command(bin, args...)
}

// Release is the output of one `make release` run.
type Release struct {
	Dir     string // DIST: npumesh-linux-ARCH and SHA256SUMS
	Version string
	Commit  string
	Took    time.Duration
}

// Binary is the path of the release binary for arch.
func (r *Release) Binary(arch string) string { return filepath.Join(r.Dir, "npumesh-linux-"+arch) }

// The version stamp the tests give `make release`, so --version is known.
const (
	releaseTestVersion = "v0.0.0-releasetest"
	releaseTestCommit  = "feedb0b"
)

var (
	releaseOnce sync.Once
	release     *Release
	releaseErr  error
)

// MakeRelease runs `make release` once per test process, into a DIST
// directory beside the Binary build (removed by Cleanup), with a test
// VERSION and COMMIT. `make` itself is a missing component (fail under
// CI=true, skip elsewhere); a failing build fails the test.
func MakeRelease(t testing.TB) *Release {
	t.Helper()
	if _, err := exec.LookPath("make"); err != nil {
		testdata.Missing(t, "make (apt-get install make)")
	}
	// Binary creates the directory Cleanup removes; the release goes in it.
	Binary(t)
	releaseOnce.Do(func() {
		r := &Release{Dir: filepath.Join(buildDir, "dist"), Version: releaseTestVersion, Commit: releaseTestCommit}
		start := time.Now()
		cmd := exec.Command("make", "-s", "release", "DIST="+r.Dir, "VERSION="+r.Version, "COMMIT="+r.Commit)
		// The Makefile sets CGO_ENABLED=0, GOOS and GOARCH for each binary,
		// whatever `go test -race` put in the environment.
		cmd.Dir = testdata.Root(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			releaseErr = fmt.Errorf("make release: %v\n%s", err, out)
			return
		}
		r.Took = time.Since(start)
		release = r
	})
	if releaseErr != nil {
		t.Fatal(releaseErr)
	}
	return release
}

// Daemon is a long-running process a test started (a coordinator or node
// started by hand rather than through `npumesh up`). Its stdout and stderr
// go to Log; it is stopped at test cleanup, and its log printed when the
// test failed.
type Daemon struct {
	Name    string
	Cmd     *exec.Cmd
	Log     *syncBuffer
	done    chan struct{}
	waitErr error
}

// StartDaemon starts cmd. The process gets SIGKILL if the test process dies
// (Pdeathsig), so a crashed test leaves nothing running.
func StartDaemon(t testing.TB, name string, cmd *exec.Cmd) *Daemon {
	t.Helper()
	d := &Daemon{Name: name, Cmd: cmd, Log: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = d.Log, d.Log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// Pdeathsig fires when the forking thread ends, not the process: the
	// child is started and waited for on one locked thread, which lives as
	// long as the child.
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		d.waitErr = cmd.Wait()
		close(d.done)
	}()
	if err := <-started; err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(func() {
		d.Stop(30 * time.Second)
		if t.Failed() {
			t.Logf("%s log:\n%s", name, d.Log.String())
		}
	})
	return d
}

// Stop sends SIGTERM and waits up to timeout for the process to exit, then
// kills it. It returns the exit error (nil for a clean exit) or a timeout.
func (d *Daemon) Stop(timeout time.Duration) error {
	if !terminate(d.Cmd, d.done, timeout) {
		return fmt.Errorf("%s did not stop within %s of SIGTERM", d.Name, timeout)
	}
	return d.waitErr
}

// terminate sends cmd SIGTERM unless it has exited (done is closed), kills
// it if it has not exited within timeout, and waits for done. It reports
// whether the process stopped in time.
func terminate(cmd *exec.Cmd, done <-chan struct{}, timeout time.Duration) bool {
	select {
	case <-done:
		return true
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
		return false
	}
}

// Done is closed when the process has exited.
func (d *Daemon) Done() <-chan struct{} { return d.done }

// WaitAddrFile waits for the daemon's --addr-file to appear and returns its
// key=value lines. It fails the test if the daemon exits first or the
// deadline passes.
func (d *Daemon) WaitAddrFile(t testing.TB, path string, timeout time.Duration) map[string]string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if b, err := os.ReadFile(path); err == nil {
			kv := map[string]string{}
			for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
				if k, v, ok := strings.Cut(line, "="); ok {
					kv[k] = v
				}
			}
			return kv
		}
		select {
		case <-d.done:
			t.Fatalf("%s exited before writing %s: %v\n%s", d.Name, path, d.waitErr, d.Log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s wrote no %s within %s\n%s", d.Name, path, timeout, d.Log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// IssueCert makes a certificate bundle in out with the CLI
// (`npumesh cert issue`), signed by the CA in caDir.
func IssueCert(t testing.TB, bin, caDir, name, role, out string) {
	t.Helper()
	cmd := exec.Command(bin, "cert", "issue", "--ca", caDir, "--name", name, "--role", role, "--out", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npumesh cert issue --name %s --role %s: %v\n%s", name, role, err, b)
	}
}
