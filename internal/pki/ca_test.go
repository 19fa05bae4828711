package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestInitCA(t *testing.T) {
	ca, dir := newTestCA(t)
	c := ca.Cert()
	if !c.IsCA || !c.BasicConstraintsValid || c.MaxPathLen != 0 || !c.MaxPathLenZero {
		t.Errorf("CA constraints: IsCA=%v MaxPathLen=%d MaxPathLenZero=%v, want CA with MaxPathLen 0", c.IsCA, c.MaxPathLen, c.MaxPathLenZero)
	}
	if pub, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("CA key %T, want ECDSA P-256", c.PublicKey)
	}
	if life := c.NotAfter.Sub(time.Now()); life < 9*365*24*time.Hour {
		t.Errorf("CA valid for %v, want about 10 years", life)
	}
	for name, want := range map[string]os.FileMode{CACertFile: 0o644, CAKeyFile: 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s mode %v, want %v", name, got, want)
		}
	}
	if len(ca.Fingerprint()) != 64 || strings.ToLower(ca.Fingerprint()) != ca.Fingerprint() {
		t.Errorf("Fingerprint() = %q, want 64 lower-case hex digits", ca.Fingerprint())
	}
	keyPEM, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if block, _ := pem.Decode(keyPEM); block == nil || block.Type != "PRIVATE KEY" {
		t.Errorf("ca.key is not a PKCS#8 PEM block")
	}

	// A second init must not replace the CA, not even half of it.
	before, _ := os.ReadFile(filepath.Join(dir, CACertFile))
	if _, err := InitCA(dir); !errors.Is(err, ErrCAExists) {
		t.Fatalf("second InitCA = %v, want ErrCAExists", err)
	}
	os.Remove(filepath.Join(dir, CACertFile))
	if _, err := InitCA(dir); !errors.Is(err, ErrCAExists) {
		t.Fatalf("InitCA with only ca.key left = %v, want ErrCAExists", err)
	}
	if err := os.WriteFile(filepath.Join(dir, CACertFile), before, 0o644); err != nil {
		t.Fatal(err)
	}

	loaded, err := LoadCA(dir)
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	if loaded.Fingerprint() != ca.Fingerprint() || !bytes.Equal(loaded.CertPEM(), ca.CertPEM()) {
		t.Errorf("LoadCA returned a different CA")
	}
}

func TestLoadCAErrors(t *testing.T) {
	_, dir := newTestCA(t)
	_, otherDir := newTestCA(t)

	t.Run("missing dir", func(t *testing.T) {
		_, err := LoadCA(filepath.Join(t.TempDir(), "nope"))
		if err == nil || !strings.Contains(err.Error(), "ca.crt is missing") || !strings.Contains(err.Error(), "npumesh ca init") {
			t.Errorf("got %v, want an error naming ca.crt and `npumesh ca init`", err)
		}
	})
	t.Run("missing key", func(t *testing.T) {
		d := t.TempDir()
		copyFile(t, filepath.Join(dir, CACertFile), filepath.Join(d, CACertFile))
		_, err := LoadCA(d)
		if err == nil || !strings.Contains(err.Error(), "ca.key is missing") {
			t.Errorf("got %v, want an error naming ca.key", err)
		}
	})
	t.Run("key of another CA", func(t *testing.T) {
		d := t.TempDir()
		copyFile(t, filepath.Join(dir, CACertFile), filepath.Join(d, CACertFile))
		copyFile(t, filepath.Join(otherDir, CAKeyFile), filepath.Join(d, CAKeyFile))
		_, err := LoadCA(d)
		if err == nil || !strings.Contains(err.Error(), "does not belong") {
			t.Errorf("got %v, want a key mismatch error", err)
		}
	})
	t.Run("garbage", func(t *testing.T) {
		d := t.TempDir()
		os.WriteFile(filepath.Join(d, CACertFile), []byte("hello"), 0o644)
		copyFile(t, filepath.Join(dir, CAKeyFile), filepath.Join(d, CAKeyFile))
		_, err := LoadCA(d)
		if err == nil || !strings.Contains(err.Error(), "ca.crt") {
			t.Errorf("got %v, want an error naming ca.crt", err)
		}
	})
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestIssue(t *testing.T) {
	ca, _ := newTestCA(t)
	for _, tc := range []struct {
		role Role
		eku  []x509.ExtKeyUsage
	}{
		{RoleNode, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}},
		{RoleCoordinator, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}},
		{RoleClient, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
	} {
		t.Run(string(tc.role), func(t *testing.T) {
			start := time.Now()
			req := IssueRequest{Name: "x1", Role: tc.role, IPs: []net.IP{net.ParseIP("10.0.0.7"), net.ParseIP("fd00::7")}, DNS: []string{"x1.lan"}}
			certPEM, keyPEM, err := ca.Issue(req)
			if err != nil {
				t.Fatal(err)
			}
			c, err := parseCert(certPEM, "cert")
			if err != nil {
				t.Fatal(err)
			}
			if id, err := IdentityFromCert(c); err != nil || id != (Identity{tc.role, "x1"}) {
				t.Errorf("identity %v, %v; want %s/x1", id, err, tc.role)
			}
			if len(c.URIs) != 1 || c.URIs[0].String() != "npumesh://"+string(tc.role)+"/x1" {
				t.Errorf("URIs %v", c.URIs)
			}
			if !slices.Equal(c.ExtKeyUsage, tc.eku) {
				t.Errorf("ExtKeyUsage %v, want %v", c.ExtKeyUsage, tc.eku)
			}
			if c.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("KeyUsage %v, want DigitalSignature only", c.KeyUsage)
			}
			if c.IsCA {
				t.Errorf("leaf is a CA")
			}
			if len(c.IPAddresses) != 2 || !c.IPAddresses[0].Equal(req.IPs[0]) || !c.IPAddresses[1].Equal(req.IPs[1]) {
				t.Errorf("IPs %v, want %v", c.IPAddresses, req.IPs)
			}
			if !slices.Equal(c.DNSNames, req.DNS) {
				t.Errorf("DNS %v, want %v", c.DNSNames, req.DNS)
			}
			if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 {
				t.Errorf("serial %v, want positive, at most 128 bits", c.SerialNumber)
			}
			if d := start.Sub(c.NotBefore); d < 50*time.Second || d > 2*time.Minute {
				t.Errorf("NotBefore %v before now, want about a minute", d)
			}
			if d := c.NotAfter.Sub(start); d < DefaultValidity-time.Minute || d > DefaultValidity+time.Minute {
				t.Errorf("valid for %v, want %v", d, DefaultValidity)
			}
			if pub, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
				t.Errorf("key %T, want ECDSA P-256", c.PublicKey)
			}
			if block, _ := pem.Decode(keyPEM); block == nil || block.Type != "PRIVATE KEY" {
				t.Errorf("key is not PKCS#8 PEM")
			}
			if _, err := c.Verify(x509.VerifyOptions{Roots: ca.pool(), KeyUsages: tc.eku}); err != nil {
				t.Errorf("does not verify under the CA: %v", err)
			}
		})
	}

	t.Run("validity", func(t *testing.T) {
		certPEM, _, err := ca.Issue(IssueRequest{Name: "short", Role: RoleNode, Validity: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		c, _ := parseCert(certPEM, "cert")
		if d := time.Until(c.NotAfter); d > time.Hour || d < 59*time.Minute {
			t.Errorf("valid for %v more, want 1h", d)
		}
		certPEM, _, err = ca.Issue(IssueRequest{Name: "long", Role: RoleNode, Validity: 100 * 365 * 24 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		c, _ = parseCert(certPEM, "cert")
		if c.NotAfter.After(ca.Cert().NotAfter) {
			t.Errorf("certificate outlives its CA: %v > %v", c.NotAfter, ca.Cert().NotAfter)
		}
	})

	t.Run("serials differ", func(t *testing.T) {
		a, _, _ := ca.Issue(IssueRequest{Name: "a", Role: RoleNode})
		b, _, _ := ca.Issue(IssueRequest{Name: "a", Role: RoleNode})
		ca, _ := parseCert(a, "a")
		cb, _ := parseCert(b, "b")
		if ca.SerialNumber.Cmp(cb.SerialNumber) == 0 {
			t.Errorf("two certificates share serial %v", ca.SerialNumber)
		}
	})
}

func TestIssueErrors(t *testing.T) {
	ca, _ := newTestCA(t)
	for _, tc := range []struct {
		desc    string
		req     IssueRequest
		wantIs  error
		wantMsg string
	}{
		{"empty name", IssueRequest{Role: RoleNode}, ErrInvalidName, "like a DNS label"},
		{"upper case", IssueRequest{Name: "Node1", Role: RoleNode}, ErrInvalidName, `"Node1"`},
		{"slash", IssueRequest{Name: "a/b", Role: RoleNode}, ErrInvalidName, "lowercase letters"},
		{"no role", IssueRequest{Name: "n1"}, ErrInvalidRole, "node, coordinator or client"},
		{"bad role", IssueRequest{Name: "n1", Role: "admin"}, ErrInvalidRole, `"admin"`},
		{"bad dns", IssueRequest{Name: "n1", Role: RoleNode, DNS: []string{"a..b"}}, nil, "invalid DNS name"},
		{"bad ip", IssueRequest{Name: "n1", Role: RoleNode, IPs: []net.IP{{1, 2, 3}}}, nil, "invalid IP"},
		{"negative validity", IssueRequest{Name: "n1", Role: RoleNode, Validity: -time.Hour}, nil, "negative validity"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			certPEM, keyPEM, err := ca.Issue(tc.req)
			if err == nil || certPEM != nil || keyPEM != nil {
				t.Fatalf("got %d-byte cert, err %v; want an error", len(certPEM), err)
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("error %v does not wrap %v", err, tc.wantIs)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not contain %q", err, tc.wantMsg)
			}
		})
	}
}

func TestEnsureBundle(t *testing.T) {
	ca, _ := newTestCA(t)
	other, _ := newTestCA(t)
	dir := filepath.Join(t.TempDir(), "node")
	req := IssueRequest{Name: "n1", Role: RoleNode, IPs: []net.IP{net.ParseIP("10.0.0.1")}}

	ensure := func(ca *CA, req IssueRequest, wantIssued bool) *Bundle {
		t.Helper()
		b, issued, err := ca.EnsureBundle(dir, req)
		if err != nil {
			t.Fatalf("EnsureBundle: %v", err)
		}
		if issued != wantIssued {
			t.Fatalf("issued = %v, want %v", issued, wantIssued)
		}
		if b.Identity() != req.Identity() || b.CAFingerprint() != ca.Fingerprint() {
			t.Fatalf("bundle is %v under CA %s, want %v under %s", b.Identity(), b.CAFingerprint()[:8], req.Identity(), ca.Fingerprint()[:8])
		}
		return b
	}

	first := ensure(ca, req, true)
	again := ensure(ca, req, false)
	if !again.Leaf().Equal(first.Leaf()) {
		t.Errorf("reused bundle has a different certificate")
	}
	// A subset of the IPs is still covered.
	ensure(ca, IssueRequest{Name: "n1", Role: RoleNode}, false)
	// A new IP, another role or name, or another CA need a new certificate.
	req.IPs = append(req.IPs, net.ParseIP("10.0.0.2"))
	ensure(ca, req, true)
	ensure(ca, req, false)
	req.DNS = []string{"n1.lan"}
	ensure(ca, req, true)
	ensure(ca, IssueRequest{Name: "n1", Role: RoleCoordinator}, true)
	ensure(ca, IssueRequest{Name: "n2", Role: RoleCoordinator}, true)
	ensure(other, IssueRequest{Name: "n2", Role: RoleCoordinator}, true)
	ensure(ca, IssueRequest{Name: "n2", Role: RoleCoordinator}, true)

	// Near expiry: a certificate in the last third of its life is
	// replaced. Lifetimes include the minute of backdating: 90s left of
	// 150s is reused, 10s left of 70s is not.
	long := IssueRequest{Name: "n3", Role: RoleNode, Validity: 90 * time.Second}
	ensure(ca, long, true)
	ensure(ca, long, false)
	short := IssueRequest{Name: "n4", Role: RoleNode, Validity: 10 * time.Second}
	ensure(ca, short, true)
	ensure(ca, short, true)

	// A damaged bundle is replaced.
	os.WriteFile(filepath.Join(dir, BundleKeyFile), []byte("junk"), 0o600)
	ensure(ca, req, true)

	if _, _, err := ca.EnsureBundle(dir, IssueRequest{Name: "Bad", Role: RoleNode}); !errors.Is(err, ErrInvalidName) {
		t.Errorf("EnsureBundle with a bad name = %v, want ErrInvalidName", err)
	}
}

func TestInitCAConcurrent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	const n = 8
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := InitCA(dir)
			errs <- err
		}()
	}
	won := 0
	for range n {
		switch err := <-errs; {
		case err == nil:
			won++
		case !errors.Is(err, ErrCAExists):
			t.Errorf("InitCA: %v, want success or ErrCAExists", err)
		}
	}
	if won != 1 {
		t.Errorf("%d concurrent InitCA calls succeeded, want 1", won)
	}
	if _, err := LoadCA(dir); err != nil {
		t.Errorf("LoadCA after the race: %v", err)
	}
}
