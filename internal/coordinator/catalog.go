package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/npumesh/npumesh/internal/modelstore"
	"github.com/npumesh/npumesh/internal/pki"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// The model catalog (issue #7): models uploaded with `npumesh model add`,
// kept in a content-addressed store in the coordinator's data dir, with the
// replica count asked for and the nodes each is placed on. catalog.json
// holds the entries; the store holds manifests and blobs. Nodes pull what
// they are assigned (GetAssignments, FetchChunks) and report progress and
// state in their heartbeat model list.

// pieceSize is the largest ChunkData payload, under gRPC's default 4 MiB
// message limit.
const pieceSize = 1 << 20

// catalogEntry is one model of the catalog, as stored.
type catalogEntry struct {
	Name     string    `json:"name"`
	Digest   string    `json:"digest"`
	Replicas int       `json:"replicas"`
	Added    time.Time `json:"added"`
	Arch     string    `json:"arch,omitempty"`
	// KVBudget is the KV-cache memory the engine takes beside the weights
	// (from the model's metadata; 0: estimated by kvBudget).
	KVBudget int64 `json:"kv_budget_bytes,omitempty"`
	// Assigned lists the nodes the model is placed on, in placement order.
	Assigned []string `json:"assigned"`
	// Decisions are the latest placement decisions, newest last.
	Decisions []string `json:"decisions,omitempty"`
	// Gone holds assigned nodes that left and when: they keep their place
	// (and their files) for placeGrace, so a node that comes back soon
	// resumes instead of starting over, while another node takes the
	// replica at once.
	Gone map[string]time.Time `json:"gone,omitempty"`

	manifest *modelstore.Manifest
}

// catalog is the coordinator's model catalog.
type catalog struct {
	store *modelstore.Store
	path  string // catalog.json

	mu       sync.Mutex // guards entries and observed
	entries  map[string]*catalogEntry
	observed map[string]map[string]*pb.ModelInfo // node -> model -> last reported

	kick chan struct{} // wakes the placement loop
	// settle is when placement may start treating absent nodes as gone:
	// after a coordinator restart the nodes need a moment to register.
	settle time.Time

	sent, received prometheus.Counter
	sentByNode     *prometheus.CounterVec
}

func (c *Coordinator) initCatalog() error {
	cat := &catalog{entries: map[string]*catalogEntry{}, observed: map[string]map[string]*pb.ModelInfo{}, kick: make(chan struct{}, 1)}
	cat.sent = prometheus.NewCounter(prometheus.CounterOpts{Name: "npumesh_model_transfer_sent_bytes_total", Help: "Model chunk bytes the coordinator sent to pulling nodes."})
	cat.received = prometheus.NewCounter(prometheus.CounterOpts{Name: "npumesh_model_upload_received_bytes_total", Help: "Verified model chunk bytes uploaded to the coordinator's catalog."})
	cat.sentByNode = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "npumesh_model_transfer_sent_bytes_by_node_total", Help: "Model chunk bytes the coordinator sent, by pulling node."}, []string{"node"})
	c.metrics.reg.MustRegister(cat.sent, cat.received, cat.sentByNode, &catalogCollector{c: c})
	cat.settle = time.Now().Add(c.cfg.NodeTimeout)
	c.cat = cat
	if c.cfg.ModelDir == "" {
		return nil // no catalog: model add is refused
	}
	st, err := modelstore.Open(c.cfg.ModelDir, c.cfg.ModelQuota)
	if err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	cat.store = st
	cat.path = filepath.Join(c.cfg.ModelDir, "catalog.json")
	b, err := os.ReadFile(cat.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("coordinator: read the model catalog: %w", err)
	}
	var saved struct {
		Models []*catalogEntry `json:"models"`
	}
	if err := json.Unmarshal(b, &saved); err != nil {
		return fmt.Errorf("coordinator: model catalog %s: %w", cat.path, err)
	}
	for _, e := range saved.Models {
		m, err := st.Manifest(e.Name)
		if err != nil || !st.Complete(m) {
			c.log.Warn("model catalog entry without its files; dropping it", "model", e.Name, "err", err)
			continue
		}
		e.manifest = m
		cat.entries[e.Name] = e
	}
	return nil
}

// saveLocked writes catalog.json atomically; cat.mu is held.
func (cat *catalog) saveLocked() error {
	if cat.path == "" {
		return nil
	}
	var saved struct {
		Models []*catalogEntry `json:"models"`
	}
	for _, e := range cat.entries {
		saved.Models = append(saved.Models, e)
	}
	sort.Slice(saved.Models, func(i, j int) bool { return saved.Models[i].Name < saved.Models[j].Name })
	b, err := json.MarshalIndent(saved, "", "  ")
	if err != nil {
		return err
	}
	return modelstore.WriteFileAtomic(cat.path, b, 0o600)
}

func (cat *catalog) wake() {
	select {
	case cat.kick <- struct{}{}:
	default:
	}
}

// observeModels records the model states a node reported.
func (c *Coordinator) observeModels(node string, models []*pb.ModelInfo) {
	if c.cat == nil {
		return
	}
	m := make(map[string]*pb.ModelInfo, len(models))
	for _, mi := range models {
		m[mi.GetId()] = mi
	}
	c.cat.mu.Lock()
	c.cat.observed[node] = m
	c.cat.mu.Unlock()
}

func manifestToProto(m *modelstore.Manifest) *pb.ModelManifest {
	out := &pb.ModelManifest{Name: m.Name, Format: m.Format, ChunkSize: m.ChunkSize}
	for _, f := range m.Files {
		out.Files = append(out.Files, &pb.ModelFile{Name: f.Name, Size: f.Size, Sha256: f.SHA256, Chunks: f.Chunks})
	}
	return out
}

// manifestFromProto converts a wire manifest; callers validate it.
func manifestFromProto(p *pb.ModelManifest) *modelstore.Manifest {
	m := &modelstore.Manifest{Name: p.GetName(), Format: p.GetFormat(), ChunkSize: p.GetChunkSize()}
	for _, f := range p.GetFiles() {
		m.Files = append(m.Files, modelstore.File{Name: f.GetName(), Size: f.GetSize(), SHA256: f.GetSha256(), Chunks: f.GetChunks()})
	}
	return m
}

// AddModel implements pb.AdminServiceServer.
func (s *adminService) AddModel(stream grpc.BidiStreamingServer[pb.AddModelRequest, pb.AddModelResponse]) error {
	c := s.c
	cat := c.cat
	if cat.store == nil {
		return status.Error(codes.FailedPrecondition, "this coordinator has no model store (start it with --data-dir)")
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hdr := first.GetHeader()
	if hdr == nil {
		return status.Error(codes.InvalidArgument, "add model: the first message must be the header")
	}
	m := manifestFromProto(hdr.GetManifest())
	if err := m.Validate(); err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	replicas := max(int(hdr.GetReplicas()), 1)
	cat.mu.Lock()
	old := cat.entries[m.Name]
	cat.mu.Unlock()
	if old != nil && old.Digest != m.Digest() {
		return status.Errorf(codes.AlreadyExists, "a different model named %q is in the catalog; remove it first (npumesh model rm %s) or pick another --name", m.Name, m.Name)
	}
	if err := cat.store.CheckQuota(m); err != nil {
		return status.Error(codes.ResourceExhausted, err.Error())
	}
	writers := map[string]*modelstore.Writer{}
	defer func() {
		for _, w := range writers {
			w.Close() // keeps verified chunks for a retry
		}
	}()
	resp := &pb.AddModelResponse{}
	for _, f := range m.Files {
		if writers[f.SHA256] != nil {
			continue
		}
		w, err := cat.store.NewWriter(f, m.ChunkSize)
		if err != nil {
			if errors.Is(err, modelstore.ErrQuota) {
				return status.Error(codes.ResourceExhausted, err.Error())
			}
			return status.Error(codes.Unavailable, err.Error())
		}
		writers[f.SHA256] = w
		need := &pb.FileNeed{Sha256: f.SHA256}
		for _, i := range w.Missing() {
			need.Indexes = append(need.Indexes, uint32(i))
		}
		resp.Need = append(resp.Need, need)
	}
	if err := stream.Send(resp); err != nil {
		return err
	}
	files := map[string]modelstore.File{}
	for _, f := range m.Files {
		files[f.SHA256] = f
	}
	asm := newAssembler(m.ChunkSize)
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		ch := msg.GetChunk()
		w := writers[ch.GetSha256()]
		if ch == nil || w == nil {
			return status.Error(codes.InvalidArgument, "add model: chunk of a file not in the manifest")
		}
		f := files[ch.GetSha256()]
		data, ok, err := asm.add(ch, m.ChunkLen(f, int(ch.GetIndex())))
		if err != nil {
			return status.Error(codes.InvalidArgument, err.Error())
		}
		if !ok {
			continue
		}
		if err := w.WriteChunk(int(ch.GetIndex()), data); err != nil {
			if errors.Is(err, modelstore.ErrChunkMismatch) {
				return status.Errorf(codes.DataLoss, "%v; run the command again: verified chunks are kept", err)
			}
			return status.Error(codes.Internal, err.Error())
		}
		cat.received.Add(float64(len(data)))
	}
	for sha, w := range writers {
		if err := w.Commit(); err != nil {
			return status.Errorf(codes.DataLoss, "%s: %v", files[sha].Name, err)
		}
	}
	if err := cat.store.PutManifest(m); err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	cat.mu.Lock()
	e := cat.entries[m.Name]
	if e == nil {
		e = &catalogEntry{Name: m.Name, Digest: m.Digest(), Added: time.Now().UTC(), manifest: m}
		cat.entries[m.Name] = e
	}
	e.Replicas = replicas
	if hdr.GetKvBudgetBytes() > 0 {
		e.KVBudget = hdr.GetKvBudgetBytes()
	}
	if hdr.GetArch() != "" {
		e.Arch = hdr.GetArch()
	}
	err = cat.saveLocked()
	cat.mu.Unlock()
	if err != nil {
		return status.Errorf(codes.Internal, "save the catalog: %v", err)
	}
	c.log.Info("model added to the catalog", "model", m.Name, "size", m.Size(), "replicas", replicas)
	cat.wake()
	return stream.Send(&pb.AddModelResponse{Done: c.catalogView(m.Name)})
}

// ListCatalog implements pb.AdminServiceServer.
func (s *adminService) ListCatalog(ctx context.Context, _ *pb.ListCatalogRequest) (*pb.ListCatalogResponse, error) {
	out := &pb.ListCatalogResponse{}
	for _, name := range s.c.catalogNames() {
		if v := s.c.catalogView(name); v != nil {
			out.Models = append(out.Models, v)
		}
	}
	return out, nil
}

// RemoveModel implements pb.AdminServiceServer.
func (s *adminService) RemoveModel(ctx context.Context, req *pb.RemoveModelRequest) (*pb.RemoveModelResponse, error) {
	cat := s.c.cat
	cat.mu.Lock()
	e := cat.entries[req.GetName()]
	if e == nil {
		cat.mu.Unlock()
		return nil, status.Errorf(codes.NotFound, "no model %q in the catalog (npumesh model ls lists them)", req.GetName())
	}
	delete(cat.entries, req.GetName())
	err := cat.saveLocked()
	cat.mu.Unlock()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "save the catalog: %v", err)
	}
	if err := cat.store.Remove(req.GetName()); err != nil {
		s.c.log.Warn("remove model files", "model", req.GetName(), "err", err)
	}
	s.c.log.Info("model removed from the catalog", "model", req.GetName())
	return &pb.RemoveModelResponse{}, nil
}

func (c *Coordinator) catalogNames() []string {
	c.cat.mu.Lock()
	defer c.cat.mu.Unlock()
	var names []string
	for n := range c.cat.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// catalogView is the catalog entry of name with each replica's state.
func (c *Coordinator) catalogView(name string) *pb.CatalogModel {
	cat := c.cat
	cat.mu.Lock()
	defer cat.mu.Unlock()
	e := cat.entries[name]
	if e == nil {
		return nil
	}
	v := &pb.CatalogModel{
		Name: e.Name, Format: e.manifest.Format, SizeBytes: uint64(e.manifest.Size()), Replicas: int32(e.Replicas),
		Decisions: append([]string(nil), e.Decisions...), AddedUnix: e.Added.Unix(),
		Arch: e.Arch, KvBudgetBytes: e.need() - e.manifest.Size(),
	}
	for _, n := range e.Assigned {
		rs := cat.replicaLocked(n, name)
		if at, gone := e.Gone[n]; gone {
			rs.State, rs.Progress, rs.Reason = "left", 0, "node left at "+at.Format(time.RFC3339)
		}
		v.ReplicaStatus = append(v.ReplicaStatus, rs)
	}
	return v
}

func (cat *catalog) replicaLocked(node, model string) *pb.ReplicaStatus {
	rs := &pb.ReplicaStatus{Node: node, State: "assigned"}
	if mi := cat.observed[node][model]; mi != nil {
		rs.State, rs.Progress, rs.Reason = mi.GetState(), mi.GetProgress(), mi.GetReason()
		if rs.State == "" {
			rs.State = "loaded"
		}
	}
	return rs
}

// placementsFor lists the catalog models placed on node with their state,
// for the cluster view.
func (c *Coordinator) placementsFor(node string) []string {
	if c.cat == nil {
		return nil
	}
	cat := c.cat
	cat.mu.Lock()
	defer cat.mu.Unlock()
	var out []string
	for _, e := range cat.entries {
		for _, n := range e.Assigned {
			if n == node {
				rs := cat.replicaLocked(node, e.Name)
				s := e.Name + ": " + rs.State
				if rs.State == "pulling" {
					s += fmt.Sprintf(" %.0f%%", rs.Progress*100)
				}
				if rs.Reason != "" {
					s += " (" + rs.Reason + ")"
				}
				out = append(out, s)
			}
		}
	}
	sort.Strings(out)
	return out
}

// GetAssignments implements pb.ControlServiceServer.
func (s *controlService) GetAssignments(ctx context.Context, _ *pb.GetAssignmentsRequest) (*pb.GetAssignmentsResponse, error) {
	id, err := pki.PeerIdentity(ctx)
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	c := s.c
	addrs := map[string]string{}
	for _, m := range c.reg.list() {
		addrs[m.name] = m.addr
	}
	cat := c.cat
	cat.mu.Lock()
	defer cat.mu.Unlock()
	out := &pb.GetAssignmentsResponse{}
	for _, e := range cat.entries {
		mine := false
		for _, n := range e.Assigned {
			mine = mine || n == id.Name
		}
		if !mine {
			continue
		}
		a := &pb.ModelAssignment{Manifest: manifestToProto(e.manifest)}
		var peers []string
		for n, models := range cat.observed {
			if mi := models[e.Name]; n != id.Name && addrs[n] != "" && mi != nil && mi.GetState() == "loaded" {
				peers = append(peers, n)
			}
		}
		sort.Strings(peers)
		for _, n := range peers {
			a.Sources = append(a.Sources, &pb.ChunkSource{Node: n, Address: addrs[n]})
		}
		a.Sources = append(a.Sources, &pb.ChunkSource{}) // the coordinator
		out.Models = append(out.Models, a)
	}
	sort.Slice(out.Models, func(i, j int) bool { return out.Models[i].Manifest.Name < out.Models[j].Manifest.Name })
	return out, nil
}

// FetchChunks implements pb.ControlServiceServer: chunks of catalog files.
func (s *controlService) FetchChunks(req *pb.FetchChunksRequest, stream grpc.ServerStreamingServer[pb.ChunkData]) error {
	c := s.c
	node := ""
	if id, err := pki.PeerIdentity(stream.Context()); err == nil {
		node = id.Name
	}
	c.cat.mu.Lock()
	e := c.cat.entries[req.GetModel()]
	c.cat.mu.Unlock()
	if e == nil {
		return status.Errorf(codes.NotFound, "no model %q in the catalog", req.GetModel())
	}
	var file *modelstore.File
	for i := range e.manifest.Files {
		if e.manifest.Files[i].SHA256 == req.GetSha256() {
			file = &e.manifest.Files[i]
		}
	}
	if file == nil {
		return status.Errorf(codes.NotFound, "model %s has no file %s", req.GetModel(), req.GetSha256())
	}
	sent := c.cat.sentByNode.WithLabelValues(node)
	if fo := req.GetFirstOffset(); fo < 0 || fo >= e.manifest.ChunkSize {
		return status.Errorf(codes.InvalidArgument, "first_offset %d outside a chunk", fo)
	}
	return sendChunks(stream, c.cat.store, *file, e.manifest.ChunkSize, req.GetIndexes(), req.GetFirstOffset(), func(n int) {
		c.cat.sent.Add(float64(n))
		sent.Add(float64(n))
	})
}

// sendChunks streams the given chunks of a stored file in pieces.
// The first chunk starts at firstOffset.
func sendChunks(stream interface{ Send(*pb.ChunkData) error }, st *modelstore.Store, f modelstore.File, chunkSize int64, idx []uint32, firstOffset int64, sent func(int)) error {
	buf := make([]byte, chunkSize)
	for k, i := range idx {
		data, err := st.ReadChunk(f.SHA256, f.Size, chunkSize, int(i), buf)
		if err != nil {
			return status.Errorf(codes.NotFound, "read chunk %d of %s: %v", i, f.Name, err)
		}
		first := 0
		if k == 0 {
			first = int(min(firstOffset, int64(len(data))))
		}
		for off := first; off < len(data); off += pieceSize {
			end := min(off+pieceSize, len(data))
			if err := stream.Send(&pb.ChunkData{Sha256: f.SHA256, Index: i, Offset: int64(off), Data: data[off:end]}); err != nil {
				return err
			}
			sent(end - off)
		}
	}
	return nil
}

// assembler joins ChunkData pieces into whole chunks; pieces of a chunk
// arrive in order.
type assembler struct {
	buf   []byte
	sha   string
	index uint32
	have  int64
}

func newAssembler(chunkSize int64) *assembler { return &assembler{buf: make([]byte, 0, chunkSize)} }

// add appends a piece and returns the chunk once it is complete (valid
// until the next call).
func (a *assembler) add(ch *pb.ChunkData, want int64) ([]byte, bool, error) {
	if ch.GetOffset() == 0 {
		a.buf, a.sha, a.index, a.have = a.buf[:0], ch.GetSha256(), ch.GetIndex(), 0
	} else if ch.GetSha256() != a.sha || ch.GetIndex() != a.index || ch.GetOffset() != a.have {
		return nil, false, fmt.Errorf("chunk %d of %s: piece at offset %d out of order", ch.GetIndex(), ch.GetSha256(), ch.GetOffset())
	}
	a.buf = append(a.buf, ch.GetData()...)
	a.have += int64(len(ch.GetData()))
	if a.have > want {
		return nil, false, fmt.Errorf("chunk %d of %s: %d bytes, want %d", ch.GetIndex(), ch.GetSha256(), a.have, want)
	}
	return a.buf, a.have == want, nil
}

// catalogCollector exports the catalog at scrape time.
type catalogCollector struct{ c *Coordinator }

var (
	descCatModels   = prometheus.NewDesc("npumesh_catalog_models", "Models in the coordinator's catalog.", nil, nil)
	descCatReplicas = prometheus.NewDesc("npumesh_catalog_replicas", "Replicas of catalog models by state.", []string{"model", "state"}, nil)
)

func (cc *catalogCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descCatModels
	ch <- descCatReplicas
}

func (cc *catalogCollector) Collect(ch chan<- prometheus.Metric) {
	names := cc.c.catalogNames()
	ch <- prometheus.MustNewConstMetric(descCatModels, prometheus.GaugeValue, float64(len(names)))
	for _, n := range names {
		v := cc.c.catalogView(n)
		if v == nil {
			continue
		}
		counts := map[string]int{}
		for _, r := range v.ReplicaStatus {
			counts[r.State]++
		}
		for st, k := range counts {
			ch <- prometheus.MustNewConstMetric(descCatReplicas, prometheus.GaugeValue, float64(k), n, st)
		}
	}
}
