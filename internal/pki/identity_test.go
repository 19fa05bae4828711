package pki

import (
	"crypto/x509"
	"errors"
	"net/url"
	"testing"
)

func TestParseRole(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Role
		wantErr bool
	}{
		{"node", RoleNode, false},
		{"coordinator", RoleCoordinator, false},
		{"client", RoleClient, false},
		{"Node", "", true},
		{"", "", true},
		{"admin", "", true},
	} {
		got, err := ParseRole(tc.in)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("ParseRole(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
		if err != nil && !errors.Is(err, ErrInvalidRole) {
			t.Errorf("ParseRole(%q) error %v does not wrap ErrInvalidRole", tc.in, err)
		}
	}
}

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"n1", true},
		{"a", true},
		{"gpu-box-1", true},
		{"0", true},
		{"x123456789012345678901234567890123456789012345678901234567890ab", true}, // 63
		{"x123456789012345678901234567890123456789012345678901234567890abc", false},
		{"", false},
		{"-n1", false},
		{"n1-", false},
		{"N1", false},
		{"n_1", false},
		{"n.1", false},
		{"n/1", false},
		{"n 1", false},
		{"nö", false},
	} {
		err := ValidateName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) error %v does not wrap ErrInvalidName", tc.name, err)
		}
	}
}

func TestParseIdentity(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Identity
		ok   bool
	}{
		{"npumesh://node/n1", Identity{RoleNode, "n1"}, true},
		{"npumesh://coordinator/c", Identity{RoleCoordinator, "c"}, true},
		{"npumesh://client/alice-laptop", Identity{RoleClient, "alice-laptop"}, true},
		{"npumesh://node", Identity{}, false},
		{"npumesh://node/", Identity{}, false},
		{"npumesh://node/n1/x", Identity{}, false},
		{"npumesh://admin/n1", Identity{}, false},
		{"npumesh://node:443/n1", Identity{}, false},
		{"npumesh://u@node/n1", Identity{}, false},
		{"npumesh://node/n1?x=1", Identity{}, false},
		{"npumesh://node/n%31", Identity{}, false},
		{"https://node/n1", Identity{}, false},
		{"spiffe://node/n1", Identity{}, false},
	} {
		got, err := ParseIdentity(tc.in)
		if got != tc.want || (err == nil) != tc.ok {
			t.Errorf("ParseIdentity(%q) = %v, %v; want %v, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
		if tc.ok && got.String() != tc.in {
			t.Errorf("ParseIdentity(%q).String() = %q", tc.in, got.String())
		}
	}
}

func FuzzParseIdentity(f *testing.F) {
	for _, s := range []string{"npumesh://node/n1", "npumesh://client/a-b", "npumesh://node/", "npumesh:///n1", "npumesh://coordinator/x/y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseIdentity(s)
		if err != nil {
			return
		}
		if id.String() != s {
			t.Fatalf("ParseIdentity(%q) = %v, which prints as %q", s, id, id.String())
		}
		if err := id.Validate(); err != nil {
			t.Fatalf("ParseIdentity(%q) accepted an invalid identity: %v", s, err)
		}
		// What the parser accepts must survive the URL round trip a
		// certificate SAN takes.
		u, err := url.Parse(s)
		if err != nil {
			t.Fatalf("url.Parse(%q): %v", s, err)
		}
		got, err := IdentityFromCert(&x509.Certificate{URIs: []*url.URL{u}})
		if err != nil || got != id {
			t.Fatalf("IdentityFromCert(%q) = %v, %v; want %v", s, got, err, id)
		}
	})
}

func TestIdentityFromCert(t *testing.T) {
	mustURL := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	for _, tc := range []struct {
		desc string
		uris []string
		want Identity
		ok   bool
	}{
		{"one identity", []string{"npumesh://node/n1"}, Identity{RoleNode, "n1"}, true},
		{"other URIs ignored", []string{"spiffe://example.org/x", "npumesh://client/c1"}, Identity{RoleClient, "c1"}, true},
		{"none", nil, Identity{}, false},
		{"only foreign", []string{"spiffe://example.org/x"}, Identity{}, false},
		{"two identities", []string{"npumesh://node/n1", "npumesh://coordinator/n1"}, Identity{}, false},
		{"bad role", []string{"npumesh://root/n1"}, Identity{}, false},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			c := &x509.Certificate{}
			for _, s := range tc.uris {
				c.URIs = append(c.URIs, mustURL(s))
			}
			got, err := IdentityFromCert(c)
			if got != tc.want || (err == nil) != tc.ok {
				t.Errorf("got %v, %v; want %v, ok=%v", got, err, tc.want, tc.ok)
			}
		})
	}
	if _, err := IdentityFromCert(nil); !errors.Is(err, ErrNoIdentity) {
		t.Errorf("IdentityFromCert(nil) = %v, want ErrNoIdentity", err)
	}
}
