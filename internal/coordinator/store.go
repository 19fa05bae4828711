package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Store keeps the coordinator state that must survive a restart: join
// tokens, revocations and node identities. The cluster CA is not in it (it
// stays in the data dir's ca/). FileStore keeps it in one JSON file; an
// etcd-backed Store, for several coordinators, implements Update as a
// compare-and-swap transaction retried on conflict.
type Store interface {
	// Load returns a copy of the current state.
	Load(ctx context.Context) (*State, error)
	// Update applies f to a copy of the current state and, when f returns
	// nil, stores the result atomically; when f fails nothing changes and
	// its error is returned. Updates are serialized. f may be called more
	// than once (an etcd store retries on conflict), so it must only read
	// and change the state it is given.
	Update(ctx context.Context, f func(*State) error) error
}

// State is the persistent coordinator state. Maps are never nil in a State
// a Store hands out.
type State struct {
	// Tokens by id.
	Tokens map[string]*TokenRecord `json:"tokens"`
	// Revoked node names.
	Revoked map[string]*Revocation `json:"revoked"`
	// RevokedSerials maps the hex serials of revoked certificates to their
	// expiry, after which they need not be remembered.
	RevokedSerials map[string]time.Time `json:"revoked_serials"`
	// Nodes by name: every node enrolled or seen.
	Nodes map[string]*NodeRecord `json:"nodes"`
}

// TokenRecord is a join token as stored: a hash of the secret, never the
// secret.
type TokenRecord struct {
	ID          string    `json:"id"`
	SecretHash  string    `json:"secret_sha256"`
	Created     time.Time `json:"created"`
	Expires     time.Time `json:"expires"`
	Uses        int       `json:"uses"`
	UsesLeft    int       `json:"uses_left"`
	Description string    `json:"description,omitempty"`
}

// Revocation is a revoked node name.
type Revocation struct {
	Name   string    `json:"name"`
	At     time.Time `json:"at"`
	Reason string    `json:"reason,omitempty"`
}

// NodeRecord is what the coordinator remembers of a node identity.
type NodeRecord struct {
	Name        string    `json:"name"`
	FirstSeen   time.Time `json:"first_seen"`
	LastSeen    time.Time `json:"last_seen"`
	LastAddress string    `json:"last_address,omitempty"`
	// CertSerial and CertExpires describe the newest certificate issued to
	// or presented by the node.
	CertSerial  string    `json:"cert_serial,omitempty"`
	CertExpires time.Time `json:"cert_expires"`
	// Certs are all its certificates not yet expired (hex serial to
	// expiry), so that a revocation refuses every one of them.
	Certs map[string]time.Time `json:"certs,omitempty"`
}

func (s *State) init() {
	if s.Tokens == nil {
		s.Tokens = map[string]*TokenRecord{}
	}
	if s.Revoked == nil {
		s.Revoked = map[string]*Revocation{}
	}
	if s.RevokedSerials == nil {
		s.RevokedSerials = map[string]time.Time{}
	}
	if s.Nodes == nil {
		s.Nodes = map[string]*NodeRecord{}
	}
}

// clone deep-copies s through JSON, the form it is stored in anyway.
func (s *State) clone() (*State, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	out := &State{}
	if err := json.Unmarshal(b, out); err != nil {
		return nil, err
	}
	out.init()
	return out, nil
}

// prune forgets what can no longer matter: expired revoked serials and
// node certificates, and tokens expired for more than a day.
func (s *State) prune(now time.Time) {
	for serial, exp := range s.RevokedSerials {
		if now.After(exp) {
			delete(s.RevokedSerials, serial)
		}
	}
	for _, n := range s.Nodes {
		for serial, exp := range n.Certs {
			if now.After(exp) {
				delete(n.Certs, serial)
			}
		}
	}
	for id, t := range s.Tokens {
		if now.Sub(t.Expires) > 24*time.Hour {
			delete(s.Tokens, id)
		}
	}
}

// FileStore is a Store in one JSON file, replaced atomically (temporary
// file, fsync, rename, fsync of the directory) on every update. With an
// empty path it keeps the state in memory only.
type FileStore struct {
	path string

	mu    sync.Mutex // guards state and serializes updates
	state *State
}

var _ Store = (*FileStore)(nil)

// StateFile is the name of the state file in a coordinator data dir.
const StateFile = "state.json"

// OpenFileStore reads path (a missing file is an empty state).
func OpenFileStore(path string) (*FileStore, error) {
	s := &FileStore{path: path, state: &State{}}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("coordinator state: %w", err)
	default:
		if err := json.Unmarshal(b, s.state); err != nil {
			return nil, fmt.Errorf("coordinator state %s is corrupt (%v); restore it from a backup or move it away to start with no tokens, revocations or node records", path, err)
		}
	}
	s.state.init()
	return s, nil
}

// NewMemoryStore returns a Store that forgets everything on exit.
func NewMemoryStore() *FileStore {
	s := &FileStore{state: &State{}}
	s.state.init()
	return s
}

// Load implements Store.
func (s *FileStore) Load(context.Context) (*State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state.clone()
}

// Update implements Store.
func (s *FileStore) Update(_ context.Context, f func(*State) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	next, err := s.state.clone()
	if err != nil {
		return err
	}
	if err := f(next); err != nil {
		return err
	}
	next.prune(time.Now())
	if s.path != "" {
		b, err := json.MarshalIndent(next, "", "  ")
		if err != nil {
			return fmt.Errorf("coordinator state: %w", err)
		}
		if err := writeDurable(s.path, append(b, '\n')); err != nil {
			return fmt.Errorf("coordinator state: %w", err)
		}
	}
	s.state = next
	return nil
}

// writeDurable replaces path with data (mode 0600) so that after a crash
// the file holds either the old or the new content, and the new content
// once writeDurable has returned.
func writeDurable(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
