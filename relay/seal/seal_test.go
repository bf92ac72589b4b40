package seal_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/pgrelay/pgrelay/relay/seal"
)

func newKey(t *testing.T) *seal.Key {
	t.Helper()
	raw := make([]byte, seal.KeySize)
	_, _ = rand.Read(raw)
	k, err := seal.New(raw)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestASealedPayloadOpensOnlyForItsChannelSenderAndKey(t *testing.T) {
	k, other := newKey(t), newKey(t)
	plain := []byte(`{"prev":"a","events":[{"p":{"secret":"row"}}]}`)
	sealed := k.Seal("pgrelay_events", 4242, plain)
	if strings.Contains(sealed, "secret") || strings.Contains(sealed, "row") {
		t.Fatalf("sealed payload shows its content: %s", sealed)
	}
	got, err := k.Open("pgrelay_events", 4242, sealed)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("Open = %q, %v; want the plaintext", got, err)
	}
	tampered := []byte(sealed)
	tampered[len(tampered)-3] ^= 1
	cases := map[string]func() ([]byte, error){
		"sent again by another session": func() ([]byte, error) { return k.Open("pgrelay_events", 4243, sealed) },
		"sent on another channel":       func() ([]byte, error) { return k.Open("pgrelay_filters", 4242, sealed) },
		"sealed with another key":       func() ([]byte, error) { return other.Open("pgrelay_events", 4242, sealed) },
		"one bit changed":               func() ([]byte, error) { return k.Open("pgrelay_events", 4242, string(tampered)) },
		"plaintext":                     func() ([]byte, error) { return k.Open("pgrelay_events", 4242, string(plain)) },
		"a bare event id":               func() ([]byte, error) { return k.Open("pgrelay_events", 4242, "0000000000000001-0000000000000001") },
		"prefix only":                   func() ([]byte, error) { return k.Open("pgrelay_events", 4242, "s1:") },
		"not base64":                    func() ([]byte, error) { return k.Open("pgrelay_events", 4242, "s1:!!!!") },
		"truncated":                     func() ([]byte, error) { return k.Open("pgrelay_events", 4242, sealed[:20]) },
	}
	for name, open := range cases {
		if got, err := open(); !errors.Is(err, seal.ErrForged) {
			t.Errorf("%s: Open = %q, %v; want ErrForged", name, got, err)
		}
	}
}

func TestTheSameAnnouncementSealsDifferentlyEachTime(t *testing.T) {
	k := newKey(t)
	if a, b := k.Seal("c", 1, []byte("x")), k.Seal("c", 1, []byte("x")); a == b {
		t.Fatal("two seals of one payload are identical: the nonce is not fresh")
	}
}

func TestMaxPlainFitsTheLimit(t *testing.T) {
	k := newKey(t)
	for _, limit := range []int{100, 7999} {
		n := seal.MaxPlain(limit)
		if got := len(k.Seal("c", 1, make([]byte, n))); got > limit {
			t.Errorf("MaxPlain(%d) = %d seals to %d bytes", limit, n, got)
		}
		if got := len(k.Seal("c", 1, make([]byte, n+3))); got <= limit {
			t.Errorf("MaxPlain(%d) = %d is not the largest: %d bytes seal to %d", limit, n, n+3, got)
		}
	}
}

func TestKeysMustBe32Bytes(t *testing.T) {
	if _, err := seal.New(make([]byte, 16)); err == nil || !strings.Contains(err.Error(), "16 bytes") {
		t.Fatalf("New(16 bytes) = %v; want an error naming the size", err)
	}
}
