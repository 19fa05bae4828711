package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// File names inside a bundle directory.
const (
	BundleCAFile   = "ca.crt"
	BundleCertFile = "tls.crt"
	BundleKeyFile  = "tls.key"
)

// Bundle is what a process needs to take part in the cluster: the cluster CA
// certificate it trusts, and its own certificate and key. It is immutable
// and safe for concurrent use.
type Bundle struct {
	ca   *x509.Certificate
	cert tls.Certificate // Leaf set
	id   Identity
}

// WriteBundle validates the three PEM inputs (the certificate belongs to
// the key, chains to the CA and carries an identity) and writes them to dir
// (created 0700 if missing) as ca.crt and tls.crt (0644) and tls.key
// (0600). Existing files are replaced, each one atomically, so a renewal
// can write over the previous bundle.
func WriteBundle(dir string, caPEM, certPEM, keyPEM []byte) error {
	if _, err := newBundle(caPEM, certPEM, keyPEM, time.Now()); err != nil {
		return fmt.Errorf("write bundle to %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write bundle: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
		perm os.FileMode
	}{
		{BundleKeyFile, keyPEM, 0o600},
		{BundleCertFile, certPEM, 0o644},
		{BundleCAFile, caPEM, 0o644},
	} {
		if err := writeFileAtomic(filepath.Join(dir, f.name), f.data, f.perm); err != nil {
			return fmt.Errorf("write bundle: %w", err)
		}
	}
	return nil
}

// LoadBundle reads and checks the bundle WriteBundle wrote to dir. Errors
// name the missing or bad file and the command that creates it.
func LoadBundle(dir string) (*Bundle, error) {
	hint := fmt.Sprintf("issue a bundle with `npumesh cert issue --ca <ca-dir> --name <name> --role node|coordinator|client --out %s`", dir)
	var data [3][]byte
	for i, name := range []string{BundleCAFile, BundleCertFile, BundleKeyFile} {
		var err error
		if data[i], err = readFile(dir, name, hint); err != nil {
			return nil, err
		}
	}
	b, err := newBundle(data[0], data[1], data[2], time.Now())
	if err != nil {
		return nil, fmt.Errorf("load bundle from %s: %w; %s", dir, err, hint)
	}
	return b, nil
}

// ParseBundle checks the three PEM inputs as WriteBundle does and returns
// the bundle without touching the disk.
func ParseBundle(caPEM, certPEM, keyPEM []byte) (*Bundle, error) {
	return newBundle(caPEM, certPEM, keyPEM, time.Now())
}

func newBundle(caPEM, certPEM, keyPEM []byte, now time.Time) (*Bundle, error) {
	ca, err := parseCert(caPEM, BundleCAFile)
	if err != nil {
		return nil, err
	}
	if !ca.IsCA {
		return nil, fmt.Errorf("%s: %q is not a CA certificate", BundleCAFile, ca.Subject.CommonName)
	}
	leaf, err := parseCert(certPEM, BundleCertFile)
	if err != nil {
		return nil, err
	}
	key, err := parseKey(keyPEM, BundleKeyFile)
	if err != nil {
		return nil, err
	}
	if !publicKeysEqual(leaf.PublicKey, key.Public()) {
		return nil, fmt.Errorf("%s does not belong to %s (public keys differ)", BundleKeyFile, BundleCertFile)
	}
	id, err := IdentityFromCert(leaf)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", BundleCertFile, err)
	}
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("%s: certificate for %s %w at %s", BundleCertFile, id, ErrCertExpired, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("%s is not valid under %s: %w", BundleCertFile, BundleCAFile, err)
	}
	return &Bundle{
		ca:   ca,
		cert: tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf},
		id:   id,
	}, nil
}

// Identity returns the identity in the bundle's certificate.
func (b *Bundle) Identity() Identity { return b.id }

// Leaf returns the bundle's own certificate. Callers must not modify it.
func (b *Bundle) Leaf() *x509.Certificate { return b.cert.Leaf }

// CACert returns the cluster CA certificate the bundle trusts. Callers
// must not modify it.
func (b *Bundle) CACert() *x509.Certificate { return b.ca }

// CAFingerprint returns the fingerprint (see Fingerprint) of the cluster CA
// the bundle trusts.
func (b *Bundle) CAFingerprint() string { return Fingerprint(b.ca) }

func (b *Bundle) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(b.ca)
	return p
}

var errNoRoles = errors.New("this server accepts no roles (ServerTLS was called without roles)")
