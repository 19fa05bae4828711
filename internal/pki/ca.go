package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// File names inside a CA directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

const (
	caValidity = 10 * 365 * 24 * time.Hour
	// DefaultValidity is the lifetime of an issued certificate when the
	// request does not say. Short-lived certificates with renewal come with
	// enrollment; until then a year.
	DefaultValidity = 365 * 24 * time.Hour
	// backdate covers clock skew between machines.
	backdate = time.Minute
)

// CA is the cluster certificate authority: its certificate and private key.
// It is safe for concurrent use; it holds no mutable state.
type CA struct {
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer
}

// InitCA creates a new cluster CA in dir (created 0700 if missing) and
// writes ca.crt (0644) and ca.key (0600). It refuses, with ErrCAExists, when
// dir already holds either file: replacing a CA invalidates every
// certificate in the cluster.
func InitCA(dir string) (*CA, error) {
	for _, f := range []string{CACertFile, CAKeyFile} {
		if _, err := os.Lstat(filepath.Join(dir, f)); err == nil {
			return nil, fmt.Errorf("%w: %s exists; use it with `npumesh cert issue --ca %s`, or remove %s to start a new cluster (every issued certificate stops working)", ErrCAExists, filepath.Join(dir, f), dir, dir)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("init CA: %w", err)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("init CA: generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		// The serial in the name keeps CAs of different clusters apart
		// in tools that show only the subject.
		Subject:               pkix.Name{Organization: []string{"npumesh"}, CommonName: "npumesh cluster CA " + fmt.Sprintf("%032x", serial)[:8]},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("init CA: create certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	certPEM := encodeCert(der)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	// Exclusive creation: two concurrent inits cannot both win.
	keyPath := filepath.Join(dir, CAKeyFile)
	if err := writeNewFile(keyPath, keyPEM, 0o600); errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("%w: %s appeared while creating the CA", ErrCAExists, keyPath)
	} else if err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	if err := writeNewFile(filepath.Join(dir, CACertFile), certPEM, 0o644); err != nil {
		os.Remove(keyPath)
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("%w: %s appeared while creating the CA", ErrCAExists, filepath.Join(dir, CACertFile))
		}
		return nil, fmt.Errorf("init CA: %w", err)
	}
	return newCA(certPEM, keyPEM)
}

// LoadCA reads the CA that InitCA wrote to dir.
func LoadCA(dir string) (*CA, error) {
	hint := fmt.Sprintf("create a cluster CA with `npumesh ca init --dir %s`", dir)
	certPEM, err := readFile(dir, CACertFile, hint)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readFile(dir, CAKeyFile, hint)
	if err != nil {
		return nil, err
	}
	ca, err := newCA(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA from %s: %w", dir, err)
	}
	return ca, nil
}

func newCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := parseCert(certPEM, CACertFile)
	if err != nil {
		return nil, err
	}
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return nil, fmt.Errorf("%s: certificate %q is not a CA certificate", CACertFile, cert.Subject.CommonName)
	}
	key, err := parseKey(keyPEM, CAKeyFile)
	if err != nil {
		return nil, err
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, fmt.Errorf("%s does not belong to %s (public keys differ)", CAKeyFile, CACertFile)
	}
	return &CA{cert: cert, certPEM: certPEM, key: key}, nil
}

// Cert returns the CA certificate. Callers must not modify it.
func (ca *CA) Cert() *x509.Certificate { return ca.cert }

// CertPEM returns the CA certificate in PEM, as written to ca.crt.
func (ca *CA) CertPEM() []byte { return bytes.Clone(ca.certPEM) }

// Fingerprint returns the lower-case hex SHA-256 of the CA certificate's DER
// encoding. Join tokens carry it so that a node can verify the coordinator
// before it has a certificate.
func (ca *CA) Fingerprint() string { return Fingerprint(ca.cert) }

// Fingerprint returns the lower-case hex SHA-256 of c's DER encoding.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// IssueRequest describes a certificate to issue.
type IssueRequest struct {
	Name string
	Role Role
	// IPs and DNS are added as SANs so that generic tools (curl, openssl)
	// can check the host; npumesh peers authenticate by identity only.
	IPs []net.IP
	DNS []string
	// Validity is the certificate lifetime; zero means DefaultValidity.
	// It is cut to the CA's own expiry.
	Validity time.Duration
}

// Identity returns the identity the request asks for.
func (r IssueRequest) Identity() Identity { return Identity{Role: r.Role, Name: r.Name} }

// Issue creates a key pair and a certificate for req, signed by ca, and
// returns both in PEM (the key in PKCS#8).
func (ca *CA) Issue(req IssueRequest) (certPEM, keyPEM []byte, err error) {
	id := req.Identity()
	if err := req.validate(); err != nil {
		return nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("issue certificate for %s: generate key: %w", id, err)
	}
	cert, err := ca.sign(req, key.Public())
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue certificate for %s: %w", id, err)
	}
	return encodeCert(cert.Raw), keyPEM, nil
}

func (req IssueRequest) validate() error {
	id := req.Identity()
	if err := id.Validate(); err != nil {
		return fmt.Errorf("issue certificate: %w", err)
	}
	for _, d := range req.DNS {
		if err := validateDNSName(d); err != nil {
			return fmt.Errorf("issue certificate for %s: %w", id, err)
		}
	}
	for _, ip := range req.IPs {
		if ip == nil || (ip.To4() == nil && len(ip) != net.IPv6len) {
			return fmt.Errorf("issue certificate for %s: invalid IP address %v", id, ip)
		}
	}
	if req.Validity < 0 {
		return fmt.Errorf("issue certificate for %s: negative validity %v", id, req.Validity)
	}
	return nil
}

// sign creates the certificate for a validated req and public key pub.
func (ca *CA) sign(req IssueRequest, pub crypto.PublicKey) (*x509.Certificate, error) {
	id := req.Identity()
	validity := req.Validity
	if validity == 0 {
		validity = DefaultValidity
	}
	now := time.Now()
	if !now.Before(ca.cert.NotAfter) {
		return nil, fmt.Errorf("issue certificate for %s: the cluster CA expired at %v; create a new one with `npumesh ca init`", id, ca.cert.NotAfter)
	}
	notAfter := now.Add(validity)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	usage := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	if id.Role == RoleClient {
		usage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	uri, err := urlOf(id)
	if err != nil {
		return nil, fmt.Errorf("issue certificate for %s: %w", id, err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("issue certificate for %s: %w", id, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"npumesh"}, OrganizationalUnit: []string{string(id.Role)}, CommonName: id.Name},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           usage,
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{uri},
		IPAddresses:           slices.Clone(req.IPs),
		DNSNames:              slices.Clone(req.DNS),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("issue certificate for %s: %w", id, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("issue certificate for %s: %w", id, err)
	}
	return cert, nil
}

// renewBefore is how close to expiry EnsureBundle replaces a certificate:
// a third of its lifetime, so a year-long certificate is renewed after
// eight months and a one-day certificate after sixteen hours.
func renewBefore(c *x509.Certificate) time.Duration {
	return c.NotAfter.Sub(c.NotBefore) / 3
}

// EnsureBundle makes dir hold a bundle for req signed by ca, as `npumesh up`
// needs on every start: it reuses the existing bundle when it is signed by
// this CA, carries the requested identity, IPs and DNS names, and is not in
// the last third of its lifetime; otherwise it issues a new certificate and
// replaces the bundle. issued reports which happened.
func (ca *CA) EnsureBundle(dir string, req IssueRequest) (b *Bundle, issued bool, err error) {
	if err := req.Identity().Validate(); err != nil {
		return nil, false, fmt.Errorf("ensure bundle in %s: %w", dir, err)
	}
	if b, err := LoadBundle(dir); err == nil && ca.reusable(b, req, time.Now()) {
		return b, false, nil
	}
	certPEM, keyPEM, err := ca.Issue(req)
	if err != nil {
		return nil, false, err
	}
	if err := WriteBundle(dir, ca.certPEM, certPEM, keyPEM); err != nil {
		return nil, false, err
	}
	b, err = LoadBundle(dir)
	if err != nil {
		return nil, false, err
	}
	return b, true, nil
}

func (ca *CA) reusable(b *Bundle, req IssueRequest, now time.Time) bool {
	leaf := b.Leaf()
	if !b.ca.Equal(ca.cert) || b.Identity() != req.Identity() {
		return false
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.pool(), CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return false
	}
	if leaf.NotAfter.Sub(now) < renewBefore(leaf) {
		return false
	}
	for _, ip := range req.IPs {
		if !slices.ContainsFunc(leaf.IPAddresses, ip.Equal) {
			return false
		}
	}
	for _, d := range req.DNS {
		if !slices.ContainsFunc(leaf.DNSNames, func(s string) bool { return strings.EqualFold(s, d) }) {
			return false
		}
	}
	return true
}

func (ca *CA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// validateDNSName accepts host names made of letter/digit/'-' labels, with
// an optional leading "*." wildcard label.
func validateDNSName(name string) error {
	bad := func() error {
		return fmt.Errorf("invalid DNS name %q: use labels of letters, digits and '-' separated by dots, e.g. node1.lan", name)
	}
	s := strings.TrimPrefix(name, "*.")
	if s == "" || len(name) > 253 {
		return bad()
	}
	for label := range strings.SplitSeq(s, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return bad()
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return bad()
			}
		}
	}
	return nil
}
