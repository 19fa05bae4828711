package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/npumesh/npumesh/internal/gguf"
	"github.com/npumesh/npumesh/internal/kernels"
	"github.com/npumesh/npumesh/internal/synth"
)

func newModelCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "model", Short: "Work with model files", Args: cobra.NoArgs}
	cmd.AddCommand(newModelSynthCmd(g))
	cmd.AddCommand(newModelCatalogCmds(g)...)
	return cmd
}

func newModelSynthCmd(g *globals) *cobra.Command {
	var (
		o        synth.Options
		typeName string
		out      string
	)
	cmd := &cobra.Command{
		Use:   "synth -o FILE.gguf [--arch llama] [--dim D --layers L --heads H --kv-heads K --ff F --vocab V] [--type f16]",
		Short: "Write a random-weight model of any size as GGUF (for benchmarks)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			typ, err := parseWeightType(typeName)
			if err != nil {
				return err
			}
			o.Type = typ
			q, err := quantizerFor(typ)
			if err != nil {
				return err
			}
			if err := synth.WriteFile(out, o, q); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "wrote %s: %s, %d parameters, %s weights\n", out, o.Arch, o.Parameters(), typ)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Arch, "arch", "llama", "architecture: llama")
	f.IntVar(&o.Dim, "dim", 2048, "embedding length")
	f.IntVar(&o.Layers, "layers", 16, "number of layers")
	f.IntVar(&o.Heads, "heads", 32, "attention heads")
	f.IntVar(&o.KVHeads, "kv-heads", 8, "key/value heads (grouped-query attention)")
	f.IntVar(&o.FF, "ff", 8192, "feed-forward length")
	f.IntVar(&o.Vocab, "vocab", 32000, "vocabulary size")
	f.IntVar(&o.Context, "context", 2048, "context length")
	f.Uint64Var(&o.Seed, "seed", 1, "random seed of the weights")
	f.StringVar(&typeName, "type", "f16", "weight type: f32, f16, bf16, q8_0, q4_0, q4_K")
	f.StringVarP(&out, "output", "o", "", "output GGUF file (required)")
	_ = cmd.MarkFlagRequired("output")
	return cmd
}

func parseWeightType(s string) (gguf.Type, error) {
	switch strings.ToLower(s) {
	case "f32":
		return gguf.TypeF32, nil
	case "f16":
		return gguf.TypeF16, nil
	case "bf16":
		return gguf.TypeBF16, nil
	case "q8_0":
		return gguf.TypeQ8_0, nil
	case "q4_0":
		return gguf.TypeQ4_0, nil
	case "q4_k":
		return gguf.TypeQ4_K, nil
	}
	return 0, fmt.Errorf("unknown weight type %q: use f32, f16, bf16, q8_0, q4_0 or q4_K", s)
}

// quantizerFor returns the quantizer for typ (kernels.Quantize, row by
// row), nil for float types.
func quantizerFor(typ gguf.Type) (synth.Quantizer, error) {
	switch typ {
	case gguf.TypeF32, gguf.TypeF16, gguf.TypeBF16:
		return nil, nil
	}
	if !kernels.CanQuantize(typ) {
		return nil, fmt.Errorf("weight type %s cannot be written yet; use f32, f16, bf16, q8_0, q4_0 or q4_K", typ)
	}
	return func(typ gguf.Type, src []float32) ([]byte, error) {
		n, err := kernels.RowSize(typ, len(src))
		if err != nil {
			return nil, err
		}
		dst := make([]byte, n)
		if err := kernels.Quantize(dst, src, typ); err != nil {
			return nil, err
		}
		return dst, nil
	}, nil
}
