package coordinator

import (
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/npumesh/npumesh/internal/openai"
	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// pick chooses the node for one attempt: least outstanding requests among
// the live, non-draining nodes that hold the model and were not tried yet,
// ties broken at random so equal nodes share the work.
func (c *Coordinator) pick(model string, tried map[string]bool) (*member, *openai.Error) {
	members := c.reg.list()
	if len(members) == 0 {
		return nil, openai.ErrUnavailable("no node is registered with the coordinator; start one with: npumesh node --coordinator ...")
	}
	var best []*member
	bestN := int32(1 << 30)
	known, full := false, false
	for _, m := range members {
		models, draining := m.snapshot()
		if _, ok := models[model]; !ok {
			continue
		}
		known = true
		if draining || tried[m.name] {
			continue
		}
		n := m.outstanding.Load()
		if int(n) >= c.cfg.MaxOutstandingPerNode {
			full = true
			continue
		}
		switch {
		case n < bestN:
			bestN, best = n, append(best[:0], m)
		case n == bestN:
			best = append(best, m)
		}
	}
	switch {
	case len(best) > 0:
		return best[rand.IntN(len(best))], nil
	case !known:
		return nil, openai.ErrModelNotFound(model)
	case full:
		return nil, openai.ErrOverloaded(time.Second)
	}
	return nil, openai.ErrUnavailable("no healthy node can serve model " + model + " right now")
}

// modelInfo returns what the live nodes report of a model, or nil.
func (c *Coordinator) modelInfo(model string) *pb.ModelInfo {
	for _, m := range c.reg.list() {
		models, _ := m.snapshot()
		if mi, ok := models[model]; ok {
			return mi
		}
	}
	return nil
}

// httpStatusRetryable says whether a failure with this status may succeed on
// another node.
func httpStatusRetryable(status int) bool {
	return status >= 500 || status == http.StatusTooManyRequests
}
