package arch

import "github.com/npumesh/npumesh/internal/gguf"

// qwen2 is Qwen2 and Qwen2.5: llama's block with biases on the Q, K and V
// projections, RoPE in the NeoX (rotate-half) layout because the
// converter does not permute its Q and K, and a large RoPE base
// (qwen2.rope.freq_base, 1e6). Small ones tie the output head to the
// embedding, which the engine handles for every architecture.
func init() {
	Register("qwen2", func(f *gguf.File) (Params, error) {
		p, err := ReadLlamaFamily(f, "qwen2")
		if err != nil {
			return p, err
		}
		p.Rope = RopeNeoX
		p.QKVBias = true
		p.Scaling, err = ReadRopeScaling(f, "qwen2")
		return p, err
	})
}
