// Package archtest checks the import rules of docs/architecture.md.
package archtest

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/npumesh/npumesh/internal/testdata"
)

const mod = "github.com/npumesh/npumesh/"

// forbidden lists, per package, import paths (prefixes) that must not appear
// anywhere in its transitive dependencies.
var forbidden = map[string][]string{
	"internal/engine":      {"net/http", "google.golang.org/grpc", mod + "proto"},
	"internal/gguf":        {"net/http", "google.golang.org/grpc", mod + "proto"},
	"internal/tokenizer":   {"net/http", "google.golang.org/grpc", mod + "proto"},
	"internal/accel":       {"net/http", "google.golang.org/grpc", mod + "proto"},
	"internal/safetensors": {"net/http", "google.golang.org/grpc", mod + "proto"},
	"internal/kvcache":     {"net/http", "google.golang.org/grpc", mod + "proto"},
	// The router imports blockhash: it must stay free of the cache and the engine.
	"internal/kvcache/blockhash": {"net/http", "google.golang.org/grpc", mod + "proto", mod + "internal/kvcache", mod + "internal/engine"},
	"internal/synth":             {"net/http", "google.golang.org/grpc", mod + "proto"},
	// Memory for the engine and the kernels: it knows neither.
	"internal/hugemem": {"net/http", "google.golang.org/grpc", mod + "proto", mod + "internal/engine", mod + "internal/kernels"},
	// The planner is a pure function; the coordinator feeds it.
	"internal/shard":    {"net", "net/http", "google.golang.org/grpc", mod + "proto", mod + "internal/engine"},
	"internal/linkemu":  {"google.golang.org/grpc", mod + "internal/engine", mod + "internal/node", mod + "internal/coordinator"},
	"internal/openai":   {"google.golang.org/grpc", mod + "proto", mod + "internal/engine"},
	"internal/pki":      {mod + "internal/engine", mod + "internal/coordinator", mod + "internal/node"},
	"internal/upstream": {mod + "internal/coordinator"},
	// mDNS answers are hints: discovery decides nothing about trust and
	// knows neither side of the cluster.
	"internal/discovery": {
		"google.golang.org/grpc", mod + "proto", mod + "internal/pki", mod + "internal/coordinator", mod + "internal/node", mod + "internal/engine",
	},
	// The model store keeps verified bytes on disk; moving them and placing
	// models is the coordinator's and the node's job.
	"internal/modelstore": {"net/http", "google.golang.org/grpc", mod + "proto", mod + "internal/engine"},
	"internal/coordinator": {
		mod + "internal/engine", mod + "internal/node", mod + "internal/gguf",
	},
	// The router decides from what it is given: no network, no engine side.
	"internal/route": {
		"net/http", "google.golang.org/grpc", mod + "proto", mod + "internal/engine", mod + "internal/kvcache", mod + "internal/tokenizer",
	},
}

func TestImportRules(t *testing.T) {
	root := testdata.Root(t)
	for pkg, bad := range forbidden {
		t.Run(pkg, func(t *testing.T) {
			cmd := exec.Command("go", "list", "-deps", "./"+pkg)
			cmd.Dir = root
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("go list %s: %v", pkg, err)
			}
			deps := strings.Fields(string(out))
			if len(deps) == 0 {
				t.Fatalf("go list returned no dependencies for %s", pkg)
			}
			for _, d := range deps {
				if d == mod+pkg || strings.HasPrefix(d, mod+pkg+"/") {
					continue // the package itself and its own subpackages
				}
				for _, b := range bad {
					if d == b || strings.HasPrefix(d, b+"/") {
						t.Errorf("%s depends on %s, which docs/architecture.md forbids", pkg, d)
					}
				}
			}
		})
	}
}
