package clustertest

import (
	"bytes"
	"context"
	"crypto/tls"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/npumesh/npumesh/internal/pki"
	"github.com/npumesh/npumesh/internal/testdata"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// TestClusterRefusesBadPeers checks each refusal against the processes of a
// real cluster: plaintext, TLS 1.2, a foreign CA and a wrong role.
func TestClusterRefusesBadPeers(t *testing.T) {
	c := Start(t, Options{Nodes: 1})
	coord := c.CoordinatorGRPC()
	nodes := c.WaitNodes(1, 10*time.Second)
	nodeAddr := nodes[0].Address
	bin := Binary(t)

	// A client certificate from the cluster CA, made with the CLI.
	clientDir := filepath.Join(t.TempDir(), "client")
	out, err := exec.Command(bin, "cert", "issue", "--ca", filepath.Join(c.DataDir, "ca"), "--name", "alice", "--role", "client", "--out", clientDir).CombinedOutput()
	if err != nil {
		t.Fatalf("npumesh cert issue: %v\n%s", err, out)
	}
	client, err := pki.LoadBundle(clientDir)
	if err != nil {
		t.Fatal(err)
	}
	// A node certificate from a foreign CA.
	foreignCA, err := pki.InitCA(filepath.Join(t.TempDir(), "foreign-ca"))
	if err != nil {
		t.Fatal(err)
	}
	foreignDir := filepath.Join(t.TempDir(), "foreign")
	if _, _, err := foreignCA.EnsureBundle(foreignDir, pki.IssueRequest{Name: "node-1", Role: pki.RoleNode}); err != nil {
		t.Fatal(err)
	}
	foreign, err := pki.LoadBundle(foreignDir)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	register := func(creds credentials.TransportCredentials) error {
		conn, err := grpc.NewClient(coord, grpc.WithTransportCredentials(creds))
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = pb.NewControlServiceClient(conn).Register(ctx, &pb.RegisterRequest{Info: &pb.NodeInfo{Name: "x", GrpcAddress: "127.0.0.1:1"}})
		return err
	}

	t.Run("plaintext", func(t *testing.T) {
		if err := register(insecure.NewCredentials()); status.Code(err) != codes.Unavailable {
			t.Fatalf("plaintext Register: %v, want a refused connection (Unavailable)", err)
		}
	})
	t.Run("foreign CA", func(t *testing.T) {
		cfg := foreign.ClientTLS(pki.Identity{Role: pki.RoleCoordinator})
		cfg.InsecureSkipVerify = true // even when the client trusts anything, the server refuses the foreign cert
		cfg.VerifyConnection = nil
		cfg.VerifyPeerCertificate = nil
		if err := register(credentials.NewTLS(cfg)); status.Code(err) != codes.Unavailable {
			t.Fatalf("foreign-CA Register: %v, want a failed handshake (Unavailable)", err)
		}
	})
	t.Run("client role on node-only control RPC", func(t *testing.T) {
		err := register(credentials.NewTLS(client.ClientTLS(pki.Identity{Role: pki.RoleCoordinator})))
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("client-role Register: %v, want PermissionDenied", err)
		}
	})
	t.Run("client role on coordinator-only Generate", func(t *testing.T) {
		conn, err := grpc.NewClient(nodeAddr, grpc.WithTransportCredentials(credentials.NewTLS(client.ClientTLS(pki.Identity{Role: pki.RoleNode}))))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		st, err := pb.NewNodeServiceClient(conn).Generate(ctx, &pb.GenerateRequest{Model: "stories260K", MaxTokens: 4})
		if err == nil {
			_, err = st.Recv()
		}
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("client-role Generate: %v, want PermissionDenied", err)
		}
		// The same certificate may read the node's info.
		if _, err := pb.NewNodeServiceClient(conn).Info(ctx, &pb.InfoRequest{}); err != nil {
			t.Fatalf("client-role Info: %v, want allowed", err)
		}
	})
	t.Run("TLS 1.2 with Go", func(t *testing.T) {
		cfg := client.ClientTLS(pki.Identity{Role: pki.RoleCoordinator})
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
		conn, err := tls.Dial("tcp", coord, cfg)
		if err == nil {
			conn.Close()
			t.Fatal("TLS 1.2 handshake with the coordinator succeeded")
		}
	})
	t.Run("TLS 1.2 with openssl", func(t *testing.T) {
		if _, err := exec.LookPath("openssl"); err != nil {
			testdata.Missing(t, "openssl (apt-get install openssl)")
		}
		certs := filepath.Join(c.DataDir, "certs", "coordinator")
		args := []string{"s_client", "-connect", coord, "-cert", filepath.Join(clientDir, "tls.crt"), "-key", filepath.Join(clientDir, "tls.key"), "-CAfile", filepath.Join(certs, "ca.crt")}
		run := func(extra ...string) (string, error) {
			cmd := exec.Command("openssl", append(args, extra...)...)
			cmd.Stdin = strings.NewReader("")
			var b bytes.Buffer
			cmd.Stdout, cmd.Stderr = &b, &b
			err := cmd.Run()
			return b.String(), err
		}
		out12, err12 := run("-tls1_2")
		// openssl 3 prints a session block even for a failed handshake; a
		// refused one has no cipher.
		if err12 == nil || !strings.Contains(out12, "Cipher is (NONE)") {
			t.Fatalf("openssl -tls1_2 got through (err %v):\n%s", err12, out12)
		}
		out13, err13 := run("-tls1_3")
		if err13 != nil || !strings.Contains(out13, "TLSv1.3") {
			t.Fatalf("openssl -tls1_3 with a cluster client certificate failed (err %v):\n%s", err13, out13)
		}
	})
}
