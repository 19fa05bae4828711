package engine

import (
	"fmt"
	"strings"
	"testing"

	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/kernels"
)

// TestPackedWeights: with the packed layout (pack.go) a model computes the
// very same logits as with ggml's, whether its weights come quantized in
// the file (packed into new memory, the mapping released), are converted
// at load (packed in place, eight rows at a time) or are a head tied to the
// embedding (a packed copy; the embedding stays as it was).
func TestPackedWeights(t *testing.T) {
	for _, typ := range []gguf.Type{gguf.TypeQ8_0, gguf.TypeQ4_0} {
		if !kernels.CanPack(typ) {
			t.Logf("%v: the kernels in use (%s) have no packed form: nothing to compare", typ, kernels.Implementation())
			continue
		}
		file := quantizedStories(t, typ)
		tied := rewrite(t, func(tt *gguf.Tensor) (gguf.Type, []uint64, []byte, bool) {
			return tt.Type, tt.Dims, tt.Data, tt.Name != "output.weight"
		}, nil)
		for _, tc := range []struct {
			name, path string
			opts       Options
		}{
			{"file", file, Options{}},
			{"converted", storiesPath(t), Options{Quantize: strings.ToLower(typ.String())}},
			{"tied", tied, Options{Quantize: strings.ToLower(typ.String())}},
		} {
			t.Run(fmt.Sprintf("%v/%s", typ, tc.name), func(t *testing.T) {
				packing = false
				plain, err := Load(tc.path, tc.opts)
				packing = true
				if err != nil {
					t.Fatal(err)
				}
				defer plain.Close()
				packed, err := Load(tc.path, tc.opts)
				if err != nil {
					t.Fatal(err)
				}
				defer packed.Close()
				l := &packed.w.layers[0]
				if !l.wq.packed || !l.gate.packed || plain.w.layers[0].wq.packed {
					t.Fatalf("packed: wq %v, gate %v (172 rows: a padded group); unpacked model's wq %v", l.wq.packed, l.gate.packed, plain.w.layers[0].wq.packed)
				}
				if l.down.packed {
					t.Errorf("ffn_down (F32) packed")
				}
				if packed.w.embd.packed || !packed.w.output.packed {
					t.Errorf("embedding packed %v, head packed %v; want false, true", packed.w.embd.packed, packed.w.output.packed)
				}
				if tc.name == "tied" && sameStart(packed.w.output.data, packed.w.embd.data) {
					t.Errorf("the packed head overwrote the embedding it was tied to")
				}
				if packed.StepWeightBytes() != plain.StepWeightBytes() {
					t.Errorf("step bytes %d packed, %d not", packed.StepWeightBytes(), plain.StepWeightBytes())
				}
				ids := []int32{1, 403, 407, 261, 378, 429, 356, 282, 269, 9, 20, 31, 300, 301, 302, 1, 5, 7}
				if worst, agree, _ := logitStats(t, plain, packed, ids); worst != 0 || agree != 1 {
					t.Errorf("packed logits differ: max |Δ| %g, top-1 agreement %.2f; want identical", worst, agree)
				}
			})
		}
	}
}
