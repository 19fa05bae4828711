package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/npumesh/npumesh/internal/bench"
	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/route"
	"github.com/npumesh/npumesh/internal/synth"
)

func newBenchServeCmd(g *globals) *cobra.Command {
	var (
		o       bench.Options
		jsonOut string
	)
	cmd := &cobra.Command{
		Use:   "serve --api URL [--workload shared-prefix|mixed|long-context] [--concurrency C] [--duration D] [--json out.json]",
		Short: "Load a running cluster through its OpenAI API: TTFT, inter-token latency, tok/s, errors, prefix-cache hits",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			r, err := bench.Run(c.Context(), o)
			if err != nil {
				return err
			}
			printBench(g.stdout, r)
			if jsonOut != "" {
				return writeJSON(jsonOut, r)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.API, "api", "http://127.0.0.1:8080", "the cluster's API base URL")
	f.StringVar(&o.APIKey, "api-key", os.Getenv("NPUMESH_API_KEY"), "API key (default $NPUMESH_API_KEY)")
	f.StringVar(&o.Model, "model", "", "model id (default: the first the API lists)")
	f.StringVar(&o.Workload, "workload", bench.SharedPrefix, "workload: "+strings.Join(bench.Workloads, ", "))
	f.IntVar(&o.Concurrency, "concurrency", 8, "requests in flight at once")
	f.DurationVar(&o.Duration, "duration", 30*time.Second, "how long to send requests")
	f.IntVar(&o.PrefixWords, "prefix-words", 150, "length of the shared prompts in words")
	f.IntVar(&o.Prefixes, "prefixes", 16, "number of distinct shared prompts")
	f.IntVar(&o.MaxTokens, "max-tokens", 16, "completion length")
	f.StringVar(&jsonOut, "json", "", "also write the result as JSON to this file")
	return cmd
}

func printBench(w io.Writer, r *bench.Result) {
	fmt.Fprintf(w, "workload      %s (%d shared prompts) on %s, concurrency %d, %.1fs\n", r.Workload, r.Prefixes, r.Model, r.Concurrency, r.Seconds)
	fmt.Fprintf(w, "requests      %d (%d errors)\n", r.Requests, r.Errors)
	for _, e := range r.ErrorSamples {
		fmt.Fprintf(w, "  error: %s\n", e)
	}
	fmt.Fprintf(w, "TTFT          p50 %.1f ms  p90 %.1f ms  p99 %.1f ms\n", r.TTFT.P50, r.TTFT.P90, r.TTFT.P99)
	fmt.Fprintf(w, "inter-token   p50 %.1f ms  p90 %.1f ms  p99 %.1f ms\n", r.ITL.P50, r.ITL.P90, r.ITL.P99)
	fmt.Fprintf(w, "output        %d tokens, %.1f tok/s\n", r.OutputTokens, r.OutputTokS)
	fmt.Fprintf(w, "prefix cache  %.1f%% of %d prompt tokens cached\n", 100*r.CacheHitRate, r.PromptTokens)
	fmt.Fprintf(w, "per node      %v\n", r.Nodes)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func newBenchPoliciesCmd(g *globals) *cobra.Command {
	var (
		nodes      int
		policies   []string
		o          bench.Options
		dataDir    string
		modelPath  string
		jsonOut    string
		threads    int
		dim, layer int
	)
	cmd := &cobra.Command{
		Use:   "policies [--nodes 4] [--policies round-robin,...] [--duration D] [--concurrency C]",
		Short: "Start a local cluster per routing policy and run the same shared-prefix load against each",
		Long: "policies starts `npumesh up` with a synthetic model (big enough that prefill dominates the time to first\n" +
			"token) once per routing policy, runs the same workload against each, and prints each policy's numbers\n" +
			"and their ratio to round-robin. Each policy starts with cold caches.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			if dataDir == "" {
				if dataDir, err = os.MkdirTemp("", "npumesh-bench-"); err != nil {
					return err
				}
				defer os.RemoveAll(dataDir)
			}
			if modelPath == "" {
				modelPath = filepath.Join(dataDir, "models", "bench.gguf")
				if _, err := os.Stat(modelPath); err != nil {
					if err := os.MkdirAll(filepath.Dir(modelPath), 0o700); err != nil {
						return err
					}
					so := synth.Options{Dim: dim, Layers: layer, Heads: 8, KVHeads: 4, FF: 3 * dim, Vocab: 4000, Context: 2048, Type: gguf.TypeF32, Seed: 1, Name: "bench"}
					log.Info("writing the synthetic model", "path", modelPath, "parameters", so.Parameters())
					if err := synth.WriteFile(modelPath, so, nil); err != nil {
						return err
					}
				}
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			var results []*bench.Result
			for _, p := range policies {
				log.Info("benchmarking policy", "policy", p)
				r, err := benchPolicy(c.Context(), exe, dataDir, modelPath, p, nodes, threads, o)
				if err != nil {
					return fmt.Errorf("policy %s: %w", p, err)
				}
				results = append(results, r)
			}
			printPolicies(g.stdout, policies, results)
			if jsonOut != "" {
				out := map[string]*bench.Result{}
				for i, p := range policies {
					out[p] = results[i]
				}
				return writeJSON(jsonOut, out)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&nodes, "nodes", 4, "node daemons in the local cluster")
	f.StringSliceVar(&policies, "policies", []string{route.PolicyRoundRobin, route.PolicyLeastOutstanding, route.PolicyP2C, route.PolicyPrefix, route.PolicyComposite}, "policies to compare (round-robin first: it is the baseline)")
	f.StringVar(&o.Workload, "workload", bench.SharedPrefix, "workload: "+strings.Join(bench.Workloads, ", "))
	f.IntVar(&o.Concurrency, "concurrency", 8, "requests in flight at once")
	f.DurationVar(&o.Duration, "duration", 20*time.Second, "load duration per policy")
	f.IntVar(&o.PrefixWords, "prefix-words", 100, "length of the shared prompts in words")
	f.IntVar(&o.Prefixes, "prefixes", 32, "number of distinct shared prompts (more than one node's KV cache holds, fewer than all nodes' together)")
	f.IntVar(&o.MaxTokens, "max-tokens", 8, "completion length")
	f.StringVar(&dataDir, "data-dir", "", "where the CA, certificates and the synthetic model go (default: a temporary dir)")
	f.StringVar(&modelPath, "model", "", "GGUF model to serve instead of the synthetic one")
	f.IntVar(&threads, "threads", 0, "compute threads per node (default: cores / nodes, at least 1)")
	f.IntVar(&dim, "synth-dim", 256, "embedding length of the synthetic model")
	f.IntVar(&layer, "synth-layers", 4, "layers of the synthetic model")
	f.StringVar(&jsonOut, "json", "", "also write the results as JSON to this file")
	return cmd
}

// benchPolicy runs `npumesh up` with one policy, loads it, and stops it.
func benchPolicy(ctx context.Context, exe, dataDir, model, policy string, nodes, threads int, o bench.Options) (*bench.Result, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	api := l.Addr().String()
	l.Close()
	args := []string{"up", "--nodes", fmt.Sprint(nodes), "--api", api, "--data-dir", dataDir, "--model", model, "--route-policy", policy, "--log-level", "warn"}
	if threads > 0 {
		args = append(args, "--threads", fmt.Sprint(threads))
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Stderr = io.Discard
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 20 * time.Second
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		ok := false
		for sc.Scan() {
			if !ok && strings.HasPrefix(sc.Text(), "npumesh is up") {
				ok = true
				ready <- true
			}
		}
		if !ok {
			ready <- false
		}
	}()
	select {
	case ok := <-ready:
		if !ok {
			return nil, fmt.Errorf("npumesh up exited before it was ready (run it by hand to see why: %s %s)", exe, strings.Join(args, " "))
		}
	case <-time.After(2 * time.Minute):
		return nil, fmt.Errorf("npumesh up not ready within 2 minutes")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	// Wait until every node serves, so each policy starts from the same cluster.
	deadline := time.Now().Add(time.Minute)
	for countNodes("http://"+api) < nodes {
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%d nodes did not all register", nodes)
		}
		time.Sleep(100 * time.Millisecond)
	}
	o.API = "http://" + api
	return bench.Run(ctx, o)
}

func countNodes(api string) int {
	client := &http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(api + "/api/v1/nodes")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var v struct {
		Nodes []json.RawMessage `json:"nodes"`
	}
	if json.NewDecoder(resp.Body).Decode(&v) != nil {
		return 0
	}
	return len(v.Nodes)
}

func printPolicies(w io.Writer, policies []string, rs []*bench.Result) {
	base := rs[0]
	ratio := func(a, b float64) string {
		if b == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2fx", a/b)
	}
	fmt.Fprintf(w, "%s workload (%d shared prompts), concurrency %d, %.0fs per policy; ratios against %s\n\n", base.Workload, base.Prefixes, base.Concurrency, base.Seconds, policies[0])
	fmt.Fprintf(w, "%-18s %9s %9s %9s %9s %8s %7s %6s %9s %9s\n", "policy", "TTFT p50", "TTFT p99", "ITL p50", "tok/s", "cached", "errors", "reqs", "TTFT p50", "tok/s")
	fmt.Fprintf(w, "%-18s %9s %9s %9s %9s %8s %7s %6s %9s %9s\n", "", "ms", "ms", "ms", "", "", "", "", "ratio", "ratio")
	for i, r := range rs {
		fmt.Fprintf(w, "%-18s %9.1f %9.1f %9.1f %9.1f %7.1f%% %7d %6d %9s %9s\n", policies[i], r.TTFT.P50, r.TTFT.P99, r.ITL.P50, r.OutputTokS,
			100*r.CacheHitRate, r.Errors, r.Requests, ratio(r.TTFT.P50, base.TTFT.P50), ratio(r.OutputTokS, base.OutputTokS))
	}
}
