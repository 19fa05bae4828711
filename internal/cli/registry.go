package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/npumesh/npumesh/internal/coordinator"
)

// etcdRegistry connects a coordinator to the etcd cluster of a --registry
// URL: its Store becomes the shared EtcdStore (seeded once from the local
// state, so a coordinator moved to etcd keeps its tokens and records), and
// it joins the other coordinators for the live-node view and the election
// of the leader.
func etcdRegistry(ctx context.Context, log *slog.Logger, url string, ttl time.Duration, listen string, local coordinator.Store) (coordinator.Store, *coordinator.EtcdRegistry, error) {
	cli, err := coordinator.DialEtcd(ctx, url)
	if err != nil {
		return nil, nil, fmt.Errorf("--registry: %w", err)
	}
	store := coordinator.NewEtcdStore(cli, coordinator.DefaultEtcdPrefix)
	if local != nil {
		st, err := local.Load(ctx)
		if err == nil && len(st.Tokens)+len(st.Revoked)+len(st.Nodes) > 0 {
			seeded, err := store.Seed(ctx, st)
			if err != nil {
				cli.Close()
				return nil, nil, fmt.Errorf("--registry: %w", err)
			}
			if seeded {
				log.Info("copied the local coordinator state into etcd", "tokens", len(st.Tokens), "revoked", len(st.Revoked), "nodes", len(st.Nodes))
			}
		}
	}
	host, _ := os.Hostname()
	id := host + "-" + listen
	log.Info("coordinator state in etcd; joining the other coordinators", "registry", url, "registry_id", id, "ttl", ttl)
	return store, &coordinator.EtcdRegistry{Client: cli, TTL: ttl, ID: id}, nil
}
