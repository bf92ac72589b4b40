package eventlog_test

import (
	"errors"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/pgrelay/pgrelay/relay/eventlog"
)

func TestIDStringRoundTripsThroughParseID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		id   eventlog.ID
		want string
	}{
		{eventlog.ID{}, "0000000000000000-0000000000000000"},
		{eventlog.ID{Xid: 1, Seq: 2}, "0000000000000001-0000000000000002"},
		{eventlog.ID{Xid: 0x1234abcd, Seq: 7}, "000000001234abcd-0000000000000007"},
		{eventlog.ID{Xid: math.MaxInt64, Seq: math.MaxInt64}, "7fffffffffffffff-7fffffffffffffff"},
	}
	for _, tt := range tests {
		if got := tt.id.String(); got != tt.want {
			t.Errorf("%#v.String() = %q, want %q", tt.id, got, tt.want)
		}
		got, err := eventlog.ParseID(tt.want)
		if err != nil {
			t.Errorf("ParseID(%q): %v", tt.want, err)
		} else if got != tt.id {
			t.Errorf("ParseID(%q) = %#v, want %#v", tt.want, got, tt.id)
		}
	}
}

func TestParseIDRejectsMalformedIDs(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, s string }{
		{"empty", ""},
		{"too short", "0000000000000001-000000000000002"},
		{"too long", "0000000000000001-00000000000000002"},
		{"no dash", "0000000000000001+0000000000000002"},
		{"dash misplaced", "000000000000001-00000000000000002"},
		{"not hex", "000000000000000g-0000000000000002"},
		{"upper-case hex", "000000000000000A-0000000000000002"},
		{"sign", "+000000000000001-0000000000000002"},
		{"space", " 000000000000001-0000000000000002"},
		{"xid beyond int64", "8000000000000000-0000000000000002"},
		{"seq beyond int64", "0000000000000001-ffffffffffffffff"},
		{"a plain number", "42"},
		{"long garbage", strings.Repeat("x", 500)},
	}
	for _, tt := range tests {
		id, err := eventlog.ParseID(tt.s)
		if !errors.Is(err, eventlog.ErrBadID) {
			t.Errorf("%s: ParseID(%q) = %v, %v; want ErrBadID", tt.name, tt.s, id, err)
		}
	}
}

func TestIDStringOrderIsIDOrder(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(1, 2))
	// Small values collide often (equal xids, neighbouring seqs); large ones
	// exercise every hex digit.
	pick := func() int64 {
		if rng.IntN(2) == 0 {
			return rng.Int64N(4)
		}
		return rng.Int64()
	}
	for range 10000 {
		a := eventlog.ID{Xid: pick(), Seq: pick()}
		b := eventlog.ID{Xid: pick(), Seq: pick()}
		if got, want := strings.Compare(a.String(), b.String()), a.Compare(b); got != want {
			t.Fatalf("string order of %s and %s is %d, ID order is %d", a, b, got, want)
		}
		if a.Less(b) != (a.Compare(b) < 0) {
			t.Fatalf("%v.Less(%v) = %v disagrees with Compare = %d", a, b, a.Less(b), a.Compare(b))
		}
	}
}

// FuzzParseID checks that ParseID accepts exactly the strings String
// produces: anything it accepts prints back unchanged, and every valid ID
// parses back to itself.
func FuzzParseID(f *testing.F) {
	for _, s := range []string{
		"0000000000000000-0000000000000000",
		"000000000000abcd-0000000000000001",
		"7fffffffffffffff-7fffffffffffffff",
		"8000000000000000-0000000000000000",
		"000000000000000A-0000000000000002",
		"",
		"-",
		"0-0",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := eventlog.ParseID(s)
		if err != nil {
			if !errors.Is(err, eventlog.ErrBadID) {
				t.Fatalf("ParseID(%q) error %v is not ErrBadID", s, err)
			}
			return
		}
		if id.Xid < 0 || id.Seq < 0 {
			t.Fatalf("ParseID(%q) = %#v: negative part", s, id)
		}
		if got := id.String(); got != s {
			t.Fatalf("ParseID(%q).String() = %q, want the input back", s, got)
		}
		back, err := eventlog.ParseID(id.String())
		if err != nil || back != id {
			t.Fatalf("ParseID(%q) = %#v, %v; want %#v", id.String(), back, err, id)
		}
	})
}
