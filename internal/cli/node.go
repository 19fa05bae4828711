package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/node"
	"github.com/npumesh/npumesh/internal/pki"
)

func newNodeCmd(g *globals) *cobra.Command {
	var (
		coordinators, listen, advertise, tlsDir, name, addrFile, metricsListen string
		models                                                                 []string
		threads                                                                int
	)
	cmd := &cobra.Command{
		Use:   "node --coordinator HOST:PORT --tls-dir DIR --model PATH",
		Short: "Run a node daemon that serves models to the cluster",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			bundle, err := pki.LoadBundle(tlsDir)
			if err != nil {
				return err
			}
			if len(models) == 0 {
				return fmt.Errorf("no model to serve: give --model PATH (a GGUF file)")
			}
			var backends []node.Backend
			closeAll := func() {
				for _, b := range backends {
					b.Close()
				}
			}
			for _, spec := range models {
				id, path := parseModelSpec(spec)
				b, err := node.LoadBuiltin(path, engine.Options{ID: id, Threads: threads})
				if err != nil {
					closeAll()
					return err
				}
				backends = append(backends, b)
			}
			n, err := node.New(node.Config{
				Name: name, Listen: listen, Advertise: advertise,
				Coordinators: splitList(coordinators), TLS: bundle, Backends: backends, Logger: log,
				MetricsListen: metricsListen,
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
			return n.Run(c.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&coordinators, "coordinator", "", "coordinator gRPC address HOST:PORT; several, comma-separated, are tried in turn (required)")
	f.StringVar(&listen, "listen", "127.0.0.1:0", "gRPC address to serve NodeService on")
	f.StringVar(&advertise, "advertise", "", "address the coordinator dials (default: the listen address)")
	f.StringVar(&tlsDir, "tls-dir", "", "directory holding ca.crt, tls.crt, tls.key of a node certificate (required)")
	f.StringVar(&name, "name", "", "node name (default: the name in the certificate)")
	f.StringArrayVar(&models, "model", nil, "model to serve: PATH or ID=PATH of a GGUF file (repeatable)")
	f.IntVar(&threads, "threads", 0, "compute threads per model (default: all cores)")
	f.StringVar(&metricsListen, "metrics-listen", "127.0.0.1:9464", "HTTP address of the node's Prometheus /metrics (empty disables it)")
	f.StringVar(&addrFile, "addr-file", "", "write the bound address to this file once listening")
	_ = f.MarkHidden("addr-file")
	_ = cmd.MarkFlagRequired("coordinator")
	_ = cmd.MarkFlagRequired("tls-dir")
	return cmd
}

// parseModelSpec splits "id=path"; a bare path gets the id from the engine.
func parseModelSpec(spec string) (id, path string) {
	if i := strings.IndexByte(spec, '='); i > 0 && !strings.ContainsRune(spec[:i], os.PathSeparator) {
		return spec[:i], spec[i+1:]
	}
	return "", filepath.Clean(spec)
}
