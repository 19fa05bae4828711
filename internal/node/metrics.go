package node

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/npumesh/npumesh/internal/accel"
	"github.com/npumesh/npumesh/internal/kvcache"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// nodeMetrics are the node's own Prometheus metrics, on its own registry.
type nodeMetrics struct {
	reg        *prometheus.Registry
	requests   *prometheus.CounterVec // model, outcome
	promptToks *prometheus.CounterVec // model
	outToks    *prometheus.CounterVec // model
}

func newNodeMetrics(n *Node) *nodeMetrics {
	m := &nodeMetrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "npumesh_node_requests_total", Help: "Generate calls this node served, by model and outcome.",
		}, []string{"model", "outcome"}),
		promptToks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "npumesh_node_prompt_tokens_total", Help: "Prompt tokens this node processed.",
		}, []string{"model"}),
		outToks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "npumesh_node_completion_tokens_total", Help: "Tokens this node generated.",
		}, []string{"model"}),
	}
	m.reg.MustRegister(m.requests, m.promptToks, m.outToks, &nodeCollector{n: n},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

var (
	descNodeInFlight = prometheus.NewDesc("npumesh_node_in_flight_requests", "Generate calls running on this node.", nil, nil)
	descNodeTemp     = prometheus.NewDesc("npumesh_node_temperature_celsius", "Temperature of a sensor of this node.", []string{"sensor"}, nil)
	descNodeMaxTemp  = prometheus.NewDesc("npumesh_node_max_temperature_celsius", "Hottest sensor of this node.", nil, nil)
	descNodeThrottle = prometheus.NewDesc("npumesh_node_throttled", "1 when this node is thermally or frequency throttled.", nil, nil)
	descNodePower    = prometheus.NewDesc("npumesh_node_power_watts", "Power of a RAPL zone of this node.", []string{"zone"}, nil)
	descKVBlocks     = prometheus.NewDesc("npumesh_node_kv_blocks", "KV-cache blocks of a model by state: in_use by running sequences, cached (reusable prefixes), free.", []string{"model", "state"}, nil)
	descPrefixHits   = prometheus.NewDesc("npumesh_node_prefix_cache_hits_total", "KV blocks found in the prefix cache when a sequence started.", []string{"model"}, nil)
	descPrefixMisses = prometheus.NewDesc("npumesh_node_prefix_cache_misses_total", "KV blocks looked up in the prefix cache and not found.", []string{"model"}, nil)
	descPrefixRatio  = prometheus.NewDesc("npumesh_node_prefix_cache_hit_ratio", "Share of looked-up KV blocks found in the prefix cache since start.", []string{"model"}, nil)
	descNodeCert     = prometheus.NewDesc("npumesh_certificate_expiry_timestamp_seconds", "When this node's certificate expires (Unix time).", []string{"role", "name"}, nil)
	descStageBytes   = prometheus.NewDesc("npumesh_node_stage_activation_bytes_total", "Hidden-state bytes this node sent to the next pipeline stage (encoded, before gRPC and TLS framing).", nil, nil)
)

// nodeCollector reads live state at scrape time.
type nodeCollector struct{ n *Node }

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descNodeInFlight, descNodeTemp, descNodeMaxTemp, descNodeThrottle, descNodePower, descNodeCert, descKVBlocks, descPrefixHits, descPrefixMisses, descPrefixRatio, descStageBytes} {
		ch <- d
	}
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	ch <- prometheus.MustNewConstMetric(descNodeInFlight, prometheus.GaugeValue, float64(n.inFlight.Load()))
	ch <- prometheus.MustNewConstMetric(descStageBytes, prometheus.CounterValue, float64(n.stages.sent.Load()))
	for id, b := range n.backendsSnapshot() {
		cs, ok := b.(interface{ CacheStats() kvcache.Stats })
		if !ok {
			continue
		}
		st := cs.CacheStats()
		ch <- prometheus.MustNewConstMetric(descKVBlocks, prometheus.GaugeValue, float64(st.InUse), id, "in_use")
		ch <- prometheus.MustNewConstMetric(descKVBlocks, prometheus.GaugeValue, float64(st.Cached), id, "cached")
		ch <- prometheus.MustNewConstMetric(descKVBlocks, prometheus.GaugeValue, float64(st.Free), id, "free")
		ch <- prometheus.MustNewConstMetric(descPrefixHits, prometheus.CounterValue, float64(st.Hits), id)
		ch <- prometheus.MustNewConstMetric(descPrefixMisses, prometheus.CounterValue, float64(st.Misses), id)
		if looked := st.Hits + st.Misses; looked > 0 {
			ch <- prometheus.MustNewConstMetric(descPrefixRatio, prometheus.GaugeValue, float64(st.Hits)/float64(looked), id)
		}
	}
	t := n.sampler.Latest()
	seen := map[string]bool{}
	for _, s := range t.Temperatures {
		if seen[s.Sensor] { // label values must be unique per scrape
			continue
		}
		seen[s.Sensor] = true
		ch <- prometheus.MustNewConstMetric(descNodeTemp, prometheus.GaugeValue, s.Celsius, s.Sensor)
	}
	if t.MaxCelsius > 0 {
		ch <- prometheus.MustNewConstMetric(descNodeMaxTemp, prometheus.GaugeValue, t.MaxCelsius)
	}
	throttled := 0.0
	if t.Throttled {
		throttled = 1
	}
	ch <- prometheus.MustNewConstMetric(descNodeThrottle, prometheus.GaugeValue, throttled)
	for _, p := range t.Power {
		if t.WindowSeconds > 0 && !seen["power/"+p.Zone] {
			seen["power/"+p.Zone] = true
			ch <- prometheus.MustNewConstMetric(descNodePower, prometheus.GaugeValue, p.Watts, p.Zone)
		}
	}
	if b := n.certs.Bundle(); b.Leaf() != nil {
		leaf, id := b.Leaf(), b.Identity()
		ch <- prometheus.MustNewConstMetric(descNodeCert, prometheus.GaugeValue, float64(leaf.NotAfter.Unix()), string(id.Role), id.Name)
	}
}

// listenMetrics binds the /metrics listener.
func (n *Node) listenMetrics() (*http.Server, net.Listener, error) {
	l, err := net.Listen("tcp", n.cfg.MetricsListen)
	if err != nil {
		return nil, nil, fmt.Errorf("node: metrics listener on %s: %w", n.cfg.MetricsListen, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(n.metrics.reg, promhttp.HandlerOpts{}))
	return &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, l, nil
}

func runMetrics(srv *http.Server, l net.Listener) error {
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// telemetryProto converts a sample for the heartbeat and Info.
func telemetryProto(t accel.Telemetry) *pb.Telemetry {
	if t.Time.IsZero() {
		return nil
	}
	out := &pb.Telemetry{
		MaxTemperatureCelsius: t.MaxCelsius,
		Throttling:            t.Throttled,
		SampledUnixMs:         t.Time.UnixMilli(),
	}
	for _, s := range t.Temperatures {
		out.Sensors = append(out.Sensors, &pb.Sensor{Name: s.Sensor, Celsius: s.Celsius})
	}
	if t.WindowSeconds > 0 {
		for _, p := range t.Power {
			// Top-level RAPL zones only (intel-rapl:0, not its subzone
			// intel-rapl:0:0), so nothing is counted twice.
			if strings.Count(p.Zone, ":") == 1 {
				out.PowerWatts += p.Watts
			}
		}
	}
	return out
}

// backendsSnapshot returns every backend serving now: the configured ones
// and those loaded after a pull.
func (n *Node) backendsSnapshot() map[string]Backend {
	out := make(map[string]Backend, len(n.backends))
	for id, b := range n.backends {
		out[id] = b
	}
	if n.pull != nil {
		n.pull.mu.Lock()
		for id, s := range n.pull.models {
			if s.backend != nil {
				out[id] = s.backend
			}
		}
		n.pull.mu.Unlock()
	}
	return out
}
