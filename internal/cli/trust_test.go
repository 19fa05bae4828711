package cli

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/npumesh/npumesh/internal/pki"
)

func TestDeriveEnroll(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"127.0.0.1:7070", "127.0.0.1:7071"},
		{"0.0.0.0:0", "0.0.0.0:0"},
		{"[::1]:9000", "[::1]:9001"},
		{"host.lan:7070", "host.lan:7071"},
	} {
		got, err := deriveEnroll(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("deriveEnroll(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"nohost", "h:x", "h:65535"} {
		if _, err := deriveEnroll(bad); err == nil {
			t.Errorf("deriveEnroll(%q) succeeded", bad)
		}
	}
}

func TestLoadCoordinatorTrust(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir := t.TempDir()
	tr, err := loadCoordinatorTrust(log, "", dir, "127.0.0.1:7070")
	if err != nil {
		t.Fatal(err)
	}
	if tr.ca == nil || tr.bundle.Identity() != (pki.Identity{Role: pki.RoleCoordinator, Name: "coordinator"}) {
		t.Fatalf("trust %+v", tr)
	}
	admin, err := pki.LoadBundle(filepath.Join(dir, "certs", adminBundle))
	if err != nil || admin.Identity().Role != pki.RoleClient {
		t.Fatalf("admin bundle: %v", err)
	}
	// A second start reuses the CA and certificates.
	again, err := loadCoordinatorTrust(log, "", dir, "127.0.0.1:7070")
	if err != nil {
		t.Fatal(err)
	}
	if again.ca.Fingerprint() != tr.ca.Fingerprint() || !again.bundle.Leaf().Equal(tr.bundle.Leaf()) {
		t.Errorf("restart changed the CA or the coordinator certificate")
	}
	// --tls-dir alone: no CA, no signing.
	legacy, err := loadCoordinatorTrust(log, filepath.Join(dir, "certs", "coordinator"), "", "")
	if err != nil || legacy.ca != nil {
		t.Errorf("--tls-dir alone: %+v, %v", legacy, err)
	}
}

func TestLoadNodeBundleErrors(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx := context.Background()
	dir := t.TempDir()
	for _, tc := range []struct {
		t    nodeTrust
		want string
	}{
		{nodeTrust{dataDir: dir}, "holds none"},
		{nodeTrust{dataDir: dir, join: "npm1.x"}, "invalid join token"},
		{nodeTrust{tlsDir: dir, join: "npm1.x"}, "one or the other"},
		{nodeTrust{dataDir: dir, join: "npm1.abcdefgh." + strings.Repeat("a2", 16) + "." + strings.Repeat("ab", 32), name: "n"}, "--coordinator"},
	} {
		if _, _, err := loadNodeBundle(ctx, log, tc.t); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want an error containing %q", tc.t, err, tc.want)
		}
	}
}
