package clustertest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/testdata"
)

// avahiAptLine is what installs the components TestMDNSAvahiInterop needs.
const avahiAptLine = "apt-get install -y avahi-daemon avahi-utils dbus-daemon iproute2 util-linux"

// avahi is an avahi-daemon running on a LAN host with a private D-Bus
// system bus, so that avahi-browse and avahi-publish can talk to it.
type avahi struct {
	host *Host
	env  []string // DBUS_SYSTEM_BUS_ADDRESS=...
}

// startAvahi runs a private dbus-daemon and an avahi-daemon in h's
// namespace. Neither touches the host's D-Bus or /run: the bus socket is in
// a temp dir, and avahi-daemon (whose pid file and socket directory,
// /run/avahi-daemon, are compiled in) runs under a tmpfs /run mounted in
// the private mount namespace `ip netns exec` creates.
func startAvahi(t *testing.T, h *Host) *avahi {
	t.Helper()
	for _, bin := range []string{"avahi-daemon", "avahi-browse", "avahi-publish", "dbus-daemon", "mount"} {
		if _, err := exec.LookPath(bin); err != nil {
			testdata.Missing(t, "%s (%s)", bin, avahiAptLine)
		}
	}
	dir := t.TempDir()
	bus := filepath.Join(dir, "system_bus_socket")
	busConf := fmt.Sprintf(`<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
`, bus)
	avahiConf := fmt.Sprintf(`[server]
host-name=avahi-%s
domain-name=local
use-ipv4=yes
use-ipv6=no
allow-interfaces=%s
enable-dbus=yes
ratelimit-interval-usec=1000000
ratelimit-burst=1000

[wide-area]
enable-wide-area=no

[publish]
publish-hinfo=no
publish-workstation=no
publish-addresses=yes

[reflector]
enable-reflector=no

[rlimits]
`, strings.TrimPrefix(h.NS, nsPrefix), h.Iface)
	for name, content := range map[string]string{"bus.conf": busConf, "avahi-daemon.conf": avahiConf} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	a := &avahi{host: h, env: []string{"DBUS_SYSTEM_BUS_ADDRESS=unix:path=" + bus}}
	h.Start(t, nil, "dbus-daemon", "--config-file="+filepath.Join(dir, "bus.conf"), "--nofork", "--nopidfile", "--nosyslog")
	if !WaitFor(10*time.Second, func() bool { _, err := os.Stat(bus); return err == nil }) {
		t.Fatalf("dbus-daemon: no socket %s within 10s", bus)
	}
	script := "mount -t tmpfs -o mode=0755 npumesh-test-run /run && mkdir -p /run/avahi-daemon && " +
		"exec avahi-daemon --file=" + filepath.Join(dir, "avahi-daemon.conf") + " --no-drop-root --no-chroot --no-rlimits --no-proc-title"
	d := h.Start(t, a.env, "sh", "-c", script)
	d.WaitLog("Server startup complete", 20*time.Second)
	return a
}

// run runs an avahi client (avahi-browse, ...) on the bus, bounded in time.
func (a *avahi) run(timeout time.Duration, name string, args ...string) (string, error) {
	return a.host.Run(timeout, "env", append(append(append([]string{}, a.env...), name), args...)...)
}

// avahiService is one resolved line ("=;...") of avahi-browse -p.
type avahiService struct {
	Iface, Proto, Name, Type, Domain, Host, Addr, Port string
	TXT                                                []string
}

func parseAvahiBrowse(out string) []avahiService {
	var ss []avahiService
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "=;") {
			continue
		}
		f := strings.SplitN(line, ";", 10)
		if len(f) < 10 {
			continue
		}
		s := avahiService{Iface: f[1], Proto: f[2], Name: f[3], Type: f[4], Domain: f[5], Host: f[6], Addr: f[7], Port: f[8]}
		for _, q := range strings.Split(f[9], "\" \"") {
			s.TXT = append(s.TXT, strings.Trim(q, "\""))
		}
		ss = append(ss, s)
	}
	return ss
}

// TestMDNSAvahiInterop checks our DNS-SD against avahi, the Linux
// reference: avahi-browse on host 1 resolves the coordinator that host 0
// advertises, with its TXT record; our `npumesh discover`, sharing UDP
// 5353 with avahi-daemon on host 1, still works; and it finds a service
// that avahi publishes in npumesh's record layout.
func TestMDNSAvahiInterop(t *testing.T) {
	lan := NewLAN(t, 2)
	h0, h1 := lan.Hosts[0], lan.Hosts[1]
	start := time.Now()
	av := startAvahi(t, h1)
	t.Logf("dbus-daemon and avahi-daemon up in %s", time.Since(start).Round(time.Millisecond))
	dir, coord := lanCoordinator(t, h0, "avahi-interop")
	fp := caFingerprint(t, dir)

	start = time.Now()
	var (
		found []avahiService
		out   string
	)
	ok := WaitFor(30*time.Second, func() bool {
		var err error
		out, err = av.run(20*time.Second, "avahi-browse", "-rtp", "_npumesh._tcp")
		found = nil
		for _, s := range parseAvahiBrowse(out) {
			if s.Type == "_npumesh._tcp" {
				found = append(found, s)
			}
		}
		return err == nil && len(found) > 0
	})
	if !ok {
		t.Fatalf("avahi-browse -rtp _npumesh._tcp did not resolve the coordinator within 30s:\n%s", out)
	}
	t.Logf("avahi-browse resolved the coordinator in %s:\n%s", time.Since(start).Round(time.Millisecond), out)
	s := found[0]
	if s.Addr != h0.IP.String() || s.Port != "7070" || !strings.HasPrefix(s.Name, "coordinator-avahi-interop") || s.Domain != "local" {
		t.Errorf("avahi resolved %+v; want %s port 7070, instance coordinator-avahi-interop-...", s, h0.IP)
	}
	txt := strings.Join(s.TXT, " ")
	for _, want := range []string{"txtvers=1", "role=coordinator", "ca-sha256=" + fp, "cluster=avahi-interop", "grpc=7070", "enroll=7071", "version="} {
		if !strings.Contains(txt, want) {
			t.Errorf("avahi's TXT for the coordinator lacks %q: %v", want, s.TXT)
		}
	}

	// avahi publishes a service in our layout; we find it (from the other
	// host), and our browser coexists with avahi-daemon on its host.
	const fakeFP = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	pub := h1.Start(t, av.env, "avahi-publish", "-s", "avahi-made", "_npumesh._tcp", "9999",
		"txtvers=1", "role=coordinator", "ca-sha256="+fakeFP, "cluster=from-avahi", "enroll=9998")
	pub.WaitLog("Established under name", 20*time.Second)
	var fromAvahi, ours bool
	WaitFor(20*time.Second, func() bool {
		fromAvahi = false
		for _, s := range discover(t, h0) {
			if s.CAFingerprint == fakeFP && s.Instance == "avahi-made" && s.GRPCAddr() == h1.IP.String()+":9999" && s.EnrollAddr() == h1.IP.String()+":9998" {
				fromAvahi = true
			}
		}
		ours = false
		for _, s := range discover(t, h1) {
			if s.CAFingerprint == fp && s.GRPCAddr() == h0.IP.String()+":7070" {
				ours = true
			}
		}
		return fromAvahi && ours
	})
	if !fromAvahi {
		t.Errorf("npumesh discover on host 0 did not find the service avahi-publish announces")
	}
	if !ours {
		t.Errorf("npumesh discover beside avahi-daemon on host 1 did not find the coordinator")
	}

	// A coordinator that stops says goodbye (its records with TTL 0):
	// avahi forgets it at once instead of after the 75-minute PTR TTL.
	if err := coord.Stop(); err != nil {
		t.Fatalf("coordinator exit: %v", err)
	}
	start = time.Now()
	gone := WaitFor(10*time.Second, func() bool {
		out, _ = av.run(20*time.Second, "avahi-browse", "-tp", "_npumesh._tcp")
		return !strings.Contains(out, "coordinator-avahi-interop") && strings.Contains(out, "avahi-made")
	})
	if !gone {
		t.Errorf("avahi still lists the stopped coordinator 10s after its goodbye:\n%s", out)
	}
	t.Logf("avahi dropped the stopped coordinator after %s", time.Since(start).Round(time.Millisecond))
}
