package coordinator

import (
	"context"
	"fmt"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/npumesh/npumesh/internal/modelstore"
)

// Placement: every catalog model should be held ("loaded") by Replicas
// nodes. The loop below keeps the assignment: it drops nodes that left,
// does not count replicas that failed (they stay listed so `model ls` shows
// why), and adds nodes that fit, spreading models across nodes. Nodes learn
// their assignment through GetAssignments and pull the files themselves.

// placeInterval is how often placement is re-checked without a trigger.
const placeInterval = 500 * time.Millisecond

// maxDecisions bounds the decision log kept per model.
const maxDecisions = 8

// placeGrace is how long a node that left keeps its assignment.
const placeGrace = time.Minute

// placeLoop re-places models until ctx ends.
func (c *Coordinator) placeLoop(ctx context.Context) {
	if c.cat == nil || c.cat.store == nil {
		return
	}
	t := time.NewTicker(placeInterval)
	defer t.Stop()
	for {
		c.place()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.cat.kick:
		}
	}
}

// kvBudget estimates the KV-cache memory a model needs beside its weights
// when the uploader did not say (the CLI computes the engine's default
// budget from the GGUF metadata): a quarter of the weights within
// [64 MiB, 4 GiB], the engine's cap.
func kvBudget(size int64) int64 { return min(max(size/4, 64<<20), 4<<30) }

// need is the memory a replica takes: weights plus KV budget.
func (e *catalogEntry) need() int64 {
	if e.KVBudget > 0 {
		return e.manifest.Size() + e.KVBudget
	}
	return e.manifest.Size() + kvBudget(e.manifest.Size())
}

// candidate is a live node as placement sees it.
type candidate struct {
	name     string
	os, arch string
	free     int64 // memory available minus what is already placed on it
	known    bool  // the node reported its available memory
	placed   int   // catalog models assigned
}

// compatible says why a node cannot serve a model, "" when it can. The
// built-in engine is pure Go and runs GGUF files and Hugging Face
// safetensors directories on every architecture npumesh ships for (whether
// it knows the model's architecture, a node finds out when it loads it, and
// reports the replica failed with the engine's reason if not).
func compatible(c candidate, m *modelstore.Manifest) string {
	switch m.Format {
	case modelstore.FormatGGUF, modelstore.FormatSafetensors:
	default:
		return "the built-in engine loads GGUF and safetensors; " + m.Format + " models need an upstream backend"
	}
	if c.os != "" && c.os != "linux" && c.os != runtime.GOOS {
		return "os " + c.os + " is not supported"
	}
	switch c.arch {
	case "", "amd64", "arm64", "riscv64":
	default:
		return "arch " + c.arch + " has no engine build"
	}
	return ""
}

func (c *Coordinator) place() {
	cat := c.cat
	if time.Now().Before(cat.settle) {
		return
	}
	live := map[string]*candidate{}
	var order []string
	for _, m := range c.reg.list() {
		m.mu.Lock()
		if !m.draining {
			live[m.name] = &candidate{name: m.name, os: m.info.GetOs(), arch: m.info.GetArch(), free: int64(m.info.GetMemoryAvailableBytes()), known: m.info.GetMemoryAvailableBytes() > 0}
			order = append(order, m.name)
		}
		m.mu.Unlock()
	}
	cat.mu.Lock()
	defer cat.mu.Unlock()
	names := make([]string, 0, len(cat.entries))
	for n := range cat.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	// Charge every node for what is placed on it but not yet loaded there
	// (a loaded model is already out of the memory it reported).
	for _, n := range names {
		e := cat.entries[n]
		for _, node := range e.Assigned {
			if cd := live[node]; cd != nil {
				cd.placed++
				if mi := cat.observed[node][n]; mi == nil || mi.GetState() != "loaded" {
					cd.free -= e.need()
				}
			}
		}
	}
	changed := false
	now := time.Now().UTC().Format("15:04:05")
	for _, n := range names {
		e := cat.entries[n]
		var keep []string
		healthy := 0
		for _, node := range e.Assigned {
			if c.reg.get(node) == nil { // left (a draining node counts until it goes)
				if e.Gone == nil {
					e.Gone = map[string]time.Time{}
				}
				at, seen := e.Gone[node]
				if !seen {
					e.Gone[node] = time.Now()
					e.logf(now, "%s left; re-placing its replica", node)
					changed = true
				} else if time.Since(at) > placeGrace {
					delete(e.Gone, node)
					e.logf(now, "%s gone for %s; dropped from the model", node, placeGrace)
					changed = true
					continue
				}
				keep = append(keep, node)
				continue
			}
			if _, was := e.Gone[node]; was {
				delete(e.Gone, node)
				e.logf(now, "%s is back", node)
				changed = true
			}
			keep = append(keep, node)
			if mi := cat.observed[node][n]; (mi == nil || mi.GetState() != "failed") && live[node] != nil {
				healthy++
			}
		}
		e.Assigned = keep
		if healthy > e.Replicas {
			changed = e.trim(cat, now, healthy) || changed
			continue
		}
		if healthy == e.Replicas {
			continue
		}
		need := e.need()
		var fits []*candidate
		why := map[string][]string{} // reason -> nodes
		for _, name := range order {
			cd := live[name]
			if contains(e.Assigned, name) {
				continue
			}
			if r := compatible(*cd, e.manifest); r != "" {
				why[r] = append(why[r], name)
				continue
			}
			if cd.known && cd.free < need {
				r := fmt.Sprintf("needs %s (weights + KV) but has %s free", modelstore.HumanBytes(need), modelstore.HumanBytes(max(cd.free, 0)))
				why[r] = append(why[r], name)
				continue
			}
			fits = append(fits, cd)
		}
		// Spread: fewest models first, then most free memory.
		sort.SliceStable(fits, func(i, j int) bool {
			if fits[i].placed != fits[j].placed {
				return fits[i].placed < fits[j].placed
			}
			return fits[i].free > fits[j].free
		})
		for _, cd := range fits {
			if healthy >= e.Replicas {
				break
			}
			e.Assigned = append(e.Assigned, cd.name)
			cd.placed++
			cd.free -= need
			healthy++
			changed = true
			e.logf(now, "placed on %s (%d model(s) there, %s free after)", cd.name, cd.placed, modelstore.HumanBytes(max(cd.free, 0)))
		}
		if healthy < e.Replicas {
			msg := fmt.Sprintf("%d of %d replicas placed: no live node can take another", healthy, e.Replicas)
			if len(why) > 0 {
				var rs []string
				for r, nodes := range why {
					rs = append(rs, strings.Join(nodes, ", ")+": "+r)
				}
				sort.Strings(rs)
				msg += " (" + strings.Join(rs, "; ") + ")"
			}
			if len(e.Decisions) == 0 || !strings.HasSuffix(e.Decisions[len(e.Decisions)-1], msg) {
				e.logf(now, "%s", msg)
				changed = true
			}
		}
	}
	if changed {
		if err := cat.saveLocked(); err != nil {
			c.log.Warn("save the model catalog", "err", err)
		}
	}
}

// trim drops surplus replicas (after a node came back): nodes not yet
// loaded first, newest placement first.
func (e *catalogEntry) trim(cat *catalog, now string, healthy int) bool {
	changed := false
	for _, wantLoaded := range []bool{false, true} {
		for i := len(e.Assigned) - 1; i >= 0 && healthy > e.Replicas; i-- {
			node := e.Assigned[i]
			mi := cat.observed[node][e.Name]
			if _, gone := e.Gone[node]; gone || mi.GetState() == "failed" || (mi.GetState() == "loaded") != wantLoaded {
				continue
			}
			e.Assigned = append(e.Assigned[:i:i], e.Assigned[i+1:]...)
			healthy--
			changed = true
			e.logf(now, "removed from %s: %d replicas wanted", node, e.Replicas)
		}
	}
	return changed
}

func (e *catalogEntry) logf(now, format string, args ...any) {
	e.Decisions = append(e.Decisions, now+" "+fmt.Sprintf(format, args...))
	if len(e.Decisions) > maxDecisions {
		e.Decisions = e.Decisions[len(e.Decisions)-maxDecisions:]
	}
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}
