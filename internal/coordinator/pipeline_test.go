package coordinator

import (
	"context"
	"strings"
	"testing"
	"time"

	pb "github.com/npumesh/npumesh/proto/npumesh/v1"
)

// pipelineCoordinator has members serving model "m" (8 layers of 100 MiB,
// 1 KiB of KV per layer and token, context 1024) with the given free
// memory, measured decode speeds and round trips.
func pipelineCoordinator(t *testing.T, free map[string]uint64, tokS map[string]float64) *Coordinator {
	t.Helper()
	c := placeCoordinator(free)
	if err := c.initRouting(); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	c.pipes.rtt = map[string]rttSample{}
	for name, m := range c.reg.members {
		m.addr = name + ".lan:7000"
		m.models = map[string]*pb.ModelInfo{"m": {
			Id: "m", Backend: "builtin", State: "loaded", ContextLength: 1024, Layers: 8, HiddenSize: 1024,
			LayerBytes: 100 << 20, EmbedBytes: 50 << 20, HeadBytes: 50 << 20, KvBytesPerLayerToken: 1024, DecodeTokS: tokS[name],
		}}
		c.pipes.rtt[name] = rttSample{rtt: time.Millisecond, at: now}
	}
	return c
}

func TestPlanPipeline(t *testing.T) {
	const mib = 1 << 20
	ctx := context.Background()
	t.Run("whole when a node holds it", func(t *testing.T) {
		c := pipelineCoordinator(t, map[string]uint64{"a": 4096 * mib, "b": 300 * mib}, nil)
		if pp, err := c.planPipeline(ctx, "m", nil); err != nil || pp != nil {
			t.Fatalf("got plan %v, error %v; want the model served whole", pp, err)
		}
	})
	t.Run("automatic when no node holds it", func(t *testing.T) {
		// The model needs 8x(100+1) + 100 MiB = 908 MiB; each node holds 500.
		c := pipelineCoordinator(t, map[string]uint64{"a": 500 * mib, "b": 500 * mib, "c": 500 * mib}, nil)
		pp, err := c.planPipeline(ctx, "m", nil)
		if err != nil || pp == nil {
			t.Fatalf("got plan %v, error %v; want a pipeline", pp, err)
		}
		st := pp.pb.GetStages()
		if len(st) != 2 || st[0].GetLayerLo() != 0 || st[1].GetLayerHi() != 8 || st[0].GetLayerHi() != st[1].GetLayerLo() {
			t.Fatalf("stages %v", st)
		}
		if pp.first.name != st[0].GetNode() || st[1].GetAddress() != st[1].GetNode()+".lan:7000" {
			t.Errorf("first %s, stages %v", pp.first.name, st)
		}
		if pp.pb.GetActivations() != "f16" || pp.pb.GetMicroBatches() != 2 {
			t.Errorf("activations %q, micro-batches %d; want f16 and 2 (one per stage)", pp.pb.GetActivations(), pp.pb.GetMicroBatches())
		}
	})
	t.Run("requested stages split by measured speed", func(t *testing.T) {
		c := pipelineCoordinator(t, map[string]uint64{"fast": 4096 * mib, "slow": 4096 * mib}, map[string]float64{"fast": 30, "slow": 10})
		if err := c.SetShard("m", ShardSpec{Stages: 2, Activations: "f32"}); err != nil {
			t.Fatal(err)
		}
		pp, layers := layersByNode(t, c)
		if layers["fast"] <= layers["slow"] {
			t.Errorf("layers %v: the 3x faster node should run more", layers)
		}
		if pp.pb.GetActivations() != "f32" {
			t.Errorf("activations %q", pp.pb.GetActivations())
		}
	})
	t.Run("measured layer time wins over decode speed", func(t *testing.T) {
		// By decode speed "a" looks 3x faster, but its measured layer
		// time says it is 3x slower (its decode speed was taken while
		// it served something else too).
		c := pipelineCoordinator(t, map[string]uint64{"a": 4096 * mib, "b": 4096 * mib}, map[string]float64{"a": 30, "b": 10})
		c.reg.members["a"].models["m"].LayerSeconds = 0.03
		c.reg.members["b"].models["m"].LayerSeconds = 0.01
		c.SetShard("m", ShardSpec{Stages: 2})
		_, layers := layersByNode(t, c)
		if layers["b"] <= layers["a"] {
			t.Errorf("layers %v: b, 3x faster per layer, should run more", layers)
		}
	})
	t.Run("re-plan without a failed node", func(t *testing.T) {
		c := pipelineCoordinator(t, map[string]uint64{"a": 4096 * mib, "b": 4096 * mib, "c": 4096 * mib, "d": 4096 * mib}, nil)
		c.SetShard("m", ShardSpec{Stages: 3})
		pp, err := c.planPipeline(ctx, "m", nil)
		if err != nil || len(pp.pb.GetStages()) != 3 {
			t.Fatalf("plan %v, error %v", pp, err)
		}
		dead := pp.pb.GetStages()[1].GetNode()
		pp, err = c.planPipeline(ctx, "m", map[string]bool{dead: true})
		if err != nil || len(pp.pb.GetStages()) != 3 {
			t.Fatalf("re-plan: %v, error %v", pp, err)
		}
		for _, s := range pp.pb.GetStages() {
			if s.GetNode() == dead {
				t.Errorf("re-plan uses the failed node %s: %v", dead, pp.pb.GetStages())
			}
		}
		// With two nodes left the 3 asked for become 2; with one, whole.
		pp, err = c.planPipeline(ctx, "m", map[string]bool{"a": true, "b": true})
		if err != nil || len(pp.pb.GetStages()) != 2 {
			t.Fatalf("two nodes left: %v, error %v", pp, err)
		}
		if pp, err = c.planPipeline(ctx, "m", map[string]bool{"a": true, "b": true, "c": true}); err != nil || pp != nil {
			t.Fatalf("one node left that holds the model: %v, error %v", pp, err)
		}
	})
	t.Run("does not fit", func(t *testing.T) {
		c := pipelineCoordinator(t, map[string]uint64{"a": 300 * mib, "b": 300 * mib}, nil)
		_, err := c.planPipeline(ctx, "m", nil)
		if err == nil || !strings.Contains(err.Message, "cannot plan") {
			t.Fatalf("got %v; want a clear planning error", err)
		}
	})
	t.Run("bad specs", func(t *testing.T) {
		c := pipelineCoordinator(t, map[string]uint64{"a": 300 * mib}, nil)
		for _, s := range []ShardSpec{{Stages: -1}, {Stages: 2, Activations: "f8"}} {
			if err := c.SetShard("m", s); err == nil {
				t.Errorf("spec %+v accepted", s)
			}
		}
		if err := c.SetShard("", ShardSpec{Stages: 2}); err == nil {
			t.Error("empty model accepted")
		}
	})
}

// TestPlanStable: a plan stays while its nodes stay (speeds move, the
// plan does not), and a node whose stage failed is left out of new plans.
func TestPlanStable(t *testing.T) {
	const mib = 1 << 20
	ctx := context.Background()
	c := pipelineCoordinator(t, map[string]uint64{"a": 4096 * mib, "b": 4096 * mib, "c": 4096 * mib}, map[string]float64{"a": 10, "b": 10, "c": 10})
	c.SetShard("m", ShardSpec{Stages: 2})
	p1, err := c.planPipeline(ctx, "m", nil)
	if err != nil || p1 == nil {
		t.Fatal(p1, err)
	}
	for _, m := range c.reg.members {
		m.models["m"].DecodeTokS *= 3 // measured speeds move
	}
	if p2, _ := c.planPipeline(ctx, "m", nil); p2 != p1 {
		t.Fatalf("plan changed with the same nodes: %v then %v", p1.pb, p2.pb)
	}
	dead := p1.pb.GetStages()[1].GetNode()
	c.stageFailed(dead)
	p3, err := c.planPipeline(ctx, "m", nil)
	if err != nil || p3 == nil {
		t.Fatal(p3, err)
	}
	for _, s := range p3.pb.GetStages() {
		if s.GetNode() == dead {
			t.Fatalf("plan after %s failed still uses it: %v", dead, p3.pb.GetStages())
		}
	}
}

// layersByNode plans model "m" and returns the plan and each node's number
// of layers.
func layersByNode(t *testing.T, c *Coordinator) (*pipelinePlan, map[string]int32) {
	t.Helper()
	pp, err := c.planPipeline(context.Background(), "m", nil)
	if err != nil || pp == nil {
		t.Fatalf("got plan %v, error %v", pp, err)
	}
	layers := map[string]int32{}
	for _, s := range pp.pb.GetStages() {
		layers[s.GetNode()] = s.GetLayerHi() - s.GetLayerLo()
	}
	return pp, layers
}
