package shard

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

const (
	mib = int64(1) << 20
	gib = int64(1) << 30
)

// uniform is a model of layers layers of size each, with the given extras.
func uniform(layers int, size, kv, embed, head int64) Model {
	m := Model{Layers: layers, KVBytesPerLayer: kv, EmbedBytes: embed, HeadBytes: head, Hidden: 1000}
	for range layers {
		m.LayerBytes = append(m.LayerBytes, size)
	}
	return m
}

// links builds a symmetric link function from "a-b" keys; missing pairs are
// free.
func links(rtt map[string]time.Duration, bw float64) func(a, b string) Link {
	return func(a, b string) Link {
		if d, ok := rtt[a+"-"+b]; ok {
			return Link{RTT: d, BytesPerSec: bw}
		}
		if d, ok := rtt[b+"-"+a]; ok {
			return Link{RTT: d, BytesPerSec: bw}
		}
		return Link{BytesPerSec: bw}
	}
}

func approx(a, b float64) bool { return math.Abs(a-b) <= 1e-9*max(math.Abs(a), math.Abs(b))+1e-12 }

type want struct {
	stages     string // "a[0,2) b[2,4)"
	token      float64
	bottleneck float64 // checked when > 0
}

func stagesText(p Plan) string {
	var parts []string
	for _, s := range p.Stages {
		parts = append(parts, s.Node+"["+itoa(s.Lo)+","+itoa(s.Hi)+")")
	}
	return strings.Join(parts, " ")
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

func TestMakeTable(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name  string
		m     Model
		nodes []Node
		opt   Options
		want  want
	}{
		{
			name:  "single node fits: the fastest",
			m:     uniform(4, 100, 0, 10, 10),
			nodes: []Node{{"a", 1000, 0.01}, {"b", 1000, 0.005}, {"c", 100, 0.001}},
			want:  want{stages: "b[0,4)", token: 0.02, bottleneck: 0.02},
		},
		{
			name:  "fits nowhere whole: two stages, each of two layers",
			m:     uniform(4, 100, 0, 0, 0),
			nodes: []Node{{"a", 250, 0.01}, {"b", 250, 0.01}},
			opt:   Options{Link: links(map[string]time.Duration{"a-b": ms}, 0)},
			// 4 x 0.01 compute + 1 ms RTT
			want: want{stages: "a[0,2) b[2,4)", token: 0.041, bottleneck: 0.02},
		},
		{
			name:  "the faster node takes all it can hold",
			m:     uniform(4, 100, 0, 0, 0),
			nodes: []Node{{"slow", 300, 0.03}, {"fast", 300, 0.01}},
			// fast 3 layers (0.03) + slow 1 (0.03) = 0.06 beats 2+2 (0.08); with
			// free links both orders tie on sum and max, the first found wins.
			want: want{stages: "slow[0,1) fast[1,4)", token: 0.06, bottleneck: 0.03},
		},
		{
			name: "embeddings and head decide the split and the order",
			// [0,1) needs 100+20+50 = 170; [0,2) 290; [2,3) 120+70 = 190; [1,3) 240+70 = 310
			m:     uniform(3, 100, 20, 50, 70),
			nodes: []Node{{"b", 300, 0.02}, {"a", 300, 0.01}},
			// a[0,2) b[2,3): 0.02+0.02 = 0.04; b[0,2) a[2,3): 0.04+0.01 = 0.05
			want: want{stages: "a[0,2) b[2,3)", token: 0.04, bottleneck: 0.02},
		},
		{
			name:  "the pair with the shortest link",
			m:     uniform(4, 100, 0, 0, 0),
			nodes: []Node{{"a", 200, 0.01}, {"b", 200, 0.01}, {"c", 200, 0.01}},
			opt:   Options{Link: links(map[string]time.Duration{"a-b": 10 * ms, "a-c": 3 * ms, "b-c": 2 * ms}, 0)},
			want:  want{stages: "b[0,2) c[2,4)", token: 0.042, bottleneck: 0.02},
		},
		{
			name:  "three stages: the middle node is the one with short links to both",
			m:     uniform(6, 100, 0, 0, 0),
			nodes: []Node{{"a", 200, 0.01}, {"b", 200, 0.01}, {"c", 200, 0.01}},
			opt: Options{Link: links(map[string]time.Duration{
				"a-b": 1 * ms, "b-c": 1 * ms, "a-c": 20 * ms}, 0)},
			want: want{stages: "a[0,2) b[2,4) c[4,6)", token: 0.062, bottleneck: 0.02},
		},
		{
			name:  "requested stages on nodes that each hold it all: balanced",
			m:     uniform(4, 100, 0, 0, 0),
			nodes: []Node{{"a", 1000, 0.01}, {"b", 1000, 0.01}},
			opt:   Options{Stages: 2},
			want:  want{stages: "a[0,2) b[2,4)", token: 0.04, bottleneck: 0.02},
		},
		{
			name:  "auto takes one slow stage over two fast ones",
			m:     uniform(4, 100, 0, 0, 0),
			nodes: []Node{{"big", 1000, 0.1}, {"x", 200, 0.01}, {"y", 200, 0.01}},
			want:  want{stages: "big[0,4)", token: 0.4},
		},
		{
			name:  "but two are used when asked",
			m:     uniform(4, 100, 0, 0, 0),
			nodes: []Node{{"big", 1000, 0.1}, {"x", 200, 0.01}, {"y", 200, 0.01}},
			opt:   Options{Stages: 2},
			want:  want{stages: "x[0,2) y[2,4)", token: 0.04},
		},
		{
			name:  "serialization: hidden 1000 x f32 over 1 MB/s is 4 ms, plus 1 ms RTT",
			m:     uniform(2, 100, 0, 0, 0),
			nodes: []Node{{"a", 100, 0.01}, {"b", 100, 0.01}},
			opt:   Options{ActBytes: 4, Link: links(map[string]time.Duration{"a-b": ms}, 1e6)},
			want:  want{stages: "a[0,1) b[1,2)", token: 0.025, bottleneck: 0.01},
		},
		{
			name:  "serialization can be the bottleneck",
			m:     uniform(2, 100, 0, 0, 0),
			nodes: []Node{{"a", 100, 0.001}, {"b", 100, 0.001}},
			opt:   Options{Link: links(nil, 1e5)}, // 2000 bytes / 1e5 = 20 ms
			want:  want{stages: "a[0,1) b[1,2)", token: 0.022, bottleneck: 0.02},
		},
		{
			name:  "the node next to the coordinator serves a single stage",
			m:     uniform(2, 100, 0, 0, 0),
			nodes: []Node{{"far", 1000, 0.01}, {"near", 1000, 0.01}},
			opt:   Options{Link: links(map[string]time.Duration{"-far": 10 * ms, "-near": 2 * ms}, 0)},
			want:  want{stages: "near[0,2)", token: 0.022},
		},
		{
			name:  "an unknown speed is the slowest known",
			m:     uniform(4, 100, 0, 0, 0),
			nodes: []Node{{"u", 200, 0}, {"k", 200, 0.03}},
			// both count 0.03 per layer: 2+2, 0.12
			want: want{stages: "u[0,2) k[2,4)", token: 0.12, bottleneck: 0.06},
		},
		{
			name:  "a node too small for one layer is left out",
			m:     uniform(2, 100, 0, 0, 0),
			nodes: []Node{{"tiny", 50, 0.0001}, {"a", 100, 0.01}, {"b", 100, 0.01}},
			want:  want{stages: "a[0,1) b[1,2)", token: 0.02},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Make(tc.m, tc.nodes, tc.opt)
			if err != nil {
				t.Fatal(err)
			}
			checkPlan(t, tc.m, tc.nodes, tc.opt, p)
			if got := stagesText(p); got != tc.want.stages {
				t.Errorf("stages %s, want %s (%v)", got, tc.want.stages, p)
			}
			if !approx(p.TokenSeconds, tc.want.token) {
				t.Errorf("TokenSeconds %v, want %v", p.TokenSeconds, tc.want.token)
			}
			if tc.want.bottleneck > 0 && !approx(p.BottleneckSeconds, tc.want.bottleneck) {
				t.Errorf("BottleneckSeconds %v, want %v", p.BottleneckSeconds, tc.want.bottleneck)
			}
			if !p.Exhaustive {
				t.Error("search over few nodes not exhaustive")
			}
		})
	}
}

func TestPlanFigures(t *testing.T) {
	m := uniform(3, 100, 20, 50, 70)
	nodes := []Node{{"b", 300, 0.02}, {"a", 300, 0.01}, {"tiny", 10, 0.01}}
	p, err := Make(m, nodes, Options{ActBytes: 4, Link: func(a, b string) Link {
		if a == "" || b == "" {
			return Link{RTT: 4 * time.Millisecond}
		}
		return Link{RTT: time.Millisecond, BytesPerSec: 4e6}
	}})
	if err != nil {
		t.Fatal(err)
	}
	if got := stagesText(p); got != "a[0,2) b[2,3)" {
		t.Fatalf("stages %s", got)
	}
	if p.Stages[0].MemBytes != 290 || p.Stages[1].MemBytes != 190 || p.Stages[0].FreeMem != 300 {
		t.Errorf("stage memory %+v", p.Stages)
	}
	if p.MemBytes != 480 {
		t.Errorf("MemBytes %d, want 480", p.MemBytes)
	}
	if p.BytesPerToken != 4000 {
		t.Errorf("BytesPerToken %d, want 4000", p.BytesPerToken)
	}
	// links: 1 ms + 4000/4e6 = 2 ms; coordinator: 2 ms + 2 ms
	if !approx(p.LinkSeconds, 0.002) || !approx(p.CoordSeconds, 0.004) || !approx(p.ComputeSeconds, 0.04) ||
		!approx(p.TokenSeconds, 0.046) {
		t.Errorf("figures %+v", p)
	}
	if len(p.Excluded) != 1 || p.Excluded[0] != "tiny" {
		t.Errorf("Excluded %v", p.Excluded)
	}
	if !p.SpeedsKnown {
		t.Error("SpeedsKnown false")
	}
	if s := p.String(); !strings.Contains(s, "a[0,2) b[2,3)") {
		t.Errorf("String() = %q", s)
	}
}

func TestUnknownSpeedsBalance(t *testing.T) {
	p, err := Make(uniform(6, 100, 0, 0, 0), []Node{{"a", 1000, 0}, {"b", 1000, 0}, {"c", 1000, 0}}, Options{Stages: 3})
	if err != nil {
		t.Fatal(err)
	}
	if p.SpeedsKnown {
		t.Error("SpeedsKnown true")
	}
	for _, s := range p.Stages {
		if s.Hi-s.Lo != 2 {
			t.Errorf("unbalanced: %v", p)
		}
	}
	if !approx(p.TokenSeconds, 6*NominalLayerSeconds) {
		t.Errorf("TokenSeconds %v", p.TokenSeconds)
	}
}

func TestErrors(t *testing.T) {
	good := uniform(4, 100, 0, 0, 0)
	nodes := []Node{{"a", 1000, 0.01}, {"b", 1000, 0.01}, {"c", 1000, 0.01}}
	big := uniform(31, gib/10, 0, 0, 0) // 31 x 0.1 GiB = 3.1 GiB
	for _, tc := range []struct {
		name  string
		m     Model
		nodes []Node
		opt   Options
		kind  error
		msg   string
	}{
		{"zero layers", Model{Hidden: 1}, nodes, Options{}, ErrInvalid, "model has 0 layers"},
		{"negative layers", Model{Layers: -3, Hidden: 1}, nodes, Options{}, ErrInvalid, "model has -3 layers"},
		{"too many layers", Model{Layers: MaxLayers + 1, Hidden: 1}, nodes, Options{}, ErrInvalid, "more than"},
		{"mismatched sizes", Model{Layers: 3, LayerBytes: []int64{1, 2}, Hidden: 1}, nodes, Options{}, ErrInvalid, "3 layers but 2 layer sizes"},
		{"negative layer", Model{Layers: 2, LayerBytes: []int64{1, -2}, Hidden: 1}, nodes, Options{}, ErrInvalid, "layer 1 size -2"},
		{"huge layer", Model{Layers: 1, LayerBytes: []int64{math.MaxInt64}, Hidden: 1}, nodes, Options{}, ErrInvalid, "out of range"},
		{"negative kv", Model{Layers: 1, LayerBytes: []int64{1}, KVBytesPerLayer: -1, Hidden: 1}, nodes, Options{}, ErrInvalid, "KV per layer"},
		{"negative embed", Model{Layers: 1, LayerBytes: []int64{1}, EmbedBytes: -1, Hidden: 1}, nodes, Options{}, ErrInvalid, "embedding"},
		{"no hidden", Model{Layers: 1, LayerBytes: []int64{1}}, nodes, Options{}, ErrInvalid, "hidden size 0"},
		{"negative stages", good, nodes, Options{Stages: -1}, ErrInvalid, "-1 stages"},
		{"bad act bytes", good, nodes, Options{ActBytes: -2}, ErrInvalid, "activation"},
		{"no nodes", good, nil, Options{}, ErrNoFit, "no nodes"},
		{"empty id", good, []Node{{"", 1000, 0}}, Options{}, ErrInvalid, "empty ID"},
		{"duplicate id", good, []Node{{"a", 1000, 0}, {"a", 1000, 0}}, Options{}, ErrInvalid, `"a" is listed twice`},
		{"negative memory", good, []Node{{"a", -1, 0}}, Options{}, ErrInvalid, "negative free memory"},
		{"NaN speed", good, []Node{{"a", 1000, math.NaN()}}, Options{}, ErrInvalid, "layer time NaN"},
		{"negative speed", good, []Node{{"a", 1000, -1}}, Options{}, ErrInvalid, "layer time -1"},
		{"infinite speed", good, []Node{{"a", 1000, math.Inf(1)}}, Options{}, ErrInvalid, "layer time +Inf"},
		{"negative RTT", good, nodes, Options{Link: func(a, b string) Link { return Link{RTT: -1} }}, ErrInvalid, "negative RTT"},
		{"NaN bandwidth", good, nodes, Options{Link: func(a, b string) Link { return Link{BytesPerSec: math.NaN()} }}, ErrInvalid, "bandwidth NaN"},
		{"more stages than nodes", good, nodes, Options{Stages: 4}, ErrNoFit, "4 stages requested but only 3 nodes"},
		{"more stages than layers", uniform(2, 1, 0, 0, 0), nodes, Options{Stages: 3}, ErrNoFit, "3 stages requested but the model has only 2 layers"},
		{"more stages than usable nodes", good, []Node{{"a", 1000, 0}, {"b", 1000, 0}, {"c", 50, 0}}, Options{Stages: 3},
			ErrNoFit, "3 stages requested but only 2 of the 3 nodes can hold a layer (c has 50 B free; the smallest stage of one layer needs 100 B)"},
		{"not enough memory together", big, []Node{{"a", gib * 7 / 10, 0}, {"b", gib * 7 / 10, 0}, {"c", gib * 6 / 10, 0}}, Options{},
			ErrNoFit, "model needs 3.1 GiB but the 3 nodes hold at most 2.0 GiB together"},
		{"one node", big, []Node{{"a", gib, 0}}, Options{}, ErrNoFit, "model needs 3.1 GiB but the only node holds 1.0 GiB"},
		{"all left out", good, []Node{{"a", 10, 0}, {"b", 20, 0}}, Options{}, ErrNoFit, "no node can hold even one layer (a has 10 B free, b has 20 B free"},
		{"left out named", good, []Node{{"a", 150, 0}, {"b", 20, 0}}, Options{}, ErrNoFit, "left out: b has 20 B free"},
		{"layers do not divide", uniform(3, 100, 0, 0, 0), []Node{{"a", 190, 0}, {"b", 190, 0}}, Options{}, ErrNoFit, "no split of its 3 layers fits"},
		{"not on that many", uniform(4, 100, 0, 0, 0), []Node{{"a", 200, 0}, {"b", 100, 0}, {"c", 100, 0}}, Options{Stages: 2}, ErrNoFit, "does not fit on any 2 of the 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Make(tc.m, tc.nodes, tc.opt)
			if err == nil {
				t.Fatalf("no error, plan %v", p)
			}
			if !errors.Is(err, tc.kind) {
				t.Errorf("error %q is not %v", err, tc.kind)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not say %q", err, tc.msg)
			}
		})
	}
}

func TestManyNodesHeuristic(t *testing.T) {
	// 12 nodes, each holds a quarter of the model; two fast ones.
	m := uniform(16, 100, 0, 0, 0)
	var nodes []Node
	for i := range 12 {
		nodes = append(nodes, Node{ID: "n" + itoa(i), FreeMem: 400, LayerSeconds: 0.02})
	}
	nodes[3].LayerSeconds = 0.01
	nodes[9].LayerSeconds = 0.01
	p, err := Make(m, nodes, Options{})
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, m, nodes, Options{}, p)
	if p.Exhaustive {
		t.Error("Exhaustive over 12 nodes")
	}
	if len(p.Stages) != 4 {
		t.Errorf("%d stages, want 4: %v", len(p.Stages), p)
	}
	// Optimum: both fast nodes full (4 layers each at 0.01) + 8 layers at 0.02.
	if !approx(p.TokenSeconds, 0.24) {
		t.Errorf("TokenSeconds %v, want 0.24: %v", p.TokenSeconds, p)
	}

	// 20 stages needed: more than the exact pool; the memory chain finds it.
	m = uniform(20, 100, 0, 0, 0)
	nodes = nil
	for i := range 24 {
		nodes = append(nodes, Node{ID: "n" + itoa(i), FreeMem: 150, LayerSeconds: 0.01})
	}
	p, err = Make(m, nodes, Options{})
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, m, nodes, Options{}, p)
	if len(p.Stages) != 20 {
		t.Errorf("%d stages, want 20", len(p.Stages))
	}
	p, err = Make(m, nodes, Options{Stages: 20})
	if err != nil || len(p.Stages) != 20 {
		t.Fatalf("Stages 20: %v %v", p, err)
	}
	checkPlan(t, m, nodes, Options{Stages: 20}, p)
}

func TestLargeInstanceIsQuick(t *testing.T) {
	// The exhaustive search at its limits: 8 nodes, 512 layers.
	m := uniform(MaxLayers, 100, 10, 1000, 1000)
	var nodes []Node
	for i := range ExactNodes {
		nodes = append(nodes, Node{ID: "n" + itoa(i), FreeMem: int64(MaxLayers) * 110 / 5, LayerSeconds: 0.001 * float64(i+1)})
	}
	start := time.Now()
	p, err := Make(m, nodes, Options{})
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, m, nodes, Options{}, p)
	t.Logf("%d stages in %v", len(p.Stages), time.Since(start))
}

// checkPlan asserts the invariants of a plan and recomputes its figures
// independently.
func checkPlan(t testing.TB, m Model, nodes []Node, opt Options, p Plan) {
	t.Helper()
	if len(p.Stages) == 0 {
		t.Fatalf("no stages")
	}
	if opt.Stages > 0 && len(p.Stages) != opt.Stages {
		t.Errorf("%d stages, asked %d", len(p.Stages), opt.Stages)
	}
	byID := map[string]Node{}
	for _, n := range nodes {
		byID[n.ID] = n
	}
	ev := newEval(m, nodes, opt)
	used := map[string]bool{}
	next := 0
	var seq []int
	var bounds []int
	for i, s := range p.Stages {
		if s.Lo != next || s.Hi <= s.Lo {
			t.Fatalf("stage %d [%d,%d) after %d: not contiguous or empty", i, s.Lo, s.Hi, next)
		}
		next = s.Hi
		if used[s.Node] {
			t.Fatalf("node %s used twice", s.Node)
		}
		used[s.Node] = true
		n, ok := byID[s.Node]
		if !ok {
			t.Fatalf("unknown node %s", s.Node)
		}
		if mem := ev.mem(s.Lo, s.Hi); mem != s.MemBytes || mem > n.FreeMem {
			t.Fatalf("stage %d mem %d (reported %d), node has %d", i, mem, s.MemBytes, n.FreeMem)
		}
		seq = append(seq, ev.index[s.Node])
		bounds = append(bounds, s.Lo)
	}
	if next != m.Layers {
		t.Fatalf("stages end at %d of %d layers", next, m.Layers)
	}
	bounds = append(bounds, m.Layers)
	v := ev.value(seq, bounds)
	if !approx(v.sum, p.TokenSeconds) || !approx(v.max, p.BottleneckSeconds) {
		t.Errorf("plan figures (%v, %v), recomputed (%v, %v)", p.TokenSeconds, p.BottleneckSeconds, v.sum, v.max)
	}
	if !approx(p.ComputeSeconds+p.LinkSeconds+p.CoordSeconds, p.TokenSeconds) {
		t.Errorf("TokenSeconds %v is not the sum of its parts %+v", p.TokenSeconds, p)
	}
	if math.IsNaN(p.TokenSeconds) || math.IsInf(p.TokenSeconds, 0) || p.TokenSeconds < 0 {
		t.Errorf("TokenSeconds %v", p.TokenSeconds)
	}
}

// eval is an independent evaluator of the cost model, written from the
// documentation, for the brute-force cross-check.
type eval struct {
	m     Model
	nodes []Node
	speed []float64
	index map[string]int
	link  func(a, b string) Link
	act   float64
}

func newEval(m Model, nodes []Node, opt Options) *eval {
	e := &eval{m: m, nodes: nodes, index: map[string]int{}, link: opt.Link}
	slowest := 0.0
	for i, n := range nodes {
		e.index[n.ID] = i
		slowest = max(slowest, n.LayerSeconds)
	}
	if slowest == 0 {
		slowest = NominalLayerSeconds
	}
	for _, n := range nodes {
		s := n.LayerSeconds
		if s == 0 {
			s = slowest
		}
		e.speed = append(e.speed, s)
	}
	if e.link == nil {
		e.link = func(a, b string) Link { return Link{} }
	}
	ab := opt.ActBytes
	if ab == 0 {
		ab = 2
	}
	e.act = float64(m.Hidden * ab)
	return e
}

func (e *eval) mem(lo, hi int) int64 {
	var s int64
	for l := lo; l < hi; l++ {
		s += e.m.LayerBytes[l] + e.m.KVBytesPerLayer
	}
	if lo == 0 {
		s += e.m.EmbedBytes
	}
	if hi == e.m.Layers {
		s += e.m.HeadBytes
	}
	return s
}

func (e *eval) value(seq, bounds []int) value {
	var v value
	for i, n := range seq {
		c := float64(bounds[i+1]-bounds[i]) * e.speed[n]
		v.sum += c
		v.max = max(v.max, c)
		if i > 0 {
			l := e.link(e.nodes[seq[i-1]].ID, e.nodes[n].ID)
			ser := 0.0
			if l.BytesPerSec > 0 {
				ser = e.act / l.BytesPerSec
			}
			v.sum += l.RTT.Seconds() + ser
			v.max = max(v.max, ser)
		}
	}
	v.sum += e.link("", e.nodes[seq[0]].ID).RTT.Seconds()/2 + e.link(e.nodes[seq[len(seq)-1]].ID, "").RTT.Seconds()/2
	return v
}

// brute enumerates every sequence of distinct nodes and every split point.
// It returns the best stage count and value, or ok false.
func brute(m Model, nodes []Node, opt Options) (stages int, best value, ok bool) {
	e := newEval(m, nodes, opt)
	var seq, bounds []int
	used := make([]bool, len(nodes))
	var rec func(lo int)
	rec = func(lo int) {
		if lo == m.Layers {
			k := len(seq)
			if opt.Stages > 0 && k != opt.Stages {
				return
			}
			v := e.value(seq, append(bounds, lo))
			if !ok || k < stages || k == stages && v.less(best) {
				stages, best, ok = k, v, true
			}
			return
		}
		if opt.Stages > 0 && len(seq) == opt.Stages {
			return
		}
		for n := range nodes {
			if used[n] {
				continue
			}
			for hi := lo + 1; hi <= m.Layers; hi++ {
				if e.mem(lo, hi) > nodes[n].FreeMem {
					continue
				}
				used[n] = true
				seq = append(seq, n)
				bounds = append(bounds, lo)
				rec(hi)
				seq = seq[:len(seq)-1]
				bounds = bounds[:len(bounds)-1]
				used[n] = false
			}
		}
	}
	rec(0)
	return
}

func randomInstance(r *rand.Rand) (Model, []Node, Options) {
	layers := 1 + r.IntN(7)
	m := Model{Layers: layers, Hidden: 1 + r.IntN(4096), KVBytesPerLayer: int64(r.IntN(30))}
	if r.IntN(2) == 0 {
		m.EmbedBytes = int64(r.IntN(100))
		m.HeadBytes = int64(r.IntN(100))
	}
	for range layers {
		m.LayerBytes = append(m.LayerBytes, int64(10+r.IntN(100)))
	}
	n := 1 + r.IntN(5)
	var nodes []Node
	for i := range n {
		nd := Node{ID: string(rune('a' + i)), FreeMem: int64(r.IntN(500))}
		if r.IntN(5) > 0 {
			nd.LayerSeconds = float64(1+r.IntN(20)) / 1000
		}
		nodes = append(nodes, nd)
	}
	opt := Options{ActBytes: []int{0, 1, 2, 4}[r.IntN(4)]}
	if r.IntN(3) == 0 {
		opt.Stages = 1 + r.IntN(n)
	}
	if r.IntN(4) > 0 {
		rtt := map[[2]string]Link{}
		ids := append([]string{""}, func() (s []string) {
			for _, nd := range nodes {
				s = append(s, nd.ID)
			}
			return
		}()...)
		for _, a := range ids {
			for _, b := range ids {
				l := Link{RTT: time.Duration(r.IntN(5000)) * time.Microsecond}
				if r.IntN(3) > 0 {
					l.BytesPerSec = float64(1+r.IntN(1000)) * 1e5
				}
				rtt[[2]string{a, b}] = l // asymmetric on purpose
			}
		}
		opt.Link = func(a, b string) Link { return rtt[[2]string{a, b}] }
	}
	return m, nodes, opt
}

// crossCheck compares Make with the exhaustive search under the documented
// objective.
func crossCheck(t testing.TB, m Model, nodes []Node, opt Options) {
	t.Helper()
	p, err := Make(m, nodes, opt)
	k, v, ok := brute(m, nodes, opt)
	if !ok {
		if err == nil {
			t.Fatalf("Make found %v where brute force found nothing", p)
		}
		if !errors.Is(err, ErrNoFit) {
			t.Fatalf("error %v is not ErrNoFit", err)
		}
		return
	}
	if err != nil {
		t.Fatalf("Make: %v; brute force found %d stages at %v", err, k, v)
	}
	checkPlan(t, m, nodes, opt, p)
	got := value{p.TokenSeconds, p.BottleneckSeconds}
	if len(p.Stages) != k || got.less(v) || v.less(got) {
		t.Fatalf("Make %v (%d stages, %+v); brute force %d stages %+v\nmodel %+v\nnodes %+v\nopt %+v",
			p, len(p.Stages), got, k, v, m, nodes, opt)
	}
}

func TestBruteForceCrossCheck(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	n := 3000
	if testing.Short() {
		n = 300
	}
	for range n {
		m, nodes, opt := randomInstance(r)
		crossCheck(t, m, nodes, opt)
	}
}

func FuzzMake(f *testing.F) {
	f.Add(4, 0, 2, 64, int64(0), int64(0), int64(0), []byte{100, 100, 100, 100}, []byte{250, 10, 250, 20}, []byte{1, 2, 3})
	f.Add(3, 2, 4, 8, int64(50), int64(70), int64(20), []byte{100, 100, 100}, []byte{255, 1, 255, 2, 30, 0}, []byte{})
	f.Add(0, 0, 0, 0, int64(-1), int64(0), int64(0), []byte{}, []byte{}, []byte{})
	f.Add(600, 9, -1, -5, int64(1)<<60, int64(0), int64(-3), []byte{1}, []byte{0, 0}, []byte{255})
	f.Fuzz(func(t *testing.T, layers, stages, actBytes, hidden int, embed, head, kv int64,
		sizes, nodeSpec, linkSpec []byte) {
		m := Model{Layers: layers, EmbedBytes: embed, HeadBytes: head, KVBytesPerLayer: kv, Hidden: hidden}
		if layers >= 0 && layers <= 64 && len(sizes) > 0 {
			for i := range layers {
				m.LayerBytes = append(m.LayerBytes, int64(sizes[i%len(sizes)]))
			}
		} else {
			for _, b := range sizes {
				m.LayerBytes = append(m.LayerBytes, int64(b)-8)
			}
		}
		var nodes []Node
		for i := 0; i+1 < len(nodeSpec) && len(nodes) < 12; i += 2 {
			nodes = append(nodes, Node{
				ID:           string(rune('a' + nodeSpec[i]%16)), // duplicates possible
				FreeMem:      int64(nodeSpec[i]) * 4,
				LayerSeconds: float64(nodeSpec[i+1]%32) / 1000,
			})
		}
		opt := Options{Stages: stages, ActBytes: actBytes}
		if len(linkSpec) > 0 {
			opt.Link = func(a, b string) Link {
				h := 0
				for _, c := range a + "|" + b {
					h = h*31 + int(c)
				}
				x := linkSpec[(h%len(linkSpec)+len(linkSpec))%len(linkSpec)]
				return Link{RTT: time.Duration(int(x)-4) * 100 * time.Microsecond, BytesPerSec: float64(x) * 1e4}
			}
		}
		p, err := Make(m, nodes, opt)
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrNoFit) {
				t.Fatalf("error %v is neither ErrInvalid nor ErrNoFit", err)
			}
			return
		}
		checkPlan(t, m, nodes, opt, p)
		if len(nodes) <= 5 && m.Layers <= 8 {
			crossCheck(t, m, nodes, opt)
		}
	})
}

func TestSingleStageAmongManyNodes(t *testing.T) {
	var nodes []Node
	for i := range 40 {
		nodes = append(nodes, Node{ID: "n" + itoa(i), FreeMem: 1000, LayerSeconds: 0.01 + float64(i%7)/1000})
	}
	nodes[17].LayerSeconds = 0.005
	p, err := Make(uniform(8, 100, 0, 0, 0), nodes, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if stagesText(p) != "n17[0,8)" || !p.Exhaustive {
		t.Errorf("plan %v, exhaustive %v", p, p.Exhaustive)
	}
}

// TestHeuristic runs the heuristic (more than ExactNodes nodes) on small
// random instances: its plans must be valid, never better than the optimum
// (which would mean an accounting error), and usually optimal.
func TestHeuristic(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var runs, optimal, missed int
	for range 60 {
		m, _, opt := randomInstance(r)
		if m.Layers > 4 {
			m.Layers = 4
			m.LayerBytes = m.LayerBytes[:4]
		}
		var nodes []Node
		for i := range ExactNodes + 1 + r.IntN(3) {
			nodes = append(nodes, Node{ID: "h" + itoa(i), FreeMem: int64(r.IntN(500)), LayerSeconds: float64(1+r.IntN(20)) / 1000})
		}
		opt.Link = nil
		if r.IntN(2) == 0 {
			opt.Link = func(a, b string) Link {
				return Link{RTT: time.Duration(len(a)*7+len(b)*3) * 100 * time.Microsecond, BytesPerSec: 1e7}
			}
		}
		opt.Stages = 0
		p, err := Make(m, nodes, opt)
		k, v, ok := brute(m, nodes, opt)
		if err != nil {
			if ok {
				missed++
			}
			continue
		}
		runs++
		checkPlan(t, m, nodes, opt, p)
		if !ok {
			t.Fatalf("Make found %v where brute force found nothing", p)
		}
		got := value{p.TokenSeconds, p.BottleneckSeconds}
		if len(p.Stages) < k || len(p.Stages) == k && got.less(v) {
			t.Fatalf("heuristic %v beats the optimum (%d stages, %+v)", p, k, v)
		}
		if len(p.Stages) == k && got.cmp(v) == 0 {
			optimal++
		}
	}
	t.Logf("heuristic: %d plans, %d optimal, %d fits missed", runs, optimal, missed)
}

func TestHugeFreeMemory(t *testing.T) {
	nodes := []Node{{"a", math.MaxInt64, 0.01}, {"b", math.MaxInt64, 0.02}}
	p, err := Make(uniform(4, 1<<40, 1<<30, 1<<32, 1<<32), nodes, Options{Stages: 2})
	if err != nil {
		t.Fatal(err)
	}
	checkPlan(t, uniform(4, 1<<40, 1<<30, 1<<32, 1<<32), nodes, Options{Stages: 2}, p)
}
