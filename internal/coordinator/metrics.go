package coordinator

import (
	"crypto/x509"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// metrics are the coordinator's Prometheus metrics, on a registry of its own
// (no global state). Label sets are bounded: model ids and node names come
// from the cluster's own registry, outcomes from a fixed list.
type metrics struct {
	reg        *prometheus.Registry
	requests   *prometheus.CounterVec   // model, node, outcome
	ttft       *prometheus.HistogramVec // model
	itl        *prometheus.HistogramVec // model
	duration   *prometheus.HistogramVec // model
	promptToks *prometheus.CounterVec   // model
	outToks    *prometheus.CounterVec   // model
	retries    *prometheus.CounterVec   // model
	migrations *prometheus.CounterVec   // model
	pipelines  *prometheus.CounterVec   // model, stages
}

// Request outcomes, the values of the "outcome" label.
const (
	outcomeSuccess     = "success"
	outcomeClientError = "client_error"
	outcomeServerError = "server_error"
	outcomeCanceled    = "canceled"
)

// latencyBuckets span 1 ms to ~30 s.
var latencyBuckets = prometheus.ExponentialBuckets(0.001, 2, 16)

func newMetrics(c *Coordinator) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "npumesh_requests_total", Help: "Inference requests by model, serving node and outcome.",
		}, []string{"model", "node", "outcome"}),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "npumesh_time_to_first_token_seconds", Help: "Time from request arrival to the first generated token.", Buckets: latencyBuckets,
		}, []string{"model"}),
		itl: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "npumesh_inter_token_latency_seconds", Help: "Time between consecutive token deltas of a request.", Buckets: latencyBuckets,
		}, []string{"model"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "npumesh_request_duration_seconds", Help: "Time from request arrival to its end.", Buckets: latencyBuckets,
		}, []string{"model"}),
		promptToks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "npumesh_prompt_tokens_total", Help: "Prompt tokens processed.",
		}, []string{"model"}),
		outToks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "npumesh_completion_tokens_total", Help: "Tokens generated.",
		}, []string{"model"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "npumesh_retries_total", Help: "Requests retried on another node after a failure before their first token.",
		}, []string{"model"}),
		migrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "npumesh_migrations_total", Help: "Streams moved to another node after their node failed mid-stream.",
		}, []string{"model"}),
		pipelines: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "npumesh_pipeline_attempts_total", Help: "Request attempts served by a pipeline of stages (a sharded model), by number of stages.",
		}, []string{"model", "stages"}),
	}
	m.reg.MustRegister(m.requests, m.ttft, m.itl, m.duration, m.promptToks, m.outToks, m.retries, m.migrations, m.pipelines,
		&clusterCollector{c: c},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// clusterCollector reports the registry's live state at scrape time, so a
// node that leaves takes its series with it.
type clusterCollector struct{ c *Coordinator }

var (
	descNodes       = prometheus.NewDesc("npumesh_nodes", "Registered nodes by state.", []string{"state"}, nil)
	descInFlight    = prometheus.NewDesc("npumesh_in_flight_requests", "Requests the coordinator has open on a node.", []string{"node"}, nil)
	descQueue       = prometheus.NewDesc("npumesh_node_queue_depth", "Requests waiting in a node's queue, as it last reported.", []string{"node"}, nil)
	descNodeInFl    = prometheus.NewDesc("npumesh_node_in_flight_requests", "Requests running on a node, as it last reported.", []string{"node"}, nil)
	descTemp        = prometheus.NewDesc("npumesh_node_temperature_celsius", "Hottest sensor of a node, as it last reported.", []string{"node"}, nil)
	descThrottled   = prometheus.NewDesc("npumesh_node_throttled", "1 when a node reports thermal or frequency throttling.", []string{"node"}, nil)
	descPower       = prometheus.NewDesc("npumesh_node_power_watts", "Package power of a node from RAPL, as it last reported.", []string{"node"}, nil)
	descCertExpiry  = prometheus.NewDesc("npumesh_certificate_expiry_timestamp_seconds", "When the coordinator's own certificate expires (Unix time).", []string{"role", "name"}, nil)
	descCircuit     = prometheus.NewDesc("npumesh_circuit_breaker_open", "1 while a node's circuit breaker is open (after repeated failures).", []string{"node"}, nil)
	descLastSeenAge = prometheus.NewDesc("npumesh_node_heartbeat_age_seconds", "Seconds since a node's last heartbeat.", []string{"node"}, nil)
)

func (cc *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descNodes, descInFlight, descQueue, descNodeInFl, descTemp, descThrottled, descPower, descCertExpiry, descLastSeenAge, descCircuit} {
		ch <- d
	}
}

func (cc *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	ready, draining := 0, 0
	now := time.Now()
	for _, m := range cc.c.reg.list() {
		m.mu.Lock()
		dr, load, tel, seen := m.draining, m.load, m.telemetry, m.lastSeen
		m.mu.Unlock()
		if dr {
			draining++
		} else {
			ready++
		}
		ch <- prometheus.MustNewConstMetric(descInFlight, prometheus.GaugeValue, float64(m.outstanding.Load()), m.name)
		ch <- prometheus.MustNewConstMetric(descQueue, prometheus.GaugeValue, float64(load.GetQueueDepth()), m.name)
		ch <- prometheus.MustNewConstMetric(descNodeInFl, prometheus.GaugeValue, float64(load.GetInFlight()), m.name)
		ch <- prometheus.MustNewConstMetric(descLastSeenAge, prometheus.GaugeValue, now.Sub(seen).Seconds(), m.name)
		if cc.c.rt != nil {
			open := 0.0
			if cc.c.rt.breakers.isOpen(m.name) {
				open = 1
			}
			ch <- prometheus.MustNewConstMetric(descCircuit, prometheus.GaugeValue, open, m.name)
		}
		if tel != nil {
			if tel.GetMaxTemperatureCelsius() > 0 {
				ch <- prometheus.MustNewConstMetric(descTemp, prometheus.GaugeValue, tel.GetMaxTemperatureCelsius(), m.name)
			}
			throttled := 0.0
			if tel.GetThrottling() {
				throttled = 1
			}
			ch <- prometheus.MustNewConstMetric(descThrottled, prometheus.GaugeValue, throttled, m.name)
			if tel.GetPowerWatts() > 0 {
				ch <- prometheus.MustNewConstMetric(descPower, prometheus.GaugeValue, tel.GetPowerWatts(), m.name)
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(descNodes, prometheus.GaugeValue, float64(ready), "ready")
	ch <- prometheus.MustNewConstMetric(descNodes, prometheus.GaugeValue, float64(draining), "draining")
	if leaf := cc.c.cfg.TLS.Leaf(); leaf != nil {
		id := cc.c.cfg.TLS.Identity()
		ch <- prometheus.MustNewConstMetric(descCertExpiry, prometheus.GaugeValue, expiry(leaf), string(id.Role), id.Name)
	}
}

func expiry(c *x509.Certificate) float64 { return float64(c.NotAfter.Unix()) }
