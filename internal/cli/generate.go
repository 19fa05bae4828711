package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// apiFlags are what every API client subcommand needs.
type apiFlags struct {
	url, model, key string
	maxTokens       int
	temperature     float64
}

func (a *apiFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&a.url, "api", envOr("NPUMESH_API", "http://127.0.0.1:8080"), "base URL of the coordinator API ($NPUMESH_API)")
	f.StringVar(&a.model, "model", "", "model id (default: the first model the cluster lists)")
	f.StringVar(&a.key, "api-key", os.Getenv("NPUMESH_API_KEY"), "API key ($NPUMESH_API_KEY)")
	f.IntVar(&a.maxTokens, "max-tokens", 256, "maximum tokens to generate")
	f.Float64Var(&a.temperature, "temperature", 0.8, "sampling temperature (0 = greedy)")
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func newGenerateCmd(g *globals) *cobra.Command {
	var a apiFlags
	cmd := &cobra.Command{
		Use:   "generate [--api URL] [--model M] PROMPT",
		Short: "Stream a completion of PROMPT to the terminal",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			prompt := ""
			if len(args) == 1 {
				prompt = args[0]
			}
			cl, err := a.client(c.Context())
			if err != nil {
				return err
			}
			fmt.Fprint(g.stdout, prompt)
			_, err = cl.stream(c.Context(), "/v1/completions", map[string]any{
				"model": cl.model, "prompt": prompt, "max_tokens": a.maxTokens,
				"temperature": a.temperature, "stream": true,
			}, g.stdout)
			fmt.Fprintln(g.stdout)
			return err
		},
	}
	a.register(cmd)
	return cmd
}

func newChatCmd(g *globals) *cobra.Command {
	var (
		a      apiFlags
		system string
	)
	cmd := &cobra.Command{
		Use:   "chat [--api URL] [--model M]",
		Short: "Chat with a model interactively (one line per turn; Ctrl-D to quit)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := a.client(c.Context())
			if err != nil {
				return err
			}
			var msgs []map[string]string
			if system != "" {
				msgs = append(msgs, map[string]string{"role": "system", "content": system})
			}
			in := bufio.NewScanner(c.InOrStdin())
			in.Buffer(make([]byte, 64<<10), 1<<20)
			for {
				fmt.Fprint(g.stdout, "> ")
				if !in.Scan() {
					fmt.Fprintln(g.stdout)
					return in.Err()
				}
				line := strings.TrimSpace(in.Text())
				if line == "" {
					continue
				}
				msgs = append(msgs, map[string]string{"role": "user", "content": line})
				reply, err := cl.stream(c.Context(), "/v1/chat/completions", map[string]any{
					"model": cl.model, "messages": msgs, "max_tokens": a.maxTokens,
					"temperature": a.temperature, "stream": true,
				}, g.stdout)
				fmt.Fprintln(g.stdout)
				if err != nil {
					return err
				}
				msgs = append(msgs, map[string]string{"role": "assistant", "content": reply})
			}
		},
	}
	a.register(cmd)
	cmd.Flags().StringVar(&system, "system", "", "system prompt")
	return cmd
}

// apiClient talks to the coordinator's OpenAI API.
type apiClient struct {
	base, key, model string
	http             *http.Client
}

func (a *apiFlags) client(ctx context.Context) (*apiClient, error) {
	cl := &apiClient{base: strings.TrimRight(a.url, "/"), key: a.key, model: a.model, http: &http.Client{}}
	cl.base = strings.TrimSuffix(cl.base, "/v1")
	if cl.model == "" {
		var list struct {
			Data []struct {
				ID string `json:"id"`
			} `json:"data"`
		}
		if err := cl.do(ctx, http.MethodGet, "/v1/models", nil, &list); err != nil {
			return nil, err
		}
		if len(list.Data) == 0 {
			return nil, fmt.Errorf("the cluster at %s serves no model yet; start a node or wait for one", cl.base)
		}
		cl.model = list.Data[0].ID
	}
	return cl, nil
}

func (cl *apiClient) request(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, cl.base+path, rd)
	if err != nil {
		return nil, fmt.Errorf("bad --api URL %q: %w", cl.base, err)
	}
	req.Header.Set("Content-Type", "application/json")
	if cl.key != "" {
		req.Header.Set("Authorization", "Bearer "+cl.key)
	}
	resp, err := cl.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the cluster at %s (is `npumesh up` running? set --api): %w", cl.base, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		return nil, apiError(resp)
	}
	return resp, nil
}

func (cl *apiClient) do(ctx context.Context, method, path string, body, out any) error {
	resp, err := cl.request(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(out)
}

// apiError turns an OpenAI error response into one line.
func apiError(resp *http.Response) error {
	var e struct {
		Error struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &e) == nil && e.Error.Message != "" {
		return fmt.Errorf("%s: %s", resp.Status, e.Error.Message)
	}
	return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
}

// stream POSTs a streaming request and copies the text deltas to w as they
// arrive. It returns the whole text.
func (cl *apiClient) stream(ctx context.Context, path string, body any, w io.Writer) (string, error) {
	resp, err := cl.request(ctx, http.MethodPost, path, body)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var all strings.Builder
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			return all.String(), nil
		}
		var ch struct {
			Choices []struct {
				Text  string `json:"text"`
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
			Error *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal([]byte(data), &ch); err != nil {
			return all.String(), fmt.Errorf("bad stream event: %w", err)
		}
		if ch.Error != nil {
			return all.String(), errors.New(ch.Error.Message)
		}
		for _, c := range ch.Choices {
			t := c.Text + c.Delta.Content
			all.WriteString(t)
			fmt.Fprint(w, t)
		}
	}
	if err := sc.Err(); err != nil {
		return all.String(), err
	}
	return all.String(), errors.New("the stream ended without [DONE]")
}
