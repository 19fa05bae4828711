package safetensors_test

import (
	"bytes"
	"fmt"
	"log"

	"github.com/npumesh/npumesh/internal/safetensors"
)

func ExampleWriter() {
	w := safetensors.NewWriter()
	w.SetMetadata("format", "pt")
	// Two BF16 values, little-endian: 1.0 and 2.0.
	if err := w.Add("model.norm.weight", safetensors.BF16, []int{2}, []byte{0x80, 0x3f, 0x00, 0x40}); err != nil {
		log.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := w.WriteTo(&buf); err != nil {
		log.Fatal(err)
	}
	f, err := safetensors.Parse("norm.safetensors", buf.Bytes())
	if err != nil {
		log.Fatal(err)
	}
	t, _ := f.Tensor("model.norm.weight")
	fmt.Println(t.DType, t.Shape, len(t.Data), t.CheckCompute() == nil)
	// Output: BF16 [2] 4 true
}
