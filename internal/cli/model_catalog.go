package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/npumesh/npumesh/internal/coordinator"
	"github.com/npumesh/npumesh/internal/engine"
	enginearch "github.com/npumesh/npumesh/internal/engine/arch"
	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/modelstore"
	"github.com/npumesh/npumesh/internal/node"
	"github.com/npumesh/npumesh/internal/pki"
	"github.com/npumesh/npumesh/internal/safetensors"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// sizeFlag is a byte size flag: 1073741824, 512M, 20G, 1.5T (powers of 1024).
type sizeFlag int64

func (s *sizeFlag) String() string {
	if *s == 0 {
		return ""
	}
	return strconv.FormatInt(int64(*s), 10)
}

func (s *sizeFlag) Type() string { return "size" }

func (s *sizeFlag) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s = sizeFlag(n)
	return nil
}

func parseSize(v string) (int64, error) {
	v = strings.TrimSpace(strings.ToUpper(v))
	v = strings.TrimSuffix(strings.TrimSuffix(v, "B"), "I")
	mult := 1.0
	if v != "" {
		if i := strings.IndexByte("KMGT", v[len(v)-1]); i >= 0 {
			mult = float64(int64(1) << (10 * (i + 1)))
			v = v[:len(v)-1]
		}
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("bad size %q: use bytes or a number with K, M, G or T", v)
	}
	return int64(f * mult), nil
}

// catalogConfig gives the coordinator its model catalog in the data dir.
func catalogConfig(cfg *coordinator.Config, dataDir string, quota sizeFlag) error {
	if dataDir == "" {
		return nil
	}
	cfg.ModelDir = filepath.Join(dataDir, "modelstore")
	cfg.ModelQuota = int64(quota)
	return nil
}

// pullConfig lets a node pull catalog models into dir ("" disables).
func pullConfig(dir string, quota sizeFlag, threads int) *node.PullConfig {
	if dir == "" {
		return nil
	}
	return &node.PullConfig{Dir: dir, Quota: int64(quota), Threads: threads}
}

// dial connects to the coordinator's AdminService like adminFlags.call,
// without its short deadline (uploads take long).
func (a *adminFlags) dial() (pb.AdminServiceClient, func(), string, error) {
	dataDir := a.dataDir
	if dataDir == "" && (a.coordinator == "" || a.tlsDir == "") {
		d, err := defaultDataDir()
		if err != nil {
			return nil, nil, "", err
		}
		dataDir = d
	}
	tlsDir := a.tlsDir
	if tlsDir == "" {
		tlsDir = filepath.Join(dataDir, "certs", adminBundle)
	}
	addr := a.coordinator
	if addr == "" {
		p := filepath.Join(dataDir, "run", coordAddrFile)
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, nil, "", fmt.Errorf("no coordinator address: give --coordinator HOST:PORT, or --data-dir of a running coordinator (%v)", err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "grpc="); ok {
				addr = v
			}
		}
		if addr == "" {
			return nil, nil, "", fmt.Errorf("%s has no grpc= line; give --coordinator HOST:PORT", p)
		}
	}
	bundle, err := pki.LoadBundle(tlsDir)
	if err != nil {
		return nil, nil, "", err
	}
	if id := bundle.Identity(); id.Role != pki.RoleClient {
		return nil, nil, "", fmt.Errorf("%s holds a certificate for %s; admin commands need a client-role certificate", tlsDir, id)
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(bundle.ClientTLS(pki.Identity{Role: pki.RoleCoordinator}))))
	if err != nil {
		return nil, nil, "", err
	}
	return pb.NewAdminServiceClient(cc), func() { cc.Close() }, addr, nil
}

func rpcErr(addr string, err error) error {
	if s, ok := status.FromError(err); ok {
		return fmt.Errorf("coordinator %s: %s", addr, s.Message())
	}
	return err
}

func newModelCatalogCmds(g *globals) []*cobra.Command {
	return []*cobra.Command{newModelAddCmd(g), newModelListCmd(g), newModelRemoveCmd(g), newModelShardCmd(g)}
}

func newModelAddCmd(g *globals) *cobra.Command {
	var (
		af       adminFlags
		name     string
		replicas int
		wait     time.Duration
	)
	cmd := &cobra.Command{
		Use:   "add PATH|DIR [--name NAME] [--replicas N]",
		Short: "Upload a model (a GGUF file or a Hugging Face safetensors directory) into the cluster's catalog",
		Long: "add hashes the model into 4 MiB chunks, uploads the chunks the coordinator lacks (an interrupted\n" +
			"upload resumes), and registers it; the coordinator places it on --replicas nodes, which pull and\n" +
			"load it. `npumesh model ls` shows where each replica stands.",
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			path := filepath.Clean(args[0])
			if replicas < 1 || replicas > 64 {
				return fmt.Errorf("--replicas must be between 1 and 64, got %d", replicas)
			}
			if name == "" {
				name = strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
				if st, err := os.Stat(path); err == nil && st.IsDir() {
					name = filepath.Base(path)
				}
			}
			if err := modelstore.ValidName(name); err != nil {
				return fmt.Errorf("%w (give --name)", err)
			}
			pr := newProgress(g.stderr)
			m, err := modelstore.Build(name, path, modelstore.DefaultChunkSize, func(done, total int64) { pr.update("hashing", done, total) })
			if err != nil {
				return err
			}
			pr.finish("hashed", m.Size())
			var facts modelFacts
			switch m.Format {
			case modelstore.FormatGGUF:
				facts, err = ggufFacts(path)
			case modelstore.FormatSafetensors:
				facts, err = hfFacts(path)
			}
			if err != nil {
				fmt.Fprintf(g.stderr, "warning: the built-in engine cannot read this model (%v); nodes will report it failed\n", err)
			}
			ac, closeConn, addr, err := af.dial()
			if err != nil {
				return err
			}
			defer closeConn()
			done, err := upload(c.Context(), ac, m, path, replicas, facts, pr)
			if err != nil {
				return rpcErr(addr, err)
			}
			fmt.Fprintf(g.stdout, "added %s: %s, %s, %d replica(s)\n", done.GetName(), done.GetFormat(), modelstore.HumanBytes(int64(done.GetSizeBytes())), done.GetReplicas())
			if wait <= 0 {
				return nil
			}
			ctx, cancel := context.WithTimeout(c.Context(), wait)
			defer cancel()
			for {
				resp, err := ac.ListCatalog(ctx, &pb.ListCatalogRequest{})
				if err != nil {
					return rpcErr(addr, err)
				}
				for _, cm := range resp.GetModels() {
					if cm.GetName() == m.Name && loadedReplicas(cm) >= int(cm.GetReplicas()) {
						fmt.Fprintf(g.stdout, "%s loaded on %s\n", m.Name, replicaSummary(cm))
						return nil
					}
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("%s is not loaded on %d node(s) after %s; see npumesh model ls", m.Name, replicas, wait)
				case <-time.After(500 * time.Millisecond):
				}
			}
		},
	}
	af.register(cmd)
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "model name in the cluster (default: the file or directory name)")
	f.IntVar(&replicas, "replicas", 1, "how many nodes should hold the model")
	f.DurationVar(&wait, "wait", 0, "after the upload, wait up to this long for every replica to be loaded")
	return cmd
}

// upload runs the AddModel exchange.
func upload(ctx context.Context, ac pb.AdminServiceClient, m *modelstore.Manifest, path string, replicas int, facts modelFacts, pr *progress) (*pb.CatalogModel, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := ac.AddModel(ctx)
	if err != nil {
		return nil, err
	}
	pm := &pb.ModelManifest{Name: m.Name, Format: m.Format, ChunkSize: m.ChunkSize}
	local := map[string]string{}
	files := map[string]modelstore.File{}
	for _, f := range m.Files {
		pm.Files = append(pm.Files, &pb.ModelFile{Name: f.Name, Size: f.Size, Sha256: f.SHA256, Chunks: f.Chunks})
		p := path
		if m.Format != modelstore.FormatGGUF {
			p = filepath.Join(path, f.Name)
		}
		local[f.SHA256], files[f.SHA256] = p, f
	}
	if err := stream.Send(&pb.AddModelRequest{Msg: &pb.AddModelRequest_Header{Header: &pb.AddModelHeader{Manifest: pm, Replicas: int32(replicas), KvBudgetBytes: facts.kvBudget, Arch: facts.arch}}}); err != nil {
		return nil, recvErr(stream, err)
	}
	need, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	var total int64
	for _, fn := range need.GetNeed() {
		for _, i := range fn.GetIndexes() {
			total += m.ChunkLen(files[fn.GetSha256()], int(i))
		}
	}
	var sent int64
	buf := make([]byte, m.ChunkSize)
	for _, fn := range need.GetNeed() {
		f, ok := files[fn.GetSha256()]
		if !ok {
			return nil, fmt.Errorf("coordinator asked for a file not in the model")
		}
		fh, err := os.Open(local[f.SHA256])
		if err != nil {
			return nil, err
		}
		for _, i := range fn.GetIndexes() {
			n := m.ChunkLen(f, int(i))
			if _, err := fh.ReadAt(buf[:n], int64(i)*m.ChunkSize); err != nil {
				fh.Close()
				return nil, fmt.Errorf("read %s: %w", local[f.SHA256], err)
			}
			for off := int64(0); off < n; off += 1 << 20 {
				end := min(off+1<<20, n)
				if err := stream.Send(&pb.AddModelRequest{Msg: &pb.AddModelRequest_Chunk{Chunk: &pb.ChunkData{Sha256: f.SHA256, Index: i, Offset: off, Data: buf[off:end]}}}); err != nil {
					fh.Close()
					return nil, recvErr(stream, err)
				}
			}
			sent += n
			pr.update("uploading", sent, total)
		}
		fh.Close()
	}
	if err := stream.CloseSend(); err != nil {
		return nil, err
	}
	pr.finish("uploaded", sent)
	last, err := stream.Recv()
	if err != nil {
		return nil, err
	}
	if last.GetDone() == nil {
		return nil, errors.New("the coordinator ended the upload without a catalog entry")
	}
	return last.GetDone(), nil
}

// recvErr turns a Send failure into the server's status.
func recvErr(stream grpc.BidiStreamingClient[pb.AddModelRequest, pb.AddModelResponse], err error) error {
	if errors.Is(err, io.EOF) {
		for {
			if _, rerr := stream.Recv(); rerr != nil {
				return rerr
			}
		}
	}
	return err
}

// modelFacts are what placement needs from a model's metadata.
type modelFacts struct {
	arch     string
	kvBudget int64
}

// ggufFacts reads the architecture and computes the engine's default KV
// budget (engine.DefaultKVBudgetBytes).
func ggufFacts(path string) (modelFacts, error) {
	f, err := gguf.Open(path)
	if err != nil {
		return modelFacts{}, err
	}
	defer f.Close()
	p, err := enginearch.Read(f)
	if err != nil {
		return modelFacts{}, err
	}
	return modelFacts{arch: p.Arch, kvBudget: engine.DefaultKVBudgetBytes(p.Layers, p.KVDim(), p.Context)}, nil
}

// hfFacts does what ggufFacts does for a Hugging Face safetensors
// directory, from its config.json as the engine reads it: the context is
// max_position_embeddings (4096 when absent), a position's keys or values
// in one layer num_key_value_heads*head_dim numbers. A model_type the
// engine does not run still gets its KV budget, with an error to warn about.
func hfFacts(dir string) (modelFacts, error) {
	b, err := os.ReadFile(filepath.Join(dir, safetensors.ConfigFile))
	if err != nil {
		return modelFacts{}, err
	}
	c, err := safetensors.ParseConfig(safetensors.ConfigFile, b)
	if err != nil {
		return modelFacts{}, err
	}
	ctxLen := c.MaxPositionEmbeddings
	if ctxLen <= 0 {
		ctxLen = 4096
	}
	facts := modelFacts{arch: c.ModelType, kvBudget: engine.DefaultKVBudgetBytes(c.NumHiddenLayers, c.NumKeyValueHeads*c.HeadDim, ctxLen)}
	switch c.ModelType {
	case "llama", "qwen2":
		return facts, nil
	}
	return facts, fmt.Errorf("config.json: model_type %q: the built-in engine runs llama and qwen2 from safetensors", c.ModelType)
}

func loadedReplicas(cm *pb.CatalogModel) int {
	n := 0
	for _, r := range cm.GetReplicaStatus() {
		if r.GetState() == "loaded" {
			n++
		}
	}
	return n
}

func replicaSummary(cm *pb.CatalogModel) string {
	var parts []string
	for _, r := range cm.GetReplicaStatus() {
		s := r.GetNode() + " " + r.GetState()
		if r.GetState() == "pulling" {
			s += fmt.Sprintf(" %.0f%%", r.GetProgress()*100)
		}
		if r.GetReason() != "" {
			s += " (" + r.GetReason() + ")"
		}
		parts = append(parts, s)
	}
	if len(parts) == 0 {
		return "no node yet"
	}
	return strings.Join(parts, ", ")
}

func newModelListCmd(g *globals) *cobra.Command {
	var (
		af        adminFlags
		asJSON    bool
		decisions bool
	)
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the cluster's catalog models: size, replicas, and where each replica stands",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return af.call(c.Context(), func(ctx context.Context, ac pb.AdminServiceClient) error {
				resp, err := ac.ListCatalog(ctx, &pb.ListCatalogRequest{})
				if err != nil {
					return err
				}
				if asJSON {
					enc := json.NewEncoder(g.stdout)
					enc.SetIndent("", "  ")
					return enc.Encode(resp.GetModels())
				}
				tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tFORMAT\tSIZE\tKV\tREPLICAS\tSTATUS")
				for _, cm := range resp.GetModels() {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%s\n", cm.GetName(), cm.GetFormat(), modelstore.HumanBytes(int64(cm.GetSizeBytes())), modelstore.HumanBytes(cm.GetKvBudgetBytes()),
						loadedReplicas(cm), cm.GetReplicas(), replicaSummary(cm))
				}
				tw.Flush()
				if decisions {
					for _, cm := range resp.GetModels() {
						for _, d := range cm.GetDecisions() {
							fmt.Fprintf(g.stdout, "  %s: %s\n", cm.GetName(), d)
						}
					}
				}
				return nil
			})
		},
	}
	af.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().BoolVar(&decisions, "decisions", true, "print the latest placement decisions under the table")
	return cmd
}

func newModelShardCmd(g *globals) *cobra.Command {
	var af adminFlags
	var stages int
	var act string
	cmd := &cobra.Command{
		Use:   "shard NAME",
		Short: "Serve a model as a pipeline of stages on several nodes (--stages 0: automatic, 1: off)",
		Long: "Splits a model's layers across nodes, each running a range of them and passing hidden states\n" +
			"to the next over mutual-TLS gRPC. With --stages 0 a model is split only when no node can\n" +
			"hold it. Prints the plan requests use now.",
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if stages < 0 {
				return fmt.Errorf("--stages %d: want 0 (automatic), 1 (off) or more", stages)
			}
			return af.call(c.Context(), func(ctx context.Context, ac pb.AdminServiceClient) error {
				resp, err := ac.ShardModel(ctx, &pb.ShardModelRequest{Model: args[0], Stages: int32(stages), Activations: act})
				if err != nil {
					return err
				}
				p := resp.GetPipeline()
				if len(p.GetStages()) == 0 {
					fmt.Fprintf(g.stdout, "%s: %s\n", args[0], resp.GetNote())
					return nil
				}
				fmt.Fprintf(g.stdout, "%s: %d stages, %s activations, about %.1f ms per token, %d activation bytes per token\n",
					args[0], len(p.GetStages()), p.GetActivations(), resp.GetTokenSeconds()*1000, resp.GetBytesPerToken())
				for i, s := range p.GetStages() {
					fmt.Fprintf(g.stdout, "  stage %d: node %s (%s) layers [%d,%d)\n", i, s.GetNode(), s.GetAddress(), s.GetLayerLo(), s.GetLayerHi())
				}
				if n := resp.GetNote(); n != "" {
					fmt.Fprintf(g.stdout, "note: %s\n", n)
				}
				return nil
			})
		},
	}
	af.register(cmd)
	cmd.Flags().IntVar(&stages, "stages", 0, "number of stages: 0 automatic, 1 off, 2 or more exactly")
	cmd.Flags().StringVar(&act, "activations", "f16", "hidden-state encoding on the links: f16, f32 or q8")
	return cmd
}

func newModelRemoveCmd(g *globals) *cobra.Command {
	var af adminFlags
	cmd := &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a model from the catalog; nodes unload it and delete its files",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return af.call(c.Context(), func(ctx context.Context, ac pb.AdminServiceClient) error {
				if _, err := ac.RemoveModel(ctx, &pb.RemoveModelRequest{Name: args[0]}); err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "removed %s\n", args[0])
				return nil
			})
		},
	}
	af.register(cmd)
	return cmd
}

// progress shows a bar on a terminal and a line per 10% elsewhere.
type progress struct {
	w       io.Writer
	tty     bool
	start   time.Time
	lastPct int
	what    string
}

func newProgress(w io.Writer) *progress {
	return &progress{w: w, tty: isTerminal(w), start: time.Now(), lastPct: -1}
}

func (p *progress) update(what string, done, total int64) {
	if what != p.what {
		p.what, p.start, p.lastPct = what, time.Now(), -1
	}
	pct := 100
	if total > 0 {
		pct = int(done * 100 / total)
	}
	rate := float64(done) / max(time.Since(p.start).Seconds(), 1e-3)
	if p.tty {
		const width = 30
		bar := strings.Repeat("#", pct*width/100) + strings.Repeat(" ", width-pct*width/100)
		fmt.Fprintf(p.w, "\r%-9s [%s] %3d%% %s/%s %s/s ", what, bar, pct, modelstore.HumanBytes(done), modelstore.HumanBytes(total), modelstore.HumanBytes(int64(rate)))
		return
	}
	if pct/10 != p.lastPct/10 || p.lastPct < 0 {
		p.lastPct = pct
		fmt.Fprintf(p.w, "%s: %d%% (%s of %s, %s/s)\n", what, pct, modelstore.HumanBytes(done), modelstore.HumanBytes(total), modelstore.HumanBytes(int64(rate)))
	}
}

func (p *progress) finish(what string, n int64) {
	if p.tty {
		fmt.Fprintln(p.w)
	}
	fmt.Fprintf(p.w, "%s %s in %s\n", what, modelstore.HumanBytes(n), time.Since(p.start).Round(time.Millisecond))
	p.what = ""
}
