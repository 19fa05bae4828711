// Package openai is the OpenAI-compatible HTTP wire layer of the coordinator:
// the JSON shapes of /v1/models, /v1/completions and /v1/chat/completions,
// decoding and validating requests into one neutral Request, error envelopes,
// server-sent events, and the API-key check.
//
// It uses only the standard library. It must not route, pick nodes, tokenize
// or speak gRPC: the coordinator turns a Request into a node request, and the
// builders here turn what the node returns back into wire shapes.
package openai
