package pki

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/npumesh/npumesh/internal/testdata"
	npumeshv1 "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// testPolicy mirrors what the daemons will use: the control plane is for
// nodes, the node API for the coordinator, model listing also for clients.
var testPolicy = map[string][]Role{
	"/npumesh.v1.ControlService/":        {RoleNode},
	"/npumesh.v1.NodeService/":           {RoleCoordinator},
	"/npumesh.v1.NodeService/ListModels": {RoleCoordinator, RoleClient},
}

// controlServer answers Register with the caller's name from its
// certificate, so tests see that PeerIdentity reaches handlers.
type controlServer struct {
	npumeshv1.UnimplementedControlServiceServer
}

func (controlServer) Register(ctx context.Context, _ *npumeshv1.RegisterRequest) (*npumeshv1.RegisterResponse, error) {
	id, err := PeerIdentity(ctx)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &npumeshv1.RegisterResponse{NodeName: id.Name}, nil
}

// startServer serves health, ControlService and NodeService with
// b.ServerTLS(allowed...) and RoleInterceptors(testPolicy) on a loopback
// port and returns its address. The listener is bound before it returns,
// so clients may dial at once.
func startServer(t *testing.T, b *Bundle, allowed ...Role) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	unary, stream := RoleInterceptors(testPolicy)
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(b.ServerTLS(allowed...))),
		grpc.UnaryInterceptor(unary),
		grpc.StreamInterceptor(stream),
	)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	npumeshv1.RegisterControlServiceServer(srv, controlServer{})
	npumeshv1.RegisterNodeServiceServer(srv, npumeshv1.UnimplementedNodeServiceServer{})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return lis.Addr().String()
}

func dial(t *testing.T, addr string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// probe completes a TLS handshake with cfg and then reads: a server that
// accepted the client sends its HTTP/2 settings, one that refused it sends
// an alert. In TLS 1.3 the client's Handshake returns before the server
// has judged the client certificate, so only the read tells.
func probe(addr string, cfg *tls.Config) error {
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"h2"}
	d := &net.Dialer{Timeout: 10 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err != nil {
		return err
	}
	return nil
}

type world struct {
	ca                           *CA
	node, coord, client, foreign *Bundle
	clientDir, foreignDir        string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	ca, _ := newTestCA(t)
	other, _ := newTestCA(t)
	w := &world{ca: ca}
	w.node, _ = newTestBundle(t, ca, RoleNode, "n1")
	w.coord, _ = newTestBundle(t, ca, RoleCoordinator, "c1")
	w.client, w.clientDir = newTestBundle(t, ca, RoleClient, "alice")
	// Same role and name, another cluster.
	w.foreign, w.foreignDir = newTestBundle(t, other, RoleNode, "n1")
	return w
}

func TestRolePolicyOverGRPC(t *testing.T) {
	w := newWorld(t)
	addr := startServer(t, w.coord, RoleNode, RoleCoordinator, RoleClient)
	server := Identity{Role: RoleCoordinator}

	conns := map[Role]*grpc.ClientConn{
		RoleNode:        dial(t, addr, credentials.NewTLS(w.node.ClientTLS(server))),
		RoleCoordinator: dial(t, addr, credentials.NewTLS(w.coord.ClientTLS(server))),
		RoleClient:      dial(t, addr, credentials.NewTLS(w.client.ClientTLS(server))),
	}
	calls := map[string]func(ctx context.Context, cc *grpc.ClientConn) error{
		"Register": func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := npumeshv1.NewControlServiceClient(cc).Register(ctx, &npumeshv1.RegisterRequest{})
			return err
		},
		"Heartbeat": func(ctx context.Context, cc *grpc.ClientConn) error {
			s, err := npumeshv1.NewControlServiceClient(cc).Heartbeat(ctx)
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		},
		"Info": func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := npumeshv1.NewNodeServiceClient(cc).Info(ctx, &npumeshv1.InfoRequest{})
			return err
		},
		"Generate": func(ctx context.Context, cc *grpc.ClientConn) error {
			s, err := npumeshv1.NewNodeServiceClient(cc).Generate(ctx, &npumeshv1.GenerateRequest{})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		},
		"ListModels": func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := npumeshv1.NewNodeServiceClient(cc).ListModels(ctx, &npumeshv1.ListModelsRequest{})
			return err
		},
		"Health": func(ctx context.Context, cc *grpc.ClientConn) error {
			_, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
			return err
		},
	}
	// Allowed calls reach the handler: OK, or Unimplemented for the stubs.
	for _, tc := range []struct {
		role   Role
		method string
		want   codes.Code
	}{
		{RoleNode, "Register", codes.OK},
		{RoleNode, "Heartbeat", codes.Unimplemented},
		{RoleNode, "Info", codes.PermissionDenied},
		{RoleNode, "Health", codes.OK},
		{RoleClient, "Register", codes.PermissionDenied},
		{RoleClient, "Heartbeat", codes.PermissionDenied},
		{RoleClient, "Info", codes.PermissionDenied},
		{RoleClient, "Generate", codes.PermissionDenied},
		{RoleClient, "ListModels", codes.Unimplemented},
		{RoleClient, "Health", codes.OK},
		{RoleCoordinator, "Register", codes.PermissionDenied},
		{RoleCoordinator, "Info", codes.Unimplemented},
		{RoleCoordinator, "Generate", codes.Unimplemented},
		{RoleCoordinator, "ListModels", codes.Unimplemented},
		{RoleCoordinator, "Health", codes.OK},
	} {
		t.Run(string(tc.role)+"/"+tc.method, func(t *testing.T) {
			err := calls[tc.method](callCtx(t), conns[tc.role])
			if got := status.Code(err); got != tc.want {
				t.Errorf("got %v (%v), want %v", got, err, tc.want)
			}
		})
	}

	t.Run("handler sees the peer identity", func(t *testing.T) {
		resp, err := npumeshv1.NewControlServiceClient(conns[RoleNode]).Register(callCtx(t), &npumeshv1.RegisterRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetNodeName() != "n1" {
			t.Errorf("node name %q, want n1", resp.GetNodeName())
		}
	})
}

func TestHandshakeRefusals(t *testing.T) {
	w := newWorld(t)
	// The node's API: only the coordinator may connect.
	addr := startServer(t, w.node, RoleCoordinator)
	expectNode := Identity{Role: RoleNode, Name: "n1"}

	noCert := w.coord.ClientTLS(expectNode)
	noCert.Certificates = nil
	// Trusts this cluster's server but presents another cluster's
	// certificate for the same role and name.
	foreignCert := w.coord.ClientTLS(expectNode)
	foreignCert.Certificates = []tls.Certificate{w.foreign.cert}
	tls12 := w.coord.ClientTLS(expectNode)
	tls12.MinVersion, tls12.MaxVersion = tls.VersionTLS12, tls.VersionTLS12

	for _, tc := range []struct {
		desc    string
		cfg     *tls.Config
		wantErr string // in the error probe returns; "" means accepted
	}{
		{"coordinator is accepted", w.coord.ClientTLS(expectNode), ""},
		{"any node name is accepted", w.coord.ClientTLS(Identity{Role: RoleNode}), ""},
		{"certificate from a foreign CA", foreignCert, "remote error: tls: "},
		{"client without certificate", noCert, "certificate required"},
		{"role not allowed on this server", w.client.ClientTLS(expectNode), "remote error: tls: bad certificate"},
		{"another node is refused too", w.node.ClientTLS(expectNode), "remote error: tls: bad certificate"},
		{"TLS 1.2 client", tls12, "protocol version"},
		{"server of the wrong role", w.coord.ClientTLS(Identity{Role: RoleCoordinator}), "unexpected peer identity: server is npumesh://node/n1, want npumesh://coordinator/*"},
		{"server of the wrong name", w.coord.ClientTLS(Identity{Role: RoleNode, Name: "n2"}), "want npumesh://node/n2"},
		{"no expected identity", w.coord.ClientTLS(Identity{}), "unexpected peer identity"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			err := probe(addr, tc.cfg)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("accepted, want refused with %q", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Fatalf("got %v, want an error containing %q", err, tc.wantErr)
			}
			// The same through gRPC: the call fails as Unavailable.
			cc := dial(t, addr, credentials.NewTLS(tc.cfg))
			_, err = healthpb.NewHealthClient(cc).Check(callCtx(t), &healthpb.HealthCheckRequest{})
			want := codes.Unavailable
			if tc.wantErr == "" {
				want = codes.OK
			}
			if got := status.Code(err); got != want {
				t.Errorf("gRPC health check: got %v (%v), want %v", got, err, want)
			}
		})
	}

	t.Run("unexpected server is ErrUnexpectedPeer", func(t *testing.T) {
		err := probe(addr, w.coord.ClientTLS(Identity{Role: RoleCoordinator}))
		if !errors.Is(err, ErrUnexpectedPeer) {
			t.Errorf("got %v, want ErrUnexpectedPeer", err)
		}
	})

	t.Run("client certificate used as a server", func(t *testing.T) {
		// Client certificates lack the ServerAuth usage.
		clientAsServer := startServer(t, w.client, RoleCoordinator)
		err := probe(clientAsServer, w.coord.ClientTLS(Identity{Role: RoleClient}))
		if err == nil || !strings.Contains(err.Error(), "incompatible key usage") {
			t.Errorf("got %v, want an incompatible key usage error", err)
		}
	})

	t.Run("server from a foreign CA", func(t *testing.T) {
		foreignAddr := startServer(t, w.foreign, RoleCoordinator)
		err := probe(foreignAddr, w.coord.ClientTLS(expectNode))
		if err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
			t.Errorf("got %v, want an unknown authority error", err)
		}
	})

	t.Run("plaintext gRPC client", func(t *testing.T) {
		cc := dial(t, addr, insecure.NewCredentials())
		_, err := healthpb.NewHealthClient(cc).Check(callCtx(t), &healthpb.HealthCheckRequest{})
		if got := status.Code(err); got != codes.Unavailable {
			t.Errorf("got %v (%v), want Unavailable", got, err)
		}
	})

	t.Run("plaintext bytes", func(t *testing.T) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(conn, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
		buf, _ := io.ReadAll(conn)
		// Whatever the server answers (a TLS alert or nothing), it is not
		// an HTTP/2 SETTINGS frame: type 0x4 at offset 3.
		if len(buf) >= 9 && buf[3] == 0x4 {
			t.Errorf("server answered plaintext HTTP/2: % x", buf)
		}
	})
}

// TestOpenSSL checks the listener with an independent TLS stack.
func TestOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		testdata.Missing(t, "openssl (apt-get install openssl): %v", err)
	}
	w := newWorld(t)
	addr := startServer(t, w.node, RoleClient)
	caFile := filepath.Join(w.clientDir, BundleCAFile)
	certFile := filepath.Join(w.clientDir, BundleCertFile)
	keyFile := filepath.Join(w.clientDir, BundleKeyFile)

	// sClient runs openssl s_client and returns its combined output. The
	// junk on stdin (longer than the 24-byte HTTP/2 preface) is sent after
	// the handshake; gRPC rejects it as a bad preface and closes, which ends s_client (-ign_eof keeps it
	// reading until then, so post-handshake messages are printed).
	sClient := func(t *testing.T, addr string, args ...string) (string, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, openssl, append([]string{"s_client", "-connect", addr, "-CAfile", caFile, "-alpn", "h2", "-ign_eof"}, args...)...)
		cmd.Stdin = strings.NewReader(strings.Repeat("junk ", 10) + "\n")
		cmd.Env = append(os.Environ(), "OPENSSL_CONF=/dev/null")
		out, err := cmd.CombinedOutput()
		if ctx.Err() != nil {
			t.Fatalf("openssl s_client %v timed out; output:\n%s", args, out)
		}
		return string(out), err
	}

	t.Run("TLS 1.2 refused", func(t *testing.T) {
		out, err := sClient(t, addr, "-tls1_2", "-cert", certFile, "-key", keyFile)
		if err == nil {
			t.Errorf("s_client -tls1_2 succeeded; output:\n%s", out)
		}
		if !strings.Contains(out, "Cipher is (NONE)") || !strings.Contains(out, "protocol version") {
			t.Errorf("s_client -tls1_2: want no cipher and a protocol version alert; output:\n%s", out)
		}
	})
	t.Run("TLS 1.3 with client certificate", func(t *testing.T) {
		out, err := sClient(t, addr, "-tls1_3", "-cert", certFile, "-key", keyFile)
		for _, want := range []string{
			"New, TLSv1.3, Cipher is",
			"Verify return code: 0 (ok)",
			// Go sends session tickets only after it has accepted the
			// client certificate.
			"Post-Handshake New Session Ticket arrived",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("s_client -tls1_3 output lacks %q (exit: %v); output:\n%s", want, err, out)
			}
		}
	})
	t.Run("TLS 1.3 with a role the server refuses", func(t *testing.T) {
		// Same client, a server open to coordinators only: the marker
		// above must then be missing.
		coordOnly := startServer(t, w.node, RoleCoordinator)
		out, _ := sClient(t, coordOnly, "-tls1_3", "-cert", certFile, "-key", keyFile)
		if strings.Contains(out, "Post-Handshake New Session Ticket arrived") || !strings.Contains(out, "bad certificate") {
			t.Errorf("want the client refused with a bad certificate alert; output:\n%s", out)
		}
	})
	t.Run("TLS 1.3 without client certificate", func(t *testing.T) {
		out, _ := sClient(t, addr, "-tls1_3")
		if strings.Contains(out, "Post-Handshake New Session Ticket arrived") {
			t.Errorf("server accepted a client without certificate; output:\n%s", out)
		}
		if !strings.Contains(out, "certificate required") {
			t.Errorf("want a certificate required alert; output:\n%s", out)
		}
	})
}
