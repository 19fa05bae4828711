package openai

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// WriteJSON writes v as the JSON body of a response with status. v is
// encoded before anything is written, so that an encoding failure becomes a
// 500 instead of a truncated body; the returned error is for the log.
func WriteJSON(w http.ResponseWriter, status int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		err = fmt.Errorf("encode %T response: %w", v, err)
		b, _ = json.Marshal(ErrInternal("The server could not encode its response.").Envelope())
		status = http.StatusInternalServerError
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if _, werr := w.Write(append(b, '\n')); werr != nil && err == nil {
		err = fmt.Errorf("write response: %w", werr)
	}
	return err
}

// WriteError writes e as an OpenAI error envelope, with a Retry-After header
// when e.RetryAfter is set and a WWW-Authenticate header on 401.
func WriteError(w http.ResponseWriter, e *Error) error {
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", retryAfterSeconds(e.RetryAfter))
	}
	if e.Status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="npumesh"`)
	}
	status := e.Status
	if status < 400 || status > 599 {
		status = http.StatusInternalServerError
	}
	return WriteJSON(w, status, e.Envelope())
}

// retryAfterSeconds renders d in whole seconds, rounded up, at least 1.
func retryAfterSeconds(d time.Duration) string {
	s := int64((d + time.Second - 1) / time.Second)
	return strconv.FormatInt(max(s, 1), 10)
}

// SSEWriter writes a server-sent event stream the way OpenAI streams
// completions: "data: <json>\n\n" per event, "data: [DONE]\n\n" at the end.
// The status and headers go out with the first event, so that until then the
// caller may still answer with WriteError (see Started). An SSEWriter is not
// safe for concurrent use.
type SSEWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	started bool
}

// ErrNoFlush is returned by NewSSEWriter for a ResponseWriter that cannot flush.
var ErrNoFlush = errors.New("openai: the ResponseWriter cannot flush, so it cannot stream events")

// NewSSEWriter prepares w for streaming. It fails when w (or any writer it
// wraps, through an Unwrap method) is not an http.Flusher.
func NewSSEWriter(w http.ResponseWriter) (*SSEWriter, error) {
	if !canFlush(w) {
		return nil, ErrNoFlush
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("Connection", "keep-alive")
	h.Set("X-Accel-Buffering", "no") // nginx would otherwise hold events back
	return &SSEWriter{w: w, rc: http.NewResponseController(w)}, nil
}

func canFlush(w http.ResponseWriter) bool {
	for {
		if _, ok := w.(http.Flusher); ok {
			return true
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return false
		}
		w = u.Unwrap()
	}
}

// Started reports whether the status line has been sent: from then on errors
// must go through SendError, not WriteError.
func (s *SSEWriter) Started() bool { return s.started }

// Send writes v as one JSON event and flushes it. An error usually means the
// client has gone; the caller should stop generating.
func (s *SSEWriter) Send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %T event: %w", v, err)
	}
	return s.write("data: " + string(b) + "\n\n")
}

// SendError writes e as an error event, for failures after the stream has
// started. The caller then ends the response without Done.
func (s *SSEWriter) SendError(e *Error) error {
	return s.Send(e.Envelope())
}

// Ping writes an SSE comment, which clients ignore, to keep proxies from
// closing a stream that is silent during a long prefill.
func (s *SSEWriter) Ping() error { return s.write(": ping\n\n") }

// Done writes the final "data: [DONE]" event.
func (s *SSEWriter) Done() error { return s.write("data: [DONE]\n\n") }

func (s *SSEWriter) write(ev string) error {
	if !s.started {
		s.started = true
		s.w.WriteHeader(http.StatusOK)
	}
	if _, err := s.w.Write([]byte(ev)); err != nil {
		return fmt.Errorf("write event: %w", err)
	}
	if err := s.rc.Flush(); err != nil {
		return fmt.Errorf("flush event: %w", err)
	}
	return nil
}
