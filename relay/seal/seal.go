// Package seal authenticates and hides what relays tell each other through
// PostgreSQL notifications.
//
// NOTIFY needs no privilege and any session may LISTEN, so a notification on
// its own is a claim by an unknown session that anyone can read. Sealed with
// a key that only the relay's database role can read (relay.announcement_key)
// and bound to the sending session's process id, an announcement can be
// neither read, forged nor replayed from another session by anyone else.
package seal

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// KeySize is the length of a key: AES-256.
const KeySize = 32

// prefix marks a sealed payload and its format version.
const prefix = "s1:"

// Overhead is how many bytes sealing adds before base64 (nonce and tag).
const Overhead = 12 + 16

// ErrForged means a payload was not sealed with the relays' key by the
// session it came from.
var ErrForged = errors.New("notification is not sealed by a relay")

// Key seals and opens payloads.
type Key struct{ aead cipher.AEAD }

// New returns a Key from its raw bytes.
func New(raw []byte) (*Key, error) {
	if len(raw) != KeySize {
		return nil, fmt.Errorf("announcement key has %d bytes, want %d", len(raw), KeySize)
	}
	block, err := aes.NewCipher(raw)
	if err != nil {
		return nil, fmt.Errorf("announcement key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("announcement key: %w", err)
	}
	return &Key{aead: aead}, nil
}

// Load reads the database's key. Only the relay's role (and the owner) may.
func Load(ctx context.Context, q interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}) (*Key, error) {
	var raw []byte
	err := q.QueryRow(ctx, "SELECT key FROM relay.announcement_key").Scan(&raw)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errors.New("read the announcement key: relay.announcement_key is empty; run `migrate up`")
	}
	if err != nil {
		return nil, fmt.Errorf("read the announcement key (the relay's role needs SELECT on relay.announcement_key, see docs/roles.sql): %w", err)
	}
	return New(raw)
}

// MaxPlain is the longest plaintext whose sealed form fits in limit bytes.
func MaxPlain(limit int) int {
	return (limit-len(prefix))/4*3 - Overhead
}

// Seal returns plain sealed for sending on channel by the session whose
// process id is sender.
func (k *Key) Seal(channel string, sender uint32, plain []byte) string {
	nonce := make([]byte, k.aead.NonceSize(), k.aead.NonceSize()+len(plain)+k.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		// crypto/rand does not fail on the systems Go supports.
		panic(fmt.Sprintf("seal: read random nonce: %v", err))
	}
	sealed := k.aead.Seal(nonce, nonce, plain, additional(channel, sender))
	return prefix + base64.RawStdEncoding.EncodeToString(sealed)
}

// Open returns the plaintext of payload, received on channel from the
// session whose process id is sender, or ErrForged.
func (k *Key) Open(channel string, sender uint32, payload string) ([]byte, error) {
	body, ok := strings.CutPrefix(payload, prefix)
	if !ok {
		return nil, ErrForged
	}
	sealed, err := base64.RawStdEncoding.DecodeString(body)
	if err != nil || len(sealed) < k.aead.NonceSize()+k.aead.Overhead() {
		return nil, ErrForged
	}
	n := k.aead.NonceSize()
	plain, err := k.aead.Open(nil, sealed[:n], sealed[n:], additional(channel, sender))
	if err != nil {
		return nil, ErrForged
	}
	return plain, nil
}

// additional binds a payload to its channel and sender: a sealed payload
// copied by a listener and sent again from its own session does not open.
func additional(channel string, sender uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, sender)
	return append(b, channel...)
}
