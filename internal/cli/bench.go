package cli

import (
	"github.com/spf13/cobra"
)

// newBenchCmd groups the benchmarks. Each subcommand lives in its own file:
// bench_engine.go (the engine on one machine), and the serving benchmarks.
func newBenchCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "bench", Short: "Measure the engine and the cluster", Args: cobra.NoArgs}
	cmd.AddCommand(newBenchEngineCmd(g), newBenchServeCmd(g), newBenchPoliciesCmd(g))
	return cmd
}
