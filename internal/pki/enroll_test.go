package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

func TestJoinTokenRoundTrip(t *testing.T) {
	ca, _ := newTestCA(t)
	tok, err := NewJoinToken(ca.Fingerprint())
	if err != nil {
		t.Fatal(err)
	}
	s := tok.String()
	if !strings.HasPrefix(s, "npm1.") || len(s) != 4+1+8+1+32+1+64 {
		t.Errorf("token %q: want npm1.<8>.<32>.<64>", s)
	}
	got, err := ParseJoinToken(" " + s + "\n")
	if err != nil {
		t.Fatalf("ParseJoinToken(%q): %v", s, err)
	}
	if got != tok {
		t.Errorf("got %+v, want %+v", got, tok)
	}
	other, _ := NewJoinToken(ca.Fingerprint())
	if other.ID == tok.ID || other.Secret == tok.Secret {
		t.Errorf("two tokens share an id or secret: %v %v", tok, other)
	}
	if !SecretMatches(HashSecret(tok.Secret), tok.Secret) || SecretMatches(HashSecret(tok.Secret), other.Secret) {
		t.Errorf("SecretMatches is wrong")
	}
	if _, err := NewJoinToken("abc"); err == nil {
		t.Errorf("NewJoinToken accepted a bad fingerprint")
	}
}

func TestParseJoinTokenRejects(t *testing.T) {
	fp := strings.Repeat("ab", 32)
	id, secret := "abcdefgh", strings.Repeat("a2", 16)
	for _, s := range []string{
		"",
		"npm1." + id + "." + secret,
		"npm2." + id + "." + secret + "." + fp,
		"npm1.ABCDEFGH." + secret + "." + fp,
		"npm1.abcdefg." + secret + "." + fp,
		"npm1." + id + "." + secret[:31] + "." + fp,
		"npm1." + id + "." + strings.Repeat("a1", 16) + "." + fp,
		"npm1." + id + "." + secret + "." + strings.ToUpper(fp),
		"npm1." + id + "." + secret + "." + fp[:62],
		"npm1." + id + "." + secret + "." + fp + ".x",
	} {
		if _, err := ParseJoinToken(s); !errors.Is(err, ErrInvalidToken) {
			t.Errorf("ParseJoinToken(%q) = %v, want ErrInvalidToken", s, err)
		}
	}
}

func FuzzParseJoinToken(f *testing.F) {
	f.Add("npm1.abcdefgh." + strings.Repeat("a2", 16) + "." + strings.Repeat("ab", 32))
	f.Add("npm1...")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseJoinToken(s)
		if err != nil {
			return
		}
		again, err := ParseJoinToken(tok.String())
		if err != nil || again != tok {
			t.Fatalf("round trip of %q: %v %+v", s, err, again)
		}
	})
}

func TestSignCSR(t *testing.T) {
	ca, _ := newTestCA(t)
	keyPEM, csrPEM, err := NewKeyAndCSR("n1")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, cert, err := ca.SignCSR(csrPEM, IssueRequest{Name: "n1", Role: RoleNode, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	b, err := ParseBundle(ca.CertPEM(), certPEM, keyPEM)
	if err != nil {
		t.Fatalf("the signed certificate does not form a bundle with the CSR's key: %v", err)
	}
	if got, want := b.Identity(), (Identity{RoleNode, "n1"}); got != want {
		t.Errorf("identity %v, want %v", got, want)
	}
	if life := cert.NotAfter.Sub(time.Now()); life > time.Hour || life < 59*time.Minute {
		t.Errorf("lifetime %v, want 1h", life)
	}
	if SerialHex(cert) != SerialHex(b.Leaf()) {
		t.Errorf("serials differ")
	}

	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsaDER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, rsaKey)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	p224DER, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, p224)
	_, otherCSR, _ := NewKeyAndCSR("n2")
	block, _ := pem.Decode(csrPEM)
	tampered := append([]byte(nil), block.Bytes...)
	tampered[len(tampered)-5] ^= 0xff // in the signature
	encode := func(der []byte) []byte {
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
	}
	for _, tc := range []struct {
		desc string
		csr  []byte
		want string
	}{
		{"not PEM", []byte("hello"), "no PEM"},
		{"certificate instead", certPEM, "no PEM CERTIFICATE REQUEST"},
		{"bad signature", encode(tampered), "bad certificate signing request"},
		{"RSA key", encode(rsaDER), "key type"},
		{"P-224 key", encode(p224DER), "curve"},
		{"other name", otherCSR, `asks for the name "n2"`},
		{"huge", make([]byte, maxCSRSize+1), "bytes"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			_, _, err := ca.SignCSR(tc.csr, IssueRequest{Name: "n1", Role: RoleNode})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	if _, _, err := ca.SignCSR(csrPEM, IssueRequest{Name: "Bad!", Role: RoleNode}); !errors.Is(err, ErrInvalidName) {
		t.Errorf("bad name: %v", err)
	}
}

func TestRenewAt(t *testing.T) {
	ca, _ := newTestCA(t)
	_, csrPEM, _ := NewKeyAndCSR("n1")
	_, cert, err := ca.SignCSR(csrPEM, IssueRequest{Name: "n1", Role: RoleNode, Validity: 9 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// Issued now, so after two thirds of 9s: in about 6s, despite the
	// one-minute backdate of NotBefore.
	if d := time.Until(RenewAt(cert)); d < 4*time.Second || d > 6*time.Second {
		t.Errorf("RenewAt in %v, want about 6s", d)
	}
}

func TestReloadableSwapsCertificates(t *testing.T) {
	ca, _ := newTestCA(t)
	server, _ := newTestBundle(t, ca, RoleNode, "n1")
	client, _ := newTestBundle(t, ca, RoleCoordinator, "c1")
	rs, rc := NewReloadable(server), NewReloadable(client)

	ln, err := tls.Listen("tcp", "127.0.0.1:0", rs.ServerTLS(RoleCoordinator))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	seen := make(chan *x509.Certificate, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if tc.Handshake() == nil {
				seen <- tc.ConnectionState().PeerCertificates[0]
			}
			tc.Close()
		}
	}()
	dialServer := func() *x509.Certificate {
		t.Helper()
		conn, err := tls.Dial("tcp", ln.Addr().String(), rc.ClientTLS(Identity{Role: RoleNode, Name: "n1"}))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0]
	}
	if got := dialServer(); !got.Equal(server.Leaf()) {
		t.Errorf("server presented another certificate than its first")
	}
	if got := <-seen; !got.Equal(client.Leaf()) {
		t.Errorf("client presented another certificate than its first")
	}

	server2, _ := newTestBundle(t, ca, RoleNode, "n1")
	client2, _ := newTestBundle(t, ca, RoleCoordinator, "c1")
	if err := rs.Replace(server2); err != nil {
		t.Fatal(err)
	}
	if err := rc.Replace(client2); err != nil {
		t.Fatal(err)
	}
	if got := dialServer(); !got.Equal(server2.Leaf()) {
		t.Errorf("server still presents the replaced certificate")
	}
	if got := <-seen; !got.Equal(client2.Leaf()) {
		t.Errorf("client still presents the replaced certificate")
	}

	other, _ := newTestCA(t)
	foreign, _ := newTestBundle(t, other, RoleNode, "n1")
	if err := rs.Replace(foreign); err == nil || !strings.Contains(err.Error(), "another CA") {
		t.Errorf("Replace with a foreign CA: %v", err)
	}
	n2, _ := newTestBundle(t, ca, RoleNode, "n2")
	if err := rs.Replace(n2); err == nil || !strings.Contains(err.Error(), "npumesh://node/n2") {
		t.Errorf("Replace with another identity: %v", err)
	}
}

func TestEnrollClientTLS(t *testing.T) {
	ca, _ := newTestCA(t)
	coord, _ := newTestBundle(t, ca, RoleCoordinator, "c1")
	nodeB, _ := newTestBundle(t, ca, RoleNode, "n1")
	other, _ := newTestCA(t)

	serve := func(b *Bundle) string {
		ln, err := tls.Listen("tcp", "127.0.0.1:0", NewReloadable(b).EnrollServerTLS())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.(*tls.Conn).Handshake()
				c.Close()
			}
		}()
		return ln.Addr().String()
	}
	coordAddr, nodeAddr := serve(coord), serve(nodeB)
	dial := func(addr, fp string) error {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, EnrollClientTLS(fp))
		if err == nil {
			conn.Close()
		}
		return err
	}
	if err := dial(coordAddr, ca.Fingerprint()); err != nil {
		t.Errorf("the right CA: %v", err)
	}
	if err := dial(coordAddr, other.Fingerprint()); !errors.Is(err, ErrCAMismatch) {
		t.Errorf("another cluster's fingerprint: got %v, want ErrCAMismatch", err)
	}
	if err := dial(nodeAddr, ca.Fingerprint()); !errors.Is(err, ErrUnexpectedPeer) {
		t.Errorf("a node posing as the coordinator: got %v, want ErrUnexpectedPeer", err)
	}
	// A server that sends some other cluster's CA with its certificate.
	impostor := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{{
		Certificate: [][]byte{coord.cert.Certificate[0], other.Cert().Raw}, PrivateKey: coord.cert.PrivateKey,
	}}}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", impostor)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	if err := dial(ln.Addr().String(), other.Fingerprint()); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Errorf("a certificate not signed by the token's CA: got %v, want an unknown authority error", err)
	}
}

func TestLoadBundleExpired(t *testing.T) {
	ca, _ := newTestCA(t)
	keyPEM, csrPEM, _ := NewKeyAndCSR("n1")
	certPEM, _, err := ca.SignCSR(csrPEM, IssueRequest{Name: "n1", Role: RoleNode, Validity: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	if _, err := ParseBundle(ca.CertPEM(), certPEM, keyPEM); !errors.Is(err, ErrCertExpired) {
		t.Errorf("got %v, want ErrCertExpired", err)
	}
}
