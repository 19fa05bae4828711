package pki

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/hex"
	"fmt"
	"strings"
)

// A join token lets one machine (or, when created multi-use, several) enroll
// as a node without a certificate. Its printable form is
//
//	npm1.<id>.<secret>.<ca-sha256>
//
// where <id> is 8 and <secret> 32 characters of lower-case base32 (a-z, 2-7;
// 40 and 160 random bits), and <ca-sha256> is the 64 lower-case hex digits
// of the SHA-256 of the cluster CA certificate's DER encoding (Fingerprint).
// The id names the token in listings and is not secret; the secret is
// shown once, and the coordinator keeps only its SHA-256 (HashSecret). The
// fingerprint lets the joining node authenticate the coordinator before it
// sends the secret, as kubeadm's --discovery-token-ca-cert-hash does.
type JoinToken struct {
	ID            string
	Secret        string
	CAFingerprint string
}

// TokenPrefix starts every join token; the digit is the format version.
const TokenPrefix = "npm1"

const (
	tokenIDLen     = 8
	tokenSecretLen = 32
)

var tokenEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// NewJoinToken returns a token with a fresh random id and secret for the
// cluster whose CA has the given fingerprint.
func NewJoinToken(caFingerprint string) (JoinToken, error) {
	if !isHex64(caFingerprint) {
		return JoinToken{}, fmt.Errorf("new join token: CA fingerprint %q is not 64 lower-case hex digits", caFingerprint)
	}
	var b [25]byte // 5 bytes of id, 20 of secret
	if _, err := rand.Read(b[:]); err != nil {
		return JoinToken{}, fmt.Errorf("new join token: %w", err)
	}
	return JoinToken{
		ID:            tokenEncoding.EncodeToString(b[:5]),
		Secret:        tokenEncoding.EncodeToString(b[5:]),
		CAFingerprint: caFingerprint,
	}, nil
}

// String returns the printable token, npm1.<id>.<secret>.<ca-sha256>.
func (t JoinToken) String() string {
	return strings.Join([]string{TokenPrefix, t.ID, t.Secret, t.CAFingerprint}, ".")
}

// ParseJoinToken parses the form String produces. Surrounding white space
// is ignored, so a token pasted with its newline still works.
func ParseJoinToken(s string) (JoinToken, error) {
	parts := strings.Split(strings.TrimSpace(s), ".")
	if len(parts) != 4 || parts[0] != TokenPrefix {
		return JoinToken{}, fmt.Errorf("%w: want %s.<id>.<secret>.<ca-sha256> as printed by `npumesh token create`", ErrInvalidToken, TokenPrefix)
	}
	t := JoinToken{ID: parts[1], Secret: parts[2], CAFingerprint: parts[3]}
	if err := ValidateTokenID(t.ID); err != nil {
		return JoinToken{}, err
	}
	if len(t.Secret) != tokenSecretLen || !isBase32(t.Secret) {
		return JoinToken{}, fmt.Errorf("%w: the secret must be %d characters of a-z and 2-7", ErrInvalidToken, tokenSecretLen)
	}
	if !isHex64(t.CAFingerprint) {
		return JoinToken{}, fmt.Errorf("%w: the CA fingerprint must be 64 lower-case hex digits", ErrInvalidToken)
	}
	return t, nil
}

// ValidateTokenID checks the form of a token id (8 characters of a-z, 2-7).
func ValidateTokenID(id string) error {
	if len(id) != tokenIDLen || !isBase32(id) {
		return fmt.Errorf("%w: id %q must be %d characters of a-z and 2-7", ErrInvalidToken, id, tokenIDLen)
	}
	return nil
}

// HashSecret returns the hex SHA-256 of a token secret: what a coordinator
// stores instead of the secret. The secret carries 160 random bits, so a
// plain hash (no salt, no stretching) cannot be inverted.
func HashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// SecretMatches reports, in constant time, whether secret hashes to hash.
func SecretMatches(hash, secret string) bool {
	got := HashSecret(secret)
	return subtle.ConstantTimeCompare([]byte(got), []byte(hash)) == 1
}

func isBase32(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
