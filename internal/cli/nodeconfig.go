package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/npumesh/npumesh/internal/engine"
	"github.com/npumesh/npumesh/internal/node"
	"github.com/npumesh/npumesh/internal/upstream"
)

// nodeConfig is the file of `npumesh node --config FILE`: JSON, because the
// standard library reads it and its errors carry an offset we turn into a
// line and column. Unknown fields are errors, so a typo does not pass
// silently. Relative paths are relative to the file.
type nodeConfig struct {
	Models []modelConfig `json:"models"`
}

// modelConfig is one served model.
type modelConfig struct {
	ID string `json:"id"`
	// Backend is "builtin" (the default) or "upstream".
	Backend string `json:"backend"`
	// Path is the GGUF file of a builtin model.
	Path string `json:"path"`
	// Threads overrides --threads for a builtin model.
	Threads int `json:"threads"`
	// Quantize overrides --quantize for a builtin model: q8_0, q4_0, ...
	Quantize string          `json:"quantize"`
	Upstream *upstreamConfig `json:"upstream"`
}

// upstreamConfig is the file form of upstream.Config.
type upstreamConfig struct {
	URL        string `json:"url"`
	Model      string `json:"model"`
	APIKeyEnv  string `json:"api_key_env"`
	HealthPath string `json:"health_path"`
	// HealthInterval, StopTimeout and RestartBackoff are Go durations ("2s").
	HealthInterval string            `json:"health_interval"`
	ContextLength  int               `json:"context_length"`
	TokenPrompts   bool              `json:"token_prompts"`
	Command        []string          `json:"command"`
	Env            map[string]string `json:"env"`
	Dir            string            `json:"dir"`
	StopTimeout    string            `json:"stop_timeout"`
	RestartBackoff string            `json:"restart_backoff"`
}

// loadNodeConfig reads and checks a node config file. Its errors are one
// line naming the file and the entry at fault.
func loadNodeConfig(path string) (*nodeConfig, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("node config: %w", err)
	}
	var cfg nodeConfig
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("node config %s: %s", path, jsonErrorAt(raw, err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("node config %s: text after the JSON object", path)
	}
	if len(cfg.Models) == 0 {
		return nil, fmt.Errorf(`node config %s: no models; add {"models": [{"id": ..., "backend": "builtin", "path": ...}]}`, path)
	}
	dir := filepath.Dir(path)
	seen := map[string]bool{}
	for i := range cfg.Models {
		m := &cfg.Models[i]
		where := fmt.Sprintf("node config %s: models[%d]", path, i)
		if m.ID != "" {
			where += fmt.Sprintf(" (%s)", m.ID)
		}
		if err := m.check(dir); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if m.ID != "" {
			if seen[m.ID] {
				return nil, fmt.Errorf("%s: the id %q is used twice", where, m.ID)
			}
			seen[m.ID] = true
		}
	}
	return &cfg, nil
}

func (m *modelConfig) check(dir string) error {
	switch m.Backend {
	case "", "builtin":
		m.Backend = "builtin"
		if m.Upstream != nil {
			return errors.New(`"upstream" is set but the backend is builtin; set "backend": "upstream"`)
		}
		if m.Path == "" {
			return errors.New(`"path" (a GGUF file) is required for a builtin model`)
		}
		if !filepath.IsAbs(m.Path) {
			m.Path = filepath.Join(dir, m.Path)
		}
		if m.Threads < 0 {
			return fmt.Errorf(`"threads" is %d; give a positive number or leave it out`, m.Threads)
		}
	case "upstream":
		if m.ID == "" {
			return errors.New(`"id" is required for an upstream model (the name the cluster serves it by)`)
		}
		if m.Path != "" {
			return errors.New(`"path" is for builtin models; an upstream server loads its own model`)
		}
		if m.Upstream == nil {
			return errors.New(`"upstream": {"url": ...} is required for an upstream model`)
		}
		if m.Upstream.URL == "" {
			return errors.New(`"upstream.url" is required, e.g. "http://127.0.0.1:8000/v3"`)
		}
		for name, d := range map[string]string{"health_interval": m.Upstream.HealthInterval, "stop_timeout": m.Upstream.StopTimeout, "restart_backoff": m.Upstream.RestartBackoff} {
			if d == "" {
				continue
			}
			if v, err := time.ParseDuration(d); err != nil || v <= 0 {
				return fmt.Errorf(`"upstream.%s" is %q; give a positive duration such as "2s"`, name, d)
			}
		}
		if len(m.Upstream.Command) > 0 && m.Upstream.Command[0] == "" {
			return errors.New(`"upstream.command" starts with an empty program name`)
		}
		if m.Upstream.Dir != "" && !filepath.IsAbs(m.Upstream.Dir) {
			m.Upstream.Dir = filepath.Join(dir, m.Upstream.Dir)
		}
		if e := m.Upstream.APIKeyEnv; e != "" && os.Getenv(e) == "" {
			return fmt.Errorf(`"upstream.api_key_env" names %s, which is unset or empty in the node's environment`, e)
		}
	default:
		return fmt.Errorf(`unknown backend %q; use "builtin" or "upstream"`, m.Backend)
	}
	return nil
}

// upstreamConfig turns a checked entry into the backend's configuration.
func (m *modelConfig) upstreamConfig(log *slog.Logger) upstream.Config {
	u := m.Upstream
	dur := func(s string) time.Duration { d, _ := time.ParseDuration(s); return d } // checked
	cfg := upstream.Config{
		ID: m.ID, URL: u.URL, Model: u.Model, HealthPath: u.HealthPath, HealthInterval: dur(u.HealthInterval),
		ContextLength: u.ContextLength, TokenPrompts: u.TokenPrompts, Command: u.Command, Dir: u.Dir,
		StopTimeout: dur(u.StopTimeout), RestartBackoff: dur(u.RestartBackoff), Logger: log,
	}
	if u.APIKeyEnv != "" {
		cfg.APIKey = os.Getenv(u.APIKeyEnv)
	}
	for k, v := range u.Env {
		cfg.Env = append(cfg.Env, k+"="+v)
	}
	return cfg
}

// openBackends loads or connects the configured models. An error closes
// what was opened and names the entry at fault.
func (c *nodeConfig) openBackends(path string, base engine.Options, log *slog.Logger) ([]node.Backend, error) {
	var out []node.Backend
	for i := range c.Models {
		b, err := c.Models[i].openBackend(base, log)
		if err != nil {
			for _, o := range out {
				o.Close()
			}
			return nil, fmt.Errorf("node config %s: models[%d] (%s): %w", path, i, c.Models[i].ID, err)
		}
		out = append(out, b)
	}
	return out, nil
}

// openBackend loads or connects one configured model.
func (m *modelConfig) openBackend(base engine.Options, log *slog.Logger) (node.Backend, error) {
	if m.Backend == "upstream" {
		return upstream.New(m.upstreamConfig(log))
	}
	opts := base
	opts.ID = m.ID
	if m.Threads > 0 {
		opts.Threads = m.Threads
	}
	if m.Quantize != "" {
		opts.Quantize = m.Quantize
	}
	return node.LoadBuiltin(m.Path, opts)
}

// jsonErrorAt says where in raw a decoding error is, as line:column.
func jsonErrorAt(raw []byte, err error) string {
	var off int64 = -1
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		off = se.Offset
	case errors.As(err, &te):
		off = te.Offset
	}
	msg := strings.TrimPrefix(err.Error(), "json: ")
	if te != nil && te.Field != "" {
		msg = fmt.Sprintf("%s is a JSON %s, want %s", te.Field, te.Value, te.Type)
	}
	if off < 0 || off > int64(len(raw)) {
		return msg
	}
	line := 1 + bytes.Count(raw[:off], []byte("\n"))
	col := int(off) - bytes.LastIndexByte(raw[:off], '\n')
	return fmt.Sprintf("line %d, column %d: %s", line, col, msg)
}
