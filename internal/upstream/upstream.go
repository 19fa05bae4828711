// Package upstream serves a model through a local OpenAI-compatible server
// (OpenVINO Model Server, Lemonade Server, llama.cpp's llama-server, Ollama,
// vLLM, or another npumesh cluster) as a node Backend. It streams each request
// to the server's completions or chat completions API and relays the text,
// health-checks the server so the node can report the model unavailable while
// it is down, and can run the server as a supervised child process.
//
// It neither tokenizes nor routes: the server owns the model, its tokenizer and
// its chat template; the node and the coordinator own everything else.
package upstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/npumesh/npumesh/internal/node"
)

// Defaults for the zero values of Config.
const (
	DefaultHealthInterval = 2 * time.Second
	DefaultStopTimeout    = 10 * time.Second
	DefaultRestartBackoff = time.Second
	// MaxRestartBackoff caps the doubling delay between restarts.
	MaxRestartBackoff = 30 * time.Second
)

// Config describes one model served by an upstream server.
type Config struct {
	// ID is the model id the cluster serves; required.
	ID string
	// URL is the base of the server's OpenAI-compatible API, up to and
	// including its version prefix: http://127.0.0.1:8000/v3 (OVMS),
	// http://127.0.0.1:8000/api/v1 (Lemonade), http://127.0.0.1:8080/v1
	// (llama.cpp, vLLM), http://127.0.0.1:11434/v1 (Ollama). Requests go to
	// URL/completions and URL/chat/completions.
	URL string
	// Model is the name the server knows the model by; "" means ID.
	Model string
	// APIKey, when set, is sent as "Authorization: Bearer APIKey".
	APIKey string
	// HealthPath answers 2xx while the server can serve: a path on the
	// URL's host ("/v3/models", "/health") or a full URL. "" means URL/models.
	HealthPath string
	// HealthInterval is how often a healthy server is checked; a server that
	// is down is checked four times as often. 0 means DefaultHealthInterval.
	HealthInterval time.Duration
	// ContextLength, when known, is reported to the coordinator, which then
	// refuses larger max_tokens itself. 0 means unknown.
	ContextLength int
	// TokenPrompts says the server takes a prompt of token ids (vLLM,
	// llama.cpp, npumesh do); without it such prompts are refused as
	// invalid, since their ids would mean nothing to another tokenizer.
	TokenPrompts bool

	// Command, when set, starts the server as a child process (argv, no
	// shell). It is restarted with exponential backoff when it exits, gets
	// SIGTERM (then SIGKILL after StopTimeout) on Close, and its output is
	// logged line by line.
	Command []string
	// Env holds KEY=VALUE pairs added to the node's environment for Command.
	Env []string
	// Dir is Command's working directory; "" is the node's.
	Dir string
	// StopTimeout is how long Close waits after SIGTERM before SIGKILL; 0
	// means DefaultStopTimeout.
	StopTimeout time.Duration
	// RestartBackoff is the first delay before a restart, doubled after
	// each quick exit up to MaxRestartBackoff; 0 means DefaultRestartBackoff.
	RestartBackoff time.Duration

	// Logger receives state changes and Command's output; nil means
	// slog.Default().
	Logger *slog.Logger
	// Client sends the requests; nil means a client of its own. It must
	// not have a Timeout shorter than the longest generation.
	Client *http.Client
}

// Backend serves one model through an upstream server. New starts its
// health checks (and the server, with Config.Command); Close stops them.
type Backend struct {
	cfg    Config
	log    *slog.Logger
	client *http.Client
	own    *http.Transport // the client's transport when New made it, else nil

	completionsURL, chatURL, healthURL string

	mu sync.Mutex // guards the fields below
	// available is the state the node reports.
	available bool
	// running is false while a supervised server is not running; a health
	// check that passes then (an answer in flight when it died) is ignored.
	running  bool
	reason   string        // why it is unavailable, for errors
	changed  chan struct{} // closed and replaced when available changes
	onChange []func()

	kick      chan struct{} // buffered: run a health check now
	cancel    context.CancelFunc
	wg        sync.WaitGroup // the health and supervisor goroutines
	closeOnce sync.Once
}

var (
	_ node.Backend      = (*Backend)(nil)
	_ node.Availability = (*Backend)(nil)
)

// New checks cfg and starts watching the server (and, with cfg.Command,
// running it). The model is unavailable until the first health check passes;
// WaitAvailable waits for that.
func New(cfg Config) (*Backend, error) {
	if cfg.ID == "" {
		return nil, errors.New("upstream: a model id is required")
	}
	if cfg.Model == "" {
		cfg.Model = cfg.ID
	}
	base, err := parseBase(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", cfg.ID, err)
	}
	health, err := healthURL(base, cfg.HealthPath)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", cfg.ID, err)
	}
	if len(cfg.Command) > 0 && cfg.Command[0] == "" {
		return nil, fmt.Errorf("upstream %s: the command's first element (the program) is empty", cfg.ID)
	}
	for _, kv := range cfg.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, fmt.Errorf("upstream %s: environment entry %q is not KEY=VALUE", cfg.ID, kv)
		}
	}
	if cfg.HealthInterval <= 0 {
		cfg.HealthInterval = DefaultHealthInterval
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = DefaultStopTimeout
	}
	if cfg.RestartBackoff <= 0 {
		cfg.RestartBackoff = DefaultRestartBackoff
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	b := &Backend{
		cfg:            cfg,
		log:            cfg.Logger.With("model", cfg.ID, "backend", "upstream"),
		client:         cfg.Client,
		completionsURL: base + "/completions",
		chatURL:        base + "/chat/completions",
		healthURL:      health,
		running:        len(cfg.Command) == 0,
		reason:         "the upstream server has not passed a health check yet",
		changed:        make(chan struct{}),
		kick:           make(chan struct{}, 1),
	}
	if b.client == nil {
		b.own = http.DefaultTransport.(*http.Transport).Clone()
		b.client = &http.Client{Transport: b.own}
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	if len(cfg.Command) > 0 {
		b.wg.Add(1)
		go func() { defer b.wg.Done(); b.supervise(ctx) }()
	}
	b.wg.Add(1)
	go func() { defer b.wg.Done(); b.healthLoop(ctx) }()
	return b, nil
}

// parseBase checks the API base URL and drops a trailing slash.
func parseBase(raw string) (string, error) {
	if raw == "" {
		return "", errors.New("the server's URL is required, e.g. http://127.0.0.1:8000/v3")
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("URL %q is not an http(s)://HOST[:PORT]/PREFIX URL", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("URL %q has a query or fragment; give the API base only", raw)
	}
	return strings.TrimRight(raw, "/"), nil
}

func healthURL(base, path string) (string, error) {
	switch {
	case path == "":
		return base + "/models", nil
	case strings.HasPrefix(path, "http://") || strings.HasPrefix(path, "https://"):
		if _, err := url.Parse(path); err != nil {
			return "", fmt.Errorf("health URL %q: %w", path, err)
		}
		return path, nil
	case strings.HasPrefix(path, "/"):
		u, _ := url.Parse(base)
		return u.Scheme + "://" + u.Host + path, nil
	}
	return "", fmt.Errorf("health path %q must start with / (a path on the server) or be a full URL", path)
}

// Info implements node.Backend.
func (b *Backend) Info() node.ModelInfo {
	return node.ModelInfo{ID: b.cfg.ID, Backend: "upstream", ContextLength: b.cfg.ContextLength}
}

// Available implements node.Availability: whether the server passed its
// latest health checks (and, when supervised, is running).
func (b *Backend) Available() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.available
}

// OnAvailabilityChange implements node.Availability.
func (b *Backend) OnAvailabilityChange(f func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.onChange = append(b.onChange, f)
}

// WaitAvailable waits until the model is available or ctx is done.
func (b *Backend) WaitAvailable(ctx context.Context) error {
	for {
		b.mu.Lock()
		ok, ch := b.available, b.changed
		b.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("upstream %s is not available (%s): %w", b.cfg.ID, b.unavailableReason(), ctx.Err())
		}
	}
}

// setAvailable records a health verdict. why says what is wrong when ok is
// false.
func (b *Backend) setAvailable(ok bool, why string) {
	b.mu.Lock()
	if ok && !b.running {
		b.mu.Unlock()
		return
	}
	if !ok {
		b.reason = why
	}
	if ok == b.available {
		b.mu.Unlock()
		return
	}
	b.available = ok
	close(b.changed)
	b.changed = make(chan struct{})
	hooks := append([]func(){}, b.onChange...)
	b.mu.Unlock()
	if ok {
		b.log.Info("upstream server available", "url", b.cfg.URL)
	} else {
		b.log.Warn("upstream server unavailable", "url", b.cfg.URL, "reason", why)
	}
	for _, f := range hooks {
		f()
	}
}

// checkNow asks the health loop for a check without waiting for it.
func (b *Backend) checkNow() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// unavailableReason says why the model is down, for the error of a request.
func (b *Backend) unavailableReason() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.reason
}

// Close implements node.Backend: it stops the health checks and a supervised
// server (SIGTERM, then SIGKILL after StopTimeout) and waits for both.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		b.cancel()
		b.wg.Wait()
		b.mu.Lock()
		b.available, b.running, b.reason = false, false, "the backend is closed"
		b.mu.Unlock()
		if b.own != nil {
			b.own.CloseIdleConnections()
		}
	})
	return nil
}
