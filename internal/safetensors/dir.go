package safetensors

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// File names of a Hugging Face model directory.
const (
	ConfigFile           = "config.json"
	GenerationConfigFile = "generation_config.json"
	TokenizerFile        = "tokenizer.json"
	TokenizerConfigFile  = "tokenizer_config.json"
	WeightsFile          = "model.safetensors"
	IndexFile            = "model.safetensors.index.json"
)

// Limits on the JSON side files, far above real ones (the index of a
// 600B-parameter model is about 10 MB).
const (
	maxJSONFile = 64 << 20
	// MaxShards bounds the files one index may name: each is a mapping,
	// and the kernel's default limit is about 65000 mappings per process.
	MaxShards = 4096
)

// Index is a parsed model.safetensors.index.json.
type Index struct {
	// TotalSize is metadata.total_size, the bytes of tensor data the
	// shards hold together; 0 when absent. Informational: tools disagree
	// on it, so it is not checked.
	TotalSize int64
	// WeightMap maps each tensor name to the shard file holding it.
	WeightMap map[string]string
}

// Shards returns the distinct shard files of the index, sorted.
func (x *Index) Shards() []string {
	var s []string
	for _, f := range x.WeightMap {
		s = append(s, f)
	}
	slices.Sort(s)
	return slices.Compact(s)
}

// ParseIndex parses model.safetensors.index.json; name is used in errors.
// Shard names must be plain file names ending in .safetensors, so an index
// cannot point outside its directory.
func ParseIndex(name string, data []byte) (*Index, error) {
	f, err := parseObject(name, data)
	if err != nil {
		return nil, err
	}
	x := &Index{}
	if m := f.object("metadata"); m != nil {
		if n, ok := m.integer("total_size", 0, math.MaxInt); ok {
			x.TotalSize = int64(n)
		}
		if m.err != nil {
			return nil, m.err
		}
	}
	if f.err != nil {
		return nil, f.err
	}
	r, ok := f.get("weight_map")
	if !ok {
		return nil, fmt.Errorf("safetensors %s: no weight_map: %w", name, ErrConfig)
	}
	if err := json.Unmarshal(r, &x.WeightMap); err != nil || x.WeightMap == nil {
		return nil, fmt.Errorf("safetensors %s: weight_map %s is not an object of file names: %w", name, short(r), ErrConfig)
	}
	if len(x.WeightMap) == 0 {
		return nil, fmt.Errorf("safetensors %s: weight_map is empty: %w", name, ErrConfig)
	}
	for tensor, shard := range x.WeightMap {
		if !validShardName(shard) {
			return nil, fmt.Errorf("safetensors %s: tensor %q: shard %q is not a .safetensors file name in the model directory: %w",
				name, tensor, shard, ErrConfig)
		}
	}
	if n := len(x.Shards()); n > MaxShards {
		return nil, fmt.Errorf("safetensors %s: %d shards (at most %d): %w", name, n, MaxShards, ErrConfig)
	}
	return x, nil
}

func validShardName(s string) bool {
	return strings.HasSuffix(s, ".safetensors") && len(s) > len(".safetensors") &&
		!strings.ContainsAny(s, `/\`+"\x00") && s != ".." && filepath.IsLocal(s)
}

// Model is a Hugging Face model directory opened by OpenDir: its config,
// the paths of its tokenizer files, and its tensors, mapped. Its methods
// are safe for concurrent use; Close must not run while tensor data is
// still in use.
type Model struct {
	Dir    string
	Config *Config
	// Generation is generation_config.json, nil when the file is absent.
	Generation *GenerationConfig
	// Paths of the side files, "" when absent. The tokenizer files are
	// only located here; internal/tokenizer reads them.
	TokenizerPath        string
	TokenizerConfigPath  string
	GenerationConfigPath string

	files  []*File
	byName map[string]*Tensor
	names  []string
}

// OpenDir opens a Hugging Face model directory: config.json (required),
// generation_config.json (optional), and the weights from model.safetensors
// or, when that is absent, from the shards model.safetensors.index.json
// names. Each shard is mapped once; a tensor the index places in a shard
// that does not hold it is an error, as is a tensor found in two files.
// Tensors a shard holds beyond the index are served too, as transformers
// loads whole shards.
func OpenDir(dir string) (*Model, error) {
	m := &Model{Dir: dir, byName: map[string]*Tensor{}}
	if err := m.open(); err != nil {
		m.Close() // whatever files were mapped before the failure
		return nil, err
	}
	return m, nil
}

func (m *Model) open() error {
	dir := m.Dir
	data, err := readJSONFile(filepath.Join(dir, ConfigFile))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("safetensors %s: no %s; is this a Hugging Face model directory?: %w", dir, ConfigFile, err)
		}
		return err
	}
	if m.Config, err = ParseConfig(filepath.Join(dir, ConfigFile), data); err != nil {
		return err
	}
	if p := filepath.Join(dir, GenerationConfigFile); isFile(p) {
		data, err := readJSONFile(p)
		if err != nil {
			return err
		}
		if m.Generation, err = ParseGenerationConfig(p, data); err != nil {
			return err
		}
		m.GenerationConfigPath = p
	}
	if p := filepath.Join(dir, TokenizerFile); isFile(p) {
		m.TokenizerPath = p
	}
	if p := filepath.Join(dir, TokenizerConfigFile); isFile(p) {
		m.TokenizerConfigPath = p
	}

	// transformers looks for the single file first, then the index.
	if p := filepath.Join(dir, WeightsFile); isFile(p) {
		f, err := Open(p)
		if err != nil {
			return err
		}
		m.files = append(m.files, f)
		for _, t := range f.tensors {
			m.byName[t.Name] = t
		}
	} else if p := filepath.Join(dir, IndexFile); isFile(p) {
		if err := m.openShards(p); err != nil {
			return err
		}
	} else {
		return fmt.Errorf("safetensors %s: neither %s nor %s; download the model's safetensors weights (pytorch_model.bin is not supported): %w",
			dir, WeightsFile, IndexFile, ErrNoWeights)
	}
	for name := range m.byName {
		m.names = append(m.names, name)
	}
	slices.Sort(m.names)
	return nil
}

func (m *Model) openShards(indexPath string) error {
	data, err := readJSONFile(indexPath)
	if err != nil {
		return err
	}
	idx, err := ParseIndex(indexPath, data)
	if err != nil {
		return err
	}
	byShard := map[string]*File{}
	for _, shard := range idx.Shards() {
		f, err := Open(filepath.Join(m.Dir, shard))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("safetensors %s: shard %s is missing; the download is incomplete: %w", indexPath, shard, err)
			}
			return err
		}
		m.files = append(m.files, f)
		byShard[shard] = f
		for _, t := range f.tensors {
			if other, dup := m.byName[t.Name]; dup {
				return fmt.Errorf("safetensors %s: tensor %q is in both %s and %s: %w", m.Dir, t.Name, other.File, f.Name, ErrCorrupt)
			}
			m.byName[t.Name] = t
		}
	}
	// Check in name order so the error is the same every run.
	names := make([]string, 0, len(idx.WeightMap))
	for name := range idx.WeightMap {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		shard := idx.WeightMap[name]
		if _, ok := byShard[shard].Tensor(name); !ok {
			return fmt.Errorf("safetensors %s: tensor %q is not in %s, where the index places it: %w",
				indexPath, name, shard, ErrNotFound)
		}
	}
	return nil
}

// Tensor returns the tensor with the Hugging Face name, e.g.
// "model.layers.0.self_attn.q_proj.weight".
func (m *Model) Tensor(name string) (*Tensor, bool) {
	t, ok := m.byName[name]
	return t, ok
}

// Lookup is Tensor with an error that names the directory, for loaders
// that need every tensor of an architecture.
func (m *Model) Lookup(name string) (*Tensor, error) {
	if t, ok := m.byName[name]; ok {
		return t, nil
	}
	return nil, fmt.Errorf("safetensors %s: tensor %q: %w (does the config's architecture %v match the weights?)",
		m.Dir, name, ErrNotFound, m.Config.Architectures)
}

// Names returns the names of all tensors, sorted.
func (m *Model) Names() []string { return slices.Clone(m.names) }

// Files returns the opened weight files, in shard-name order.
func (m *Model) Files() []*File { return slices.Clone(m.files) }

// Close unmaps every weight file; tensor data must not be used afterwards.
func (m *Model) Close() error {
	var errs []error
	for _, f := range m.files {
		errs = append(errs, f.Close())
	}
	m.files = nil
	return errors.Join(errs...)
}

func isFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// readJSONFile reads a side file, refusing sizes no real one reaches so a
// hostile directory cannot make us allocate without bound.
func readJSONFile(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxJSONFile+1))
	if err != nil {
		return nil, fmt.Errorf("safetensors %s: %w", p, err)
	}
	if len(data) > maxJSONFile {
		return nil, fmt.Errorf("safetensors %s: larger than %d bytes: %w", p, maxJSONFile, ErrConfig)
	}
	return data, nil
}
