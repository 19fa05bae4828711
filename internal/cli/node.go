package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/npumesh/npumesh/internal/accel"
	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/node"
)

func newNodeCmd(g *globals) *cobra.Command {
	var (
		coordinators, listen, advertise, tlsDir, name, addrFile, metricsListen string
		sysRoot, quantize                                                      string
		telemetryEvery                                                         time.Duration
		configFile                                                             string
		join, dataDir, enrollAddr                                              string
		models                                                                 []string
		threads                                                                int
		modelStore                                                             string
		modelQuota                                                             sizeFlag
	)
	var mdnsOpt mdnsOptions
	cmd := &cobra.Command{
		Use:   "node --coordinator HOST:PORT (--tls-dir DIR | --join TOKEN --data-dir DIR) (--model PATH | --config FILE)",
		Short: "Run a node daemon that serves models to the cluster",
		Long: "node serves models to the cluster: GGUF files with the built-in engine (--model), and, from a\n" +
			"config file (--config), built-in models or models of a local OpenAI-compatible server (OVMS,\n" +
			"Lemonade, llama.cpp, Ollama, vLLM) that the node can also start and supervise. See docs/npu.md.\n" +
			"`npumesh node info` shows what hardware the node finds.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			if err := mdnsOpt.resolveForJoin(c.Context(), log, join, &coordinators, &enrollAddr); err != nil {
				return err
			}
			bundle, bundleDir, err := loadNodeBundle(c.Context(), log, nodeTrust{
				tlsDir: tlsDir, dataDir: dataDir, join: join, name: name, coordinator: coordinators, enrollAddr: enrollAddr,
			})
			if err != nil {
				return err
			}
			if err := mdnsOpt.resolveForBundle(c.Context(), log, bundle, &coordinators); err != nil {
				return err
			}
			var cfg *nodeConfig
			if configFile != "" {
				if cfg, err = loadNodeConfig(configFile); err != nil {
					return err
				}
			}
			if len(models) == 0 && cfg == nil && modelStore == "" {
				return fmt.Errorf("no model to serve: give --model PATH (a GGUF file) or --config FILE")
			}
			var backends []node.Backend
			closeAll := func() {
				for _, b := range backends {
					b.Close()
				}
			}
			if cfg != nil {
				if backends, err = cfg.openBackends(configFile, engine.Options{Threads: threads, Quantize: quantize}, log); err != nil {
					return err
				}
			}
			for _, spec := range models {
				id, path := parseModelSpec(spec)
				b, err := node.LoadBuiltin(path, engine.Options{ID: id, Threads: threads, Quantize: quantize})
				if err != nil {
					closeAll()
					return err
				}
				backends = append(backends, b)
			}
			n, err := node.New(node.Config{
				Name: name, Listen: listen, Advertise: advertise,
				Coordinators: splitList(coordinators), TLS: bundle, TLSDir: bundleDir, Backends: backends, Logger: log,
				MetricsListen: metricsListen,
				SysRoot:       sysRoot, TelemetryInterval: telemetryEvery,
				Pull: pullConfig(modelStore, modelQuota, threads),
			})
			if err != nil {
				closeAll()
				return err
			}
			addr, err := n.Listen()
			if err != nil {
				closeAll()
				return err
			}
			if addrFile != "" {
				if err := writeFileAtomic(addrFile, []byte(fmt.Sprintf("grpc=%s\n", addr))); err != nil {
					return err
				}
			}
			stopMDNS := mdnsOpt.advertiseNode(log, bundle, addr)
			defer stopMDNS()
			return n.Run(c.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&coordinators, "coordinator", "", "coordinator gRPC address HOST:PORT; several, comma-separated, are tried in turn (default: the coordinator of the node's cluster found on the LAN with mDNS)")
	f.StringVar(&listen, "listen", "127.0.0.1:0", "gRPC address to serve NodeService on")
	f.StringVar(&advertise, "advertise", "", "address the coordinator dials (default: the listen address)")
	f.StringVar(&tlsDir, "tls-dir", "", "directory holding ca.crt, tls.crt, tls.key of a node certificate from npumesh cert issue (or use --join)")
	f.StringVar(&join, "join", "", `join TOKEN from "npumesh token create": enroll into --data-dir when it holds no valid certificate`)
	f.StringVar(&dataDir, "data-dir", "", "where an enrolled node keeps its key and certificate (default: $XDG_DATA_HOME/npumesh/node or ~/.local/share/npumesh/node)")
	f.StringVar(&enrollAddr, "enroll-addr", "", "the coordinator's enrollment address (default: the first --coordinator host, port+1)")
	f.StringVar(&name, "name", "", "node name (default: the name in the certificate; when enrolling, the host name)")
	f.StringArrayVar(&models, "model", nil, "model to serve: PATH or ID=PATH of a GGUF file (repeatable)")
	f.StringVar(&configFile, "config", "", "JSON file of models to serve, builtin or upstream (see docs/npu.md); adds to --model")
	f.IntVar(&threads, "threads", 0, "compute threads per model (default: all cores)")
	f.StringVar(&metricsListen, "metrics-listen", "127.0.0.1:9464", "HTTP address of the node's Prometheus /metrics (empty disables it)")
	f.StringVar(&quantize, "quantize", "", "quantize f32/f16/bf16 weights at load: q8_0 or q4_0 (also q4_1, q5_0, q5_1, q4_K, q6_K); a copy in memory")
	f.StringVar(&sysRoot, "sys-root", "/", "directory holding the /proc and /sys to read hardware and telemetry from (a container with the host's mounted elsewhere)")
	f.DurationVar(&telemetryEvery, "telemetry-interval", 0, "how often temperatures, throttling and power are sampled (default 5s)")
	f.StringVar(&modelStore, "model-store", "", "directory where the node keeps models it pulls from the cluster's catalog (npumesh model add); empty: pulls nothing")
	f.Var(&modelQuota, "model-quota", "disk quota of --model-store, e.g. 20G (default: none)")
	mdnsOpt.register(cmd, false)
	f.StringVar(&addrFile, "addr-file", "", "write the bound address to this file once listening")
	_ = f.MarkHidden("addr-file")
	cmd.AddCommand(newNodeInfoCmd(g))
	cmd.AddCommand(newNodeRevokeCmd(g), newNodeUnrevokeCmd(g), newNodeListCmd(g))
	return cmd
}

func newNodeInfoCmd(g *globals) *cobra.Command {
	var (
		asJSON   bool
		root     string
		interval time.Duration
	)
	cmd := &cobra.Command{
		Use:   "info [--json]",
		Short: "Show the NPUs, CPU, memory and telemetry this machine offers a node",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if interval < 0 || interval > time.Minute {
				return fmt.Errorf("--interval must be between 0 and 1m, got %s", interval)
			}
			rep := accel.Discover(root)
			if rep.Accelerators == nil {
				rep.Accelerators = []accel.Accelerator{} // [] rather than null in JSON
			}
			// Two samples, so that rates (NPU busy, power) are filled in.
			first := accel.Sample(root)
			var t accel.Telemetry
			if interval == 0 {
				t = first
			} else {
				select {
				case <-c.Context().Done():
					return c.Context().Err()
				case <-time.After(interval):
				}
				t = accel.Sample(root).Since(first)
			}
			if asJSON {
				enc := json.NewEncoder(g.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(struct {
					Hardware  accel.Report    `json:"hardware"`
					Telemetry accel.Telemetry `json:"telemetry"`
				}{rep, t})
			}
			return rep.WriteText(g.stdout, t)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&asJSON, "json", false, "print JSON instead of text")
	f.DurationVar(&interval, "interval", 500*time.Millisecond, "time between the two telemetry samples that rates are computed over (0: one sample, no rates)")
	f.StringVar(&root, "sysroot", "/", "directory to read /proc and /sys from")
	_ = f.MarkHidden("sysroot")
	return cmd
}

// parseModelSpec splits "id=path"; a bare path gets the id from the engine.
func parseModelSpec(spec string) (id, path string) {
	if i := strings.IndexByte(spec, '='); i > 0 && !strings.ContainsRune(spec[:i], os.PathSeparator) {
		return spec[:i], spec[i+1:]
	}
	return "", filepath.Clean(spec)
}
