package coordinator

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestFileStorePersists(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "sub", StateFile)
	s, err := OpenFileStore(path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Truncate(time.Second)
	err = s.Update(ctx, func(st *State) error {
		st.Tokens["abcdefgh"] = &TokenRecord{ID: "abcdefgh", SecretHash: "h", Expires: now.Add(time.Hour), Uses: 2, UsesLeft: 1}
		st.Revoked["bad"] = &Revocation{Name: "bad", At: now}
		st.RevokedSerials["ff"] = now.Add(time.Hour)
		st.Nodes["n1"] = &NodeRecord{Name: "n1", FirstSeen: now, CertSerial: "aa", Certs: map[string]time.Time{"aa": now.Add(time.Hour)}}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, want 0600", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("state dir holds %d entries, want 1 (no temporary files)", len(entries))
	}

	// A failing update changes nothing, on disk or in memory.
	boom := errors.New("boom")
	if err := s.Update(ctx, func(st *State) error { delete(st.Tokens, "abcdefgh"); return boom }); !errors.Is(err, boom) {
		t.Fatalf("Update returned %v, want boom", err)
	}

	again, err := OpenFileStore(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, store := range []*FileStore{s, again} {
		st, err := store.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if tok := st.Tokens["abcdefgh"]; tok == nil || tok.UsesLeft != 1 || !tok.Expires.Equal(now.Add(time.Hour)) {
			t.Errorf("token after reopen: %+v", tok)
		}
		if st.Revoked["bad"] == nil || st.RevokedSerials["ff"].IsZero() || st.Nodes["n1"].CertSerial != "aa" {
			t.Errorf("state after reopen: %+v", st)
		}
	}
	// Load hands out copies.
	st, _ := s.Load(ctx)
	st.Tokens["abcdefgh"].UsesLeft = 99
	st2, _ := s.Load(ctx)
	if st2.Tokens["abcdefgh"].UsesLeft != 1 {
		t.Errorf("Load shares memory with the store")
	}
}

func TestFileStorePrunes(t *testing.T) {
	s := NewMemoryStore()
	past := time.Now().Add(-48 * time.Hour)
	err := s.Update(context.Background(), func(st *State) error {
		st.Tokens["old"] = &TokenRecord{ID: "old", Expires: past}
		st.Tokens["new"] = &TokenRecord{ID: "new", Expires: time.Now().Add(-time.Hour)}
		st.RevokedSerials["gone"] = past
		st.Nodes["n"] = &NodeRecord{Name: "n", Certs: map[string]time.Time{"gone": past}}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	st, _ := s.Load(context.Background())
	if st.Tokens["old"] != nil || st.Tokens["new"] == nil {
		t.Errorf("tokens: want the one expired 2 days ago pruned and the one expired an hour ago kept: %v", st.Tokens)
	}
	if len(st.RevokedSerials) != 0 || len(st.Nodes["n"].Certs) != 0 {
		t.Errorf("expired serials kept: %v %v", st.RevokedSerials, st.Nodes["n"].Certs)
	}
}

func TestFileStoreCorrupt(t *testing.T) {
	path := filepath.Join(t.TempDir(), StateFile)
	os.WriteFile(path, []byte("{not json"), 0o600)
	if _, err := OpenFileStore(path); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("got %v, want a corrupt-state error", err)
	}
}

func TestFailLimiter(t *testing.T) {
	l := newFailLimiter(3, 200*time.Millisecond)
	for i := 0; i < 3; i++ {
		if l.blocked("a") != 0 {
			t.Fatalf("blocked after %d failures", i)
		}
		l.fail("a")
	}
	if l.blocked("a") == 0 {
		t.Errorf("not blocked after 3 failures")
	}
	if l.blocked("b") != 0 {
		t.Errorf("another address is blocked too")
	}
	time.Sleep(250 * time.Millisecond)
	if l.blocked("a") != 0 {
		t.Errorf("still blocked after the window")
	}
}
