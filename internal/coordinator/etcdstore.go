package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// EtcdStore is a Store in etcd, shared by every coordinator of one
// cluster. The whole State is one JSON value under PREFIX/state, written
// with a compare-and-swap Txn on the key's mod revision and retried on
// conflict, so updates from several coordinators are serialized exactly as
// FileStore serializes them within one process. One value keeps the
// transaction atomic whatever f changes (etcd caps a Txn at 128 operations
// by default); its limit is etcd's request size (1.5 MiB by default), some
// thousands of node records.
type EtcdStore struct {
	cli *clientv3.Client
	key string
}

var _ Store = (*EtcdStore)(nil)

// DefaultEtcdPrefix is where a cluster keeps its keys unless told otherwise.
const DefaultEtcdPrefix = "/npumesh/"

// NewEtcdStore keeps the state under prefix (DefaultEtcdPrefix when "").
func NewEtcdStore(cli *clientv3.Client, prefix string) *EtcdStore {
	if prefix == "" {
		prefix = DefaultEtcdPrefix
	}
	return &EtcdStore{cli: cli, key: prefix + "state"}
}

// etcdOpTimeout bounds one etcd round trip, so an unreachable etcd fails
// the request that needed it instead of hanging it.
const etcdOpTimeout = 5 * time.Second

// get returns the stored state and the mod revision of its key (0: none).
func (s *EtcdStore) get(ctx context.Context) (*State, int64, error) {
	ctx, cancel := context.WithTimeout(ctx, etcdOpTimeout)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.key)
	if err != nil {
		return nil, 0, fmt.Errorf("coordinator state in etcd: %w", err)
	}
	st := &State{}
	var rev int64
	if len(resp.Kvs) > 0 {
		kv := resp.Kvs[0]
		if err := json.Unmarshal(kv.Value, st); err != nil {
			return nil, 0, fmt.Errorf("coordinator state in etcd key %s is corrupt (%v); restore it from a backup (etcdctl snapshot) or delete the key to start with no tokens, revocations or node records", s.key, err)
		}
		rev = kv.ModRevision
	}
	st.init()
	return st, rev, nil
}

// Load implements Store.
func (s *EtcdStore) Load(ctx context.Context) (*State, error) {
	st, _, err := s.get(ctx)
	return st, err
}

// Update implements Store.
func (s *EtcdStore) Update(ctx context.Context, f func(*State) error) error {
	for attempt := 0; ; attempt++ {
		st, rev, err := s.get(ctx)
		if err != nil {
			return err
		}
		if err := f(st); err != nil {
			return err
		}
		st.prune(time.Now())
		b, err := json.Marshal(st)
		if err != nil {
			return fmt.Errorf("coordinator state: %w", err)
		}
		tctx, cancel := context.WithTimeout(ctx, etcdOpTimeout)
		resp, err := s.cli.Txn(tctx).
			If(clientv3.Compare(clientv3.ModRevision(s.key), "=", rev)).
			Then(clientv3.OpPut(s.key, string(b))).
			Commit()
		cancel()
		if err != nil {
			return fmt.Errorf("coordinator state in etcd: %w", err)
		}
		if resp.Succeeded {
			return nil
		}
		// Another coordinator wrote in between: start again from its state.
		if attempt >= 100 {
			return errors.New("coordinator state in etcd: too many conflicting updates; try again")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt%10) * time.Millisecond):
		}
	}
}

// Seed stores st when etcd holds no state yet (the first coordinator moved
// from a data dir to etcd brings its tokens and records along); it reports
// whether it did.
func (s *EtcdStore) Seed(ctx context.Context, st *State) (bool, error) {
	b, err := json.Marshal(st)
	if err != nil {
		return false, err
	}
	ctx, cancel := context.WithTimeout(ctx, etcdOpTimeout)
	defer cancel()
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(s.key), "=", 0)).
		Then(clientv3.OpPut(s.key, string(b))).
		Commit()
	if err != nil {
		return false, fmt.Errorf("coordinator state in etcd: %w", err)
	}
	return resp.Succeeded, nil
}

// ParseEtcdURL reads a --registry value, etcd://HOST:PORT[,HOST:PORT...]
// (a bare host takes port 2379), into etcd client endpoints. The
// connection is plain HTTP: run etcd on a trusted network or a loopback
// address; see docs/architecture.md.
func ParseEtcdURL(s string) ([]string, error) {
	rest, ok := strings.CutPrefix(s, "etcd://")
	if !ok {
		return nil, fmt.Errorf("registry %q: want etcd://HOST:PORT[,HOST:PORT...]", s)
	}
	rest, _, _ = strings.Cut(rest, "/")
	var eps []string
	for _, h := range strings.Split(rest, ",") {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(h); err != nil {
			h = net.JoinHostPort(strings.Trim(h, "[]"), "2379")
		}
		eps = append(eps, "http://"+h)
	}
	if len(eps) == 0 {
		return nil, fmt.Errorf("registry %q names no etcd endpoint; want etcd://HOST:PORT[,HOST:PORT...]", s)
	}
	return eps, nil
}

// DialEtcd connects to the etcd cluster of a --registry URL and checks
// that it answers.
func DialEtcd(ctx context.Context, url string) (*clientv3.Client, error) {
	eps, err := ParseEtcdURL(url)
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            eps,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("registry %s: %w", url, err)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cli.Get(cctx, "health-check"); err != nil {
		cli.Close()
		return nil, fmt.Errorf("registry %s: etcd does not answer (%v); check that etcd runs there and that this host reaches it", url, err)
	}
	return cli, nil
}
