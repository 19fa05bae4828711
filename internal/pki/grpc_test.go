package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/url"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

func peerCtx(info credentials.AuthInfo) context.Context {
	return peer.NewContext(context.Background(), &peer.Peer{
		Addr:     &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1},
		AuthInfo: info,
	})
}

// verifiedPeer is what gRPC records for a ServerTLS connection from id.
func verifiedPeer(id Identity) context.Context {
	u, _ := url.Parse(id.String())
	leaf := &x509.Certificate{URIs: []*url.URL{u}}
	return peerCtx(credentials.TLSInfo{State: tls.ConnectionState{
		PeerCertificates: []*x509.Certificate{leaf},
		VerifiedChains:   [][]*x509.Certificate{{leaf}},
	}})
}

func TestPeerIdentity(t *testing.T) {
	u, _ := url.Parse("npumesh://node/n1")
	unverified := peerCtx(credentials.TLSInfo{State: tls.ConnectionState{
		PeerCertificates: []*x509.Certificate{{URIs: []*url.URL{u}}},
	}})
	for _, tc := range []struct {
		desc string
		ctx  context.Context
		want Identity
		ok   bool
	}{
		{"verified", verifiedPeer(Identity{RoleNode, "n1"}), Identity{RoleNode, "n1"}, true},
		{"no peer", context.Background(), Identity{}, false},
		{"not TLS", peerCtx(nil), Identity{}, false},
		{"unverified certificate", unverified, Identity{}, false},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			got, err := PeerIdentity(tc.ctx)
			if got != tc.want || (err == nil) != tc.ok {
				t.Errorf("got %v, %v; want %v, ok=%v", got, err, tc.want, tc.ok)
			}
		})
	}
}

func TestRoleInterceptors(t *testing.T) {
	unary, stream := RoleInterceptors(map[string][]Role{
		"/a.S/":                        {RoleNode},
		"/a.S/Open":                    {RoleNode, RoleClient},
		"/a.S/Closed":                  {},
		"/grpc.health.v1.Health/Watch": {RoleCoordinator},
	})
	node := verifiedPeer(Identity{RoleNode, "n1"})
	client := verifiedPeer(Identity{RoleClient, "c"})
	coord := verifiedPeer(Identity{RoleCoordinator, "c1"})
	for _, tc := range []struct {
		desc   string
		ctx    context.Context
		method string
		want   codes.Code
	}{
		{"service key", node, "/a.S/Any", codes.OK},
		{"service key, wrong role", client, "/a.S/Any", codes.PermissionDenied},
		{"method key wins", client, "/a.S/Open", codes.OK},
		{"empty role list", node, "/a.S/Closed", codes.PermissionDenied},
		{"unlisted service", node, "/b.T/M", codes.PermissionDenied},
		{"unlisted, prefix of a listed service", node, "/a.SS/M", codes.PermissionDenied},
		{"health for all", client, "/grpc.health.v1.Health/Check", codes.OK},
		{"health overridden by policy", client, "/grpc.health.v1.Health/Watch", codes.PermissionDenied},
		{"health overridden, allowed role", coord, "/grpc.health.v1.Health/Watch", codes.OK},
		{"no identity", peerCtx(nil), "/a.S/Any", codes.Unauthenticated},
		{"no identity, health", context.Background(), "/grpc.health.v1.Health/Check", codes.Unauthenticated},
		{"malformed method", node, "nonsense", codes.PermissionDenied},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			called := false
			_, err := unary(tc.ctx, nil, &grpc.UnaryServerInfo{FullMethod: tc.method}, func(context.Context, any) (any, error) {
				called = true
				return nil, nil
			})
			if got := status.Code(err); got != tc.want || called != (tc.want == codes.OK) {
				t.Errorf("unary: got %v (%v), handler called %v; want %v", got, err, called, tc.want)
			}
			called = false
			err = stream(nil, fakeStream{ctx: tc.ctx}, &grpc.StreamServerInfo{FullMethod: tc.method}, func(any, grpc.ServerStream) error {
				called = true
				return nil
			})
			if got := status.Code(err); got != tc.want || called != (tc.want == codes.OK) {
				t.Errorf("stream: got %v (%v), handler called %v; want %v", got, err, called, tc.want)
			}
		})
	}
}

type fakeStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s fakeStream) Context() context.Context { return s.ctx }

func TestRoleInterceptorsPanicsOnBadPolicy(t *testing.T) {
	for _, tc := range []struct {
		key  string
		role Role
	}{
		{"/a.S", RoleNode},        // service without trailing slash
		{"a.S/M", RoleNode},       // no leading slash
		{"/a.S/M/x", RoleNode},    // extra segment
		{"//M", RoleNode},         // no service
		{"/a.S/M", Role("admin")}, // unknown role
	} {
		t.Run(tc.key, func(t *testing.T) {
			defer func() {
				r := recover()
				if r == nil || !strings.Contains(r.(string), "pki.RoleInterceptors") {
					t.Errorf("recover() = %v, want a pki.RoleInterceptors panic", r)
				}
			}()
			RoleInterceptors(map[string][]Role{tc.key: {tc.role}})
		})
	}
}
