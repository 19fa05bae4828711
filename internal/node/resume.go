package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/kvcache"
	"github.com/npumesh/npumesh/internal/tokenizer"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// This file holds what the router and failover need from a node: the
// model's vocabulary (GetTokenizer), and resuming a completion that another
// node started (GenerateRequest.resume_ids).

// tokenizerSource is implemented by backends whose tokenizer the
// coordinator can load (package tokenizer).
type tokenizerSource interface {
	// TokenizerSpec returns the kind ("spm") and the serialized tokenizer.
	TokenizerSpec() (kind string, data []byte, err error)
}

// resumer is implemented by backends that can continue another node's
// completion from its token ids.
type resumer interface {
	resumable()
}

// TokenizerSpec implements tokenizerSource for SentencePiece models.
func (b *Builtin) TokenizerSpec() (string, []byte, error) {
	spm, ok := b.m.Tokenizer().(*tokenizer.SPM)
	if !ok {
		return "", nil, fmt.Errorf("model %s: its tokenizer cannot be exported", b.m.Info().ID)
	}
	data, err := json.Marshal(spm.Config())
	if err != nil {
		return "", nil, fmt.Errorf("model %s: encode tokenizer: %w", b.m.Info().ID, err)
	}
	return "spm", data, nil
}

func (b *Builtin) resumable() {}

var (
	_ tokenizerSource = (*Builtin)(nil)
	_ resumer         = (*Builtin)(nil)
)

// GetTokenizer implements pb.NodeServiceServer.
func (s *nodeService) GetTokenizer(ctx context.Context, req *pb.GetTokenizerRequest) (*pb.GetTokenizerResponse, error) {
	b, ok := s.n.backend(req.GetModel())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "model %q is not served by node %s", req.GetModel(), s.n.cfg.Name)
	}
	src, ok := b.(tokenizerSource)
	if !ok {
		return nil, status.Errorf(codes.Unimplemented, "model %q on node %s has no exportable tokenizer", req.GetModel(), s.n.cfg.Name)
	}
	kind, data, err := src.TokenizerSpec()
	if err != nil {
		return nil, status.Error(codes.Unimplemented, err.Error())
	}
	return &pb.GetTokenizerResponse{Kind: kind, Data: data, KvBlockSize: int32(b.Info().BlockSize)}, nil
}

// checkResume refuses a resumed request for a backend that cannot resume.
func checkResume(b Backend, req *pb.GenerateRequest) error {
	if len(req.GetResumeIds()) == 0 {
		return nil
	}
	if _, ok := b.(resumer); !ok {
		return status.Errorf(codes.FailedPrecondition, "model %q cannot resume a completion on this node (%s backend)", req.GetModel(), b.Info().Backend)
	}
	return nil
}

// errResumeStop ends the engine's run when a stop string completes.
var errResumeStop = errors.New("stop string")

// generateResumed continues a completion whose first tokens (req.Resume)
// another node generated and the client already received. The engine runs
// on prompt + resumed ids (their keys and values are recomputed, or found
// in the prefix cache); text is produced here by a streamer that first
// replays the resumed ids without emitting, so that the bytes it holds
// back (an unfinished character, the start of a possible stop string) are
// exactly those the first node held, and a stop string that spans the
// switch is still found. The engine gets no stop strings: this streamer
// applies them.
func (b *Builtin) generateResumed(ctx context.Context, req Request, emit func(engine.Delta) error) (engine.Result, error) {
	tok := b.m.Tokenizer()
	prompt := req.PromptIDs
	switch {
	case req.Messages != nil:
		text, err := b.renderChat(req.Messages)
		if err != nil {
			return engine.Result{}, err
		}
		if prompt, err = tok.Encode(text, false); err != nil {
			return engine.Result{}, fmt.Errorf("%w: tokenize chat prompt: %v", engine.ErrInvalidRequest, err)
		}
		// As Generate does: the template writes BOS itself when it wants one.
		if bos := tok.BOS(); bos >= 0 && (len(prompt) == 0 || prompt[0] != bos) && b.template == "" {
			prompt = append([]int32{bos}, prompt...)
		}
	case prompt == nil:
		var err error
		if prompt, err = tok.Encode(req.Prompt, true); err != nil {
			return engine.Result{}, fmt.Errorf("encode prompt: %w", err)
		}
	}
	res := engine.Result{PromptTokens: len(prompt), CompletionTokens: len(req.Resume)}
	st := engine.NewStreamer(tok, prompt, req.Stop, func(engine.Delta) error { return nil })
	for _, id := range req.Resume {
		if stopped, _ := st.Add(id); stopped {
			// The first node had finished; only its Final was lost.
			res.FinishReason = engine.FinishStop
			return res, nil
		}
	}
	st.SetEmit(emit)
	ereq := req.Request
	ereq.PromptIDs = append(slices.Clone(prompt), req.Resume...)
	ereq.Prompt, ereq.Stop = "", nil
	n := 0
	stopped := false
	eres, err := b.m.Generate(ctx, ereq, func(d engine.Delta) error {
		for _, id := range d.IDs {
			n++
			s, err := st.Add(id)
			if err != nil {
				return err
			}
			if s {
				stopped = true
				return errResumeStop
			}
		}
		return nil
	})
	res.CachedTokens = eres.CachedTokens
	res.CompletionTokens += n
	switch {
	case stopped:
		res.FinishReason = engine.FinishStop
		return res, nil
	case err != nil:
		return res, err
	}
	res.FinishReason = eres.FinishReason
	if eres.FinishReason == engine.FinishStop {
		res.CompletionTokens++ // the end-of-generation token, which deltas do not carry
	}
	return res, st.Flush()
}

// CacheStats returns the engine's KV-cache block counts (tests check that a
// cancelled request's sequence frees its blocks).
func (b *Builtin) CacheStats() kvcache.Stats { return b.m.CacheStats() }
