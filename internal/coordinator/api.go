package coordinator

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/npumesh/npumesh/internal/openai"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// Handler is the coordinator's HTTP API: OpenAI endpoints under /v1, the
// cluster view under /api/v1.
func (c *Coordinator) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/models", c.auth(c.handleModels))
	mux.HandleFunc("POST /v1/completions", c.auth(c.handleCompletions))
	mux.HandleFunc("POST /v1/chat/completions", c.auth(c.handleChat))
	mux.HandleFunc("GET /api/v1/nodes", c.auth(c.handleNodes))
	mux.HandleFunc("GET /api/v1/stats", c.auth(c.handleStats))
	mux.Handle("GET /metrics", c.auth(promhttp.HandlerFor(c.metrics.reg, promhttp.HandlerOpts{}).ServeHTTP))
	if c.cfg.Dashboard != nil {
		// The page is static and public; its data comes from /api/v1/*,
		// which asks for the API key when keys are configured.
		mux.Handle("/", c.cfg.Dashboard)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		openai.WriteError(w, openai.ErrNotFound("unknown endpoint "+r.Method+" "+r.URL.Path+"; the API serves /v1/models, /v1/completions and /v1/chat/completions"))
	})
	return mux
}

func (c *Coordinator) auth(h http.HandlerFunc) http.HandlerFunc {
	if len(c.cfg.APIKeys) == 0 {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request) {
		if err := openai.CheckAPIKey(r, c.cfg.APIKeys); err != nil {
			openai.WriteError(w, err)
			return
		}
		h(w, r)
	}
}

func (c *Coordinator) handleModels(w http.ResponseWriter, r *http.Request) {
	seen := map[string]bool{}
	var ids []string
	for _, m := range c.reg.list() {
		models, _ := m.snapshot()
		for id := range models {
			if !seen[id] {
				seen[id] = true
				ids = append(ids, id)
			}
		}
	}
	sort.Strings(ids)
	openai.WriteJSON(w, http.StatusOK, openai.NewModelList(ids, c.created))
}

// nodeView is one entry of GET /api/v1/nodes.
type nodeView struct {
	Name             string   `json:"name"`
	Address          string   `json:"address"`
	State            string   `json:"state"`
	OS               string   `json:"os"`
	Arch             string   `json:"arch"`
	Version          string   `json:"version"`
	CPUModel         string   `json:"cpu_model,omitempty"`
	CPUCores         int32    `json:"cpu_cores"`
	MemoryTotalBytes uint64   `json:"memory_total_bytes"`
	Models           []string `json:"models"`
	InFlight         int32    `json:"in_flight"`
	QueueDepth       int32    `json:"queue_depth"`
	Served           uint64   `json:"served"`
	Failed           uint64   `json:"failed"`
	NodeServedTotal  uint64   `json:"node_served_total"`
	Circuit          string   `json:"circuit"` // circuit breaker: closed, open or half-open
	LastSeen         string   `json:"last_seen"`
	Joined           string   `json:"joined"`
	// Placements are the catalog models placed on the node and their state.
	Placements []string `json:"placements,omitempty"`
}

func (c *Coordinator) handleNodes(w http.ResponseWriter, r *http.Request) {
	views := []nodeView{}
	for _, m := range c.reg.list() {
		m.mu.Lock()
		v := nodeView{
			Name:             m.name,
			Address:          m.addr,
			State:            "ready",
			OS:               m.info.GetOs(),
			Arch:             m.info.GetArch(),
			Version:          m.info.GetVersion(),
			CPUModel:         m.info.GetCpuModel(),
			CPUCores:         m.info.GetCpuCores(),
			MemoryTotalBytes: m.info.GetMemoryTotalBytes(),
			Models:           []string{},
			QueueDepth:       m.load.GetQueueDepth(),
			NodeServedTotal:  m.load.GetServedTotal(),
			LastSeen:         m.lastSeen.UTC().Format(time.RFC3339Nano),
			Joined:           m.joined.UTC().Format(time.RFC3339),
		}
		if m.draining {
			v.State = "draining"
		}
		for id := range m.models {
			v.Models = append(v.Models, id)
		}
		m.mu.Unlock()
		sort.Strings(v.Models)
		v.Placements = c.placementsFor(m.name)
		v.InFlight = m.outstanding.Load()
		v.Served = m.served.Load()
		v.Failed = m.failed.Load()
		v.Circuit = c.rt.breakers.state(m.name, time.Now())
		views = append(views, v)
	}
	// "nodes" are the live ones; "departed" those that left recently (down).
	// "pipelines" are the current plans of sharded models.
	openai.WriteJSON(w, http.StatusOK, map[string]any{"nodes": views, "departed": c.reg.recentlyDeparted(), "pipelines": c.pipelineViews()})
}

func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "req-" + hex.EncodeToString(b[:])
}

// prepare validates what only the cluster knows (the model, its context)
// and builds the node request.
func (c *Coordinator) prepare(w http.ResponseWriter, req *openai.Request) (*pb.GenerateRequest, string, *openai.Error) {
	mi := c.modelInfo(req.Model)
	if mi == nil {
		if len(c.reg.list()) == 0 {
			return nil, "", openai.ErrUnavailable("no node is registered with the coordinator")
		}
		if states := c.reg.unservable(req.Model); len(states) > 0 {
			return nil, "", openai.ErrUnavailable("model " + req.Model + " cannot be served right now (" + strings.Join(states, ", ") + "); retry shortly")
		}
		return nil, "", openai.ErrModelNotFound(req.Model)
	}
	ctxLen := int(mi.GetContextLength())
	maxTokens := req.MaxTokens
	if ctxLen > 0 {
		if maxTokens > ctxLen {
			return nil, "", openai.ErrInvalidRequest("max_tokens", fmt.Sprintf("max_tokens is %d but model %s has a context of %d tokens", maxTokens, req.Model, ctxLen))
		}
		if maxTokens <= 0 {
			maxTokens = ctxLen // "until the context ends"
		}
	}
	id := newRequestID()
	w.Header().Set("X-Request-Id", id)
	g := &pb.GenerateRequest{
		RequestId: id,
		Model:     req.Model,
		MaxTokens: int32(maxTokens),
		Stop:      req.Stop,
		Sampling: &pb.SamplingParams{
			Temperature:       req.Temperature,
			TopP:              req.TopP,
			TopK:              int32(req.TopK),
			Seed:              req.Seed,
			MinP:              req.MinP,
			RepetitionPenalty: req.RepetitionPenalty,
			FrequencyPenalty:  req.FrequencyPenalty,
			PresencePenalty:   req.PresencePenalty,
		},
	}
	switch {
	case req.Chat:
		msgs := make([]*pb.ChatMessage, len(req.Messages))
		for i, m := range req.Messages {
			msgs[i] = &pb.ChatMessage{Role: m.Role, Content: m.Content}
		}
		g.Prompt = &pb.GenerateRequest_Chat{Chat: &pb.ChatPrompt{Messages: msgs}}
	case req.PromptIDs != nil:
		g.Prompt = &pb.GenerateRequest_Tokens{Tokens: &pb.TokenIDs{Ids: req.PromptIDs}}
	default:
		g.Prompt = &pb.GenerateRequest_Text{Text: req.Prompt}
	}
	return g, id, nil
}

func (c *Coordinator) handleCompletions(w http.ResponseWriter, r *http.Request) {
	req, aerr := openai.DecodeCompletion(r, c.cfg.Limits)
	if aerr != nil {
		openai.WriteError(w, aerr)
		return
	}
	c.serve(w, r, req)
}

func (c *Coordinator) handleChat(w http.ResponseWriter, r *http.Request) {
	req, aerr := openai.DecodeChat(r, c.cfg.Limits)
	if aerr != nil {
		openai.WriteError(w, aerr)
		return
	}
	c.serve(w, r, req)
}

// observation follows one request for the metrics.
type observation struct {
	m           *metrics
	recent      *recentStats
	model, node string
	start, last time.Time
	first       time.Time // first token; zero before
	tokens      bool      // a token has been seen
}

func (c *Coordinator) observe(model string) *observation {
	return &observation{m: c.metrics, recent: &c.recent, model: model, start: time.Now()}
}

// token records a delta's arrival: the first gives the TTFT, later ones the
// inter-token latency.
func (o *observation) token() {
	now := time.Now()
	if !o.tokens {
		o.tokens = true
		o.first = now
		o.m.ttft.WithLabelValues(o.model).Observe(now.Sub(o.start).Seconds())
	} else {
		o.m.itl.WithLabelValues(o.model).Observe(now.Sub(o.last).Seconds())
	}
	o.last = now
}

// reset forgets tokens of a failed attempt whose output was discarded.
func (o *observation) reset() { o.tokens, o.first = false, time.Time{} }

// done records the outcome of the request.
func (o *observation) done(final *pb.Final, aerr *openai.Error) {
	outcome := outcomeSuccess
	switch {
	case aerr == nil:
		o.m.promptToks.WithLabelValues(o.model).Add(float64(final.GetUsage().GetPromptTokens()))
		o.m.outToks.WithLabelValues(o.model).Add(float64(final.GetUsage().GetCompletionTokens()))
	case aerr.Status == openai.StatusClientClosed:
		outcome = outcomeCanceled
	case aerr.Status < 500 && aerr.Status != http.StatusTooManyRequests:
		outcome = outcomeClientError
	default:
		outcome = outcomeServerError
	}
	o.m.requests.WithLabelValues(o.model, o.node, outcome).Inc()
	o.m.duration.WithLabelValues(o.model).Observe(time.Since(o.start).Seconds())
	if outcome == outcomeCanceled {
		return
	}
	rs := requestSample{end: time.Now(), duration: time.Since(o.start), failed: aerr != nil}
	if !o.first.IsZero() {
		rs.ttft = o.first.Sub(o.start)
	}
	if aerr == nil {
		rs.tokens = int(final.GetUsage().GetCompletionTokens())
	}
	o.recent.add(rs)
}

// serve runs a validated completion or chat request, streamed or not.
func (c *Coordinator) serve(w http.ResponseWriter, r *http.Request, req *openai.Request) {
	g, id, aerr := c.prepare(w, req)
	if aerr != nil {
		openai.WriteError(w, aerr)
		return
	}
	created := time.Now().Unix()
	obs := c.observe(req.Model)
	if req.Stream {
		c.serveStream(w, r, req, g, id, created, obs)
		return
	}
	var text strings.Builder
	final, aerr := c.generate(r.Context(), g, sink{
		start: func(n string) error { obs.node = n; return nil },
		delta: func(d *pb.TokenDelta) error {
			obs.token()
			text.WriteString(d.GetText())
			return nil
		},
		restartable: true,
		reset:       func() { text.Reset(); obs.reset() },
		session:     sessionKey(r, req),
	})
	obs.done(final, aerr)
	if aerr != nil {
		openai.WriteError(w, aerr)
		return
	}
	node := obs.node
	w.Header().Set("X-Npumesh-Node", node)
	usage := toUsage(final.GetUsage())
	if req.Chat {
		openai.WriteJSON(w, http.StatusOK, openai.NewChatResponse("chatcmpl-"+id[4:], req.Model, created, text.String(), final.GetFinishReason(), usage))
		return
	}
	openai.WriteJSON(w, http.StatusOK, openai.NewCompletionResponse("cmpl-"+id[4:], req.Model, created, text.String(), final.GetFinishReason(), usage))
}

func (c *Coordinator) serveStream(w http.ResponseWriter, r *http.Request, req *openai.Request, g *pb.GenerateRequest, id string, created int64, obs *observation) {
	var sse *openai.SSEWriter
	respID := "cmpl-" + id[4:]
	if req.Chat {
		respID = "chatcmpl-" + id[4:]
	}
	chunk := func(text string, finish string) any {
		if req.Chat {
			return openai.NewChatChunk(respID, req.Model, created, text, finish)
		}
		return openai.NewCompletionChunk(respID, req.Model, created, text, finish)
	}
	final, aerr := c.generate(r.Context(), g, sink{
		start: func(node string) error {
			obs.node = node
			w.Header().Set("X-Npumesh-Node", node)
			var err error
			sse, err = openai.NewSSEWriter(w)
			if err != nil {
				return err
			}
			if req.Chat { // the role comes first, as OpenAI sends it
				return sse.Send(openai.NewChatRoleChunk(respID, req.Model, created))
			}
			return nil
		},
		delta: func(d *pb.TokenDelta) error {
			obs.token()
			if d.GetText() == "" {
				return nil
			}
			return sse.Send(chunk(d.GetText(), ""))
		},
		session: sessionKey(r, req),
	})
	obs.done(final, aerr)
	if aerr != nil {
		if sse == nil {
			openai.WriteError(w, aerr)
			return
		}
		_ = sse.SendError(aerr)
		return
	}
	_ = sse.Send(chunk("", final.GetFinishReason()))
	if req.IncludeUsage {
		if req.Chat {
			_ = sse.Send(openai.NewChatUsageChunk(respID, req.Model, created, toUsage(final.GetUsage())))
		} else {
			_ = sse.Send(openai.NewCompletionUsageChunk(respID, req.Model, created, toUsage(final.GetUsage())))
		}
	}
	_ = sse.Done()
}

func toUsage(u *pb.Usage) openai.Usage {
	return openai.NewUsage(int(u.GetPromptTokens()), int(u.GetCompletionTokens()), int(u.GetCachedPromptTokens()))
}
