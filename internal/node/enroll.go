package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/npumesh/npumesh/internal/pki"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// EnrollConfig says where and how a node enrolls.
type EnrollConfig struct {
	// Addr is the coordinator's enrollment address (its --enroll-listen).
	Addr  string
	Token pki.JoinToken
	// Name is the node name to ask for.
	Name string
	// Dir receives the bundle: ca.crt, tls.crt and tls.key (0600).
	Dir string
}

// Enroll obtains a node certificate with a join token: it generates the
// node's key (which never leaves this process and Dir), checks that the
// server at cfg.Addr holds the CA the token names before it sends anything,
// then exchanges the token and a CSR for a certificate, and writes the
// bundle to cfg.Dir. A server with another CA fails with pki.ErrCAMismatch.
func Enroll(ctx context.Context, cfg EnrollConfig) (*pki.Bundle, error) {
	tlsCfg := pki.EnrollClientTLS(cfg.Token.CAFingerprint)
	// A handshake of our own first: its error keeps its type (the gRPC
	// call below would flatten it into a string), and no request, so no
	// secret, is ever written to a server that fails it.
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: tlsCfg}
	conn, err := d.DialContext(dctx, "tcp", cfg.Addr)
	if err != nil {
		if errors.Is(err, pki.ErrCAMismatch) {
			return nil, fmt.Errorf("enroll at %s: %w", cfg.Addr, err)
		}
		return nil, fmt.Errorf("enroll: cannot reach the coordinator's enrollment listener at %s (is it the coordinator's --enroll-listen address?): %w", cfg.Addr, err)
	}
	conn.Close()

	keyPEM, csrPEM, err := pki.NewKeyAndCSR(cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	cc, err := grpc.NewClient(cfg.Addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	defer cc.Close()
	resp, err := pb.NewEnrollmentServiceClient(cc).Enroll(dctx, &pb.EnrollRequest{
		TokenId: cfg.Token.ID, TokenSecret: cfg.Token.Secret, Name: cfg.Name, CsrPem: csrPEM,
	})
	if err != nil {
		return nil, fmt.Errorf("enroll as %s at %s: %s", cfg.Name, cfg.Addr, status.Convert(err).Message())
	}
	b, err := pki.ParseBundle(resp.GetCaPem(), resp.GetCertPem(), keyPEM)
	if err != nil {
		return nil, fmt.Errorf("enroll: the coordinator's answer: %w", err)
	}
	if b.CAFingerprint() != cfg.Token.CAFingerprint {
		return nil, fmt.Errorf("enroll: %w: the coordinator answered with CA sha256:%s", pki.ErrCAMismatch, b.CAFingerprint())
	}
	if want := (pki.Identity{Role: pki.RoleNode, Name: cfg.Name}); b.Identity() != want {
		return nil, fmt.Errorf("enroll: the coordinator issued a certificate for %s, want %s", b.Identity(), want)
	}
	if err := pki.WriteBundle(cfg.Dir, resp.GetCaPem(), resp.GetCertPem(), keyPEM); err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	return b, nil
}
