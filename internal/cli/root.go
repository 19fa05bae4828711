// Package cli holds the npumesh command line: one file per subcommand. It is
// the one place where each mode of the binary (coordinator, node, up, ...) is
// wired together from the library packages.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/npumesh/npumesh/internal/version"
)

// globals are the flags every subcommand shares.
type globals struct {
	logLevel  string
	logFormat string
	stdout    io.Writer
	stderr    io.Writer
}

// Run executes the command line and returns the process exit code.
func Run(args []string) int {
	g := &globals{stdout: os.Stdout, stderr: os.Stderr}
	root := newRoot(g)
	root.SetArgs(args)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(g.stderr, "npumesh: %s\n", oneLine(err))
		var ee exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return 1
	}
	return 0
}

// exitError carries a specific exit code.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

func oneLine(err error) string {
	return strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; ")
}

func newRoot(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:           "npumesh",
		Short:         "Pool the NPUs, GPUs and CPUs of a room of Linux machines into one private inference service",
		Version:       version.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		// Unknown subcommands and bad flags print one line with what to do.
		Args: func(c *cobra.Command, args []string) error {
			if len(args) > 0 {
				return fmt.Errorf("unknown command %q (see: npumesh --help)", args[0])
			}
			return nil
		},
		RunE: func(c *cobra.Command, _ []string) error { return c.Help() },
	}
	root.SetOut(g.stdout)
	root.SetErr(g.stderr)
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return fmt.Errorf("%w (see: %s --help)", err, c.CommandPath())
	})
	pf := root.PersistentFlags()
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	pf.StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	root.AddCommand(
		newUpCmd(g),
		newCoordinatorCmd(g),
		newNodeCmd(g),
		newCACmd(g),
		newCertCmd(g),
		newTokenCmd(g),
		newGenerateCmd(g),
		newChatCmd(g),
		newModelCmd(g),
		newBenchCmd(g),
		newStatusCmd(g),
		newDiscoverCmd(g),
	)
	return root
}

// logger builds the process logger from the global flags.
func (g *globals) logger() (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("bad --log-level %q: use debug, info, warn or error", g.logLevel)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch g.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(g.stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(g.stderr, opts)), nil
	}
	return nil, fmt.Errorf("bad --log-format %q: use text or json", g.logFormat)
}
