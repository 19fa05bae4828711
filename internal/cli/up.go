package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/npumesh/npumesh/internal/demo"
	"github.com/npumesh/npumesh/internal/openai"
	"github.com/npumesh/npumesh/internal/pki"
)

func newUpCmd(g *globals) *cobra.Command {
	var (
		nodes          int
		api, dataDir   string
		model, keyFile string
		threads        int
		readyTimeout   time.Duration
		routePolicy    string
		shards         []string
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start a local cluster (a coordinator and N node daemons) serving a model",
		Long: "up starts a coordinator and N node daemons on this machine, each a separate process on its own\n" +
			"loopback port, all talking mutual-TLS gRPC with certificates from a CA kept in the data dir.\n" +
			"With no --model it serves the built-in demo model (stories260K).",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if nodes < 1 || nodes > 64 {
				return fmt.Errorf("--nodes must be between 1 and 64, got %d", nodes)
			}
			if dataDir == "" {
				d, err := defaultDataDir()
				if err != nil {
					return err
				}
				dataDir = d
			}
			return runUp(c.Context(), g, upOptions{
				nodes: nodes, api: api, dataDir: dataDir, model: model, threads: threads, readyTimeout: readyTimeout, apiKeyFile: keyFile,
				routePolicy: routePolicy, shards: shards,
			})
		},
	}
	f := cmd.Flags()
	f.IntVar(&nodes, "nodes", 3, "number of node daemons")
	f.StringVar(&api, "api", "127.0.0.1:8080", "HTTP address of the OpenAI API")
	f.StringVar(&dataDir, "data-dir", "", "where the CA, certificates and models live (default: $XDG_DATA_HOME/npumesh or ~/.local/share/npumesh)")
	f.StringVar(&model, "model", "", "GGUF model to serve (default: the built-in demo model)")
	f.StringVar(&keyFile, "api-key-file", "", "file of API keys, one per line, that the API requires")
	f.IntVar(&threads, "threads", 0, "compute threads per node (default: cores / nodes, at least 1)")
	f.DurationVar(&readyTimeout, "ready-timeout", 60*time.Second, "how long to wait for the cluster to serve the model")
	f.StringVar(&routePolicy, "route-policy", "", "the coordinator's --route-policy (default: its default)")
	f.StringArrayVar(&shards, "shard", nil, "the coordinator's --shard MODEL=STAGES[:ACTIVATIONS]: serve a model as a pipeline of stages")
	return cmd
}

type upOptions struct {
	nodes        int
	api, dataDir string
	model        string
	threads      int
	readyTimeout time.Duration
	apiKeyFile   string
	routePolicy  string
	shards       []string
}

func defaultDataDir() (string, error) {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "npumesh"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no home directory; give --data-dir: %w", err)
	}
	return filepath.Join(home, ".local", "share", "npumesh"), nil
}

// child is one process started by up.
type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // exit status, valid after done
}

func runUp(ctx context.Context, g *globals, o upOptions) error {
	log, err := g.logger()
	if err != nil {
		return err
	}
	// up is a foreground command: when whatever started it dies (a `go run`
	// killed with SIGTERM does not pass the signal on), stop the cluster too.
	if err := stopWithParent(); err != nil {
		log.Warn("cannot follow the parent process", "err", err)
	}
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	// PKI: one CA per data dir, certificates reused across runs.
	caDir := filepath.Join(o.dataDir, "ca")
	ca, err := pki.LoadCA(caDir)
	if err != nil {
		if _, statErr := os.Stat(filepath.Join(caDir, "ca.crt")); statErr == nil {
			return err // a CA is there but broken: never overwrite it
		}
		if ca, err = pki.InitCA(caDir); err != nil {
			return err
		}
		log.Info("created cluster CA", "dir", caDir, "fingerprint", ca.Fingerprint())
	}
	loopback := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	bundleDir := func(name string) string { return filepath.Join(o.dataDir, "certs", name) }
	if _, _, err := ca.EnsureBundle(bundleDir("coordinator"), pki.IssueRequest{Name: "coordinator", Role: pki.RoleCoordinator, IPs: loopback, DNS: []string{"localhost"}}); err != nil {
		return err
	}
	nodeNames := make([]string, o.nodes)
	for i := range nodeNames {
		nodeNames[i] = fmt.Sprintf("node-%d", i+1)
		if _, _, err := ca.EnsureBundle(bundleDir(nodeNames[i]), pki.IssueRequest{Name: nodeNames[i], Role: pki.RoleNode, IPs: loopback, DNS: []string{"localhost"}}); err != nil {
			return err
		}
	}
	modelPath := o.model
	if modelPath == "" {
		if modelPath, err = demo.Install(filepath.Join(o.dataDir, "models")); err != nil {
			return err
		}
	} else if _, err := os.Stat(modelPath); err != nil {
		return fmt.Errorf("model %s: %w", modelPath, err)
	}
	threads := o.threads
	if threads <= 0 {
		threads = max(1, runtime.NumCPU()/o.nodes)
	}

	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	runDir := filepath.Join(o.dataDir, "run")
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return err
	}
	common := []string{"--log-level", g.logLevel, "--log-format", g.logFormat}

	var (
		mu       sync.Mutex
		children []*child
	)
	start := func(name string, args ...string) (*child, error) {
		cmd := exec.Command(exe, append(args, common...)...)
		cmd.Stdout = os.Stderr
		cmd.Stderr = os.Stderr
		// If up itself dies, the kernel tells the children to stop.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("start %s: %w", name, err)
		}
		ch := &child{name: name, cmd: cmd, done: make(chan struct{})}
		go func() { ch.err = cmd.Wait(); close(ch.done) }()
		mu.Lock()
		children = append(children, ch)
		mu.Unlock()
		return ch, nil
	}
	stopAll := func() {
		mu.Lock()
		all := append([]*child(nil), children...)
		mu.Unlock()
		for _, ch := range all {
			_ = ch.cmd.Process.Signal(syscall.SIGTERM)
		}
		deadline := time.After(15 * time.Second)
		for _, ch := range all {
			select {
			case <-ch.done:
			case <-deadline:
				log.Warn("child did not stop in time; killing", "child", ch.name)
				_ = ch.cmd.Process.Kill()
				<-ch.done
			}
		}
	}
	defer stopAll()

	coordAddrFile := filepath.Join(runDir, "coordinator.addr")
	os.Remove(coordAddrFile)
	coordArgs := []string{"coordinator", "--listen", "127.0.0.1:0", "--api", o.api,
		"--tls-dir", bundleDir("coordinator"), "--addr-file", coordAddrFile,
		// The data dir gives the coordinator the CA (enrollment, renewal),
		// its state, and the admin client bundle in certs/admin.
		"--data-dir", o.dataDir, "--enroll-listen", "127.0.0.1:0"}
	if o.apiKeyFile != "" {
		abs, err := filepath.Abs(o.apiKeyFile)
		if err != nil {
			return err
		}
		coordArgs = append(coordArgs, "--api-key-file", abs)
	}
	if o.routePolicy != "" {
		coordArgs = append(coordArgs, "--route-policy", o.routePolicy)
	}
	for _, sh := range o.shards {
		coordArgs = append(coordArgs, "--shard", sh)
	}
	coord, err := start("coordinator", coordArgs...)
	if err != nil {
		return err
	}
	addrs, err := waitAddrFile(ctx, coordAddrFile, coord, 30*time.Second)
	if err != nil {
		return err
	}
	grpcAddr, apiAddr := addrs["grpc"], addrs["api"]
	for _, name := range nodeNames {
		if _, err := start(name, "node",
			"--coordinator", grpcAddr, "--listen", "127.0.0.1:0",
			"--tls-dir", bundleDir(name), "--model", modelPath, "--metrics-listen", "127.0.0.1:0",
			"--threads", fmt.Sprint(threads),
			// Catalog models (npumesh model add) are pulled into here.
			"--model-store", filepath.Join(o.dataDir, "nodes", name, "models")); err != nil {
			return err
		}
	}
	apiURL := "http://" + apiAddr
	var key string
	if o.apiKeyFile != "" {
		keys, err := openai.LoadAPIKeys(o.apiKeyFile)
		if err != nil {
			return err
		}
		for k := range keys {
			key = k
			break
		}
	}
	modelID, err := waitModel(ctx, apiURL, key, coord, o.readyTimeout)
	if err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "npumesh is up: %d nodes serving %q\n", o.nodes, modelID)
	fmt.Fprintf(g.stdout, "  API:   %s/v1\n", apiURL)
	fmt.Fprintf(g.stdout, "  nodes: %s/api/v1/nodes\n", apiURL)
	fmt.Fprintf(g.stdout, "  web:   %s/  (dashboard; in a terminal: npumesh status --api %s --watch)\n", apiURL, apiURL)
	fmt.Fprintf(g.stdout, "  try:   curl -s %s/v1/completions -H 'Content-Type: application/json' -d '{\"model\": %q, \"prompt\": \"Once upon a time\", \"max_tokens\": 64}'\n", apiURL, modelID)
	fmt.Fprintf(g.stdout, "  join:  npumesh node --join $(npumesh token create --data-dir %s) --coordinator %s --enroll-addr %s --data-dir DIR --model PATH\n", o.dataDir, grpcAddr, addrs["enroll"])
	fmt.Fprintf(g.stdout, "Press Ctrl-C to stop.\n")

	// Watch the children until asked to stop. A node that dies is reported
	// and the rest keep serving; without the coordinator there is no cluster.
	exited := make(chan *child, 64)
	mu.Lock()
	for _, ch := range children {
		go func(ch *child) {
			select {
			case <-ch.done:
				exited <- ch
			case <-ctx.Done():
			}
		}(ch)
	}
	mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			log.Info("stopping the cluster")
			return nil
		case ch := <-exited:
			if ch == coord {
				return fmt.Errorf("the coordinator exited (%v); stopping the cluster", ch.err)
			}
			log.Warn("node exited; the others keep serving", "node", ch.name, "status", ch.err)
		}
	}
}

// waitAddrFile waits for a child's address file, failing early if it exits.
func waitAddrFile(ctx context.Context, path string, ch *child, timeout time.Duration) (map[string]string, error) {
	deadline := time.Now().Add(timeout)
	for {
		if b, err := os.ReadFile(path); err == nil {
			out := map[string]string{}
			for _, line := range strings.Split(string(b), "\n") {
				if k, v, ok := strings.Cut(line, "="); ok {
					out[k] = v
				}
			}
			return out, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-ch.done:
			return nil, fmt.Errorf("%s exited before it was ready (%v); see its log above", ch.name, ch.err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s did not start listening within %s", ch.name, timeout)
		}
	}
}

// waitModel polls GET /v1/models until a model is listed.
func waitModel(ctx context.Context, apiURL, key string, coord *child, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		if id, err := firstModel(ctx, client, apiURL, key); err == nil && id != "" {
			return id, nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-coord.done:
			return "", fmt.Errorf("the coordinator exited (%v); see its log above", coord.err)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return "", errors.New("no node registered a model in time; see the node logs above")
		}
	}
}

func firstModel(ctx context.Context, client *http.Client, apiURL, key string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, apiURL+"/v1/models", nil)
	if err != nil {
		return "", err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return "", err
	}
	if len(list.Data) == 0 {
		return "", nil
	}
	return list.Data[0].ID, nil
}
