package openai

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestCheckAPIKey(t *testing.T) {
	keys := map[string]bool{"sk-good": true, "sk-other": true, "sk-revoked": false}
	tests := []struct {
		name   string
		header string // "" sends no header
		keys   map[string]bool
		ok     bool
	}{
		{"valid", "Bearer sk-good", keys, true},
		{"second key", "Bearer sk-other", keys, true},
		{"scheme in any case, extra spaces", "  bearer   sk-good ", keys, true},
		{"wrong key", "Bearer sk-bad", keys, false},
		{"prefix of a key", "Bearer sk-goo", keys, false},
		{"key plus suffix", "Bearer sk-goodx", keys, false},
		{"revoked key", "Bearer sk-revoked", keys, false},
		{"no header", "", keys, false},
		{"no key", "Bearer ", keys, false},
		{"basic auth", "Basic c2stZ29vZA==", keys, false},
		{"bare key", "sk-good", keys, false},
		{"no keys configured refuses all", "Bearer sk-good", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/v1/models", nil)
			if tt.header != "" {
				r.Header.Set("Authorization", tt.header)
			}
			e := CheckAPIKey(r, tt.keys)
			if got := e == nil; got != tt.ok {
				t.Fatalf("got ok=%v (%v), want ok=%v", got, e, tt.ok)
			}
			if e != nil && (e.Status != 401 || e.Code != "invalid_api_key" || e.Type != TypeInvalidRequest) {
				t.Errorf("got %d %s %s, want 401 invalid_request_error invalid_api_key", e.Status, e.Type, e.Code)
			}
		})
	}
}

func TestLoadAPIKeys(t *testing.T) {
	tests := []struct {
		name    string
		content string
		want    map[string]bool
		wantErr string
	}{
		{"keys, blanks and comments", "# team A\nsk-a\n\n  sk-b  \r\n# sk-commented\n\t\nsk-c", map[string]bool{"sk-a": true, "sk-b": true, "sk-c": true}, ""},
		{"duplicates", "sk-a\nsk-a\n", map[string]bool{"sk-a": true}, ""},
		{"empty file", "", nil, "holds no keys"},
		{"only comments", "# nothing\n\n", nil, "holds no keys"},
		{"space inside a key", "sk-a\nsk-b # note\n", nil, "line 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "keys")
			if err := os.WriteFile(path, []byte(tt.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := LoadAPIKeys(path)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		_, err := LoadAPIKeys(filepath.Join(t.TempDir(), "nope"))
		if err == nil || !errors.Is(err, os.ErrNotExist) {
			t.Errorf("got %v, want a not-exist error", err)
		}
	})
}
