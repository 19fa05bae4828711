package pki

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestWriteBundlePermissions(t *testing.T) {
	// A permissive umask must not leak into the key's mode.
	old := syscall.Umask(0)
	defer syscall.Umask(old)

	ca, _ := newTestCA(t)
	_, dir := newTestBundle(t, ca, RoleNode, "n1")
	for name, want := range map[string]os.FileMode{BundleCAFile: 0o644, BundleCertFile: 0o644, BundleKeyFile: 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s mode %v, want %v", name, got, want)
		}
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o700 {
		t.Errorf("bundle dir mode %v, want 0700", got)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 3 {
		t.Errorf("bundle dir holds %d entries, want 3 (no temporary files left)", len(entries))
	}
}

func TestBundleRoundTrip(t *testing.T) {
	ca, _ := newTestCA(t)
	b, dir := newTestBundle(t, ca, RoleCoordinator, "c1")
	if got, want := b.Identity(), (Identity{RoleCoordinator, "c1"}); got != want {
		t.Errorf("Identity() = %v, want %v", got, want)
	}
	if got := b.Identity().String(); got != "npumesh://coordinator/c1" {
		t.Errorf("Identity().String() = %q", got)
	}
	if b.CAFingerprint() != ca.Fingerprint() {
		t.Errorf("CAFingerprint %s, want %s", b.CAFingerprint(), ca.Fingerprint())
	}
	// Rewriting (renewal) replaces the files.
	certPEM, keyPEM, err := ca.Issue(IssueRequest{Name: "c1", Role: RoleCoordinator})
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteBundle(dir, ca.CertPEM(), certPEM, keyPEM); err != nil {
		t.Fatalf("rewrite: %v", err)
	}
	b2, err := LoadBundle(dir)
	if err != nil {
		t.Fatal(err)
	}
	if b2.Leaf().Equal(b.Leaf()) {
		t.Errorf("rewritten bundle still holds the old certificate")
	}
}

func TestWriteBundleRejects(t *testing.T) {
	ca, _ := newTestCA(t)
	other, _ := newTestCA(t)
	certPEM, keyPEM, _ := ca.Issue(IssueRequest{Name: "n1", Role: RoleNode})
	_, otherKey, _ := ca.Issue(IssueRequest{Name: "n2", Role: RoleNode})
	for _, tc := range []struct {
		desc             string
		caPEM, cert, key []byte
		want             string
	}{
		{"foreign CA", other.CertPEM(), certPEM, keyPEM, "not valid under ca.crt"},
		{"wrong key", ca.CertPEM(), certPEM, otherKey, "tls.key does not belong to tls.crt"},
		{"CA as leaf", ca.CertPEM(), ca.CertPEM(), keyPEM, "tls.key does not belong"},
		{"leaf as CA", certPEM, certPEM, keyPEM, "not a CA certificate"},
		{"no cert", ca.CertPEM(), nil, keyPEM, "tls.crt: no PEM"},
		{"no key", ca.CertPEM(), certPEM, nil, "tls.key: no PEM"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "b")
			err := WriteBundle(dir, tc.caPEM, tc.cert, tc.key)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("WriteBundle left %s behind after refusing", dir)
			}
		})
	}
}

func TestLoadBundleErrors(t *testing.T) {
	ca, _ := newTestCA(t)
	_, good := newTestBundle(t, ca, RoleNode, "n1")
	other, _ := newTestCA(t)

	for _, missing := range []string{BundleCAFile, BundleCertFile, BundleKeyFile} {
		t.Run("missing "+missing, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range []string{BundleCAFile, BundleCertFile, BundleKeyFile} {
				if f != missing {
					copyFile(t, filepath.Join(good, f), filepath.Join(dir, f))
				}
			}
			_, err := LoadBundle(dir)
			if err == nil {
				t.Fatal("LoadBundle succeeded")
			}
			for _, want := range []string{filepath.Join(dir, missing) + " is missing", "npumesh cert issue", "--out " + dir} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
	t.Run("ca.crt of another cluster", func(t *testing.T) {
		dir := t.TempDir()
		copyFile(t, filepath.Join(good, BundleCertFile), filepath.Join(dir, BundleCertFile))
		copyFile(t, filepath.Join(good, BundleKeyFile), filepath.Join(dir, BundleKeyFile))
		os.WriteFile(filepath.Join(dir, BundleCAFile), other.CertPEM(), 0o644)
		_, err := LoadBundle(dir)
		if err == nil || !strings.Contains(err.Error(), "tls.crt is not valid under ca.crt") {
			t.Errorf("got %v, want a chain error", err)
		}
	})
	t.Run("corrupt key", func(t *testing.T) {
		dir := t.TempDir()
		copyFile(t, filepath.Join(good, BundleCAFile), filepath.Join(dir, BundleCAFile))
		copyFile(t, filepath.Join(good, BundleCertFile), filepath.Join(dir, BundleCertFile))
		os.WriteFile(filepath.Join(dir, BundleKeyFile), []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600)
		_, err := LoadBundle(dir)
		if err == nil || !strings.Contains(err.Error(), "tls.key") {
			t.Errorf("got %v, want an error naming tls.key", err)
		}
	})
}
