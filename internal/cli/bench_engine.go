package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/npumesh/npumesh/internal/enginebench"
)

func newBenchEngineCmd(g *globals) *cobra.Command {
	var (
		o       enginebench.Options
		batches []int
		asJSON  bool
		profile string
	)
	cmd := &cobra.Command{
		Use:   "engine --model PATH [--threads N] [--batch 1,8] [--rounds N] [--quantize q8_0|q4_0] [--json]",
		Short: "Measure the built-in engine: prefill and decode tok/s, peak RSS, memory-bandwidth bound",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if o.Threads <= 0 {
				o.Threads = runtime.NumCPU()
			}
			for _, b := range batches {
				if b < 1 || b > 256 {
					return fmt.Errorf("--batch %d: batch sizes must be between 1 and 256", b)
				}
			}
			o.Batches = batches
			if o.Rounds < 1 || o.Rounds > 100 {
				return fmt.Errorf("--rounds %d: give 1 to 100 rounds", o.Rounds)
			}
			if profile != "" {
				f, err := os.Create(profile)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			r, err := enginebench.Run(c.Context(), o)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(g.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			w := g.stdout
			fmt.Fprintf(w, "model        %s (%s, %.2fB parameters, %.1f MiB file)\n", r.Model, r.Quantization, float64(r.Parameters)/1e9, float64(r.FileBytes)/(1<<20))
			fmt.Fprintf(w, "threads      %d, kernels %s\n", r.Threads, r.Kernels)
			fmt.Fprintf(w, "prefill      %.1f tok/s\n", r.PrefillTokS)
			keys := make([]int, 0, len(r.DecodeTokS))
			for k := range r.DecodeTokS {
				n, _ := strconv.Atoi(k)
				keys = append(keys, n)
			}
			sort.Ints(keys)
			for _, b := range keys {
				rate := r.DecodeTokS[strconv.Itoa(b)]
				cpu := r.DecodeCPUTokS[strconv.Itoa(b)]
				fmt.Fprintf(w, "decode b=%-3d %.1f tok/s aggregate (%.2fx batch 1); %.1f tok/s by CPU time (%.2fx)\n", b, rate, rate/r.DecodeTokS["1"], cpu, cpu/r.DecodeCPUTokS["1"])
				if rs := r.DecodeRounds[strconv.Itoa(b)]; len(rs) > 1 {
					fmt.Fprintf(w, "             median of %d rounds:%s\n", len(rs), fmtRates(rs))
				}
			}
			fmt.Fprintf(w, "bandwidth    %.1f GB/s measured; %.1f MiB of weights read per token\n", r.MemoryBandwidthBytesS/1e9, float64(r.WeightBytesPerToken)/(1<<20))
			fmt.Fprintf(w, "bound        %.1f tok/s at batch 1; measured decode is %.0f%% of it\n", r.BandwidthBoundTokS, 100*r.DecodeOfBound)
			if len(r.BandwidthRounds) > 1 {
				fmt.Fprintf(w, "             medians of %d rounds, each batch 1 against its own round's bandwidth: GB/s%s; %% of bound%s\n",
					len(r.BandwidthRounds), fmtScaled(r.BandwidthRounds, 1e-9), fmtScaled(r.OfBoundRounds, 100))
			}
			fmt.Fprintf(w, "peak RSS     %.1f MiB\n", float64(r.PeakRSSBytes)/(1<<20))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Model, "model", "", "GGUF model file (required)")
	f.IntVar(&o.Threads, "threads", 0, "compute threads (default: all cores)")
	f.IntSliceVar(&batches, "batch", []int{1, 8}, "decode batch sizes")
	f.IntVar(&o.Prompt, "prompt-tokens", 128, "prompt length for the prefill measurement")
	f.IntVar(&o.Decode, "decode-tokens", 32, "tokens generated per sequence for the decode measurement")
	f.IntVar(&o.Rounds, "rounds", 1, "repeat the decode measurements, batch sizes alternating, and report each size's median")
	f.StringVar(&o.Quantize, "quantize", "", "convert F32/F16/BF16 weights at load: q8_0 or q4_0 (default: compute with the file's types)")
	f.BoolVar(&asJSON, "json", false, "print one JSON object")
	f.StringVar(&profile, "cpuprofile", "", "write a CPU profile of the whole run to this file (go tool pprof)")
	_ = cmd.MarkFlagRequired("model")
	return cmd
}

// fmtRates lists rates as " 12.3 45.6 ...".
func fmtRates(v []float64) string { return fmtScaled(v, 1) }

// fmtScaled lists v times scale as " 12.3 45.6 ...".
func fmtScaled(v []float64, scale float64) string {
	var b []byte
	for _, x := range v {
		b = fmt.Appendf(b, " %.1f", x*scale)
	}
	return string(b)
}
