package coordinator

import (
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/npumesh/npumesh/internal/openai"
)

// recentStats keeps the last requests' timings for the dashboard and
// `npumesh status`, which want a live picture without a Prometheus server.
// It is bounded: a ring of the newest statsRing requests.
type recentStats struct {
	mu      sync.Mutex // guards everything below
	ring    [statsRing]requestSample
	next    int
	n       int
	total   uint64
	errors  uint64
	tokens  uint64
	started time.Time
}

const statsRing = 4096

type requestSample struct {
	end      time.Time
	ttft     time.Duration // 0 when no token came
	duration time.Duration
	failed   bool
	tokens   int
}

func (s *recentStats) add(r requestSample) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ring[s.next] = r
	s.next = (s.next + 1) % statsRing
	s.n = min(s.n+1, statsRing)
	s.total++
	s.tokens += uint64(r.tokens)
	if r.failed {
		s.errors++
	}
}

// StatsView is the body of GET /api/v1/stats.
type StatsView struct {
	Time           time.Time `json:"time"`
	UptimeSeconds  float64   `json:"uptime_seconds"`
	RequestsTotal  uint64    `json:"requests_total"`
	ErrorsTotal    uint64    `json:"errors_total"`
	TokensOutTotal uint64    `json:"completion_tokens_total"`
	InFlight       int32     `json:"in_flight"`
	WindowSeconds  float64   `json:"window_seconds"`
	RequestsPerSec float64   `json:"requests_per_second"`
	TokensPerSec   float64   `json:"completion_tokens_per_second"`
	TTFTP50Ms      float64   `json:"ttft_p50_ms"`
	TTFTP95Ms      float64   `json:"ttft_p95_ms"`
	LatencyP50Ms   float64   `json:"latency_p50_ms"`
	LatencyP95Ms   float64   `json:"latency_p95_ms"`
	Models         []string  `json:"models"`
	NodesReady     int       `json:"nodes_ready"`
	NodesDraining  int       `json:"nodes_draining"`
	WindowRequests int       `json:"window_requests"`
	WindowErrors   int       `json:"window_errors"`
}

const statsWindow = 30 * time.Second

func (c *Coordinator) stats() StatsView {
	now := time.Now()
	s := &c.recent
	s.mu.Lock()
	v := StatsView{Time: now, UptimeSeconds: now.Sub(s.started).Seconds(), RequestsTotal: s.total, ErrorsTotal: s.errors, TokensOutTotal: s.tokens}
	var ttfts, lats []time.Duration
	tokens := 0
	for i := 0; i < s.n; i++ {
		r := s.ring[(s.next-1-i+statsRing)%statsRing]
		if now.Sub(r.end) > statsWindow {
			break
		}
		v.WindowRequests++
		tokens += r.tokens
		if r.failed {
			v.WindowErrors++
			continue
		}
		lats = append(lats, r.duration)
		if r.ttft > 0 {
			ttfts = append(ttfts, r.ttft)
		}
	}
	s.mu.Unlock()
	win := min(statsWindow, now.Sub(s.started))
	v.WindowSeconds = win.Seconds()
	if win > 0 {
		v.RequestsPerSec = float64(v.WindowRequests) / win.Seconds()
		v.TokensPerSec = float64(tokens) / win.Seconds()
	}
	v.TTFTP50Ms, v.TTFTP95Ms = quantileMs(ttfts, 0.5), quantileMs(ttfts, 0.95)
	v.LatencyP50Ms, v.LatencyP95Ms = quantileMs(lats, 0.5), quantileMs(lats, 0.95)
	seen := map[string]bool{}
	v.Models = []string{}
	for _, m := range c.reg.list() {
		models, draining := m.snapshot()
		if draining {
			v.NodesDraining++
		} else {
			v.NodesReady++
		}
		v.InFlight += m.outstanding.Load()
		for id := range models {
			if !seen[id] {
				seen[id] = true
				v.Models = append(v.Models, id)
			}
		}
	}
	sort.Strings(v.Models)
	return v
}

func quantileMs(d []time.Duration, q float64) float64 {
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return float64(d[int(q*float64(len(d)-1))].Microseconds()) / 1000
}

func (c *Coordinator) handleStats(w http.ResponseWriter, r *http.Request) {
	openai.WriteJSON(w, http.StatusOK, c.stats())
}
