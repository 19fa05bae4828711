package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/npumesh/npumesh/internal/pki"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// adminFlags say how an admin command reaches the coordinator's
// AdminService: its mTLS address and a client-role bundle. The defaults
// work on the machine where `npumesh up` or `npumesh coordinator` keeps
// its data dir.
type adminFlags struct {
	dataDir, coordinator, tlsDir string
}

func (a *adminFlags) register(c *cobra.Command) {
	f := c.Flags()
	f.StringVar(&a.dataDir, "data-dir", "", "the coordinator's data dir, for the defaults below (default: $XDG_DATA_HOME/npumesh or ~/.local/share/npumesh)")
	f.StringVar(&a.coordinator, "coordinator", "", "coordinator gRPC address HOST:PORT (default: grpc= in DATA-DIR/run/coordinator.addr)")
	f.StringVar(&a.tlsDir, "tls-dir", "", "client-role bundle (ca.crt, tls.crt, tls.key) (default: DATA-DIR/certs/admin)")
}

// call dials the coordinator and runs f with an AdminService client.
func (a *adminFlags) call(ctx context.Context, f func(context.Context, pb.AdminServiceClient) error) error {
	dataDir := a.dataDir
	if dataDir == "" && (a.coordinator == "" || a.tlsDir == "") {
		d, err := defaultDataDir()
		if err != nil {
			return err
		}
		dataDir = d
	}
	tlsDir := a.tlsDir
	if tlsDir == "" {
		tlsDir = filepath.Join(dataDir, "certs", adminBundle)
	}
	addr := a.coordinator
	if addr == "" {
		p := filepath.Join(dataDir, "run", coordAddrFile)
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("no coordinator address: give --coordinator HOST:PORT, or --data-dir of a running coordinator (%v)", err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "grpc="); ok {
				addr = v
			}
		}
		if addr == "" {
			return fmt.Errorf("%s has no grpc= line; give --coordinator HOST:PORT", p)
		}
	}
	bundle, err := pki.LoadBundle(tlsDir)
	if err != nil {
		return err
	}
	if id := bundle.Identity(); id.Role != pki.RoleClient {
		return fmt.Errorf("%s holds a certificate for %s; admin commands need a client-role certificate", tlsDir, id)
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(bundle.ClientTLS(pki.Identity{Role: pki.RoleCoordinator}))))
	if err != nil {
		return err
	}
	defer cc.Close()
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := f(cctx, pb.NewAdminServiceClient(cc)); err != nil {
		if s, ok := status.FromError(err); ok {
			return fmt.Errorf("coordinator %s: %s", addr, s.Message())
		}
		return err
	}
	return nil
}

func newTokenCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Manage join tokens that let machines enroll as nodes", Args: cobra.NoArgs}
	var (
		af    adminFlags
		ttl   time.Duration
		uses  int
		descr string
	)
	create := &cobra.Command{
		Use:   "create [--ttl 24h] [--uses N]",
		Short: "Create a join token and print it (npm1.<id>.<secret>.<ca-sha256>); the secret is shown only now",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if ttl < time.Second {
				return fmt.Errorf("--ttl must be at least 1s, got %s", ttl)
			}
			if uses < 1 {
				return fmt.Errorf("--uses must be at least 1, got %d", uses)
			}
			return af.call(c.Context(), func(ctx context.Context, ac pb.AdminServiceClient) error {
				resp, err := ac.CreateToken(ctx, &pb.CreateTokenRequest{TtlSeconds: int64(ttl / time.Second), Uses: int32(uses), Description: descr})
				if err != nil {
					return err
				}
				fmt.Fprintln(g.stdout, resp.GetToken())
				i := resp.GetInfo()
				fmt.Fprintf(g.stderr, "token %s: %d use(s), expires %s\njoin a machine with: npumesh node --join TOKEN --coordinator HOST:PORT --data-dir DIR --model PATH\n",
					i.GetId(), i.GetUses(), time.Unix(i.GetExpiresUnix(), 0).UTC().Format(time.RFC3339))
				return nil
			})
		},
	}
	af.register(create)
	create.Flags().DurationVar(&ttl, "ttl", 24*time.Hour, "how long the token is valid")
	create.Flags().IntVar(&uses, "uses", 1, "how many machines may enroll with it")
	create.Flags().StringVar(&descr, "description", "", "note shown by token ls")

	var lsFlags adminFlags
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List join tokens (ids, expiry, uses; never secrets)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return lsFlags.call(c.Context(), func(ctx context.Context, ac pb.AdminServiceClient) error {
				resp, err := ac.ListTokens(ctx, &pb.ListTokensRequest{})
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tSTATE\tEXPIRES\tUSES LEFT\tDESCRIPTION")
				now := time.Now()
				for _, t := range resp.GetTokens() {
					exp := time.Unix(t.GetExpiresUnix(), 0)
					state := "valid"
					switch {
					case !now.Before(exp):
						state = "expired"
					case t.GetUsesLeft() <= 0:
						state = "used up"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\n", t.GetId(), state, exp.UTC().Format(time.RFC3339), t.GetUsesLeft(), t.GetUses(), t.GetDescription())
				}
				return tw.Flush()
			})
		},
	}
	lsFlags.register(ls)

	var rmFlags adminFlags
	rm := &cobra.Command{
		Use:   "rm ID...",
		Short: "Delete join tokens",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return rmFlags.call(c.Context(), func(ctx context.Context, ac pb.AdminServiceClient) error {
				var errs []error
				for _, id := range args {
					if _, err := ac.DeleteToken(ctx, &pb.DeleteTokenRequest{Id: id}); err != nil {
						errs = append(errs, errors.New(status.Convert(err).Message()))
						continue
					}
					fmt.Fprintf(g.stdout, "deleted token %s\n", id)
				}
				return errors.Join(errs...)
			})
		},
	}
	rmFlags.register(rm)
	cmd.AddCommand(create, ls, rm)
	return cmd
}

func newNodeRevokeCmd(g *globals) *cobra.Command {
	var (
		af     adminFlags
		reason string
	)
	cmd := &cobra.Command{
		Use:   "revoke NAME",
		Short: "Cut a node off at once: close its connections, refuse its certificates, renewal and re-enrollment",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return af.call(c.Context(), func(ctx context.Context, ac pb.AdminServiceClient) error {
				resp, err := ac.RevokeNode(ctx, &pb.RevokeNodeRequest{Name: args[0], Reason: reason})
				if err != nil {
					return err
				}
				state := "was not connected"
				if resp.GetDisconnected() {
					state = "disconnected"
				}
				fmt.Fprintf(g.stdout, "revoked node %s (%s; %d certificate(s) refused)\n", args[0], state, len(resp.GetSerials()))
				return nil
			})
		},
	}
	af.register(cmd)
	cmd.Flags().StringVar(&reason, "reason", "", "why, for the log")
	return cmd
}

func newNodeUnrevokeCmd(g *globals) *cobra.Command {
	var af adminFlags
	cmd := &cobra.Command{
		Use:   "unrevoke NAME",
		Short: "Let a revoked node name enroll again (its old certificates stay refused)",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return af.call(c.Context(), func(ctx context.Context, ac pb.AdminServiceClient) error {
				if _, err := ac.UnrevokeNode(ctx, &pb.UnrevokeNodeRequest{Name: args[0]}); err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "node %s may enroll again with a join token\n", args[0])
				return nil
			})
		},
	}
	af.register(cmd)
	return cmd
}

func newNodeListCmd(g *globals) *cobra.Command {
	var af adminFlags
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the node identities the coordinator knows: connected, revoked, certificate expiry",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return af.call(c.Context(), func(ctx context.Context, ac pb.AdminServiceClient) error {
				resp, err := ac.ListNodes(ctx, &pb.ListNodesRequest{})
				if err != nil {
					return err
				}
				tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tSTATE\tLAST ADDRESS\tCERT SERIAL\tCERT EXPIRES")
				for _, n := range resp.GetNodes() {
					state := "offline"
					switch {
					case n.GetRevoked():
						state = "revoked"
					case n.GetConnected():
						state = "connected"
					}
					exp := "-"
					if n.GetCertExpiresUnix() != 0 {
						exp = time.Unix(n.GetCertExpiresUnix(), 0).UTC().Format(time.RFC3339)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.GetName(), state, orDash(n.GetLastAddress()), orDash(n.GetCertSerial()), exp)
				}
				return tw.Flush()
			})
		},
	}
	af.register(cmd)
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
