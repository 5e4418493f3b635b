package client

// The client against the real daemon is tested through custodyctl
// (cmd/custodyctl's scripts, cmd/custodyd's end-to-end tests). Here: its
// contract under answers a daemon should not give, served on a real Unix
// socket by a handler that injects them.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"custody/internal/api"
)

func serve(t *testing.T, h http.HandlerFunc) *Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "d.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return New(sock)
}

func TestTypedErrors(t *testing.T) {
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/participants/miner-1":
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"error":{"code":"unknown_participant","message":"no key for miner-1"}}`)
		case "/v1/keys":
			w.WriteHeader(http.StatusBadGateway)
			io.WriteString(w, "<html>proxy error</html>")
		case "/v1/health":
			io.WriteString(w, `{"status":`) // truncated
		case "/v1/transactions/decrypt/batch":
			io.WriteString(w, `{"results":[{"result":{"transaction_id":"tx-1"}}]}`) // 1 answer for 2 items
		}
	})
	ctx := context.Background()
	_, err := c.Participant(ctx, "miner-1")
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodeUnknownParticipant || !api.IsCode(err, api.CodeUnknownParticipant) {
		t.Errorf("Participant: %v, want *api.Error %s", err, api.CodeUnknownParticipant)
	}
	if _, err := c.Keys(ctx); err == nil || errors.As(err, &ae) || !strings.Contains(err.Error(), "502") {
		t.Errorf("Keys on a non-API error body: %v, want a plain error naming the status", err)
	}
	if _, err := c.Health(ctx); err == nil || !strings.Contains(err.Error(), "unexpected answer") {
		t.Errorf("Health on a truncated body: %v", err)
	}
	if _, err := c.DecryptBatch(ctx, make([]api.DecryptRequest, 2)); err == nil || !strings.Contains(err.Error(), "1 results for 2 items") {
		t.Errorf("DecryptBatch with a short answer: %v", err)
	}
}

func TestUnreachable(t *testing.T) {
	c := New(filepath.Join(t.TempDir(), "nobody.sock"))
	_, err := c.Health(context.Background())
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "nobody.sock") {
		t.Errorf("Health without a daemon: %v, want ErrUnreachable naming the socket", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Health(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Health with a canceled context: %v", err)
	}
}

func TestPathEscaping(t *testing.T) {
	var got string
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		got = r.URL.EscapedPath()
		io.WriteString(w, `{}`)
	})
	if _, err := c.Participant(context.Background(), "../keys"); err != nil {
		t.Fatal(err)
	}
	if got != "/v1/participants/..%2Fkeys" {
		t.Errorf("path sent: %q; an id must stay one path segment", got)
	}
}

func TestRewrapStream(t *testing.T) {
	c := serve(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if strings.Contains(string(body), "too-big") {
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			io.WriteString(w, `{"error":{"code":"body_too_large","message":"x"}}`)
			return
		}
		for i := range strings.Count(string(body), "\n") {
			fmt.Fprintf(w, `{"line":%d,"envelope":"e%d","changed":true}`+"\n", i+1, i+1)
		}
		io.WriteString(w, "not json\n")
	})
	ctx := context.Background()
	var lines []int64
	var last error
	for l, err := range c.RewrapStream(ctx, []byte("{}\n{}\n")) {
		if err != nil {
			last = err
			break
		}
		lines = append(lines, l.Line)
	}
	if len(lines) != 2 || lines[1] != 2 || last == nil || !strings.Contains(last.Error(), "unexpected answer line") {
		t.Errorf("stream: lines %v, end %v; want 2 lines then an error for the bad line", lines, last)
	}
	for _, err := range c.RewrapStream(ctx, []byte("too-big\n")) {
		if !api.IsCode(err, api.CodeBodyTooLarge) {
			t.Errorf("refused stream: %v, want body_too_large", err)
		}
	}
	n := 0
	for range c.RewrapStream(ctx, []byte("{}\n{}\n{}\n")) {
		n++
		break // a caller may stop early
	}
	if n != 1 {
		t.Errorf("break: %d lines seen", n)
	}
}
