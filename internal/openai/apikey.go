package openai

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"os"
	"strings"
)

// CheckAPIKey checks the "Authorization: Bearer <key>" header of r against
// keys (a key counts when its value is true). Every key is compared, in
// constant time and on SHA-256 digests, so that neither timing nor length
// tells a caller how close a guess came. With no keys, every request is
// refused: running without keys is the caller's decision, made by not
// calling CheckAPIKey.
func CheckAPIKey(r *http.Request, keys map[string]bool) *Error {
	scheme, key, ok := strings.Cut(strings.TrimSpace(r.Header.Get("Authorization")), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ErrUnauthorized()
	}
	key = strings.TrimSpace(key)
	if key == "" {
		return ErrUnauthorized()
	}
	got := sha256.Sum256([]byte(key))
	match := 0
	for k, valid := range keys {
		want := sha256.Sum256([]byte(k))
		eq := subtle.ConstantTimeCompare(got[:], want[:])
		if valid {
			match |= eq
		}
	}
	if match != 1 {
		return ErrUnauthorized()
	}
	return nil
}

// LoadAPIKeys reads API keys from path: one key per line, blank lines and
// lines starting with '#' ignored. A file without keys is an error, so that a
// mistake cannot leave the API open or closed to everyone unnoticed.
func LoadAPIKeys(path string) (map[string]bool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load API keys: %w", err)
	}
	keys := make(map[string]bool)
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.ContainsAny(line, " \t") {
			return nil, fmt.Errorf("load API keys: %s line %d: a key must not contain spaces; write one key per line, comments on their own lines starting with '#'", path, i+1)
		}
		keys[line] = true
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("load API keys: %s holds no keys; write one key per line (for example the output of `openssl rand -hex 32`)", path)
	}
	return keys, nil
}
