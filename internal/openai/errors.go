package openai

import (
	"fmt"
	"net/http"
	"time"
)

// Error types, as OpenAI writes them in the envelope's "type".
const (
	TypeInvalidRequest = "invalid_request_error"
	TypeRateLimit      = "rate_limit_error"
	TypeServer         = "server_error"
)

// Error is a failed request as the client sees it: an HTTP status and the
// fields of the OpenAI error envelope. Every error this package returns to a
// caller that writes HTTP responses is an *Error.
type Error struct {
	Status  int    // HTTP status
	Message string // says what went wrong and what to do next
	Type    string // TypeInvalidRequest, TypeRateLimit, TypeServer
	Param   string // the request field at fault, or ""
	Code    string // a machine-readable code, or ""
	// RetryAfter, when positive, is sent as the Retry-After header
	// (in whole seconds, rounded up).
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if e.Param != "" {
		return fmt.Sprintf("%d %s (param %s): %s", e.Status, e.Type, e.Param, e.Message)
	}
	return fmt.Sprintf("%d %s: %s", e.Status, e.Type, e.Message)
}

// Envelope returns the JSON body for e.
func (e *Error) Envelope() ErrorResponse {
	body := ErrorBody{Message: e.Message, Type: e.Type}
	if e.Param != "" {
		p := e.Param
		body.Param = &p
	}
	if e.Code != "" {
		c := e.Code
		body.Code = &c
	}
	return ErrorResponse{Error: body}
}

// ErrInvalidRequest is a 400 with msg about the request field param (which
// may be "").
func ErrInvalidRequest(param, msg string) *Error {
	return &Error{Status: http.StatusBadRequest, Type: TypeInvalidRequest, Param: param, Message: msg}
}

// ErrNotFound is a 404 for something other than a model, such as an unknown
// endpoint; msg says what was not found.
func ErrNotFound(msg string) *Error {
	return &Error{Status: http.StatusNotFound, Type: TypeInvalidRequest, Message: msg}
}

// ErrModelNotFound is the 404 for a model no node serves.
func ErrModelNotFound(model string) *Error {
	return &Error{
		Status:  http.StatusNotFound,
		Type:    TypeInvalidRequest,
		Param:   "model",
		Code:    "model_not_found",
		Message: fmt.Sprintf("The model %q does not exist or no node serves it; GET /v1/models lists the models you can use.", model),
	}
}

// ErrContextLength is the 400 for a prompt that leaves no room to generate
// in a context of contextLen tokens.
func ErrContextLength(param string, promptTokens, contextLen int) *Error {
	return &Error{
		Status:  http.StatusBadRequest,
		Type:    TypeInvalidRequest,
		Param:   param,
		Code:    "context_length_exceeded",
		Message: fmt.Sprintf("The model's context is %d tokens and the prompt has %d; shorten the prompt or lower max_tokens.", contextLen, promptTokens),
	}
}

// ErrUnauthorized is the 401 for a missing or wrong API key.
func ErrUnauthorized() *Error {
	return &Error{
		Status:  http.StatusUnauthorized,
		Type:    TypeInvalidRequest,
		Code:    "invalid_api_key",
		Message: "Missing or incorrect API key. Send it as 'Authorization: Bearer <key>'; ask the cluster's operator for a key.",
	}
}

// ErrOverloaded is the 429 for a cluster with no capacity left; clients
// should retry after retryAfter.
func ErrOverloaded(retryAfter time.Duration) *Error {
	return &Error{
		Status:     http.StatusTooManyRequests,
		Type:       TypeRateLimit,
		Code:       "overloaded",
		Message:    fmt.Sprintf("Every node that serves this model is busy; retry after %s.", retryAfterSeconds(retryAfter)+"s"),
		RetryAfter: retryAfter,
	}
}

// ErrUnavailable is the 503 for a service that cannot answer now; msg says why.
func ErrUnavailable(msg string) *Error {
	return &Error{Status: http.StatusServiceUnavailable, Type: TypeServer, Code: "unavailable", Message: msg}
}

// ErrTimeout is the 504 for a generation that ran out of time; msg says which.
func ErrTimeout(msg string) *Error {
	return &Error{Status: http.StatusGatewayTimeout, Type: TypeServer, Code: "timeout", Message: msg}
}

// StatusClientClosed is nginx's non-standard status for a request whose
// client went away before the answer; it shows in logs and metrics only.
const StatusClientClosed = 499

// ErrClientClosed is the error for a request whose client hung up. Nobody
// reads it; it exists so that logs and metrics tell it from failures.
func ErrClientClosed() *Error {
	return &Error{Status: StatusClientClosed, Type: TypeInvalidRequest, Code: "client_closed", Message: "The client closed the request."}
}

// ErrInternal is the 500 for a bug or an unexpected failure. msg is shown to
// the client: do not put internal details in it, log them instead.
func ErrInternal(msg string) *Error {
	return &Error{Status: http.StatusInternalServerError, Type: TypeServer, Message: msg}
}

// errTooLarge is the 413 for a body over limit bytes.
func errTooLarge(limit int64) *Error {
	return &Error{
		Status:  http.StatusRequestEntityTooLarge,
		Type:    TypeInvalidRequest,
		Code:    "request_too_large",
		Message: fmt.Sprintf("The request body is larger than %d bytes; send a shorter prompt, or ask the operator to raise the body limit.", limit),
	}
}
