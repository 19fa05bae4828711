package clustertest

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/npumesh/npumesh/internal/coordinator"
	"github.com/npumesh/npumesh/internal/demo"
	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/node"
	"github.com/npumesh/npumesh/internal/pki"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// TestEnrollInProcess runs enrollment, renewal and revocation with the
// coordinator and node in this process, so the race detector sees that
// code (the process tests run the shipped binary, built without it).
func TestEnrollInProcess(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.InitCA(filepath.Join(dir, "ca"))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(&testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	cb, _, err := ca.EnsureBundle(filepath.Join(dir, "coord"), pki.IssueRequest{Name: "coordinator", Role: pki.RoleCoordinator})
	if err != nil {
		t.Fatal(err)
	}
	admin, _, err := ca.EnsureBundle(filepath.Join(dir, "admin"), pki.IssueRequest{Name: "admin", Role: pki.RoleClient})
	if err != nil {
		t.Fatal(err)
	}
	store, err := coordinator.OpenFileStore(filepath.Join(dir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	co, err := coordinator.New(coordinator.Config{
		Listen: "127.0.0.1:0", API: "127.0.0.1:0", TLS: cb, Logger: log, HeartbeatInterval: 200 * time.Millisecond,
		CA: ca, Store: store, EnrollListen: "127.0.0.1:0", NodeCertTTL: 3 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr, apiAddr, err := co.Listen()
	if err != nil {
		t.Fatal(err)
	}
	p := &inProcess{api: "http://" + apiAddr.String()}
	defer p.stop()
	run := func(f func(context.Context) error) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- f(ctx) }()
		p.cancel = append(p.cancel, cancel)
		p.done = append(p.done, done)
	}
	run(co.Run)

	cc, err := grpc.NewClient(grpcAddr.String(), grpc.WithTransportCredentials(credentials.NewTLS(admin.ClientTLS(pki.Identity{Role: pki.RoleCoordinator}))))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ac := pb.NewAdminServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	created, err := ac.CreateToken(ctx, &pb.CreateTokenRequest{Uses: 1})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := pki.ParseJoinToken(created.GetToken())
	if err != nil {
		t.Fatal(err)
	}

	// A node certificate may not call the admin service.
	nodeDir := filepath.Join(dir, "n1")
	b, err := node.Enroll(ctx, node.EnrollConfig{Addr: co.EnrollAddr().String(), Token: tok, Name: "n1", Dir: nodeDir})
	if err != nil {
		t.Fatal(err)
	}
	ncc, err := grpc.NewClient(grpcAddr.String(), grpc.WithTransportCredentials(credentials.NewTLS(b.ClientTLS(pki.Identity{Role: pki.RoleCoordinator}))))
	if err != nil {
		t.Fatal(err)
	}
	defer ncc.Close()
	if _, err := pb.NewAdminServiceClient(ncc).ListTokens(ctx, &pb.ListTokensRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("node calling ListTokens: %v, want PermissionDenied", err)
	}
	// A second use of a single-use token is refused.
	other, _ := pki.NewJoinToken(tok.CAFingerprint)
	if _, err := node.Enroll(ctx, node.EnrollConfig{Addr: co.EnrollAddr().String(), Token: tok, Name: "n2", Dir: filepath.Join(dir, "n2")}); err == nil {
		t.Errorf("second enrollment with a single-use token succeeded")
	}
	if _, err := node.Enroll(ctx, node.EnrollConfig{Addr: co.EnrollAddr().String(), Token: other, Name: "n3", Dir: filepath.Join(dir, "n3")}); err == nil {
		t.Errorf("enrollment with an unknown token succeeded")
	}
	wrongCA, _ := pki.NewJoinToken(pki.HashSecret("not a CA"))
	if _, err := node.Enroll(ctx, node.EnrollConfig{Addr: co.EnrollAddr().String(), Token: wrongCA, Name: "n4", Dir: filepath.Join(dir, "n4")}); !errors.Is(err, pki.ErrCAMismatch) {
		t.Errorf("enrollment against another CA: %v, want ErrCAMismatch", err)
	}

	modelPath, err := demo.Install(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	be, err := node.LoadBuiltin(modelPath, engine.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	n, err := node.New(node.Config{Listen: "127.0.0.1:0", Coordinators: []string{grpcAddr.String()}, TLS: b, TLSDir: nodeDir, Backends: []node.Backend{be}, Logger: log.With("n", "n1")})
	if err != nil {
		t.Fatal(err)
	}
	run(n.Run)
	if !WaitFor(10*time.Second, func() bool { return p.nodeCount(t) == 1 }) {
		t.Fatal("enrolled node did not register")
	}
	// It renews (3 s certificates: after about 2 s) and writes the new bundle.
	if !WaitFor(10*time.Second, func() bool {
		nb, err := pki.LoadBundle(nodeDir)
		return err == nil && !nb.Leaf().Equal(b.Leaf())
	}) {
		t.Fatal("no renewed certificate within 10s")
	}

	resp, err := ac.RevokeNode(ctx, &pb.RevokeNodeRequest{Name: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	if !resp.GetDisconnected() || len(resp.GetSerials()) < 2 {
		t.Errorf("revoke: %+v, want disconnected and both certificates refused", resp)
	}
	if !WaitFor(2*time.Second, func() bool { return p.nodeCount(t) == 0 }) {
		t.Fatal("revoked node still listed")
	}
	time.Sleep(time.Second)
	if p.nodeCount(t) != 0 {
		t.Fatal("revoked node came back")
	}
	nodes, err := ac.ListNodes(ctx, &pb.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.GetNodes()) != 1 || !nodes.GetNodes()[0].GetRevoked() || nodes.GetNodes()[0].GetConnected() {
		t.Errorf("ListNodes: %v", nodes.GetNodes())
	}
}
