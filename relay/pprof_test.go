package relay_test

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pgrelay/pgrelay/internal/pgtest"
	"github.com/pgrelay/pgrelay/internal/relaytest"
	"github.com/pgrelay/pgrelay/relay"
)

func TestPprofIsServedOnlyWhenAskedAndOnlyOnItsOwnAddress(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	r := relaytest.Start(t, db.URL, func(c *relay.Config) { c.PprofAddr = addr })

	var body string
	relaytest.Eventually(t, 5*time.Second, "pprof index", func() bool {
		resp, err := http.Get("http://" + addr + "/debug/pprof/")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return resp.StatusCode == http.StatusOK
	})
	if !strings.Contains(body, "goroutine") {
		t.Errorf("pprof index does not list profiles: %.200s", body)
	}
	resp, err := http.Get(r.URL + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		t.Errorf("the public address serves /debug/pprof/ (status %d)", resp.StatusCode)
	}
}

func TestPprofAddrMustBeHostPort(t *testing.T) {
	cfg := relaytest.Config("dbname=x")
	cfg.PprofAddr = "6060"
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--pprof-addr") {
		t.Errorf("Validate = %v, want an error naming --pprof-addr", err)
	}
}
