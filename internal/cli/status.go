package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// statusInterval is how often --watch redraws, the dashboard's pace too.
const statusInterval = 2 * time.Second

func newStatusCmd(g *globals) *cobra.Command {
	var (
		apiURL, key   string
		watch, asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "status [--api URL] [--watch] [--json]",
		Short: "Show the cluster's nodes (live and recently down) and its live request statistics",
		Long: "Show the cluster's nodes, live and recently down, and a summary of the last 30 seconds\n" +
			"(requests/s, tokens/s, time to first token, latency) from the coordinator's API.\n" +
			"--watch redraws every 2 s until Ctrl-C; --json prints the API's own JSON.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := statusClient(apiURL, key)
			if err != nil {
				return err
			}
			ctx := c.Context()
			if !watch {
				s, err := fetchStatus(ctx, cl)
				if err != nil {
					return err
				}
				return s.print(g.stdout, asJSON)
			}
			return watchStatus(ctx, cl, g.stdout, asJSON)
		},
	}
	f := cmd.Flags()
	f.StringVar(&apiURL, "api", envOr("NPUMESH_API", "http://127.0.0.1:8080"), "base URL of the coordinator API ($NPUMESH_API)")
	f.StringVar(&key, "api-key", os.Getenv("NPUMESH_API_KEY"), "API key ($NPUMESH_API_KEY)")
	f.BoolVarP(&watch, "watch", "w", false, "redraw every 2 s until Ctrl-C")
	f.BoolVar(&asJSON, "json", false, "print the nodes and stats as JSON (one object per line with --watch)")
	return cmd
}

// statusClient checks the URL up front: a typo should say so, not surface
// later as "unsupported protocol scheme".
func statusClient(raw, key string) (*apiClient, error) {
	base := strings.TrimSuffix(strings.TrimRight(raw, "/"), "/v1")
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("bad --api URL %q: give the coordinator's API base URL, e.g. --api http://127.0.0.1:8080", raw)
	}
	return &apiClient{base: base, key: key, http: &http.Client{Timeout: 10 * time.Second}}, nil
}

// statusNode is what status reads of a node in GET /api/v1/nodes.
type statusNode struct {
	Name       string   `json:"name"`
	Arch       string   `json:"arch"`
	State      string   `json:"state"`
	Models     []string `json:"models"`
	InFlight   int32    `json:"in_flight"`
	QueueDepth int32    `json:"queue_depth"`
	Served     uint64   `json:"served"`
	Failed     uint64   `json:"failed"`
	LastSeen   string   `json:"last_seen"`
}

type statusDeparted struct {
	Name   string    `json:"name"`
	Arch   string    `json:"arch"`
	Left   time.Time `json:"left"`
	Reason string    `json:"reason"`
}

// statusStats is what status reads of GET /api/v1/stats.
type statusStats struct {
	Time           time.Time `json:"time"`
	RequestsTotal  uint64    `json:"requests_total"`
	ErrorsTotal    uint64    `json:"errors_total"`
	InFlight       int32     `json:"in_flight"`
	WindowSeconds  float64   `json:"window_seconds"`
	RequestsPerSec float64   `json:"requests_per_second"`
	TokensPerSec   float64   `json:"completion_tokens_per_second"`
	TTFTP50Ms      float64   `json:"ttft_p50_ms"`
	TTFTP95Ms      float64   `json:"ttft_p95_ms"`
	LatencyP50Ms   float64   `json:"latency_p50_ms"`
	LatencyP95Ms   float64   `json:"latency_p95_ms"`
	Models         []string  `json:"models"`
	NodesReady     int       `json:"nodes_ready"`
	NodesDraining  int       `json:"nodes_draining"`
}

// clusterStatus is one reading of the two endpoints. The raw bodies are kept
// so --json passes on every field, including ones this version doesn't know.
type clusterStatus struct {
	nodesRaw, statsRaw json.RawMessage
	nodes              []statusNode
	departed           []statusDeparted
	stats              statusStats
}

func fetchStatus(ctx context.Context, cl *apiClient) (*clusterStatus, error) {
	var s clusterStatus
	var err error
	if s.nodesRaw, err = getRaw(ctx, cl, "/api/v1/nodes"); err != nil {
		return nil, err
	}
	if s.statsRaw, err = getRaw(ctx, cl, "/api/v1/stats"); err != nil {
		return nil, err
	}
	var view struct {
		Nodes    []statusNode     `json:"nodes"`
		Departed []statusDeparted `json:"departed"`
	}
	if err := json.Unmarshal(s.nodesRaw, &view); err != nil {
		return nil, fmt.Errorf("%s/api/v1/nodes did not return the cluster view (is --api the coordinator's API?): %w", cl.base, err)
	}
	if err := json.Unmarshal(s.statsRaw, &s.stats); err != nil {
		return nil, fmt.Errorf("%s/api/v1/stats did not return statistics (is --api the coordinator's API?): %w", cl.base, err)
	}
	s.nodes, s.departed = view.Nodes, view.Departed
	return &s, nil
}

func getRaw(ctx context.Context, cl *apiClient, path string) (json.RawMessage, error) {
	resp, err := cl.request(ctx, http.MethodGet, path, nil)
	if err != nil {
		if strings.HasPrefix(err.Error(), "401 ") { // apiError starts with the HTTP status
			return nil, fmt.Errorf("%w (give it with --api-key or $NPUMESH_API_KEY)", err)
		}
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("read %s%s: %w", cl.base, path, err)
	}
	return b, nil
}

func (s *clusterStatus) print(w io.Writer, asJSON bool) error {
	if asJSON {
		b, err := json.Marshal(map[string]json.RawMessage{"cluster": s.nodesRaw, "stats": s.statsRaw})
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	var buf bytes.Buffer
	s.table(&buf)
	_, err := w.Write(buf.Bytes())
	return err
}

// table writes the node table, a blank line, why the down nodes left, and
// a summary line.
func (s *clusterStatus) table(w io.Writer) {
	now := s.stats.Time // the coordinator's clock: ages don't depend on ours
	if now.IsZero() {
		now = time.Now()
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tARCH\tSTATE\tMODELS\tIN-FLIGHT\tSERVED\tLAST-SEEN")
	nodes := append([]statusNode(nil), s.nodes...)
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Name < nodes[j].Name })
	for _, n := range nodes {
		models := strings.Join(n.Models, ",")
		if models == "" {
			models = "-"
		}
		inFlight := fmt.Sprint(n.InFlight)
		if n.QueueDepth > 0 {
			inFlight += fmt.Sprintf(" (+%d queued)", n.QueueDepth)
		}
		served := fmt.Sprint(n.Served)
		if n.Failed > 0 {
			served += fmt.Sprintf(" (%d failed)", n.Failed)
		}
		seen := "-"
		if t, err := time.Parse(time.RFC3339Nano, n.LastSeen); err == nil {
			seen = age(now.Sub(t))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, dash(n.Arch), dash(n.State), models, inFlight, served, seen)
	}
	for _, d := range s.departed {
		fmt.Fprintf(tw, "%s\t%s\tDOWN\t-\t-\t-\t%s\n", d.Name, dash(d.Arch), age(now.Sub(d.Left)))
	}
	tw.Flush()
	if len(nodes) == 0 && len(s.departed) == 0 {
		fmt.Fprintln(w, "(no node has registered; start one with `npumesh node --coordinator ADDR ...`)")
	}
	fmt.Fprintln(w)
	for _, d := range s.departed {
		fmt.Fprintf(w, "%s is down: %s\n", d.Name, dash(d.Reason))
	}
	st := s.stats
	window := max(time.Second, time.Duration(st.WindowSeconds*float64(time.Second)).Round(time.Second))
	fmt.Fprintf(w, "%d ready, %d draining, %d down | last %s: %.2f req/s, %.1f tok/s, TTFT p50 %s p95 %s, latency p50 %s p95 %s | %d in flight, %d requests, %d errors | models: %s\n",
		st.NodesReady, st.NodesDraining, len(s.departed), window,
		st.RequestsPerSec, st.TokensPerSec, msStr(st.TTFTP50Ms), msStr(st.TTFTP95Ms), msStr(st.LatencyP50Ms), msStr(st.LatencyP95Ms),
		st.InFlight, st.RequestsTotal, st.ErrorsTotal, dash(strings.Join(st.Models, ",")))
}

// watchStatus redraws until ctx ends (Ctrl-C). On a terminal each frame
// replaces the last; into a pipe frames follow each other. A coordinator
// that goes away mid-watch is reported and retried, but a first reading
// that fails is an error: the flags are probably wrong.
func watchStatus(ctx context.Context, cl *apiClient, w io.Writer, asJSON bool) error {
	s, err := fetchStatus(ctx, cl)
	if err != nil {
		return err
	}
	tty := isTerminal(w)
	t := time.NewTicker(statusInterval)
	defer t.Stop()
	for {
		var frame bytes.Buffer
		switch {
		case asJSON && err == nil:
			if err := s.print(&frame, true); err != nil {
				return err
			}
		case asJSON:
			b, _ := json.Marshal(map[string]string{"time": time.Now().UTC().Format(time.RFC3339), "error": oneLine(err)})
			frame.Write(append(b, '\n'))
		default:
			if tty {
				frame.WriteString("\x1b[H\x1b[2J") // home, clear screen
			}
			fmt.Fprintf(&frame, "npumesh status  %s  %s  (every %s; Ctrl-C to stop)\n\n", cl.base, time.Now().Format("15:04:05"), statusInterval)
			if err != nil {
				fmt.Fprintf(&frame, "%s; retrying\n", oneLine(err))
			} else {
				s.table(&frame)
			}
			if !tty {
				frame.WriteString("\n")
			}
		}
		if _, werr := w.Write(frame.Bytes()); werr != nil {
			return werr
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		var next *clusterStatus
		next, err = fetchStatus(ctx, cl)
		if errors.Is(err, context.Canceled) || ctx.Err() != nil {
			return nil
		}
		if err == nil {
			s = next
		}
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func age(d time.Duration) string {
	switch {
	case d < 0:
		d = 0
	case d >= time.Hour:
		return fmt.Sprintf("%dh%02dm ago", int(d.Hours()), int(d.Minutes())%60)
	case d >= time.Minute:
		return fmt.Sprintf("%dm%02ds ago", int(d.Minutes()), int(d.Seconds())%60)
	}
	return fmt.Sprintf("%.1fs ago", d.Seconds())
}

func msStr(v float64) string {
	switch {
	case v <= 0:
		return "-"
	case v >= 1000:
		return fmt.Sprintf("%.2fs", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0fms", v)
	}
	return fmt.Sprintf("%.1fms", v)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
