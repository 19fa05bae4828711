package coordinator

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/npumesh/npumesh/internal/openai"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// sink receives one request's output. start is called once, before the first
// delta, with the node that serves it; nothing has been written to the client
// before start, so a failure until then can still be retried elsewhere.
type sink struct {
	start func(node string) error
	delta func(d *pb.TokenDelta) error
	// restartable says output may be discarded and the request re-run on
	// another node after a failure mid-way (non-streamed responses).
	restartable bool
	reset       func()
}

// generate runs req on the best node, retrying on another node when a node
// fails before anything reached the client. It returns the final message.
func (c *Coordinator) generate(ctx context.Context, req *pb.GenerateRequest, out sink) (*pb.Final, *openai.Error) {
	tried := map[string]bool{}
	var lastErr *openai.Error
	for attempt := 0; attempt < c.cfg.MaxAttempts; attempt++ {
		m, perr := c.pick(req.GetModel(), tried)
		if perr != nil {
			if lastErr != nil {
				return nil, lastErr
			}
			return nil, perr
		}
		tried[m.name] = true
		final, started, err := c.runOn(ctx, m, req, out)
		if err == nil {
			m.served.Add(1)
			return final, nil
		}
		if ctx.Err() != nil {
			return nil, openai.ErrClientClosed()
		}
		m.failed.Add(1)
		apiErr := toAPIError(err)
		c.log.Warn("attempt failed", "request_id", req.GetRequestId(), "node", m.name, "attempt", attempt+1, "started", started, "err", err)
		if (started && !out.restartable) || !httpStatusRetryable(apiErr.Status) {
			return nil, apiErr
		}
		if out.reset != nil {
			out.reset()
		}
		c.metrics.retries.WithLabelValues(req.GetModel()).Inc()
		lastErr = apiErr
	}
	return nil, lastErr
}

// runOn runs one attempt on node m. started reports whether start was called.
func (c *Coordinator) runOn(ctx context.Context, m *member, req *pb.GenerateRequest, out sink) (final *pb.Final, started bool, err error) {
	m.acquire()
	defer m.release()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // tells the node to stop if we leave early
	stream, err := m.client.Generate(ctx, req)
	if err != nil {
		return nil, false, err
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = status.Error(codes.Unavailable, "node closed the stream without a final message")
			}
			return nil, started, err
		}
		if !started {
			started = true
			if err := out.start(m.name); err != nil {
				return nil, true, err
			}
		}
		switch x := msg.GetMsg().(type) {
		case *pb.GenerateResponse_Delta:
			if err := out.delta(x.Delta); err != nil {
				return nil, true, err
			}
		case *pb.GenerateResponse_Final:
			return x.Final, true, nil
		}
	}
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
