package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"time"
)

// healthTimeout bounds one health check.
const healthTimeout = 5 * time.Second

// healthLoop checks the server until ctx ends: every HealthInterval while it
// is up, four times as often while it is down, and at once when asked. A
// refused connection marks it down at once; other failures (a timeout, a 5xx
// from a busy server) only when two come in a row.
func (b *Backend) healthLoop(ctx context.Context) {
	fails := 0
	for {
		err := b.checkHealth(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			fails = 0
			b.setAvailable(true, "")
		} else {
			fails++
			if fails >= 2 || errors.Is(err, syscall.ECONNREFUSED) || !b.Available() {
				b.setAvailable(false, err.Error())
			}
		}
		wait := b.cfg.HealthInterval
		if !b.Available() || fails > 0 {
			wait /= 4
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-b.kick:
			t.Stop()
		case <-t.C:
		}
	}
}

// checkHealth is one GET of the health URL. It passes on a 2xx answer,
// except that an OpenAI model list ({"data": [{"id": ...}]}) must list the
// model: a server that is up but has not loaded it yet (or never will, under
// that name) cannot serve it.
func (b *Backend) checkHealth(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.healthURL, nil)
	if err != nil {
		return err
	}
	if b.cfg.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+b.cfg.APIKey)
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return fmt.Errorf("health check %s: %w", b.healthURL, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("health check %s: %w", b.healthURL, err)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("health check %s: HTTP %d", b.healthURL, resp.StatusCode)
	}
	if ids, ok := modelList(raw); ok && !listed(ids, b.cfg.Model) {
		return fmt.Errorf("health check %s: the server does not list model %q (it lists %s); check the model name in the node config, or wait for the server to load it", b.healthURL, b.cfg.Model, clip(strings.Join(ids, ", ")))
	}
	return nil
}

// modelList returns the ids of an OpenAI model list; ok is false for any
// other answer (a health endpoint's "OK").
func modelList(raw []byte) (ids []string, ok bool) {
	var list struct {
		Data *[]struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if json.Unmarshal(raw, &list) != nil || list.Data == nil {
		return nil, false
	}
	for _, m := range *list.Data {
		ids = append(ids, m.ID)
	}
	return ids, true
}

// listed reports whether model is among ids; Ollama lists "name:latest" for
// a model requested as "name".
func listed(ids []string, model string) bool {
	for _, id := range ids {
		if id == model || id == model+":latest" {
			return true
		}
	}
	return false
}
