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
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/npumesh/npumesh/internal/bench"
	"github.com/npumesh/npumesh/internal/engine"
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
	f.IntVar(&o.Concurrency, "concurrency", 8, "closed loop: clients, each sending its next request when its last ends (also the warmup's, with --rate)")
	f.DurationVar(&o.Duration, "duration", 30*time.Second, "how long to send requests")
	f.DurationVar(&o.Warmup, "warmup", 0, "send the workload this long first (a closed loop), counting none of it (fills the caches)")
	openLoopFlags(f, &o)
	f.IntVar(&o.PrefixWords, "prefix-words", 150, "length of the shared prompts in words")
	f.IntVar(&o.Prefixes, "prefixes", 16, "number of distinct shared prompts")
	f.IntVar(&o.MaxTokens, "max-tokens", 16, "completion length")
	f.StringVar(&jsonOut, "json", "", "also write the result as JSON to this file")
	return cmd
}

// openLoopFlags adds the open-loop options to a command.
func openLoopFlags(f *pflag.FlagSet, o *bench.Options) {
	f.Float64Var(&o.Rate, "rate", 0, "open loop: Poisson arrivals at this many requests/s, whether or not earlier ones are done (0: closed loop of --concurrency clients)")
	f.IntVar(&o.MaxInFlight, "max-in-flight", 64, "open loop: at most this many requests in flight; an arrival that finds them all busy waits (and its wait counts in its TTFT)")
	f.Uint64Var(&o.Seed, "seed", 1, "seed of the prompts and of the arrival times (the same seed: the same load)")
	f.DurationVar(&o.Drain, "drain", 30*time.Second, "after --duration, wait at most this long for requests in flight, then cancel them (counted as errors)")
}

// loadName describes a result's load.
func loadName(r *bench.Result) string {
	if r.Rate > 0 {
		return fmt.Sprintf("open loop, Poisson %.2f req/s (max %d in flight)", r.Rate, r.MaxInFlight)
	}
	return fmt.Sprintf("closed loop, concurrency %d", r.Concurrency)
}

func printBench(w io.Writer, r *bench.Result) {
	fmt.Fprintf(w, "workload      %s (%d shared prompts) on %s, %s, %.1fs\n", r.Workload, r.Prefixes, r.Model, loadName(r), r.Seconds)
	fmt.Fprintf(w, "requests      %d (%d errors), %.2f/s\n", r.Requests, r.Errors, float64(r.Requests)/max(r.Seconds, 1e-9))
	if r.Rate > 0 {
		fmt.Fprintf(w, "bound         %d arrivals waited for a free slot, %d never sent\n", r.Delayed, r.Unsent)
	}
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

// policyLoad is one load level of bench policies: a closed loop (Rate 0)
// or an open loop at Rate, Fraction of round-robin's measured capacity.
type policyLoad struct {
	Fraction float64                    `json:"fraction,omitempty"`
	Rate     float64                    `json:"rate"`
	Results  map[string][]*bench.Result `json:"results"`
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
		rounds1    int
		fractions  []float64
		probe      time.Duration
	)
	cmd := &cobra.Command{
		Use:   "policies [--nodes 4] [--policies round-robin,...] [--duration D] [--concurrency C | --rate R | --rate-fraction F,...]",
		Short: "Start a local cluster per routing policy and run the same shared-prefix load against each",
		Long: "policies starts `npumesh up` with a synthetic model (big enough that prefill dominates the time to first\n" +
			"token) once per routing policy, runs the same workload against each, and prints each policy's numbers\n" +
			"and their ratio to round-robin. Each policy starts with cold caches.\n\n" +
			"The load is a closed loop of --concurrency clients (it measures capacity: the cluster is saturated), or\n" +
			"with --rate an open loop of Poisson arrivals (it measures latency at a given load). --rate-fraction\n" +
			"first measures round-robin's closed-loop capacity (--probe-duration) and runs each fraction of it,\n" +
			"0 meaning the closed loop; rounds interleave the loads and the policies.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			if len(policies) == 0 {
				return fmt.Errorf("no policies")
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
			oo, closeModel, err := oracleOptions(modelPath, nodes)
			if err != nil {
				return err
			}
			defer closeModel()
			loads := []*policyLoad{{Rate: o.Rate}}
			capacity := 0.0
			if len(fractions) > 0 {
				// The capacity probe: round-robin in a closed loop, after
				// the same warmup; the open loops run at fractions of it.
				po := o
				po.Rate, po.Duration = 0, probe
				log.Info("measuring round-robin's closed-loop capacity", "duration", probe)
				r, err := benchPolicy(c.Context(), exe, dataDir, modelPath, route.PolicyRoundRobin, nodes, threads, po)
				if err != nil {
					return fmt.Errorf("capacity probe: %w", err)
				}
				capacity = float64(r.Requests-r.Errors) / r.Seconds
				fmt.Fprintf(g.stdout, "capacity probe: round-robin, closed loop of %d clients, %.0fs: %.2f requests/s (%d of %d ok), %.1f tok/s, TTFT mean %.1f ms\n",
					r.Concurrency, r.Seconds, capacity, r.Requests-r.Errors, r.Requests, r.OutputTokS, r.TTFTMean)
				if capacity <= 0 {
					return fmt.Errorf("capacity probe: no request succeeded")
				}
				loads = nil
				for _, f := range fractions {
					if f < 0 {
						return fmt.Errorf("bad --rate-fraction %v", f)
					}
					loads = append(loads, &policyLoad{Fraction: f, Rate: f * capacity})
				}
			}
			for _, l := range loads {
				l.Results = map[string][]*bench.Result{}
			}
			// Rounds interleave the loads and the policies, so that the
			// machine's other load hits each of them alike; ratios are taken
			// within a round.
			rounds := make([][][]*bench.Result, len(loads)) // [load][round][policy]
			for round := 0; round < max(rounds1, 1); round++ {
				for li, l := range loads {
					lo := o
					lo.Rate = l.Rate
					var results []*bench.Result
					for _, p := range policies {
						log.Info("benchmarking policy", "policy", p, "round", round+1, "rate", l.Rate)
						r, err := benchPolicy(c.Context(), exe, dataDir, modelPath, p, nodes, threads, lo)
						if err != nil {
							return fmt.Errorf("policy %s: %w", p, err)
						}
						if r.Oracle, err = bench.Oracle(oo, r.Log); err != nil {
							return fmt.Errorf("policy %s: oracle: %w", p, err)
						}
						if r.Oracle.Mismatched > 0 {
							log.Warn("the oracle's token counts differ from the nodes'", "requests", r.Oracle.Mismatched)
						}
						results = append(results, r)
						l.Results[p] = append(l.Results[p], r)
					}
					fmt.Fprintf(g.stdout, "\nround %d, %s\n", round+1, loadLabel(l))
					printPolicies(g.stdout, policies, results)
					rounds[li] = append(rounds[li], results)
				}
			}
			for li, l := range loads {
				fmt.Fprintf(g.stdout, "\n%s\n", loadLabel(l))
				printRatioSummary(g.stdout, policies, rounds[li])
			}
			if jsonOut != "" {
				return writeJSON(jsonOut, map[string]any{"capacity_req_s": capacity, "loads": loads})
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&nodes, "nodes", 4, "node daemons in the local cluster")
	f.StringSliceVar(&policies, "policies", []string{route.PolicyRoundRobin, route.PolicyLeastOutstanding, route.PolicyP2C, route.PolicyPrefix, route.PolicyComposite}, "policies to compare (round-robin first: it is the baseline)")
	f.StringVar(&o.Workload, "workload", bench.SharedPrefix, "workload: "+strings.Join(bench.Workloads, ", "))
	f.IntVar(&o.Concurrency, "concurrency", 8, "closed loop: clients, each sending its next request when its last ends (also the warmup's and the capacity probe's)")
	f.DurationVar(&o.Duration, "duration", 20*time.Second, "load duration per policy")
	f.DurationVar(&o.Warmup, "warmup", 10*time.Second, "closed-loop load before the measured duration, per policy (fills the caches; not counted)")
	openLoopFlags(f, &o)
	f.Float64SliceVar(&fractions, "rate-fraction", nil, "open loops at these fractions of round-robin's closed-loop capacity, measured first (0: the closed loop); overrides --rate")
	f.DurationVar(&probe, "probe-duration", 15*time.Second, "measured duration of the capacity probe (after --warmup)")
	f.IntVar(&o.PrefixWords, "prefix-words", 100, "length of the shared prompts in words")
	f.IntVar(&o.Prefixes, "prefixes", 64, "number of distinct shared prompts (64 of 100 words: about 2.3 nodes' KV cache, 60% of 4 nodes')")
	f.IntVar(&o.MaxTokens, "max-tokens", 8, "completion length")
	f.StringVar(&dataDir, "data-dir", "", "where the CA, certificates and the synthetic model go (default: a temporary dir)")
	f.StringVar(&modelPath, "model", "", "GGUF model to serve instead of the synthetic one")
	f.IntVar(&threads, "threads", 0, "compute threads per node (default: cores / nodes, at least 1)")
	f.IntVar(&dim, "synth-dim", 256, "embedding length of the synthetic model")
	f.IntVar(&layer, "synth-layers", 4, "layers of the synthetic model")
	f.StringVar(&jsonOut, "json", "", "also write the results as JSON to this file")
	f.IntVar(&rounds1, "rounds", 1, "run the policies this many times, interleaved, and summarize the per-round ratios")
	return cmd
}

func loadLabel(l *policyLoad) string {
	if l.Rate <= 0 {
		return "closed loop (saturation)"
	}
	if l.Fraction > 0 {
		return fmt.Sprintf("open loop at %.2f req/s (%.2f of round-robin's closed-loop capacity)", l.Rate, l.Fraction)
	}
	return fmt.Sprintf("open loop at %.2f req/s", l.Rate)
}

// ratioStats is the median and range of per-round ratios.
func ratioStats(v []float64) string {
	if len(v) == 0 {
		return "-"
	}
	v = slices.Clone(v)
	slices.Sort(v)
	m := v[len(v)/2]
	if len(v)%2 == 0 {
		m = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return fmt.Sprintf("%.2f [%.2f, %.2f]", m, v[0], v[len(v)-1])
}

// printRatioSummary prints, per policy, the median and range over rounds of
// its ratios to the first policy's numbers in the same round.
func printRatioSummary(w io.Writer, policies []string, rounds [][]*bench.Result) {
	fmt.Fprintf(w, "over %d round(s), ratios against %s in the same round: median [min, max]\n\n", len(rounds), policies[0])
	fmt.Fprintf(w, "%-18s %-20s %-20s %-20s %-20s %-20s\n", "policy", "TTFT mean", "TTFT p50", "TTFT p99", "tok/s", "cached/oracle")
	for i, p := range policies {
		var mean, p50, p99, tok, hit []float64
		for _, rs := range rounds {
			base, r := rs[0], rs[i]
			if base.TTFTMean > 0 && base.TTFT.P50 > 0 && base.TTFT.P99 > 0 && base.OutputTokS > 0 {
				mean = append(mean, r.TTFTMean/base.TTFTMean)
				p50 = append(p50, r.TTFT.P50/base.TTFT.P50)
				p99 = append(p99, r.TTFT.P99/base.TTFT.P99)
				tok = append(tok, r.OutputTokS/base.OutputTokS)
			}
			if r.Oracle != nil && r.Oracle.HitRate > 0 {
				hit = append(hit, r.CacheHitRate/r.Oracle.HitRate)
			}
		}
		fmt.Fprintf(w, "%-18s %-20s %-20s %-20s %-20s %-20s\n", p, ratioStats(mean), ratioStats(p50), ratioStats(p99), ratioStats(tok), ratioStats(hit))
	}
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

// oracleOptions loads the model once, for its tokenizer, block size and KV
// capacity (the nodes of `up` use the engine's defaults, as this does).
func oracleOptions(path string, nodes int) (bench.OracleOptions, func(), error) {
	m, err := engine.Load(path, engine.Options{Threads: 1})
	if err != nil {
		return bench.OracleOptions{}, nil, fmt.Errorf("load %s for the oracle: %w", path, err)
	}
	tok := m.Tokenizer()
	return bench.OracleOptions{
		Tokenize:   func(p string) ([]int32, error) { return tok.Encode(p, true) },
		BlockSize:  m.Info().BlockSize,
		Nodes:      nodes,
		NodeBlocks: m.CacheStats().Capacity,
	}, func() { m.Close() }, nil
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
	fmt.Fprintf(w, "%s workload (%d shared prompts), %s, %.0fs per policy; ratios against %s\n", base.Workload, base.Prefixes, loadName(base), base.Seconds, policies[0])
	fmt.Fprintf(w, "oracle: the hit rate of a router that knows every node's cache at once (LRU nodes of the real capacity), on the same requests; bound: any earlier request's blocks reusable\n\n")
	fmt.Fprintf(w, "%-18s %9s %9s %9s %9s %9s %8s %8s %8s %7s %6s %9s %9s %9s\n", "policy", "TTFT mean", "TTFT p50", "TTFT p99", "ITL p50", "tok/s", "cached", "oracle", "bound", "errors", "reqs", "TTFT mean", "tok/s", "cached/")
	fmt.Fprintf(w, "%-18s %9s %9s %9s %9s %9s %8s %8s %8s %7s %6s %9s %9s %9s\n", "", "ms", "ms", "ms", "ms", "", "", "", "", "", "", "ratio", "ratio", "oracle")
	pct := func(o *bench.OracleResult, f func(*bench.OracleResult) float64) string {
		if o == nil {
			return "-"
		}
		return fmt.Sprintf("%.1f%%", 100*f(o))
	}
	for i, r := range rs {
		vs := "-"
		if r.Oracle != nil && r.Oracle.HitRate > 0 {
			vs = fmt.Sprintf("%.2f", r.CacheHitRate/r.Oracle.HitRate)
		}
		fmt.Fprintf(w, "%-18s %9.1f %9.1f %9.1f %9.1f %9.1f %7.1f%% %8s %8s %7d %6d %9s %9s %9s\n", policies[i], r.TTFTMean, r.TTFT.P50, r.TTFT.P99, r.ITL.P50, r.OutputTokS,
			100*r.CacheHitRate, pct(r.Oracle, func(o *bench.OracleResult) float64 { return o.HitRate }), pct(r.Oracle, func(o *bench.OracleResult) float64 { return o.BoundHitRate }),
			r.Errors, r.Requests, ratio(r.TTFTMean, base.TTFTMean), ratio(r.OutputTokS, base.OutputTokS), vs)
	}
	if base.Rate > 0 {
		fmt.Fprintf(w, "in-flight bound %d: arrivals that waited for it / never sent:", base.MaxInFlight)
		for i, r := range rs {
			fmt.Fprintf(w, " %s %d/%d", policies[i], r.Delayed, r.Unsent)
		}
		fmt.Fprintln(w)
	}
}
