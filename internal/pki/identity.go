package pki

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
)

// Role is what a certificate holder may do in the cluster.
type Role string

// The roles a cluster certificate can carry.
const (
	RoleNode        Role = "node"
	RoleCoordinator Role = "coordinator"
	RoleClient      Role = "client"
)

// Sentinel errors; the returned errors wrap them with details.
var (
	ErrInvalidName    = errors.New("invalid name")
	ErrInvalidRole    = errors.New("invalid role")
	ErrNoIdentity     = errors.New("no npumesh identity")
	ErrCAExists       = errors.New("cluster CA already exists")
	ErrPermission     = errors.New("role not permitted")
	ErrUnexpectedPeer = errors.New("unexpected peer identity")
	// ErrCertExpired is wrapped by LoadBundle's error for an expired certificate.
	ErrCertExpired = errors.New("expired")
	// ErrInvalidToken is wrapped by ParseJoinToken's errors.
	ErrInvalidToken = errors.New("invalid join token")
	// ErrBadCSR is wrapped by SignCSR's errors about the request itself.
	ErrBadCSR = errors.New("bad certificate signing request")
	// ErrCAMismatch: a server does not present the cluster CA a join
	// token names.
	ErrCAMismatch = errors.New("coordinator does not hold the CA the join token names")
)

// identityScheme is the URI scheme of identity SANs.
const identityScheme = "npumesh"

// ParseRole parses "node", "coordinator" or "client".
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RoleNode, RoleCoordinator, RoleClient:
		return r, nil
	}
	return "", fmt.Errorf("%w %q: use node, coordinator or client", ErrInvalidRole, s)
}

// Identity is who a certificate belongs to.
type Identity struct {
	Role Role
	Name string
}

// String returns the identity as its URI SAN, e.g. "npumesh://node/n1".
func (id Identity) String() string {
	return identityScheme + "://" + string(id.Role) + "/" + id.Name
}

// IsZero reports whether id is the zero Identity.
func (id Identity) IsZero() bool { return id == Identity{} }

// Validate checks that the role is known and the name is well formed.
func (id Identity) Validate() error {
	if _, err := ParseRole(string(id.Role)); err != nil {
		return err
	}
	return ValidateName(id.Name)
}

// ValidateName checks that name is usable as a certificate name: like a DNS
// label, 1-63 lowercase letters, digits and '-', starting and ending with a
// letter or digit. Names end up in URIs, file names and log lines, so
// nothing else is allowed.
func ValidateName(name string) error {
	ok := len(name) >= 1 && len(name) <= 63 &&
		name[0] != '-' && name[len(name)-1] != '-'
	for i := 0; ok && i < len(name); i++ {
		c := name[i]
		ok = c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-'
	}
	if !ok {
		return fmt.Errorf("%w %q: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit (like a DNS label, e.g. \"gpu-box-1\")", ErrInvalidName, name)
	}
	return nil
}

// ParseIdentity parses an identity URI such as "npumesh://node/n1". Only the
// canonical form String produces is accepted: no port, user, query,
// fragment, escapes or extra path segments.
func ParseIdentity(s string) (Identity, error) {
	rest, ok := strings.CutPrefix(s, identityScheme+"://")
	if !ok {
		return Identity{}, fmt.Errorf("%w: %q is not an %s:// URI", ErrNoIdentity, s, identityScheme)
	}
	role, name, ok := strings.Cut(rest, "/")
	if !ok {
		return Identity{}, fmt.Errorf("%w: %q lacks a /<name> part", ErrNoIdentity, s)
	}
	id := Identity{Role: Role(role), Name: name}
	if err := id.Validate(); err != nil {
		return Identity{}, fmt.Errorf("identity %q: %w", s, err)
	}
	return id, nil
}

// IdentityFromCert returns the identity carried by c: exactly one URI SAN
// with the npumesh scheme. It does not verify c; callers pass certificates
// from verified chains.
func IdentityFromCert(c *x509.Certificate) (Identity, error) {
	if c == nil {
		return Identity{}, fmt.Errorf("%w: no certificate", ErrNoIdentity)
	}
	var found []string
	for _, u := range c.URIs {
		if u != nil && strings.EqualFold(u.Scheme, identityScheme) {
			found = append(found, u.String())
		}
	}
	switch len(found) {
	case 0:
		return Identity{}, fmt.Errorf("%w in certificate %q (no %s:// URI SAN); issue one with `npumesh cert issue`", ErrNoIdentity, c.Subject.CommonName, identityScheme)
	case 1:
		return ParseIdentity(found[0])
	default:
		return Identity{}, fmt.Errorf("%w: certificate %q carries %d identity URIs %q, want exactly one", ErrNoIdentity, c.Subject.CommonName, len(found), found)
	}
}
