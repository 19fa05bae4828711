package clustertest

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/npumesh/npumesh/internal/coordinator"
	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/linkemu"
	"github.com/npumesh/npumesh/internal/node"
	"github.com/npumesh/npumesh/internal/synth"
)

// The pipeline benchmarks run in-process clusters side by side on one
// synthetic model (q8_0 weights, big enough that a token's compute is
// milliseconds): one node serving it whole, and nodes serving it as a
// pipeline of stages, directly on loopback or with every node behind a
// linkemu relay that emulates a WiFi-7 or Ethernet link. They report
// decode time per token at batch 1, aggregate throughput of 8 concurrent
// requests, the ratios to the single node, and for emulated links the
// model's prediction (compute + one round trip per boundary +
// serialization, with the round trip the relay really gives) and the
// activation bytes per token.
//
//	go test -run '^$' -bench Pipeline -benchtime 1x ./internal/clustertest/

func pipelineBenchModel(b *testing.B) string {
	path := filepath.Join(b.TempDir(), "pipe.gguf")
	o := synth.Options{Dim: 1024, Layers: 8, Heads: 16, KVHeads: 4, FF: 2816, Vocab: 2000, Context: 1024, Type: gguf.TypeF32, Seed: 5, Name: "pipe"}
	if err := synth.WriteFile(path, o, nil); err != nil {
		b.Fatal(err)
	}
	return path
}

// benchCluster starts an in-process cluster of n nodes serving model,
// sharded in n stages when n > 1, each node behind a relay with link when
// link is not nil.
func benchCluster(b *testing.B, model string, n, threads int, act string, link *linkemu.Config) (*inProcess, []*linkemu.Relay) {
	var relays []*linkemu.Relay
	p := startInProcessOpts(b, inProcessOptions{
		nodes: n, model: model, engine: engine.Options{Threads: threads, Quantize: "q8_0"},
		coord: func(cfg *coordinator.Config) {
			if n > 1 {
				cfg.Shards = map[string]coordinator.ShardSpec{"pipe": {Stages: n, Activations: act}}
			}
		},
		node: func(i int, cfg *node.Config) {
			if link == nil {
				return
			}
			listen := FreeAddr(b)
			r, err := linkemu.Listen(listen, *link)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { r.Close() })
			cfg.Listen, cfg.Advertise = listen, r.Addr()
			relays = append(relays, r)
		},
	})
	return p, relays
}

// perToken streams a greedy completion of tokens tokens and returns the
// mean time between chunks after the first (decode at batch 1).
func perToken(b *testing.B, api string, tokens int) time.Duration {
	var first, last time.Time
	res, err := streamFollow(context.Background(), api, map[string]any{"model": "pipe", "prompt": "a b c", "max_tokens": tokens, "temperature": 0}, func(n int, _ string) {
		if n == 1 {
			first = time.Now()
		}
		last = time.Now()
	})
	if err != nil || res.errMsg != "" || res.chunks < 2 {
		b.Fatalf("stream: %v %q (%d chunks)", err, res.errMsg, res.chunks)
	}
	return last.Sub(first) / time.Duration(res.chunks-1)
}

// aggregate runs conc concurrent completions of tokens tokens and returns
// the completion tokens per second.
func aggregate(b *testing.B, api string, conc, tokens int) float64 {
	start := time.Now()
	var wg sync.WaitGroup
	for i := range conc {
		wg.Go(func() {
			completeText(b, api, map[string]any{"model": "pipe", "prompt": fmt.Sprintf("request %d", i), "max_tokens": tokens, "temperature": 0})
		})
	}
	wg.Wait()
	return float64(conc*tokens) / time.Since(start).Seconds()
}

// relayRTT measures the round trip of 2 KiB through a relay with cfg to an
// echo server: the link as emulated, timer resolution included (Go's
// timers wake about a millisecond late when the process is idle, so a
// 0.1 ms link costs about 1 ms each way).
func relayRTT(b *testing.B, cfg linkemu.Config) time.Duration {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	r, err := linkemu.Listen(ln.Addr().String(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 2048)
	var rtts []time.Duration
	for range 21 {
		start := time.Now()
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		rtts = append(rtts, time.Since(start))
	}
	return median(rtts)
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func medianF(d []float64) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkPipelineLoopback: a 2-stage pipeline against one node, same
// model, same machine, f16 activations. threads1 gives every node one
// thread, as if each were a one-core machine (the pipeline then has a core
// per stage); threads2 gives every node both cores, so the stages share
// them.
func BenchmarkPipelineLoopback(b *testing.B) {
	model := pipelineBenchModel(b)
	for _, threads := range []int{1, 2} {
		b.Run(fmt.Sprintf("threads%d", threads), func(b *testing.B) {
			one, _ := benchCluster(b, model, 1, threads, "", nil)
			two, _ := benchCluster(b, model, 2, threads, "f16", nil)
			perToken(b, one.api, 8) // warm up
			perToken(b, two.api, 8)
			var t1, t2 []time.Duration
			var a1, a2 []float64
			for range b.N {
				for range 3 {
					t1 = append(t1, perToken(b, one.api, 64))
					t2 = append(t2, perToken(b, two.api, 64))
					a1 = append(a1, aggregate(b, one.api, 8, 32))
					a2 = append(a2, aggregate(b, two.api, 8, 32))
				}
			}
			m1, m2 := median(t1), median(t2)
			b.ReportMetric(float64(m1.Microseconds())/1000, "ms/token-single")
			b.ReportMetric(float64(m2.Microseconds())/1000, "ms/token-2stage")
			b.ReportMetric(m1.Seconds()/m2.Seconds(), "batch1-ratio")
			b.ReportMetric(medianF(a1), "agg8-tok/s-single")
			b.ReportMetric(medianF(a2), "agg8-tok/s-2stage")
			b.ReportMetric(medianF(a2)/medianF(a1), "agg8-ratio")
		})
	}
}

// BenchmarkPipelineLinks: 2- and 3-stage pipelines whose nodes are each
// behind an emulated link, against one node behind the same link.
func BenchmarkPipelineLinks(b *testing.B) {
	model := pipelineBenchModel(b)
	for _, lc := range []struct {
		name string
		cfg  linkemu.Config
	}{{"wifi7", linkemu.WiFi7}, {"ethernet", linkemu.Ethernet}} {
		b.Run(lc.name, func(b *testing.B) {
			cfg := lc.cfg
			one, _ := benchCluster(b, model, 1, 1, "", &cfg)
			two, relays2 := benchCluster(b, model, 2, 1, "f16", &cfg)
			three, _ := benchCluster(b, model, 3, 1, "f16", &cfg)
			perToken(b, one.api, 8)
			perToken(b, two.api, 8)
			perToken(b, three.api, 8)
			var t1, t2, t3 []time.Duration
			var bytes2 []float64
			for range b.N {
				for range 3 {
					t1 = append(t1, perToken(b, one.api, 64))
					up, _ := relays2[1].Stats()
					d := perToken(b, two.api, 64)
					up2, _ := relays2[1].Stats()
					t2 = append(t2, d)
					// Bytes into the second stage's node per token: the
					// f16 hidden state with gRPC and TLS framing (and the
					// stream's prompt and setup, amortised).
					bytes2 = append(bytes2, float64(up2-up)/64)
					t3 = append(t3, perToken(b, three.api, 64))
				}
			}
			m1, m2, m3 := median(t1), median(t2), median(t3)
			rtt := relayRTT(b, cfg)
			b.ReportMetric(float64(cfg.RTT().Microseconds())/1000, "ms-rtt-nominal")
			b.ReportMetric(float64(rtt.Microseconds())/1000, "ms-rtt-emulated")
			ser := time.Duration(float64(1024*2) / cfg.BytesPerSec * float64(time.Second))
			b.ReportMetric(float64(m1.Microseconds())/1000, "ms/token-single")
			b.ReportMetric(float64(m2.Microseconds())/1000, "ms/token-2stage")
			b.ReportMetric(float64((m1+rtt+ser).Microseconds())/1000, "ms/token-2stage-predicted")
			b.ReportMetric(float64(m3.Microseconds())/1000, "ms/token-3stage")
			b.ReportMetric(float64((m1+2*(rtt+ser)).Microseconds())/1000, "ms/token-3stage-predicted")
			b.ReportMetric(medianF(bytes2), "wire-bytes/token")
			b.ReportMetric(1024*2, "payload-bytes/token")
		})
	}
}
