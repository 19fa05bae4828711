package pki

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"time"
)

// maxCSRSize bounds what SignCSR parses; a P-256 CSR is about 400 bytes.
const maxCSRSize = 8 << 10

// NewKeyAndCSR generates an ECDSA P-256 key and a certificate signing
// request for name, both in PEM (the key in PKCS#8). The key is meant to
// stay where it was generated: only the CSR travels.
func NewKeyAndCSR(name string) (keyPEM, csrPEM []byte, err error) {
	if err := ValidateName(name); err != nil {
		return nil, nil, fmt.Errorf("new CSR: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("new CSR: generate key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: name},
	}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("new CSR: %w", err)
	}
	if keyPEM, err = encodeKey(key); err != nil {
		return nil, nil, fmt.Errorf("new CSR: %w", err)
	}
	return keyPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// SignCSR issues a certificate for req to the public key in csrPEM, after
// checking the CSR's self-signature (the requester holds the key) and that
// the key is ECDSA P-256/P-384 or Ed25519. The identity, SANs and lifetime
// come from req alone; the CSR's subject, when set, must name req.Name,
// and its other contents are ignored.
func (ca *CA) SignCSR(csrPEM []byte, req IssueRequest) (certPEM []byte, cert *x509.Certificate, err error) {
	if err := req.validate(); err != nil {
		return nil, nil, err
	}
	if len(csrPEM) > maxCSRSize {
		return nil, nil, fmt.Errorf("%w: %d bytes, more than %d", ErrBadCSR, len(csrPEM), maxCSRSize)
	}
	block, _ := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, nil, fmt.Errorf("%w: no PEM CERTIFICATE REQUEST block", ErrBadCSR)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, nil, fmt.Errorf("%w: signature: %v", ErrBadCSR, err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, nil, fmt.Errorf("%w: ECDSA curve %s, want P-256 or P-384", ErrBadCSR, k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return nil, nil, fmt.Errorf("%w: key type %T, want ECDSA P-256", ErrBadCSR, csr.PublicKey)
	}
	if cn := csr.Subject.CommonName; cn != "" && cn != req.Name {
		return nil, nil, fmt.Errorf("%w: it asks for the name %q, not %q", ErrBadCSR, cn, req.Name)
	}
	cert, err = ca.sign(req, csr.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	return encodeCert(cert.Raw), cert, nil
}

// RenewAt is when the holder of c should replace it: after two thirds of
// its lifetime, counted from when it was issued (NotBefore plus the
// backdate this package applies for clock skew).
func RenewAt(c *x509.Certificate) time.Time {
	issued := c.NotBefore.Add(backdate)
	if issued.After(c.NotAfter) {
		issued = c.NotBefore
	}
	return issued.Add(c.NotAfter.Sub(issued) * 2 / 3)
}

// SerialHex returns c's serial number as lower-case hex, the form
// revocation lists and listings use.
func SerialHex(c *x509.Certificate) string { return fmt.Sprintf("%x", c.SerialNumber) }
