package cli

import (
	"crypto/tls"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/npumesh/npumesh/internal/coordinator"
	"github.com/npumesh/npumesh/internal/openai"
	"github.com/npumesh/npumesh/internal/pki"
)

func newCoordinatorCmd(g *globals) *cobra.Command {
	var (
		listen, api, tlsDir, keyFile, certFile, certKey, addrFile string
		insecureHTTP                                              bool
	)
	cmd := &cobra.Command{
		Use:   "coordinator --tls-dir DIR",
		Short: "Run the coordinator: node registry, router and OpenAI-compatible API",
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
			cfg := coordinator.Config{
				Listen: listen, API: api, TLS: bundle, Logger: log, InsecureHTTP: insecureHTTP,
			}
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
				if err := writeFileAtomic(addrFile, []byte(content)); err != nil {
					return err
				}
			}
			return co.Run(c.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:7070", "gRPC address nodes register at")
	f.StringVar(&api, "api", "127.0.0.1:8080", "HTTP address of the OpenAI API and cluster view")
	f.StringVar(&tlsDir, "tls-dir", "", "directory holding ca.crt, tls.crt, tls.key of a coordinator certificate (required)")
	f.StringVar(&keyFile, "api-key-file", "", "file of API keys, one per line; when set, requests need Authorization: Bearer KEY")
	f.StringVar(&certFile, "tls-cert", "", "certificate for HTTPS on the public API")
	f.StringVar(&certKey, "tls-key", "", "key for --tls-cert")
	f.BoolVar(&insecureHTTP, "insecure-http", false, "allow plain HTTP on a non-loopback API address (logs a warning)")
	f.StringVar(&addrFile, "addr-file", "", "write the bound addresses to this file once listening")
	_ = f.MarkHidden("addr-file")
	_ = cmd.MarkFlagRequired("tls-dir")
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
