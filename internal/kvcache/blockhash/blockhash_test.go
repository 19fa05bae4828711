package blockhash

import (
	"fmt"
	"testing"
)

// The hashes are shared between nodes and the router, possibly of
// different versions: these values must never change silently.
func TestGolden(t *testing.T) {
	seq := func(n int) []int32 {
		out := make([]int32, n)
		for i := range out {
			out[i] = int32(i + 1)
		}
		return out
	}
	tests := []struct {
		model     string
		tokens    []int32
		blockSize int
		want      []uint64
	}{
		{"m", seq(3), 4, []uint64{}},
		{"m", seq(8), 4, []uint64{0xc8994a497cab97bc, 0xfd3ceb66eef44dbb}},
		{"stories260K", seq(40), 16, []uint64{0xb54f6d0903eceb12, 0x93dbf8e8e476b50d}},
		{"qwen2", seq(33), 16, []uint64{0xbfc3b34f1fffd2c1, 0xc8306a5fa257f73}},
	}
	for _, tc := range tests {
		got := Chain(tc.model, tc.tokens, tc.blockSize)
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("Chain(%q, %d tokens, %d) = %#v, want %#v", tc.model, len(tc.tokens), tc.blockSize, got, tc.want)
		}
	}
	if got, want := Seed("stories260K"), uint64(0xc951b9fd1452f643); got != want {
		t.Errorf("Seed = %#x, want %#x", got, want)
	}
}

func TestChainProperties(t *testing.T) {
	a := []int32{1, 2, 3, 4, 5, 6, 7, 8, 9}
	b := []int32{1, 2, 3, 4, 5, 6, 7, 0, 9}
	ha, hb := Chain("m", a, 4), Chain("m", b, 4)
	if len(ha) != 2 || ha[0] != hb[0] || ha[1] == hb[1] {
		t.Errorf("shared first block only: got %x and %x", ha, hb)
	}
	if Chain("other", a, 4)[0] == ha[0] {
		t.Error("the model id does not change the hash")
	}
	// Chaining: the same block after a different prefix hashes differently.
	if Next(ha[0], a[4:8]) != ha[1] || Next(1, a[4:8]) == ha[1] {
		t.Error("Next does not chain")
	}
}

func BenchmarkChain(b *testing.B) {
	toks := make([]int32, 4096)
	b.SetBytes(4 * 4096)
	for b.Loop() {
		Chain("model", toks, 16)
	}
}
