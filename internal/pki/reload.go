package pki

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"sync/atomic"
)

// Reloadable holds a process's current Bundle and lets a renewal replace it
// while servers and clients keep running: the TLS configurations it returns
// read the certificate at every handshake. The cluster CA and the identity
// stay those of the first bundle. It is safe for concurrent use.
type Reloadable struct {
	cur atomic.Pointer[Bundle]
}

// NewReloadable starts with b.
func NewReloadable(b *Bundle) *Reloadable {
	r := &Reloadable{}
	r.cur.Store(b)
	return r
}

// Bundle returns the current bundle.
func (r *Reloadable) Bundle() *Bundle { return r.cur.Load() }

// Replace makes b the current bundle, used from the next handshake on.
// Connections already established keep the certificate they started with.
// b must trust the same CA and carry the same identity.
func (r *Reloadable) Replace(b *Bundle) error {
	old := r.cur.Load()
	if !b.ca.Equal(old.ca) {
		return fmt.Errorf("replace certificate: the new bundle trusts another CA (%s, want %s)", b.CAFingerprint(), old.CAFingerprint())
	}
	if b.id != old.id {
		return fmt.Errorf("replace certificate: the new bundle is for %s, want %s", b.id, old.id)
	}
	r.cur.Store(b)
	return nil
}

func (r *Reloadable) current() (*tls.Certificate, error) {
	c := r.cur.Load().cert
	return &c, nil
}

// ServerTLS is Bundle.ServerTLS with the certificate read at each handshake.
func (r *Reloadable) ServerTLS(allowed ...Role) *tls.Config {
	cfg := r.cur.Load().ServerTLS(allowed...)
	cfg.Certificates = nil
	cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return r.current() }
	return cfg
}

// ClientTLS is Bundle.ClientTLS with the certificate read at each handshake.
func (r *Reloadable) ClientTLS(expect Identity) *tls.Config {
	cfg := r.cur.Load().ClientTLS(expect)
	cfg.Certificates = nil
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return r.current() }
	return cfg
}

// EnrollServerTLS returns the configuration of a coordinator's enrollment
// listener: TLS 1.3 only, server authentication only (a joining node has no
// certificate yet), and the CA certificate sent after the server's own so
// that the node can match it against its join token (EnrollClientTLS).
func (r *Reloadable) EnrollServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		ClientAuth: tls.NoClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			b := r.cur.Load()
			c := b.cert
			c.Certificate = [][]byte{b.cert.Certificate[0], b.ca.Raw}
			return &c, nil
		},
	}
}

// EnrollClientTLS returns the configuration a joining node dials the
// enrollment listener with. The handshake succeeds only if the server
// presents a CA certificate whose fingerprint (see Fingerprint) is
// caFingerprint and a certificate for the coordinator role chaining to it;
// otherwise it fails with ErrCAMismatch or a chain error, before the node
// sends anything.
func EnrollClientTLS(caFingerprint string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		// Chain and identity are checked below against the CA the token
		// names, not against the system roots or a host name.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			var ca *x509.Certificate
			for _, c := range cs.PeerCertificates {
				if c.IsCA && Fingerprint(c) == caFingerprint {
					ca = c
				}
			}
			if ca == nil {
				return fmt.Errorf("pki: %w (sha256:%s); the token belongs to another cluster, or something is impersonating the coordinator", ErrCAMismatch, caFingerprint)
			}
			roots := x509.NewCertPool()
			roots.AddCert(ca)
			return verifyServer(cs, roots, Identity{Role: RoleCoordinator})
		},
	}
}
