package discovery

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
)

// Service types. Coordinators and nodes speak different protocols on their
// advertised ports (ControlService and enrollment; NodeService), so they get
// different DNS-SD service types (RFC 6763 §7) rather than one type with a
// role key: a node looking for its coordinator then asks only for
// coordinators, and a room full of nodes does not answer it.
const (
	CoordinatorService = "_npumesh._tcp"
	NodeService        = "_npumesh-node._tcp"
)

// Roles as they appear in Service.Role and the TXT key role=.
const (
	RoleCoordinator = "coordinator"
	RoleNode        = "node"
)

// TXT keys (RFC 6763 §6.4: short, case-insensitive). The layout, version 1:
//
//	txtvers=1           always first
//	role=coordinator    or node
//	ca-sha256=<hex>     SHA-256 of the cluster CA certificate's DER, 64 lower-case hex digits
//	cluster=<id>        the cluster's human-readable id (coordinators; --cluster-id)
//	version=<v>         npumesh version of the advertiser
//	grpc=<port>         the mTLS gRPC port (the same as the SRV port)
//	enroll=<port>       the enrollment port (coordinators with a CA)
//	api=<port>          the HTTP API port, when it listens beyond loopback (coordinators)
//	name=<node name>    the node's certificate name (nodes)
//	arch=<GOARCH>       amd64, arm64, riscv64 (nodes)
//	accel=<a,b>         accelerator drivers or products, comma-separated (nodes; absent: none)
//
// Unknown keys are kept in Service.TXT and otherwise ignored, so later
// versions may add keys.
const (
	keyTXTVers  = "txtvers"
	keyRole     = "role"
	keyCA       = "ca-sha256"
	keyCluster  = "cluster"
	keyVersion  = "version"
	keyGRPC     = "grpc"
	keyEnroll   = "enroll"
	keyAPI      = "api"
	keyName     = "name"
	keyArch     = "arch"
	keyAccel    = "accel"
	txtVersion1 = "1"
)

// maxTXTString is the longest key=value string a TXT record holds.
const maxTXTString = 255

// Service is one coordinator or node found on the LAN, or (for an
// Advertiser) one to announce.
type Service struct {
	Role     string `json:"role"`
	Instance string `json:"instance"`
	// Addr is the address the advertiser answered with for the interface
	// the question arrived on; zero in an Advertiser's own description.
	Addr netip.Addr `json:"addr"`
	// Port is the SRV port: the mTLS gRPC port.
	Port int `json:"port"`

	CAFingerprint string   `json:"ca_sha256"`
	ClusterID     string   `json:"cluster_id,omitempty"`
	Version       string   `json:"version,omitempty"`
	EnrollPort    int      `json:"enroll_port,omitempty"`
	APIPort       int      `json:"api_port,omitempty"`
	Name          string   `json:"name,omitempty"`
	Arch          string   `json:"arch,omitempty"`
	Accelerators  []string `json:"accelerators,omitempty"`

	// TXT holds every key of the record as received (keys in lower case).
	TXT map[string]string `json:"txt,omitempty"`
}

// GRPCAddr is HOST:PORT of the gRPC port, or "" without an address.
func (s Service) GRPCAddr() string { return hostPort(s.Addr, s.Port) }

// EnrollAddr is HOST:PORT of the enrollment port, or "" when the service
// has none.
func (s Service) EnrollAddr() string { return hostPort(s.Addr, s.EnrollPort) }

// APIAddr is HOST:PORT of the HTTP API, or "" when it is not advertised.
func (s Service) APIAddr() string { return hostPort(s.Addr, s.APIPort) }

func hostPort(a netip.Addr, port int) string {
	if !a.IsValid() || port <= 0 {
		return ""
	}
	return net.JoinHostPort(a.String(), strconv.Itoa(port))
}

// serviceType is the DNS-SD type for a role.
func serviceType(role string) (string, error) {
	switch role {
	case RoleCoordinator:
		return CoordinatorService, nil
	case RoleNode:
		return NodeService, nil
	}
	return "", fmt.Errorf("discovery: unknown role %q (want %s or %s)", role, RoleCoordinator, RoleNode)
}

// txtRecord returns the TXT key=value strings of s, in the documented order.
func (s Service) txtRecord() ([][2]string, error) {
	if _, err := serviceType(s.Role); err != nil {
		return nil, err
	}
	if !isHex64(s.CAFingerprint) {
		return nil, fmt.Errorf("discovery: CA fingerprint %q is not 64 lower-case hex digits", s.CAFingerprint)
	}
	if s.Port <= 0 || s.Port > 65535 {
		return nil, fmt.Errorf("discovery: bad gRPC port %d", s.Port)
	}
	kv := [][2]string{
		{keyTXTVers, txtVersion1},
		{keyRole, s.Role},
		{keyCA, s.CAFingerprint},
	}
	add := func(k, v string) {
		if v != "" {
			kv = append(kv, [2]string{k, v})
		}
	}
	port := func(p int) string {
		if p <= 0 {
			return ""
		}
		return strconv.Itoa(p)
	}
	add(keyCluster, s.ClusterID)
	add(keyVersion, s.Version)
	add(keyGRPC, port(s.Port))
	add(keyEnroll, port(s.EnrollPort))
	add(keyAPI, port(s.APIPort))
	add(keyName, s.Name)
	add(keyArch, s.Arch)
	add(keyAccel, joinFitting(s.Accelerators, maxTXTString-len(keyAccel)-1))
	for _, p := range []int{s.EnrollPort, s.APIPort} {
		if p < 0 || p > 65535 {
			return nil, fmt.Errorf("discovery: bad port %d", p)
		}
	}
	for _, e := range kv {
		if len(e[0])+1+len(e[1]) > maxTXTString {
			return nil, fmt.Errorf("discovery: TXT %s=%q is longer than %d bytes", e[0], e[1], maxTXTString)
		}
	}
	return kv, nil
}

// joinFitting joins items with commas, leaving out (sorted, deduplicated)
// items that would make it longer than max.
func joinFitting(items []string, max int) string {
	var b strings.Builder
	seen := map[string]bool{}
	for _, it := range items {
		it = strings.ReplaceAll(strings.TrimSpace(it), ",", " ")
		if it == "" || seen[it] {
			continue
		}
		seen[it] = true
		extra := len(it)
		if b.Len() > 0 {
			extra++
		}
		if b.Len()+extra > max {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(it)
	}
	return b.String()
}

// errNotOurs marks a record that is not an npumesh service of version 1.
var errNotOurs = errors.New("not an npumesh service record")

// parseTXT fills s's TXT-derived fields from key=value pairs. Missing or
// malformed required keys make the record unusable (errNotOurs wrapped).
func (s *Service) parseTXT(kv map[string]string) error {
	s.TXT = kv
	if kv[keyTXTVers] != txtVersion1 {
		return fmt.Errorf("%w: txtvers=%q", errNotOurs, kv[keyTXTVers])
	}
	if r := kv[keyRole]; r != RoleCoordinator && r != RoleNode {
		return fmt.Errorf("%w: role=%q", errNotOurs, r)
	}
	s.Role = kv[keyRole]
	fp := strings.ToLower(kv[keyCA])
	if !isHex64(fp) {
		return fmt.Errorf("%w: ca-sha256=%q", errNotOurs, kv[keyCA])
	}
	s.CAFingerprint = fp
	s.ClusterID, s.Version, s.Name, s.Arch = kv[keyCluster], kv[keyVersion], kv[keyName], kv[keyArch]
	var err error
	if s.EnrollPort, err = parsePort(kv, keyEnroll); err != nil {
		return err
	}
	if s.APIPort, err = parsePort(kv, keyAPI); err != nil {
		return err
	}
	if a := kv[keyAccel]; a != "" {
		s.Accelerators = strings.Split(a, ",")
	}
	return nil
}

func parsePort(kv map[string]string, key string) (int, error) {
	v, ok := kv[key]
	if !ok {
		return 0, nil
	}
	p, err := strconv.Atoi(v)
	if err != nil || p <= 0 || p > 65535 {
		return 0, fmt.Errorf("%w: %s=%q is no port", errNotOurs, key, v)
	}
	return p, nil
}

// sortServices orders coordinators first, then by cluster, instance, address.
func sortServices(ss []Service) {
	sort.Slice(ss, func(i, j int) bool {
		a, b := ss[i], ss[j]
		if a.Role != b.Role {
			return a.Role == RoleCoordinator
		}
		if a.CAFingerprint != b.CAFingerprint {
			return a.CAFingerprint < b.CAFingerprint
		}
		if a.Instance != b.Instance {
			return a.Instance < b.Instance
		}
		return a.Addr.Less(b.Addr)
	})
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// InstanceName makes a DNS-SD instance name (one DNS label, at most 63
// bytes) from parts, e.g. ("coordinator", host, fp[:8]): lower case, runs of
// anything but a-z, 0-9 and '-' become '-'. It keeps names that avahi and
// dns-sd print without escapes.
func InstanceName(parts ...string) string {
	var b strings.Builder
	dash := false
	for _, p := range parts {
		for _, r := range strings.ToLower(p) {
			if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
				if dash && b.Len() > 0 {
					b.WriteByte('-')
				}
				dash = false
				b.WriteRune(r)
			} else {
				dash = true
			}
		}
		dash = true
	}
	s := b.String()
	if len(s) > 63 {
		s = strings.TrimRight(s[:63], "-")
	}
	if s == "" {
		s = "npumesh"
	}
	return s
}
