package node

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/npumesh/npumesh/internal/pki"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// renewLoop replaces the node's certificate after two thirds of its life
// (pki.RenewAt) through ControlService.Renew, until ctx ends. The new
// certificate serves from the next handshake on; it is written to
// Config.TLSDir when set. Failures are retried after a tenth of the time
// left (between 1 s and 1 min).
func (n *Node) renewLoop(ctx context.Context) {
	for {
		leaf := n.certs.Bundle().Leaf()
		wait := time.Until(pki.RenewAt(leaf))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		err := n.renew(ctx)
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			return
		}
		retry := min(max(time.Until(leaf.NotAfter)/10, time.Second), time.Minute)
		n.log.Warn("certificate renewal failed", "err", err, "expires", leaf.NotAfter.UTC().Format(time.RFC3339), "retry_in", retry)
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry):
		}
	}
}

// renew asks the coordinators in turn for a certificate for a new key.
func (n *Node) renew(ctx context.Context) error {
	keyPEM, csrPEM, err := pki.NewKeyAndCSR(n.cfg.Name)
	if err != nil {
		return err
	}
	var errs []error
	for _, addr := range n.cfg.Coordinators {
		resp, err := n.renewAt(ctx, addr, csrPEM)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", addr, err))
			continue
		}
		var b *pki.Bundle
		if n.cfg.TLSDir != "" {
			if err := pki.WriteBundle(n.cfg.TLSDir, resp.GetCaPem(), resp.GetCertPem(), keyPEM); err != nil {
				return err
			}
			b, err = pki.LoadBundle(n.cfg.TLSDir)
		} else {
			b, err = pki.ParseBundle(resp.GetCaPem(), resp.GetCertPem(), keyPEM)
		}
		if err != nil {
			return err
		}
		if err := n.certs.Replace(b); err != nil {
			return err
		}
		n.log.Info("certificate renewed", "serial", pki.SerialHex(b.Leaf()), "expires", b.Leaf().NotAfter.UTC().Format(time.RFC3339), "coordinator", addr)
		return nil
	}
	return fmt.Errorf("renew: %v", errs)
}

func (n *Node) renewAt(ctx context.Context, addr string, csrPEM []byte) (*pb.RenewResponse, error) {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(n.certs.ClientTLS(pki.Identity{Role: pki.RoleCoordinator}))))
	if err != nil {
		return nil, err
	}
	defer cc.Close()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := pb.NewControlServiceClient(cc).Renew(rctx, &pb.RenewRequest{CsrPem: csrPEM})
	if err != nil {
		return nil, fmt.Errorf("%s", status.Convert(err).Message())
	}
	return resp, nil
}
