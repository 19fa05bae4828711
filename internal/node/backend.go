package node

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/kvcache"
	"github.com/npumesh/npumesh/internal/tokenizer"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// Backend serves one model on this node. The builtin engine is one; an
// upstream OpenAI-compatible server (OVMS, Lemonade, llama.cpp) is another.
type Backend interface {
	Info() ModelInfo
	Generate(ctx context.Context, req Request, emit func(engine.Delta) error) (engine.Result, error)
	Close() error
}

// Availability is implemented by backends whose model can be down for a
// while, such as an upstream server that is restarting. The node lists such a
// model with state "unavailable" (the coordinator routes only to "loaded"
// models) and refuses its requests with Unavailable, so the coordinator tries
// another node.
type Availability interface {
	Available() bool
	// OnAvailabilityChange registers f, which the backend calls after
	// Available changes, so that the node tells the coordinator at once. f
	// does not block and may be called from any goroutine.
	OnAvailabilityChange(f func())
}

// ErrUnavailable is returned, wrapped, by a backend that cannot serve now
// (its upstream server is down or overloaded); the node answers Unavailable,
// which the coordinator retries on another node.
var ErrUnavailable = errors.New("model unavailable")

// ModelInfo describes a served model.
type ModelInfo struct {
	ID            string
	Arch          string
	Backend       string
	SizeBytes     uint64
	ContextLength int
	Parameters    uint64
	Quantization  string
	// BlockSize is the KV-cache block size in tokens (0: no prefix cache).
	BlockSize int
	// Shape, for planning pipeline stages (0 when unknown, as for
	// upstream servers); see engine.ModelInfo.
	Layers, HiddenSize                                      int
	LayerBytes, EmbedBytes, HeadBytes, KVBytesPerLayerToken int64
	// LayerSeconds is the measured time of one layer for one decoded
	// position (0: not yet measured).
	LayerSeconds float64
}

// setShape copies i's shape and measured layer time into mi; the time
// pipeline stages of the model measured here, when there are any, is the
// more recent figure.
func (n *Node) setShape(mi *pb.ModelInfo, i ModelInfo) {
	defer func() {
		if s := n.stages.layerSeconds(i.ID); s > 0 {
			mi.LayerSeconds = s
		}
	}()
	mi.Layers, mi.HiddenSize = int32(i.Layers), int32(i.HiddenSize)
	mi.LayerBytes, mi.EmbedBytes, mi.HeadBytes = uint64(i.LayerBytes), uint64(i.EmbedBytes), uint64(i.HeadBytes)
	mi.KvBytesPerLayerToken = uint64(i.KVBytesPerLayerToken)
	mi.LayerSeconds = i.LayerSeconds
}

// Request is a generation request as a backend sees it: an engine request,
// or chat messages that the backend renders with the model's template.
type Request struct {
	engine.Request
	Messages []ChatMessage
	// Resume holds tokens another node already generated for this
	// completion (mid-stream migration); only backends implementing
	// resumer accept it.
	Resume []int32
}

// ChatMessage is one turn of a chat prompt.
type ChatMessage struct {
	Role    string
	Content string
}

// Builtin serves a model with the pure-Go engine.
type Builtin struct {
	m        *engine.Model
	template string // the model's chat template, "" for none
	// events receives the engine's KV-cache events; set by the node.
	events atomic.Pointer[func(kvcache.Event)]
	// path and opts are what it was loaded from, for pipeline stages of
	// the same model (stage.go).
	path string
	opts engine.Options
}

var _ Backend = (*Builtin)(nil)

// LoadBuiltin loads a model file with the built-in engine.
func LoadBuiltin(path string, opts engine.Options) (*Builtin, error) {
	b := &Builtin{path: path, opts: opts}
	opts.OnCacheEvent = func(ev kvcache.Event) {
		if f := b.events.Load(); f != nil {
			(*f)(ev)
		}
	}
	m, err := engine.Load(path, opts)
	if err != nil {
		return nil, err // engine.Load names the file
	}
	b.m, b.template = m, m.ChatTemplate()
	return b, nil
}

// Info implements Backend.
func (b *Builtin) Info() ModelInfo {
	i := b.m.Info()
	return ModelInfo{
		ID:            i.ID,
		Arch:          i.Arch,
		Backend:       "builtin",
		SizeBytes:     i.SizeBytes,
		ContextLength: i.ContextLength,
		Parameters:    i.Parameters,
		Quantization:  i.Quantization,
		BlockSize:     i.BlockSize,
		Layers:        i.Layers, HiddenSize: i.Dim,
		LayerBytes: i.LayerBytes, EmbedBytes: i.EmbedBytes, HeadBytes: i.HeadBytes,
		KVBytesPerLayerToken: i.KVBytesPerLayerToken,
		LayerSeconds:         b.m.LayerSeconds(),
	}
}

// SetCacheEvents implements cacheEventSource.
func (b *Builtin) SetCacheEvents(f func(kvcache.Event)) { b.events.Store(&f) }

// Generate implements Backend.
func (b *Builtin) Generate(ctx context.Context, req Request, emit func(engine.Delta) error) (engine.Result, error) {
	if len(req.Resume) > 0 {
		return b.generateResumed(ctx, req, emit)
	}
	if req.Messages != nil {
		prompt, err := b.renderChat(req.Messages)
		if err != nil {
			return engine.Result{}, err
		}
		ids, err := b.m.Tokenizer().Encode(prompt, false)
		if err != nil {
			return engine.Result{}, fmt.Errorf("%w: tokenize chat prompt: %v", engine.ErrInvalidRequest, err)
		}
		// The template writes BOS itself when the model wants one; a model
		// without a template gets BOS from here.
		if bos := b.m.Tokenizer().BOS(); bos >= 0 && (len(ids) == 0 || ids[0] != bos) && b.template == "" {
			ids = append([]int32{bos}, ids...)
		}
		req.PromptIDs = ids
		req.Prompt = ""
	}
	return b.m.Generate(ctx, req.Request, emit)
}

// renderChat renders messages with the model's own template, or, for a model
// with none (like the demo model, a story generator), as a plain transcript
// that ends where the assistant's answer starts.
func (b *Builtin) renderChat(msgs []ChatMessage) (string, error) {
	if b.template != "" {
		bos, eos := b.m.SpecialTokens()
		tm := make([]tokenizer.Message, len(msgs))
		for i, m := range msgs {
			tm[i] = tokenizer.Message{Role: m.Role, Content: m.Content}
		}
		out, err := tokenizer.RenderChat(b.template, tm, tokenizer.ChatOptions{
			AddGenerationPrompt: true,
			BOSToken:            bos,
			EOSToken:            eos,
		})
		if err != nil {
			return "", fmt.Errorf("%w: render chat template: %v", engine.ErrInvalidRequest, err)
		}
		return out, nil
	}
	var sb strings.Builder
	for _, m := range msgs {
		if m.Role == "system" || m.Role == "developer" {
			sb.WriteString(m.Content)
			sb.WriteString("\n\n")
			continue
		}
		sb.WriteString(m.Content)
		sb.WriteString("\n")
	}
	return strings.TrimRight(sb.String(), "\n"), nil
}

// Close implements Backend.
func (b *Builtin) Close() error { return b.m.Close() }
