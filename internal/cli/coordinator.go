package cli

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/npumesh/npumesh/internal/coordinator"
	"github.com/npumesh/npumesh/internal/openai"
	"github.com/npumesh/npumesh/internal/route"
	"github.com/npumesh/npumesh/internal/web"
)

func newCoordinatorCmd(g *globals) *cobra.Command {
	var (
		listen, api, tlsDir, keyFile, certFile, certKey, addrFile string
		insecureHTTP                                              bool
		dataDir, enrollListen                                     string
		nodeCertTTL                                               time.Duration
		routePolicy                                               string
		shards                                                    []string
		maxOutstanding, maxPerNode                                int
		requestTimeout, hedgeAfter                                time.Duration
		modelQuota                                                sizeFlag
		registry                                                  string
		registryTTL                                               time.Duration
	)
	var mdnsOpt mdnsOptions
	cmd := &cobra.Command{
		Use:   "coordinator [--data-dir DIR | --tls-dir DIR]",
		Short: "Run the coordinator: node registry, router and OpenAI-compatible API",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			if tlsDir == "" && dataDir == "" {
				if dataDir, err = defaultDataDir(); err != nil {
					return err
				}
			}
			trust, err := loadCoordinatorTrust(log, tlsDir, dataDir, listen)
			if err != nil {
				return err
			}
			if enrollListen == "" && trust.ca != nil {
				if enrollListen, err = deriveEnroll(listen); err != nil {
					return fmt.Errorf("--listen: %w", err)
				}
			}
			if enrollListen != "" && enrollListen != "off" && trust.ca == nil {
				log.Warn("no cluster CA in the data dir, so no enrollment: --enroll-listen is ignored (give --data-dir holding ca/)", "enroll_listen", enrollListen)
			}
			if enrollListen == "off" {
				enrollListen = ""
			}
			if addrFile == "" && dataDir != "" {
				addrFile = filepath.Join(dataDir, "run", coordAddrFile)
				if err := os.MkdirAll(filepath.Dir(addrFile), 0o700); err != nil {
					return err
				}
			}
			cfg := coordinator.Config{
				Listen: listen, API: api, TLS: trust.bundle, Logger: log, InsecureHTTP: insecureHTTP,
				CA: trust.ca, Store: trust.store, EnrollListen: enrollListen, NodeCertTTL: nodeCertTTL,
			}
			if registry != "" {
				if cfg.Store, cfg.Etcd, err = etcdRegistry(c.Context(), log, registry, registryTTL, listen, trust.store); err != nil {
					return err
				}
				defer cfg.Etcd.Client.Close()
			}
			cfg.Dashboard = web.Handler()
			if err := catalogConfig(&cfg, dataDir, modelQuota); err != nil {
				return err
			}
			if cfg.RoutePolicy, cfg.RoutePolicies, err = route.ParsePolicies(routePolicy); err != nil {
				return fmt.Errorf("--route-policy: %w", err)
			}
			if cfg.Shards, err = parseShards(shards); err != nil {
				return err
			}
			cfg.MaxOutstanding, cfg.MaxOutstandingPerNode, cfg.RequestTimeout, cfg.HedgeAfter = maxOutstanding, maxPerNode, requestTimeout, hedgeAfter
			if keyFile != "" {
				if cfg.APIKeys, err = openai.LoadAPIKeys(keyFile); err != nil {
					return err
				}
			}
			if (certFile == "") != (certKey == "") {
				return fmt.Errorf("give both --tls-cert and --tls-key, or neither")
			}
			if certFile != "" {
				cert, err := tls.LoadX509KeyPair(certFile, certKey)
				if err != nil {
					return fmt.Errorf("load the API certificate: %w", err)
				}
				cfg.APICert = &cert
			}
			co, err := coordinator.New(cfg)
			if err != nil {
				return err
			}
			grpcAddr, apiAddr, err := co.Listen()
			if err != nil {
				return err
			}
			if addrFile != "" {
				// Written after both listeners are bound: its presence means ready.
				content := fmt.Sprintf("grpc=%s\napi=%s\n", grpcAddr, apiAddr)
				if ea := co.EnrollAddr(); ea != nil {
					content += fmt.Sprintf("enroll=%s\n", ea)
				}
				if err := writeFileAtomic(addrFile, []byte(content)); err != nil {
					return err
				}
			}
			stopMDNS := mdnsOpt.advertiseCoordinator(log, trust.bundle.CAFingerprint(), grpcAddr, co.EnrollAddr(), apiAddr)
			defer stopMDNS()
			return co.Run(c.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:7070", "gRPC address nodes register at")
	f.StringVar(&api, "api", "127.0.0.1:8080", "HTTP address of the OpenAI API and cluster view")
	f.StringVar(&tlsDir, "tls-dir", "", "directory holding ca.crt, tls.crt, tls.key of a coordinator certificate; alone, the coordinator keeps no state and cannot enroll nodes")
	f.StringVar(&dataDir, "data-dir", "", "where the coordinator keeps the cluster CA, its certificates and its state (tokens, revocations, nodes); default $XDG_DATA_HOME/npumesh or ~/.local/share/npumesh unless --tls-dir is given")
	f.StringVar(&enrollListen, "enroll-listen", "", "address of the enrollment listener that nodes with a join token connect to (default: the --listen host, port+1; \"off\" disables it)")
	f.DurationVar(&nodeCertTTL, "node-cert-ttl", coordinator.DefaultNodeCertTTL, "lifetime of the node certificates this coordinator issues; nodes renew after two thirds")
	f.StringVar(&keyFile, "api-key-file", "", "file of API keys, one per line; when set, requests need Authorization: Bearer KEY")
	f.StringVar(&certFile, "tls-cert", "", "certificate for HTTPS on the public API")
	f.StringVar(&certKey, "tls-key", "", "key for --tls-cert")
	f.BoolVar(&insecureHTTP, "insecure-http", false, "allow plain HTTP on a non-loopback API address (logs a warning)")
	f.StringArrayVar(&shards, "shard", nil, "serve MODEL as a pipeline: MODEL=STAGES[:f16|f32|q8] (STAGES 0 automatic, 1 off); repeatable")
	f.StringVar(&routePolicy, "route-policy", route.PolicyComposite, "routing policy: one of "+strings.Join(route.Policies, ", ")+"; per model: POLICY,MODEL=POLICY,...")
	f.IntVar(&maxOutstanding, "max-outstanding", 0, "requests the coordinator runs at once across all nodes before answering 429 (0: no global limit)")
	f.IntVar(&maxPerNode, "max-outstanding-per-node", 64, "requests the coordinator sends one node at once; beyond it on every node the API answers 429")
	f.DurationVar(&hedgeAfter, "hedge-after", 0, "send a non-streamed request of at most 64 tokens to a second node when the first has not answered within this (0: no hedging)")
	f.DurationVar(&requestTimeout, "request-timeout", 10*time.Minute, "longest a request may take, retries and migrations included, before the API answers 504 (0: no limit)")
	mdnsOpt.register(cmd, true)
	f.StringVar(&registry, "registry", "", "keep the cluster state in etcd and run several coordinators side by side: etcd://HOST:PORT[,HOST:PORT...] (default: one coordinator, state in DATA-DIR/state.json); each coordinator needs a copy of the same DATA-DIR/ca")
	f.DurationVar(&registryTTL, "registry-ttl", 5*time.Second, "with --registry: lease of this coordinator in etcd; when it dies, its nodes leave the cluster view and another coordinator takes over the leader's tasks within this")
	f.StringVar(&addrFile, "addr-file", "", "write the bound addresses to this file once listening")
	_ = f.MarkHidden("addr-file")
	f.Var(&modelQuota, "model-quota", "disk quota of the model catalog in DATA-DIR/modelstore, e.g. 50G (default: none)")
	return cmd
}

// writeFileAtomic writes data to path through a temporary file and a rename,
// so a reader never sees a partial file.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// splitList splits a comma-separated flag value, dropping blanks.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// parseShards parses --shard MODEL=STAGES[:ACTIVATIONS] flags.
func parseShards(flags []string) (map[string]coordinator.ShardSpec, error) {
	out := map[string]coordinator.ShardSpec{}
	for _, f := range flags {
		model, rest, ok := strings.Cut(f, "=")
		n, act, _ := strings.Cut(rest, ":")
		stages, err := strconv.Atoi(n)
		if !ok || model == "" || err != nil || stages < 0 {
			return nil, fmt.Errorf("--shard %q: want MODEL=STAGES[:f16|f32|q8], e.g. tinyllama=3:f16", f)
		}
		if _, err := coordinator.ActivationBytes(act); err != nil {
			return nil, fmt.Errorf("--shard %q: %w", f, err)
		}
		out[model] = coordinator.ShardSpec{Stages: stages, Activations: act}
	}
	return out, nil
}
