package discovery

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/pion/mdns/v2"
	"golang.org/x/net/dns/dnsmessage"
)

const fp1 = "5881e8ea0f4c6b0e0a8d4f9c2917817ea4eab5aa0b1c2d3e4f5a6b7c8d9e0f12"

func TestTXTRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		in   Service
	}{
		{"coordinator", Service{Role: RoleCoordinator, Port: 7070, CAFingerprint: fp1, ClusterID: "lab", Version: "v0.3.0", EnrollPort: 7071, APIPort: 8080}},
		{"node", Service{Role: RoleNode, Port: 7071, CAFingerprint: fp1, Version: "dev", Name: "laptop-1", Arch: "riscv64", Accelerators: []string{"intel_vpu", "amdxdna"}}},
		{"minimal", Service{Role: RoleCoordinator, Port: 1, CAFingerprint: fp1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kv, err := tt.in.txtRecord()
			if err != nil {
				t.Fatal(err)
			}
			if kv[0] != [2]string{"txtvers", "1"} {
				t.Errorf("first TXT string %v, want txtvers=1", kv[0])
			}
			evt := mdns.ServiceEvent{Addr: netip.MustParseAddr("10.231.0.1"), Instance: mdns.ServiceInstance{Instance: "x", Port: uint16(tt.in.Port)}}
			evt.Instance.Service, _ = serviceType(tt.in.Role)
			for _, e := range kv {
				evt.Instance.Text = append(evt.Instance.Text, mdns.NewTXTString(e[0], e[1]))
			}
			got, err := fromEvent(evt)
			if err != nil {
				t.Fatal(err)
			}
			want := tt.in
			want.Instance, want.Addr, want.TXT = "x", evt.Addr, got.TXT
			if got.GRPCAddr() != "10.231.0.1:"+strconv.Itoa(tt.in.Port) {
				t.Errorf("GRPCAddr %q", got.GRPCAddr())
			}
			if strings.Join(got.Accelerators, ",") != strings.Join(want.Accelerators, ",") ||
				got.Role != want.Role || got.CAFingerprint != want.CAFingerprint || got.ClusterID != want.ClusterID ||
				got.Version != want.Version || got.EnrollPort != want.EnrollPort || got.APIPort != want.APIPort ||
				got.Name != want.Name || got.Arch != want.Arch || got.Port != want.Port {
				t.Errorf("got %+v, want %+v", got, want)
			}
		})
	}
}

func TestRejectsForeignRecords(t *testing.T) {
	base := map[string]string{"txtvers": "1", "role": "coordinator", "ca-sha256": fp1, "enroll": "7071"}
	tests := []struct {
		name    string
		change  func(map[string]string)
		service string
	}{
		{"no txtvers", func(m map[string]string) { delete(m, "txtvers") }, CoordinatorService},
		{"txtvers 2", func(m map[string]string) { m["txtvers"] = "2" }, CoordinatorService},
		{"bad role", func(m map[string]string) { m["role"] = "admin" }, CoordinatorService},
		{"short fingerprint", func(m map[string]string) { m["ca-sha256"] = fp1[:63] }, CoordinatorService},
		{"bad enroll port", func(m map[string]string) { m["enroll"] = "70000" }, CoordinatorService},
		{"node role under coordinator type", func(m map[string]string) { m["role"] = "node" }, CoordinatorService},
		{"coordinator role under node type", func(map[string]string) {}, NodeService},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := map[string]string{}
			for k, v := range base {
				m[k] = v
			}
			tt.change(m)
			evt := mdns.ServiceEvent{Addr: netip.MustParseAddr("10.231.0.1"), Instance: mdns.ServiceInstance{Instance: "x", Service: tt.service, Port: 7070}}
			for k, v := range m {
				evt.Instance.Text = append(evt.Instance.Text, mdns.NewTXTString(k, v))
			}
			if _, err := fromEvent(evt); !errors.Is(err, errNotOurs) {
				t.Errorf("got %v, want errNotOurs", err)
			}
		})
	}
}

func TestTXTRecordValidates(t *testing.T) {
	for _, s := range []Service{
		{Role: "admin", Port: 1, CAFingerprint: fp1},
		{Role: RoleNode, Port: 0, CAFingerprint: fp1},
		{Role: RoleNode, Port: 1, CAFingerprint: strings.ToUpper(fp1)},
		{Role: RoleNode, Port: 1, CAFingerprint: fp1, EnrollPort: 65536},
		{Role: RoleNode, Port: 1, CAFingerprint: fp1, Name: strings.Repeat("n", 260)},
	} {
		if _, err := s.txtRecord(); err == nil {
			t.Errorf("txtRecord(%+v) = nil error, want one", s)
		}
	}
}

func TestAcceleratorsFit(t *testing.T) {
	many := make([]string, 100)
	for i := range many {
		many[i] = "accelerator-" + strconv.Itoa(i)
	}
	s := Service{Role: RoleNode, Port: 1, CAFingerprint: fp1, Accelerators: append([]string{"a,b", "a b"}, many...)}
	kv, err := s.txtRecord()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range kv {
		if e[0] == "accel" {
			if len(e[0])+1+len(e[1]) > 255 {
				t.Errorf("accel= is %d bytes", len(e[1]))
			}
			if !strings.HasPrefix(e[1], "a b,accelerator-0,") {
				t.Errorf("accel=%q: want commas in names replaced and duplicates dropped", e[1])
			}
		}
	}
}

func TestInstanceName(t *testing.T) {
	tests := []struct {
		parts []string
		want  string
	}{
		{[]string{"coordinator", "My.Host_01", "5881e8ea"}, "coordinator-my-host-01-5881e8ea"},
		{[]string{"node", "", "laptop"}, "node-laptop"},
		{[]string{"..", "--"}, "npumesh"},
		{[]string{strings.Repeat("x", 70)}, strings.Repeat("x", 63)},
	}
	for _, tt := range tests {
		if got := InstanceName(tt.parts...); got != tt.want {
			t.Errorf("InstanceName(%q) = %q, want %q", tt.parts, got, tt.want)
		}
	}
}

func TestAnnouncementParses(t *testing.T) {
	a, err := NewAdvertiser(AdvertiserConfig{Service: Service{Role: RoleCoordinator, Port: 7070, CAFingerprint: fp1, EnrollPort: 7071, Instance: "coord-a"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, goodbye := range []bool{false, true} {
		b, err := a.records([]byte{10, 231, 0, 1}, goodbye)
		if err != nil {
			t.Fatal(err)
		}
		var m dnsmessage.Message
		if err := m.Unpack(b); err != nil {
			t.Fatal(err)
		}
		if !m.Header.Response || len(m.Answers) != 4 {
			t.Fatalf("response %v with %d answers, want 4", m.Header.Response, len(m.Answers))
		}
		types := []dnsmessage.Type{dnsmessage.TypePTR, dnsmessage.TypeSRV, dnsmessage.TypeTXT, dnsmessage.TypeA}
		for i, r := range m.Answers {
			if r.Header.Type != types[i] {
				t.Errorf("answer %d is %v, want %v", i, r.Header.Type, types[i])
			}
			if goodbye != (r.Header.TTL == 0) {
				t.Errorf("goodbye %v: %v has TTL %d", goodbye, r.Header.Type, r.Header.TTL)
			}
		}
		if got := m.Answers[0].Body.(*dnsmessage.PTRResource).PTR.String(); got != "coord-a._npumesh._tcp.local." {
			t.Errorf("PTR %q", got)
		}
		if got := m.Answers[1].Body.(*dnsmessage.SRVResource); got.Port != 7070 || got.Target.String() != "coord-a.local." {
			t.Errorf("SRV %+v", got)
		}
		if got := m.Answers[3].Body.(*dnsmessage.AResource).A; got != [4]byte{10, 231, 0, 1} {
			t.Errorf("A %v", got)
		}
	}
}
