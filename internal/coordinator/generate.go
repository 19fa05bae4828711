package coordinator

import (
	"context"
	"errors"
	"io"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/npumesh/npumesh/internal/openai"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// sink receives one request's output. start is called before the first
// delta, with the node that serves it; nothing has been written to the
// client before start, so a failure until then can still be retried
// elsewhere. For a restartable sink start is called again for every attempt
// that produces output (it names the node that finished the request).
type sink struct {
	start func(node string) error
	delta func(d *pb.TokenDelta) error
	// restartable says output may be discarded and the request re-run on
	// another node after a failure mid-way (non-streamed responses).
	restartable bool
	reset       func()
	// session is the request's affinity key ("" for none).
	session string
}

// maxAttemptsTotal bounds the attempts of one request, migrations included:
// each migration that made progress restores the retry budget, but not
// without end.
const maxAttemptsTotal = 16

// attempt is what a request's attempts share.
type attempt struct {
	started bool    // start has been called: headers went out (streams)
	done    []int32 // token ids delivered so far (for a mid-stream resume)
}

// generate runs req on the best node. A node that fails before the first
// token costs a retry elsewhere; one that fails after tokens went out is
// replaced mid-stream: the next node continues from the prompt and the
// tokens delivered so far (GenerateRequest.resume_ids), so the client sees
// one stream with nothing missing or repeated. It returns the final message.
func (c *Coordinator) generate(ctx context.Context, req *pb.GenerateRequest, out sink) (*pb.Final, *openai.Error) {
	if limit := c.cfg.MaxOutstanding; limit > 0 {
		if int(c.rt.inflight.Add(1)) > limit {
			c.rt.inflight.Add(-1)
			return nil, openai.ErrOverloaded(time.Second)
		}
		defer c.rt.inflight.Add(-1)
	}
	parent := ctx
	if c.cfg.RequestTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.cfg.RequestTimeout)
		defer cancel()
	}
	model := req.GetModel()
	rr := c.prepareRoute(ctx, req, out.session)
	tried := map[string]bool{}
	var lastErr *openai.Error
	// excluded are the nodes whose pipeline stage failed during this
	// request: re-plans leave them out.
	excluded := map[string]bool{}
	if c.hedgeable(req, out) && c.shardSpec(model).Stages < 2 {
		if final, ok := c.hedged(ctx, req, &rr, out, tried); ok {
			return final, nil
		}
		if ctx.Err() != nil {
			if parent.Err() == nil {
				return nil, openai.ErrTimeout("the request did not finish within the coordinator's request timeout")
			}
			return nil, openai.ErrClientClosed()
		}
		// Both hedged attempts failed (or no node was free): the loop
		// below retries on the nodes not tried yet.
	}
	var st attempt
	failures := 0
	for n := 0; failures < c.cfg.MaxAttempts && n < maxAttemptsTotal; n++ {
		pp, perr := c.planPipeline(ctx, model, excluded)
		var m *member
		if perr == nil && pp != nil {
			m = pp.first
		} else if perr == nil {
			m, perr = c.pick(&rr, tried)
		}
		if perr != nil {
			if lastErr != nil {
				return nil, lastErr
			}
			return nil, perr
		}
		tried[m.name] = true
		builtin := pp != nil || backendOf(m, model) == "builtin"
		areq, final := c.attemptRequest(req, &rr, builtin, st.done)
		if final != nil {
			return final, nil // the tokens delivered already reached max_tokens
		}
		if pp != nil {
			areq.Pipeline = pp.pb
			c.metrics.pipelines.WithLabelValues(model, strconv.Itoa(len(pp.pb.GetStages()))).Inc()
		}
		before := len(st.done)
		final, err := c.runOn(ctx, m, areq, out, &st)
		if err == nil {
			m.served.Add(1)
			c.rt.breakers.success(m.name)
			return final, nil
		}
		if ctx.Err() != nil {
			c.rt.breakers.release(m.name)
			if parent.Err() == nil {
				return nil, openai.ErrTimeout("the request did not finish within the coordinator's request timeout")
			}
			return nil, openai.ErrClientClosed()
		}
		var se sinkError
		if errors.As(err, &se) {
			// Writing to the client failed: no node can help.
			c.rt.breakers.release(m.name)
			c.log.Info("client write failed", "request_id", req.GetRequestId(), "err", se.err)
			return nil, openai.ErrClientClosed()
		}
		m.failed.Add(1)
		if pp != nil {
			// Re-plan without the node whose stage failed (the first
			// stage's own node when it names none).
			if node, ok := failedStageNode(err); ok {
				excluded[node] = true
				c.stageFailed(node)
			} else if nodeFault(err) {
				excluded[m.name] = true
			}
		}
		if !nodeFault(err) {
			c.rt.breakers.release(m.name)
		} else if c.rt.breakers.failure(m.name, time.Now()) {
			c.log.Warn("circuit open: node gets no new work for a while", "node", m.name, "cooldown", c.cfg.BreakerCooldown)
		}
		apiErr := toAPIError(err)
		c.log.Warn("attempt failed", "request_id", req.GetRequestId(), "node", m.name, "attempt", n+1, "started", st.started, "delivered_tokens", len(st.done), "err", err)
		if !httpStatusRetryable(apiErr.Status) {
			return nil, apiErr
		}
		if len(st.done) > before {
			// Progress: the budget is for nodes that fail without any.
			failures = 0
			clear(tried)
			tried[m.name] = true
		} else {
			failures++
		}
		switch {
		case len(st.done) > 0 && builtin:
			c.metrics.migrations.WithLabelValues(model).Inc()
		case !st.started || builtin:
			// Nothing but headers reached the client (built-in engines
			// send no text without token ids).
			c.metrics.retries.WithLabelValues(model).Inc()
		case out.restartable:
			if out.reset != nil {
				out.reset()
			}
			st.done = nil
			c.metrics.retries.WithLabelValues(model).Inc()
		default:
			// The client has output that another node cannot continue
			// (a backend without token ids).
			return nil, apiErr
		}
		lastErr = apiErr
	}
	return nil, lastErr
}

// attemptRequest builds the node request for one attempt: the prompt as
// token ids for built-in engines when the coordinator tokenized it, and the
// tokens delivered so far to resume after. It returns a Final instead when
// nothing is left to generate.
func (c *Coordinator) attemptRequest(req *pb.GenerateRequest, rr *routeReq, builtin bool, done []int32) (*pb.GenerateRequest, *pb.Final) {
	g := &pb.GenerateRequest{
		RequestId: req.GetRequestId(),
		Model:     req.GetModel(),
		Sampling:  req.GetSampling(),
		MaxTokens: req.GetMaxTokens(),
		Stop:      req.GetStop(),
	}
	switch p := req.GetPrompt().(type) {
	case *pb.GenerateRequest_Text:
		if builtin && rr.ids != nil {
			g.Prompt = &pb.GenerateRequest_Tokens{Tokens: &pb.TokenIDs{Ids: rr.ids}}
		} else {
			g.Prompt = p
		}
	default:
		g.Prompt = req.Prompt
	}
	if len(done) > 0 {
		g.ResumeIds = append([]int32(nil), done...)
		if g.MaxTokens > 0 {
			g.MaxTokens -= int32(len(done))
			if g.MaxTokens <= 0 {
				return nil, &pb.Final{FinishReason: "length", Usage: &pb.Usage{PromptTokens: int32(len(rr.ids)), CompletionTokens: int32(len(done))}}
			}
		}
	}
	return g, nil
}

// runOn runs one attempt on node m.
func (c *Coordinator) runOn(ctx context.Context, m *member, req *pb.GenerateRequest, out sink, st *attempt) (*pb.Final, error) {
	m.acquire()
	defer m.release()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // tells the node to stop if we leave early
	stream, err := m.client.Generate(ctx, req)
	if err != nil {
		return nil, err
	}
	first := true
	for {
		msg, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = status.Error(codes.Unavailable, "node closed the stream without a final message")
			}
			return nil, withFailedStage(err, stream.Trailer())
		}
		if first {
			first = false
			if !st.started || out.restartable {
				st.started = true
				if err := out.start(m.name); err != nil {
					return nil, sinkError{err}
				}
			}
		}
		switch x := msg.GetMsg().(type) {
		case *pb.GenerateResponse_Delta:
			if err := out.delta(x.Delta); err != nil {
				return nil, sinkError{err}
			}
			st.done = append(st.done, x.Delta.GetIds()...)
		case *pb.GenerateResponse_Final:
			return x.Final, nil
		}
	}
}

// hedgeable says whether req may be sent to two nodes at once: short,
// non-streamed, with hedging configured.
func (c *Coordinator) hedgeable(req *pb.GenerateRequest, out sink) bool {
	limit := c.cfg.HedgeMaxTokens
	if limit <= 0 {
		limit = 64
	}
	return c.cfg.HedgeAfter > 0 && out.restartable && req.GetMaxTokens() > 0 && int(req.GetMaxTokens()) <= limit
}

// hedgeRun is one of the two attempts of a hedged request.
type hedgeRun struct {
	m      *member
	deltas []*pb.TokenDelta
	final  *pb.Final
	err    error
	cancel context.CancelFunc
}

// hedged runs req on one node and, if it has not finished after
// HedgeAfter, on a second; the first success is replayed into out and the
// other attempt cancelled and waited for. It reports false when neither
// succeeded; the nodes it used are then in tried.
func (c *Coordinator) hedged(ctx context.Context, req *pb.GenerateRequest, rr *routeReq, out sink, tried map[string]bool) (*pb.Final, bool) {
	done := make(chan *hedgeRun, 2)
	launch := func() *hedgeRun {
		m, perr := c.pick(rr, tried)
		if perr != nil {
			return nil
		}
		tried[m.name] = true
		areq, _ := c.attemptRequest(req, rr, backendOf(m, req.GetModel()) == "builtin", nil)
		rctx, cancel := context.WithCancel(ctx)
		h := &hedgeRun{m: m, cancel: cancel}
		collect := sink{start: func(string) error { return nil }, delta: func(d *pb.TokenDelta) error {
			h.deltas = append(h.deltas, d)
			return nil
		}}
		go func() {
			h.final, h.err = c.runOn(rctx, m, areq, collect, &attempt{})
			done <- h
		}()
		return h
	}
	first := launch()
	if first == nil {
		return nil, false
	}
	launched, finished := 1, 0
	timer := time.NewTimer(c.cfg.HedgeAfter)
	defer timer.Stop()
	var winner *hedgeRun
	var runs []*hedgeRun
	runs = append(runs, first)
	for finished < launched && winner == nil {
		select {
		case <-timer.C:
			if second := launch(); second != nil {
				c.log.Debug("hedging", "request_id", req.GetRequestId(), "first", first.m.name, "second", second.m.name)
				runs = append(runs, second)
				launched++
			}
		case h := <-done:
			finished++
			if h.err == nil {
				winner = h
				continue
			}
			h.m.failed.Add(1)
			if nodeFault(h.err) && ctx.Err() == nil {
				c.rt.breakers.failure(h.m.name, time.Now())
			} else {
				c.rt.breakers.release(h.m.name)
			}
		}
	}
	for _, h := range runs {
		h.cancel()
	}
	for ; finished < launched; finished++ {
		<-done // the cancelled loser: no goroutine outlives the request
	}
	if winner == nil {
		return nil, false
	}
	winner.m.served.Add(1)
	c.rt.breakers.success(winner.m.name)
	if err := out.start(winner.m.name); err != nil {
		return nil, false
	}
	for _, d := range winner.deltas {
		if err := out.delta(d); err != nil {
			return nil, false
		}
	}
	return winner.final, true
}

// sinkError is a failure to write to the client, as opposed to the node.
type sinkError struct{ err error }

func (e sinkError) Error() string { return "write to client: " + e.err.Error() }
func (e sinkError) Unwrap() error { return e.err }

// nodeFault says whether an attempt's error is the node's fault (it died,
// broke the stream, failed inside), which counts toward its circuit
// breaker; refusals (overload, a bad request) do not.
func nodeFault(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.Internal, codes.Unknown, codes.DataLoss, codes.Aborted, codes.Canceled:
		return true
	}
	return false
}

// toAPIError maps a node's gRPC status to an OpenAI error.
func toAPIError(err error) *openai.Error {
	var ae *openai.Error
	if errors.As(err, &ae) {
		return ae
	}
	st, _ := status.FromError(err)
	switch st.Code() {
	case codes.InvalidArgument, codes.OutOfRange:
		return openai.ErrInvalidRequest("", st.Message())
	case codes.NotFound:
		return openai.ErrUnavailable(st.Message())
	case codes.ResourceExhausted:
		return openai.ErrOverloaded(time.Second)
	case codes.DeadlineExceeded:
		return openai.ErrTimeout(st.Message())
	case codes.Canceled, codes.Unavailable:
		// The client's own cancellation is caught before this (ctx.Err);
		// here the connection to the node went away.
		return openai.ErrUnavailable("node unavailable: " + st.Message())
	}
	return openai.ErrInternal("node error: " + st.Message())
}
