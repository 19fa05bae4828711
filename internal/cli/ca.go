package cli

import (
	"fmt"
	"net"
	"time"

	"github.com/spf13/cobra"

	"github.com/npumesh/npumesh/internal/pki"
)

func newCACmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "ca", Short: "Manage the cluster certificate authority", Args: cobra.NoArgs}
	var dir string
	initCmd := &cobra.Command{
		Use:   "init --dir DIR",
		Short: "Create an ECDSA P-256 cluster CA in DIR (ca.crt, ca.key)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			ca, err := pki.InitCA(dir)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "created cluster CA in %s\nfingerprint sha256:%s\n", dir, ca.Fingerprint())
			return nil
		},
	}
	initCmd.Flags().StringVar(&dir, "dir", "", "directory for the CA files (required)")
	_ = initCmd.MarkFlagRequired("dir")
	cmd.AddCommand(initCmd)
	return cmd
}

func newCertCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "cert", Short: "Issue certificates signed by the cluster CA", Args: cobra.NoArgs}
	var (
		caDir, name, role, out string
		ips, dns               []string
		validity               time.Duration
	)
	issue := &cobra.Command{
		Use:   "issue --ca DIR --name N --role node|coordinator|client --out DIR",
		Short: "Issue a certificate whose identity is npumesh://ROLE/NAME",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			r, err := pki.ParseRole(role)
			if err != nil {
				return err
			}
			req := pki.IssueRequest{Name: name, Role: r, DNS: dns, Validity: validity}
			for _, s := range ips {
				ip := net.ParseIP(s)
				if ip == nil {
					return fmt.Errorf("--ip %q is not an IP address", s)
				}
				req.IPs = append(req.IPs, ip)
			}
			ca, err := pki.LoadCA(caDir)
			if err != nil {
				return err
			}
			certPEM, keyPEM, err := ca.Issue(req)
			if err != nil {
				return err
			}
			if err := pki.WriteBundle(out, ca.CertPEM(), certPEM, keyPEM); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "issued %s into %s (ca.crt, tls.crt, tls.key)\n", req.Identity(), out)
			return nil
		},
	}
	f := issue.Flags()
	f.StringVar(&caDir, "ca", "", "directory of the cluster CA (required)")
	f.StringVar(&name, "name", "", "name of the holder, e.g. node-1 (required)")
	f.StringVar(&role, "role", "", "role: node, coordinator or client (required)")
	f.StringVar(&out, "out", "", "directory to write ca.crt, tls.crt and tls.key into (required)")
	f.StringSliceVar(&ips, "ip", nil, "IP address SAN (repeatable)")
	f.StringSliceVar(&dns, "dns", nil, "DNS name SAN (repeatable)")
	f.DurationVar(&validity, "validity", 0, "certificate lifetime (default: the pki default)")
	for _, n := range []string{"ca", "name", "role", "out"} {
		_ = issue.MarkFlagRequired(n)
	}
	cmd.AddCommand(issue)
	return cmd
}
