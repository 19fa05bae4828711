package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/npumesh/npumesh/internal/accel"
	"github.com/npumesh/npumesh/internal/discovery"
	"github.com/npumesh/npumesh/internal/pki"
	"github.com/npumesh/npumesh/internal/version"
)

// joinFindTimeout is how long a node given --join and no --coordinator
// looks for its coordinator on the LAN: long enough for machines that boot
// together.
const joinFindTimeout = 30 * time.Second

func newDiscoverCmd(g *globals) *cobra.Command {
	var (
		timeout time.Duration
		asJSON  bool
		ifaces  string
		caHash  string
	)
	cmd := &cobra.Command{
		Use:   "discover [--timeout 3s] [--json]",
		Short: "List the npumesh coordinators and nodes that answer on the LAN (mDNS / DNS-SD)",
		Long: "discover asks the LAN for _npumesh._tcp (coordinators) and _npumesh-node._tcp (nodes) with\n" +
			"multicast DNS and prints every answer. Answers are hints anyone on the LAN can forge: joining\n" +
			"checks the cluster's CA fingerprint in the TLS handshake.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			if timeout <= 0 || timeout > 5*time.Minute {
				return fmt.Errorf("--timeout must be between 0 and 5m, got %s", timeout)
			}
			b := &discovery.Browser{Interfaces: discovery.ParseInterfaces(ifaces), Logger: log}
			services, err := b.Browse(c.Context(), timeout)
			if err != nil {
				return err
			}
			if caHash != "" {
				want := strings.ToLower(strings.TrimSpace(caHash))
				kept := services[:0]
				for _, s := range services {
					if s.CAFingerprint == want {
						kept = append(kept, s)
					}
				}
				services = kept
			}
			if asJSON {
				enc := json.NewEncoder(g.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(services)
			}
			if len(services) == 0 {
				fmt.Fprintf(g.stderr, "nothing answered within %s (is UDP 5353 open? --mdns-iface picks the interface)\n", timeout)
				return nil
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ROLE\tNAME\tGRPC\tENROLL\tCLUSTER\tCA-SHA256\tVERSION\tARCH\tACCELERATORS")
			for _, s := range services {
				name := s.Name
				if name == "" {
					name = s.Instance
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Role, name, orDash(s.GRPCAddr()), orDash(s.EnrollAddr()),
					orDash(s.ClusterID), s.CAFingerprint[:16], orDash(s.Version), orDash(s.Arch), orDash(strings.Join(s.Accelerators, ",")))
			}
			return tw.Flush()
		},
	}
	f := cmd.Flags()
	f.DurationVar(&timeout, "timeout", 3*time.Second, "how long to listen for answers")
	f.BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	f.StringVar(&ifaces, "mdns-iface", "", "interfaces to ask on, comma-separated (default: every up, multicast-capable, non-loopback interface)")
	f.StringVar(&caHash, "ca-sha256", "", "show only the cluster whose CA has this SHA-256 (the last part of a join token)")
	return cmd
}

// mdnsOptions are the mDNS flags of `npumesh coordinator` and `npumesh node`.
type mdnsOptions struct {
	enabled   bool
	ifaces    string
	clusterID string
}

// register adds --mdns and --mdns-iface, and for coordinators --cluster-id.
func (o *mdnsOptions) register(c *cobra.Command, coordinator bool) {
	f := c.Flags()
	what := "advertise this node on the LAN (DNS-SD _npumesh-node._tcp), and find the coordinator there when --coordinator is not given"
	if coordinator {
		what = "advertise this coordinator on the LAN (DNS-SD _npumesh._tcp) so that `npumesh node --join TOKEN` finds it without --coordinator; never on a loopback-only --listen"
		f.StringVar(&o.clusterID, "cluster-id", "", "cluster name announced on the LAN (default: the first 12 hex digits of the CA's SHA-256)")
	}
	f.BoolVar(&o.enabled, "mdns", true, what)
	f.StringVar(&o.ifaces, "mdns-iface", "", "interfaces for mDNS, comma-separated (default: every up, multicast-capable interface, or the ones holding the --listen address)")
}

// advertiseInterfaces decides where to advertise a service listening on
// listen: the --mdns-iface list; nothing (ok false) for a loopback
// address, which the LAN cannot reach; the interfaces holding a specific
// address; or all.
func (o *mdnsOptions) advertiseInterfaces(listen net.Addr) (ifaces []string, ok bool, err error) {
	if !o.enabled {
		return nil, false, nil
	}
	if names := discovery.ParseInterfaces(o.ifaces); len(names) > 0 {
		return names, true, nil
	}
	host, _, err := net.SplitHostPort(listen.String())
	if err != nil {
		return nil, false, err
	}
	ip := net.ParseIP(host)
	switch {
	case ip == nil || ip.IsUnspecified():
		return nil, true, nil
	case ip.IsLoopback():
		return nil, false, nil
	}
	names, err := discovery.InterfacesWithIP(ip)
	if err != nil || len(names) == 0 {
		return nil, false, fmt.Errorf("no interface holds %s: %v", ip, err)
	}
	return names, true, nil
}

// startAdvertiser starts an advertiser and returns its Stop. mDNS is a
// convenience: when it cannot start, the process goes on without it.
func startAdvertiser(log *slog.Logger, svc discovery.Service, ifaces []string) (stop func()) {
	a, err := discovery.NewAdvertiser(discovery.AdvertiserConfig{Service: svc, Interfaces: ifaces, Logger: log})
	if err == nil {
		err = a.Start()
	}
	if err != nil {
		log.Warn("not advertising on the LAN (mDNS); nodes need --coordinator", "err", err)
		return func() {}
	}
	return a.Stop
}

// advertiseCoordinator announces a coordinator listening on grpc (and
// enroll, api when not nil) as a member of the cluster whose CA has fp.
func (o *mdnsOptions) advertiseCoordinator(log *slog.Logger, fp string, grpc, enroll, api net.Addr) (stop func()) {
	ifaces, ok, err := o.advertiseInterfaces(grpc)
	if err != nil {
		log.Warn("not advertising on the LAN (mDNS)", "err", err)
	}
	if !ok {
		if o.enabled && err == nil {
			log.Debug("not advertising on the LAN (mDNS): the gRPC port listens on loopback only", "listen", grpc.String())
		}
		return func() {}
	}
	svc := discovery.Service{
		Role: discovery.RoleCoordinator, CAFingerprint: fp, ClusterID: o.clusterID, Version: version.Version,
		Port: portOf(grpc), EnrollPort: portOf(enroll),
	}
	if svc.ClusterID == "" {
		svc.ClusterID = fp[:12]
	}
	if api != nil {
		if host, _, err := net.SplitHostPort(api.String()); err == nil {
			if ip := net.ParseIP(host); ip != nil && !ip.IsLoopback() {
				svc.APIPort = portOf(api)
			}
		}
	}
	host := hostLabel()
	svc.Instance = discovery.InstanceName("coordinator", svc.ClusterID, host, fp[:8])
	return startAdvertiser(log, svc, ifaces)
}

// advertiseNode announces a node daemon serving NodeService on listen.
func (o *mdnsOptions) advertiseNode(log *slog.Logger, b *pki.Bundle, listen net.Addr) (stop func()) {
	ifaces, ok, err := o.advertiseInterfaces(listen)
	if err != nil {
		log.Warn("not advertising on the LAN (mDNS)", "err", err)
	}
	if !ok {
		return func() {}
	}
	fp := b.CAFingerprint()
	svc := discovery.Service{
		Role: discovery.RoleNode, CAFingerprint: fp, Version: version.Version, Port: portOf(listen),
		Name: b.Identity().Name, Arch: runtime.GOARCH, Accelerators: acceleratorNames(accel.Discover("/")),
	}
	svc.Instance = discovery.InstanceName("node", svc.Name, fp[:8])
	return startAdvertiser(log, svc, ifaces)
}

// resolveForJoin fills in the coordinator's addresses from the LAN when
// the node has a join token and no --coordinator; --enroll-addr, when
// given, is kept. It does nothing otherwise.
func (o *mdnsOptions) resolveForJoin(ctx context.Context, log *slog.Logger, token string, coordinators, enrollAddr *string) error {
	if token == "" || *coordinators != "" {
		return nil
	}
	if !o.enabled {
		return fmt.Errorf("--join needs --coordinator HOST:PORT when --mdns=false")
	}
	grpc, enroll, err := resolveCoordinator(ctx, log, token, discovery.ParseInterfaces(o.ifaces))
	if err != nil {
		return err
	}
	*coordinators = grpc
	if *enrollAddr == "" {
		*enrollAddr = enroll
	}
	return nil
}

// resolveForBundle finds the coordinator of the node's cluster on the LAN
// when no --coordinator is given (a node enrolled earlier, started again).
func (o *mdnsOptions) resolveForBundle(ctx context.Context, log *slog.Logger, b *pki.Bundle, coordinators *string) error {
	if *coordinators != "" {
		return nil
	}
	if !o.enabled {
		return fmt.Errorf("give --coordinator HOST:PORT (or leave --mdns on to find the coordinator on the LAN)")
	}
	fp := b.CAFingerprint()
	log.Info("looking for the coordinator on the LAN (mDNS)", "ca_sha256", fp)
	ctx, cancel := context.WithTimeout(ctx, joinFindTimeout)
	defer cancel()
	grpc, _, err := (&discovery.Browser{Interfaces: discovery.ParseInterfaces(o.ifaces), Logger: log}).FindCoordinator(ctx, fp)
	if err != nil {
		return err
	}
	log.Info("found the coordinator on the LAN", "grpc", grpc)
	*coordinators = grpc
	return nil
}

// resolveCoordinator finds, with mDNS, the coordinator of the cluster a
// join token names (by its CA fingerprint; other clusters are ignored) and
// returns its gRPC and enrollment addresses. It is only a hint: enrollment
// still accepts the server only if it presents the token's CA.
func resolveCoordinator(ctx context.Context, log *slog.Logger, token string, ifaces []string) (grpcAddr, enrollAddr string, err error) {
	tok, err := pki.ParseJoinToken(token)
	if err != nil {
		return "", "", fmt.Errorf("--join: %w", err)
	}
	log.Info("no --coordinator: looking for the token's cluster on the LAN (mDNS)", "ca_sha256", tok.CAFingerprint, "timeout", joinFindTimeout)
	ctx, cancel := context.WithTimeout(ctx, joinFindTimeout)
	defer cancel()
	b := &discovery.Browser{Interfaces: ifaces, Logger: log}
	grpcAddr, enrollAddr, err = b.FindCoordinator(ctx, tok.CAFingerprint)
	if err != nil {
		return "", "", err
	}
	log.Info("found the coordinator on the LAN", "grpc", grpcAddr, "enroll", enrollAddr)
	return grpcAddr, enrollAddr, nil
}

func portOf(a net.Addr) int {
	if a == nil {
		return 0
	}
	_, p, err := net.SplitHostPort(a.String())
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return n
}

// hostLabel is the short host name, or "" when it cannot be read.
func hostLabel() string {
	h, err := hostNodeName()
	if err != nil {
		return ""
	}
	return h
}

// acceleratorNames summarizes a hardware report for the accel= TXT key:
// each NPU's driver, or its product when no driver is bound.
func acceleratorNames(r accel.Report) []string {
	var out []string
	for _, a := range r.Accelerators {
		switch {
		case a.Driver != "":
			out = append(out, a.Driver)
		case a.Product != "":
			out = append(out, a.Product)
		}
	}
	return out
}
