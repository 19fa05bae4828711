// Package blockhash names blocks of prompt tokens for prefix caching: the
// node's KV cache keys its blocks by these hashes and the router scores
// nodes by how many leading hashes of a prompt a node holds. Both sides
// must agree bit for bit, so the function is fixed by golden tests and
// versioned in its seed; changing it is a protocol change. The package is
// deliberately tiny and imports nothing but the standard library, so the
// router can use it without pulling in the cache.
package blockhash

import "encoding/binary"

// FNV-1a 64-bit parameters.
const (
	offset64 = 14695981039346656037
	prime64  = 1099511628211
)

// version is mixed into every seed; bump it to change the hash on purpose.
const version = "npumesh-kv-blockhash-v1"

// Seed is the hash before the first block: it binds the chain to the
// model, so equal token ids of different models never share a block.
func Seed(modelID string) uint64 {
	h := uint64(offset64)
	h = bytes(h, []byte(version))
	h = bytes(h, []byte{0})
	h = bytes(h, []byte(modelID))
	return fmix(h)
}

// Next is the hash of a block that follows the block hashed prev (or the
// Seed): FNV-1a over prev's 8 bytes and each token's 4 bytes, little
// endian, finished with a 64-bit mixer so that every bit of the result
// depends on every input bit (the router uses hashes as map keys).
func Next(prev uint64, block []int32) uint64 {
	var buf [8]byte
	binary.LittleEndian.PutUint64(buf[:], prev)
	h := bytes(offset64, buf[:])
	for _, t := range block {
		binary.LittleEndian.PutUint32(buf[:4], uint32(t))
		h = bytes(h, buf[:4])
	}
	return fmix(h)
}

// Chain returns the hash of each full block of blockSize tokens: h[0] =
// Next(Seed(modelID), tokens[0:blockSize]), h[i] = Next(h[i-1], block i).
// A trailing partial block has no hash, so len(result) is
// len(tokens)/blockSize. Two prompts share the first k hashes exactly
// when they share the first k*blockSize tokens (barring collisions).
// blockSize must be positive.
func Chain(modelID string, tokens []int32, blockSize int) []uint64 {
	if blockSize <= 0 {
		panic("blockhash.Chain: block size must be positive")
	}
	out := make([]uint64, 0, len(tokens)/blockSize)
	h := Seed(modelID)
	for i := 0; i+blockSize <= len(tokens); i += blockSize {
		h = Next(h, tokens[i:i+blockSize])
		out = append(out, h)
	}
	return out
}

func bytes(h uint64, b []byte) uint64 {
	for _, c := range b {
		h ^= uint64(c)
		h *= prime64
	}
	return h
}

// fmix is MurmurHash3's 64-bit finalizer.
func fmix(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}
