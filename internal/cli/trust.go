package cli

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/npumesh/npumesh/internal/coordinator"
	"github.com/npumesh/npumesh/internal/node"
	"github.com/npumesh/npumesh/internal/pki"
)

// Layout of a coordinator data dir (the same as `npumesh up`'s):
//
//	ca/ca.crt, ca/ca.key        the cluster CA
//	certs/coordinator/          the coordinator's own bundle
//	certs/admin/                a client bundle for the admin CLI (token, node revoke)
//	state.json                  tokens, revocations, node records (coordinator.FileStore)
//	run/coordinator.addr        grpc=, api=, enroll= addresses while running
const (
	adminBundle   = "admin"
	coordAddrFile = "coordinator.addr"
)

// coordinatorTrust is what a coordinator process trusts and signs with.
type coordinatorTrust struct {
	bundle *pki.Bundle
	ca     *pki.CA // nil: no enrollment or renewal
	store  coordinator.Store
}

// loadCoordinatorTrust sets up the coordinator's PKI and state:
//   - --tls-dir alone: the bundle there, state in memory, no CA (as before
//     data dirs existed);
//   - --data-dir (the default): the CA in DIR/ca (created on first start),
//     its own bundle in DIR/certs/coordinator and an admin client bundle
//     in DIR/certs/admin (issued or renewed as needed), state in
//     DIR/state.json;
//   - both: the bundle from --tls-dir, the CA (if DIR/ca has one) and the
//     state from --data-dir.
func loadCoordinatorTrust(log *slog.Logger, tlsDir, dataDir, listen string) (*coordinatorTrust, error) {
	t := &coordinatorTrust{}
	if dataDir == "" {
		b, err := pki.LoadBundle(tlsDir)
		if err != nil {
			return nil, err
		}
		t.bundle, t.store = b, coordinator.NewMemoryStore()
		return t, nil
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("coordinator data dir: %w", err)
	}
	caDir := filepath.Join(dataDir, "ca")
	ca, err := pki.LoadCA(caDir)
	if err != nil {
		_, statErr := os.Stat(filepath.Join(caDir, pki.CACertFile))
		switch {
		case statErr == nil:
			return nil, err // a CA is there but broken: never replace it
		case tlsDir != "":
			ca = nil // hand-made certificates: no signing here
		default:
			if ca, err = pki.InitCA(caDir); err != nil {
				return nil, err
			}
			log.Info("created cluster CA", "dir", caDir, "fingerprint", ca.Fingerprint())
		}
	}
	t.ca = ca
	if tlsDir != "" {
		if t.bundle, err = pki.LoadBundle(tlsDir); err != nil {
			return nil, err
		}
	} else {
		req := pki.IssueRequest{Name: "coordinator", Role: pki.RoleCoordinator, IPs: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, DNS: []string{"localhost"}}
		if host, _, err := net.SplitHostPort(listen); err == nil {
			if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() && !ip.IsLoopback() {
				req.IPs = append(req.IPs, ip)
			}
		}
		if t.bundle, _, err = ca.EnsureBundle(filepath.Join(dataDir, "certs", "coordinator"), req); err != nil {
			return nil, err
		}
	}
	if ca != nil {
		if _, issued, err := ca.EnsureBundle(filepath.Join(dataDir, "certs", adminBundle), pki.IssueRequest{Name: adminBundle, Role: pki.RoleClient}); err != nil {
			return nil, err
		} else if issued {
			log.Info("issued the admin client certificate", "dir", filepath.Join(dataDir, "certs", adminBundle))
		}
	}
	if t.store, err = coordinator.OpenFileStore(filepath.Join(dataDir, coordinator.StateFile)); err != nil {
		return nil, err
	}
	return t, nil
}

// deriveEnroll returns the default enrollment address for a gRPC address:
// the same host, the next port (port 0 stays 0).
func deriveEnroll(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("bad address %q: %w", addr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65534 {
		return "", fmt.Errorf("bad port in %q", addr)
	}
	if p != 0 {
		p++
	}
	return net.JoinHostPort(host, strconv.Itoa(p)), nil
}

// nodeTrust holds the node flags that decide its certificate.
type nodeTrust struct {
	tlsDir, dataDir, join, name, coordinator, enrollAddr string
}

// loadNodeBundle returns the node's bundle and the directory it lives in
// (where renewals are written), enrolling with the join token when the
// data dir holds no usable certificate.
func loadNodeBundle(ctx context.Context, log *slog.Logger, t nodeTrust) (*pki.Bundle, string, error) {
	if t.tlsDir != "" {
		if t.dataDir != "" || t.join != "" {
			return nil, "", errors.New("--tls-dir takes a ready certificate; --join and --data-dir enroll one instead: give one or the other")
		}
		b, err := pki.LoadBundle(t.tlsDir)
		return b, t.tlsDir, err
	}
	dir := t.dataDir
	if dir == "" {
		d, err := defaultDataDir()
		if err != nil {
			return nil, "", err
		}
		dir = filepath.Join(d, "node")
	}
	b, err := pki.LoadBundle(dir)
	if t.join == "" {
		switch {
		case errors.Is(err, pki.ErrCertExpired):
			return nil, "", fmt.Errorf("the node certificate in %s has expired (it could not renew while the node was off): enroll again with `npumesh node --join TOKEN --data-dir %s ...`, a token from `npumesh token create`", dir, dir)
		case err != nil && !fileExists(filepath.Join(dir, pki.BundleCertFile)):
			return nil, "", fmt.Errorf("a node certificate is required and %s holds none: enroll with `npumesh node --join TOKEN --data-dir %s ...` (an admin creates the token with `npumesh token create`), or give --tls-dir with an issued certificate", dir, dir)
		}
		return b, dir, err
	}
	tok, terr := pki.ParseJoinToken(t.join)
	if terr != nil {
		return nil, "", fmt.Errorf("--join: %w", terr)
	}
	name := t.name
	if err == nil {
		switch {
		case b.CAFingerprint() != tok.CAFingerprint:
			log.Warn("the data dir holds a certificate of another cluster; enrolling into the token's cluster", "dir", dir, "old_ca", b.CAFingerprint())
		case name != "" && name != b.Identity().Name:
			log.Info("enrolling under a new name", "old", b.Identity().Name, "new", name)
		default:
			log.Info("already enrolled; --join is not needed", "dir", dir, "identity", b.Identity().String())
			return b, dir, nil
		}
	}
	if name == "" {
		name = previousName(dir)
	}
	if name == "" {
		if name, err = hostNodeName(); err != nil {
			return nil, "", err
		}
	}
	enrollAddr := t.enrollAddr
	if enrollAddr == "" {
		first := splitList(t.coordinator)
		if len(first) == 0 {
			return nil, "", errors.New("--join needs --coordinator HOST:PORT")
		}
		if enrollAddr, err = deriveEnroll(first[0]); err != nil {
			return nil, "", fmt.Errorf("--coordinator: %w", err)
		}
	}
	log.Info("enrolling", "name", name, "enroll_addr", enrollAddr, "token", tok.ID, "ca_sha256", tok.CAFingerprint)
	b, err = node.Enroll(ctx, node.EnrollConfig{Addr: enrollAddr, Token: tok, Name: name, Dir: dir})
	if err != nil {
		return nil, "", err
	}
	log.Info("enrolled", "identity", b.Identity().String(), "expires", b.Leaf().NotAfter.UTC().Format("2006-01-02T15:04:05Z"), "dir", dir)
	return b, dir, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// previousName is the name in dir's certificate, even an expired one, so
// that a node re-enrolling keeps its identity.
func previousName(dir string) string {
	data, err := os.ReadFile(filepath.Join(dir, pki.BundleCertFile))
	if err != nil {
		return ""
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return ""
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return ""
	}
	id, err := pki.IdentityFromCert(c)
	if err != nil || id.Role != pki.RoleNode {
		return ""
	}
	return id.Name
}

// hostNodeName makes a node name of the host name.
func hostNodeName() (string, error) {
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("no host name to name the node after (%v); give --name", err)
	}
	h, _, _ = strings.Cut(strings.ToLower(h), ".")
	var sb strings.Builder
	for _, r := range h {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
			sb.WriteRune(r)
		} else {
			sb.WriteByte('-')
		}
	}
	name := strings.Trim(sb.String(), "-")
	if len(name) > 63 {
		name = strings.Trim(name[:63], "-")
	}
	if err := pki.ValidateName(name); err != nil {
		return "", fmt.Errorf("the host name %q is no valid node name; give --name", h)
	}
	return name, nil
}
