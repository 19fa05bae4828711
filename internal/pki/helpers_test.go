package pki

import (
	"net"
	"path/filepath"
	"testing"
)

// newTestCA creates a fresh cluster CA in a temporary directory.
func newTestCA(t testing.TB) (*CA, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := InitCA(dir)
	if err != nil {
		t.Fatalf("InitCA: %v", err)
	}
	return ca, dir
}

// newTestBundle issues a certificate for role/name (with 127.0.0.1 as IP
// SAN), writes it as a bundle and loads it back.
func newTestBundle(t testing.TB, ca *CA, role Role, name string) (*Bundle, string) {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(IssueRequest{Name: name, Role: role, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatalf("Issue %s/%s: %v", role, name, err)
	}
	dir := filepath.Join(t.TempDir(), string(role)+"-"+name)
	if err := WriteBundle(dir, ca.CertPEM(), certPEM, keyPEM); err != nil {
		t.Fatalf("WriteBundle: %v", err)
	}
	b, err := LoadBundle(dir)
	if err != nil {
		t.Fatalf("LoadBundle: %v", err)
	}
	return b, dir
}
