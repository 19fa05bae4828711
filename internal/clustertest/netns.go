package clustertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/npumesh/npumesh/internal/testdata"
)

// A LAN is a private Ethernet segment for tests: one network namespace
// holding a bridge, and N host namespaces, each with an eth0 (a veth pair
// whose other end is a bridge port) addressed 10.231.0.<i+1>/24. The
// addresses exist only inside the namespaces; nothing touches the host's
// interfaces or routes, and no packet leaves the bridge. Namespace names
// carry the test process id and a random tag, so parallel runs never
// collide, and everything is removed at test cleanup, failed or not
// (namespaces left by a killed run are removed by the next NewLAN).
//
// It needs root and iproute2's `ip`; under CI=true their absence fails the
// test, elsewhere it skips.
type LAN struct {
	t      testing.TB
	Prefix string // unique per LAN: every namespace name starts with it
	Bridge string // the bridge's namespace
	Hosts  []*Host
}

// Host is one machine on a LAN: a network namespace.
type Host struct {
	NS    string     // namespace name, for `ip netns exec`
	Iface string     // "eth0"
	IP    netip.Addr // 10.231.0.<index+1>
}

// LANSubnet is the test range, used inside test namespaces only.
const LANSubnet = "10.231.0.0/24"

// nsPrefix starts every namespace a LAN creates: npmt<pid>x<tag>.
const nsPrefix = "npmt"

var staleNS = regexp.MustCompile(`^` + nsPrefix + `(\d+)x[0-9a-f]+-`)

// RequireNetns skips (fails under CI=true) unless the test can create
// network namespaces: root and iproute2.
func RequireNetns(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		testdata.Missing(t, "root, to create network namespaces (run the tests as root)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		testdata.Missing(t, "iproute2 (`ip`): apt-get install -y iproute2")
	}
}

// NewLAN creates n hosts on one bridge. It fails the test when the
// namespaces cannot be made.
func NewLAN(t testing.TB, n int) *LAN {
	t.Helper()
	RequireNetns(t)
	if n < 1 || n > 250 {
		t.Fatalf("NewLAN: %d hosts; want 1 to 250", n)
	}
	sweepStaleNamespaces(t)
	var tag [3]byte
	if _, err := rand.Read(tag[:]); err != nil {
		t.Fatal(err)
	}
	l := &LAN{t: t, Prefix: fmt.Sprintf("%s%dx%s", nsPrefix, os.Getpid(), hex.EncodeToString(tag[:]))}
	l.Bridge = l.Prefix + "-br"
	t.Cleanup(l.Close)
	var cmds [][]string
	addNS := func(ns string) {
		cmds = append(cmds, []string{"netns", "add", ns}, []string{"-n", ns, "link", "set", "lo", "up"})
	}
	addNS(l.Bridge)
	cmds = append(cmds,
		[]string{"-n", l.Bridge, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"},
		[]string{"-n", l.Bridge, "link", "set", "br0", "up"},
	)
	for i := 0; i < n; i++ {
		h := &Host{NS: fmt.Sprintf("%s-h%d", l.Prefix, i), Iface: "eth0", IP: netip.AddrFrom4([4]byte{10, 231, 0, byte(i + 1)})}
		port := fmt.Sprintf("p%d", i)
		addNS(h.NS)
		cmds = append(cmds,
			[]string{"-n", l.Bridge, "link", "add", port, "type", "veth", "peer", "name", h.Iface, "netns", h.NS},
			[]string{"-n", l.Bridge, "link", "set", port, "master", "br0", "up"},
			[]string{"-n", h.NS, "addr", "add", h.IP.String() + "/24", "dev", h.Iface},
			[]string{"-n", h.NS, "link", "set", h.Iface, "up"},
			// No default route: only the LAN is reachable. Multicast goes out eth0.
			[]string{"-n", h.NS, "route", "add", "224.0.0.0/4", "dev", h.Iface},
		)
		l.Hosts = append(l.Hosts, h)
	}
	for _, c := range cmds {
		if out, err := ipCmd(c...); err != nil {
			if c[0] == "netns" && c[1] == "add" && c[2] == l.Bridge {
				testdata.Missing(t, "network namespaces (`ip netns add` failed: %v: %s); run as root with CAP_SYS_ADMIN", err, out)
			}
			t.Fatalf("ip %s: %v\n%s", strings.Join(c, " "), err, out)
		}
	}
	return l
}

// Close kills every process left in the LAN's namespaces and deletes
// them. NewLAN registers it as a test cleanup; calling it again is harmless.
func (l *LAN) Close() {
	names := []string{l.Bridge}
	for _, h := range l.Hosts {
		names = append(names, h.NS)
	}
	for _, ns := range names {
		deleteNamespace(ns)
	}
}

// deleteNamespace kills the processes in ns (all started by the test that
// made it) and deletes it, which also removes its veth ends.
func deleteNamespace(ns string) {
	if _, err := os.Stat("/run/netns/" + ns); err != nil {
		return
	}
	out, _ := ipCmd("netns", "pids", ns)
	for _, f := range strings.Fields(out) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
			if p, err := os.FindProcess(pid); err == nil {
				_ = p.Kill()
			}
		}
	}
	for i := 0; i < 50; i++ {
		if out, _ := ipCmd("netns", "pids", ns); strings.TrimSpace(out) == "" {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, _ = ipCmd("netns", "del", ns)
}

// sweepStaleNamespaces removes namespaces of earlier LANs whose test
// process is gone (killed before its cleanup ran).
func sweepStaleNamespaces(t testing.TB) {
	ents, err := os.ReadDir("/run/netns")
	if err != nil {
		return
	}
	for _, e := range ents {
		m := staleNS.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		if pid, _ := strconv.Atoi(m[1]); pid == os.Getpid() || Alive(pid) {
			continue
		}
		t.Logf("removing stale test namespace %s", e.Name())
		deleteNamespace(e.Name())
	}
}

func ipCmd(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	return string(out), err
}

// Command returns a command that runs name inside the host's namespace
// (`ip netns exec NS name args...`); the process keeps the caller's
// environment and file system.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Run runs name in the host's namespace, waiting at most timeout, and
// returns its stdout and stderr together.
func (h *Host) Run(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := h.Command(ctx, name, args...).CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s did not finish within %s: %w", name, timeout, ctx.Err())
	}
	return string(out), err
}

// MustRun is Run failing the test on an error.
func (h *Host) MustRun(t testing.TB, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := h.Run(timeout, name, args...)
	if err != nil {
		t.Fatalf("in %s: %s %s: %v\n%s", h.NS, name, strings.Join(args, " "), err, out)
	}
	return out
}

// Start runs name in the host's namespace in the background, with env
// added to the caller's environment; it is stopped (SIGTERM, then SIGKILL)
// at test cleanup, and its output is logged when the test failed.
func (h *Host) Start(t testing.TB, env []string, name string, args ...string) *Process {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	p := &Process{t: t, Cmd: cmd, Log: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.Log, p.Log
	p.Started = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s in %s: %v", name, h.NS, err)
	}
	go func() { p.waitErr = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("log of %s %s (in %s):\n%s", name, strings.Join(args, " "), h.NS, p.Log.String())
		}
	})
	return p
}

// StartNpumesh runs the npumesh binary with args in the host's namespace.
func (h *Host) StartNpumesh(t testing.TB, args ...string) *Process {
	t.Helper()
	return h.Start(t, nil, Binary(t), args...)
}

// WaitLog waits until the process's output contains s, failing the test
// after timeout or when the process exits first.
func (p *Process) WaitLog(s string, timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(p.Log.String(), s) {
		select {
		case <-p.done:
			if strings.Contains(p.Log.String(), s) {
				return
			}
			p.t.Fatalf("process exited (%v) before logging %q:\n%s", p.waitErr, s, p.Log.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("no %q in the process log within %s:\n%s", s, timeout, p.Log.String())
		}
	}
}

// InNetns runs fn on an OS thread of the test process that is inside
// network namespace ns (a name under /run/netns) while fn runs; sockets
// fn creates stay in ns and work from any thread afterwards. fn runs on
// its own goroutine and must do its namespace work on it (no goroutines).
//
// The thread is moved back to its own namespace before it is unlocked and
// returned to the scheduler. It must not simply end locked (the runtime's
// answer to "locked and never unlocked"): a child started with Pdeathsig
// (StartDaemon) is killed when the *thread* that forked it exits, so
// ending a thread kills whichever test daemon the Go scheduler happened to
// fork from it, and a locked goroutine that ends on the main thread wedges
// that thread inside ns. Only when the way back fails does the thread stay
// locked and end with the goroutine, so no other goroutine ever runs in ns.
func InNetns(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("this thread's network namespace: %w", err)
			return
		}
		defer home.Close()
		target, err := os.Open("/run/netns/" + ns)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		err = unix.Setns(int(target.Fd()), unix.CLONE_NEWNET)
		target.Close()
		if err != nil {
			runtime.UnlockOSThread() // setns failed: the thread did not move
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(home.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave network namespace %s: %w", ns, err))
			return // still locked: the thread ends with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// DialInNetns dials addr, an IP:port (a host name would be resolved on
// other goroutines, outside ns), from inside network namespace ns (see
// InNetns).
func DialInNetns(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := InNetns(ns, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil && c != nil {
		c.Close()
		c = nil
	}
	return c, err
}
