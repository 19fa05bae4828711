// Package enginebench measures the built-in engine on this machine: prompt
// processing and decode speed at several batch sizes, peak memory, and the
// memory-bandwidth bound for decode, all in one run so they compare. It is
// what `npumesh bench engine` prints. It must not import the network stack.
package enginebench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/kernels"
)

// Options for Run.
type Options struct {
	Model   string
	Threads int
	Batches []int // decode batch sizes, e.g. 1 and 8
	Prompt  int   // prompt tokens for the prefill measurement
	Decode  int   // tokens generated per sequence for the decode measurement
	// Quantize converts F32/F16/BF16 weights at load (engine.Options.Quantize).
	Quantize string
	// Rounds repeats the decode measurements, the batch sizes alternating
	// (1, 8, 1, 8, ...), and reports each size's median: on a shared
	// machine a burst of other work then spoils one round, not the result.
	// With more than one round the memory bandwidth is also measured
	// before each round, and batch 1 is set against that round's bound:
	// a shared host's bandwidth drifts by half over minutes. 0 means 1.
	Rounds int
}

// Result is what one run measured. JSON names are stable: scripts compare runs.
type Result struct {
	Model        string             `json:"model"`
	Quantization string             `json:"quantization"`
	Parameters   uint64             `json:"parameters"`
	FileBytes    int64              `json:"file_bytes"`
	Threads      int                `json:"threads"`
	Kernels      string             `json:"kernels"`
	PrefillTokS  float64            `json:"prefill_tok_s"`
	DecodeTokS   map[string]float64 `json:"decode_tok_s"` // keyed by batch size
	// DecodeCPUTokS is the same tokens per CPU-second of the process,
	// times Threads: the rate the run would reach if no other process
	// took its cores, an estimate (it ignores time the threads spend
	// waiting for each other) that a shared, noisy machine cannot spoil
	// as it spoils wall-clock rates. 0 where CPU time is unknown.
	DecodeCPUTokS map[string]float64 `json:"decode_cpu_tok_s"`
	// DecodeRounds holds every round's wall-clock rate per batch size, in
	// order, when Options.Rounds > 1 (DecodeTokS is their median).
	DecodeRounds map[string][]float64 `json:"decode_tok_s_rounds,omitempty"`
	// BandwidthRounds and OfBoundRounds are each round's bandwidth and
	// batch-1 share of its bound (Options.Rounds > 1); the bandwidth,
	// bound and share above are then their medians.
	BandwidthRounds       []float64 `json:"memory_bandwidth_rounds_bytes_s,omitempty"`
	OfBoundRounds         []float64 `json:"decode_batch1_of_bound_rounds,omitempty"`
	WeightBytesPerToken   int64     `json:"weight_bytes_per_token"`
	MemoryBandwidthBytesS float64   `json:"memory_bandwidth_bytes_s"`
	BandwidthBoundTokS    float64   `json:"bandwidth_bound_tok_s"`
	DecodeOfBound         float64   `json:"decode_batch1_of_bound"`
	PeakRSSBytes          int64     `json:"peak_rss_bytes"`
	KVBudgetBytes         int64     `json:"kv_budget_bytes"`
}

// Run loads the model and measures it.
func Run(ctx context.Context, o Options) (*Result, error) {
	if len(o.Batches) == 0 {
		o.Batches = []int{1, 8}
	}
	if o.Prompt <= 0 {
		o.Prompt = 128
	}
	if o.Decode <= 0 {
		o.Decode = 32
	}
	st, err := os.Stat(o.Model)
	if err != nil {
		return nil, fmt.Errorf("bench engine: %w", err)
	}
	// Measure bandwidth before the model is loaded, so the model's pages do
	// not compete with the measurement's buffer; the best of three, since
	// other processes on a shared machine only ever lower it.
	// (With several rounds each round measures its own instead.)
	var bw float64
	for range 3 {
		if o.Rounds > 1 {
			break
		}
		bw = max(bw, kernels.MeasureBandwidth())
	}
	// Give the measurement's buffer back and restart the RSS high-water mark
	// (clear_refs "5", Linux 4.0+), so peak RSS is the model's alone.
	debug.FreeOSMemory()
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
	m, err := engine.Load(o.Model, engine.Options{Threads: o.Threads, Quantize: o.Quantize})
	if err != nil {
		return nil, fmt.Errorf("bench engine: %w", err)
	}
	defer m.Close()
	info := m.Info()
	perToken := m.StepWeightBytes()
	r := &Result{
		Model: info.ID, Quantization: info.Quantization, Parameters: info.Parameters, FileBytes: st.Size(),
		Threads: o.Threads, Kernels: kernels.Implementation(), DecodeTokS: map[string]float64{}, DecodeCPUTokS: map[string]float64{},
		WeightBytesPerToken: perToken, MemoryBandwidthBytesS: bw,
	}
	vocab := m.Tokenizer().VocabSize()
	rng := rand.New(rand.NewPCG(1, 2))
	prompt := func(n int) []int32 {
		ids := make([]int32, n)
		for i := range ids {
			ids[i] = int32(3 + rng.IntN(vocab-3)) // skip the control tokens
		}
		return ids
	}
	maxPrompt := min(o.Prompt, info.ContextLength-2)
	// Warm up: page the weights in.
	if _, err := m.Generate(ctx, engine.Request{PromptIDs: prompt(8), MaxTokens: 2}, nil); err != nil {
		return nil, err
	}
	// Prefill: one long prompt, one token out.
	start := time.Now()
	if _, err := m.Generate(ctx, engine.Request{PromptIDs: prompt(maxPrompt), MaxTokens: 1}, nil); err != nil {
		return nil, err
	}
	r.PrefillTokS = float64(maxPrompt) / time.Since(start).Seconds()

	// Decode at each batch size: distinct short prompts (no shared prefix),
	// greedy, all sequences concurrent; the rate counts the tokens of the
	// span in which all of them decode (decodeRate).
	rounds := max(o.Rounds, 1)
	wall, cpu := map[string][]float64{}, map[string][]float64{}
	var peak int64
	for range rounds {
		if rounds > 1 {
			// This round's bandwidth, its buffer given back and the RSS
			// high-water mark restarted after it (the peak so far kept).
			peak = max(peak, peakRSS())
			r.BandwidthRounds = append(r.BandwidthRounds, kernels.MeasureBandwidth())
			debug.FreeOSMemory()
			_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
		}
		for _, b := range o.Batches {
			rate, cpuRate, err := decodeRate(ctx, m, b, o.Decode, func() []int32 { return prompt(8) })
			if err != nil {
				return nil, err
			}
			k := strconv.Itoa(b)
			wall[k] = append(wall[k], rate)
			cpu[k] = append(cpu[k], cpuRate*float64(max(o.Threads, 1)))
			if b == 1 && rounds > 1 && perToken > 0 {
				bound := r.BandwidthRounds[len(r.BandwidthRounds)-1] / float64(perToken)
				r.OfBoundRounds = append(r.OfBoundRounds, rate/bound)
			}
		}
	}
	for k := range wall {
		r.DecodeTokS[k], r.DecodeCPUTokS[k] = median(wall[k]), median(cpu[k])
	}
	if rounds > 1 {
		r.DecodeRounds = wall
		r.MemoryBandwidthBytesS = median(r.BandwidthRounds)
	}
	if perToken > 0 {
		r.BandwidthBoundTokS = r.MemoryBandwidthBytesS / float64(perToken)
		r.DecodeOfBound = r.DecodeTokS["1"] / r.BandwidthBoundTokS
		if len(r.OfBoundRounds) > 0 {
			r.DecodeOfBound = median(r.OfBoundRounds)
		}
	}
	r.PeakRSSBytes = max(peak, peakRSS())
	r.KVBudgetBytes = m.KVBudgetBytes()
	return r, nil
}

// median is the middle value of v (the mean of the two middle ones for an
// even count).
func median(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// decodeRate returns the aggregate decode rate of batch concurrent
// sequences, wall-clock and per CPU-second of the process, over the span
// in which all of them are decoding: from the last sequence's first token
// (every prompt prefilled) to the first sequence's last token, counting
// the tokens every sequence produced in it. Before that span the
// sequences join one step after the other and the steps mix prefill
// chunks with decodes; after it the batch drains. Both would make a
// batch-8 rate partly a rate of smaller batches and of prefill. For one
// sequence the span is its first token to its last.
func decodeRate(ctx context.Context, m *engine.Model, batch, tokens int, prompt func() []int32) (rate, cpuRate float64, err error) {
	marks := make([][]mark, batch)
	prompts := make([][]int32, batch)
	for i := range prompts {
		prompts[i] = prompt()
	}
	var wg sync.WaitGroup
	errs := make(chan error, batch)
	var started atomic.Int32
	var endOnce sync.Once
	var cpuStart, cpuEnd time.Duration // process CPU time at the span's ends
	for i := 0; i < batch; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			// The first sequence to finish ends the span.
			defer endOnce.Do(func() { cpuEnd = cpuTime() })
			n := 0
			_, err := m.Generate(ctx, engine.Request{PromptIDs: prompts[i], MaxTokens: tokens}, func(d engine.Delta) error {
				now := time.Now()
				if n == 0 && int(started.Add(1)) == batch {
					cpuStart = cpuTime()
				}
				n += len(d.IDs)
				marks[i] = append(marks[i], mark{now, len(d.IDs)})
				if n >= tokens {
					endOnce.Do(func() { cpuEnd = cpuTime() })
				}
				return nil
			})
			if err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, 0, err
	}
	total, first, last, err := fullSpan(marks)
	if err != nil {
		return 0, 0, fmt.Errorf("bench engine: batch %d: %w", batch, err)
	}
	if total <= 0 || !last.After(first) {
		return 0, 0, fmt.Errorf("bench engine: the %d sequences decoded together for too few tokens to measure (%d); raise --decode-tokens", batch, total)
	}
	if cpu := cpuEnd - cpuStart; cpuStart > 0 && cpu > 0 {
		cpuRate = float64(total) / cpu.Seconds()
	}
	return float64(total) / last.Sub(first).Seconds(), cpuRate, nil
}

// mark is one delivery of a sequence's tokens: when, and how many.
type mark struct {
	at time.Time
	n  int
}

// fullSpan returns the span in which every sequence (marks[i], its
// deliveries in order) was decoding: from the latest first delivery to the
// earliest last one; and the tokens delivered after its start and up to
// its end.
func fullSpan(marks [][]mark) (total int, first, last time.Time, err error) {
	for i, ms := range marks {
		if len(ms) == 0 {
			return 0, first, last, errors.New("a sequence produced no token")
		}
		if i == 0 || ms[0].at.After(first) {
			first = ms[0].at
		}
		if i == 0 || ms[len(ms)-1].at.Before(last) {
			last = ms[len(ms)-1].at
		}
	}
	for _, ms := range marks {
		for _, mk := range ms {
			if mk.at.After(first) && !mk.at.After(last) {
				total += mk.n
			}
		}
	}
	return total, first, last, nil
}

// peakRSS is the process's high-water resident set (VmHWM), 0 if unknown.
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(v)
			if len(f) >= 1 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}
