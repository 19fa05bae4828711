package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
)

// ServerTLS returns the configuration for a server: TLS 1.3 only, a client
// certificate required and verified against the cluster CA alone (not the
// system roots), and the client's identity must have one of the allowed
// roles; any other client fails the handshake. Per-method role checks are
// RoleInterceptors' job. With no roles, every client is refused.
//
// Each call returns a new Config that the caller may modify.
func (b *Bundle) ServerTLS(allowed ...Role) *tls.Config {
	allowed = slices.Clone(allowed)
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		MaxVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{b.cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    b.pool(),
		VerifyConnection: func(cs tls.ConnectionState) error {
			// RequireAndVerifyClientCert has verified the chain (and the
			// ClientAuth usage) by now; check the identity in it.
			if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
				return errors.New("pki: client certificate not verified")
			}
			id, err := IdentityFromCert(cs.VerifiedChains[0][0])
			if err != nil {
				return fmt.Errorf("pki: client: %w", err)
			}
			if len(allowed) == 0 {
				return fmt.Errorf("pki: refusing %s: %w", id, errNoRoles)
			}
			if !slices.Contains(allowed, id.Role) {
				return fmt.Errorf("pki: refusing %s: %w: this server accepts roles %v", id, ErrPermission, allowed)
			}
			return nil
		},
	}
}

// ClientTLS returns the configuration for dialing another cluster member:
// TLS 1.3 only, presenting the bundle's certificate, and accepting only a
// server whose certificate chains to the cluster CA, is valid for server
// authentication and carries the expected identity. A zero expect.Name
// accepts any name of expect.Role; a zero expect.Role accepts no server.
//
// The server's DNS names and IP addresses are not checked: peers are
// dialed by IP:port, which a certificate need not list, and identity is
// what authenticates them.
//
// Each call returns a new Config that the caller may modify.
func (b *Bundle) ClientTLS(expect Identity) *tls.Config {
	roots := b.pool()
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		MaxVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{b.cert},
		RootCAs:      roots,
		// The default verification also matches the dialed host name
		// against the certificate, which identity-based peers cannot
		// pass. VerifyConnection below does the chain verification
		// itself, then checks the identity instead of the host name.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyServer(cs, roots, expect)
		},
	}
}

func verifyServer(cs tls.ConnectionState, roots *x509.CertPool, expect Identity) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("pki: server sent no certificate")
	}
	leaf := cs.PeerCertificates[0]
	// No intermediates: the cluster CA has MaxPathLen 0 and issues leaf
	// certificates directly.
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:     roots,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return fmt.Errorf("pki: server certificate: %w", err)
	}
	id, err := IdentityFromCert(leaf)
	if err != nil {
		return fmt.Errorf("pki: server: %w", err)
	}
	if expect.Role == "" {
		return fmt.Errorf("pki: %w: server is %s, and no expected identity was configured (ClientTLS with a zero Identity)", ErrUnexpectedPeer, id)
	}
	if id.Role != expect.Role || (expect.Name != "" && id.Name != expect.Name) {
		want := expect.String()
		if expect.Name == "" {
			want = identityScheme + "://" + string(expect.Role) + "/*"
		}
		return fmt.Errorf("pki: %w: server is %s, want %s", ErrUnexpectedPeer, id, want)
	}
	return nil
}
