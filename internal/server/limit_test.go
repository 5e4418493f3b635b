package server_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"custody/hsm"
	"custody/internal/config/duration"
	"custody/internal/server"
	"custody/internal/testutil"
)

// gatedToken holds every Open until the gate opens, so a test can keep
// requests in flight for as long as it needs.
type gatedToken struct {
	server.Token
	gate    chan struct{}
	entered chan struct{}
}

func (g *gatedToken) Open(ctx context.Context, req hsm.OpenRequest) ([]byte, error) {
	g.entered <- struct{}{}
	<-g.gate
	return g.Token.Open(ctx, req)
}

// OpenFields is held like Open (envelope v2 decrypts go through it).
func (g *gatedToken) OpenFields(ctx context.Context, req hsm.OpenFieldsRequest) ([][]byte, error) {
	g.entered <- struct{}{}
	<-g.gate
	return g.Token.OpenFields(ctx, req)
}

// TestPerCallerLimit: a greedy caller with its requests all in flight is
// refused with rate_limited, while another Unix user is served.
func TestPerCallerLimit(t *testing.T) {
	var gt *gatedToken
	h := newHarnessWith(t, func(d *server.Deps) {
		d.Limits.MaxInFlightPerCaller = 2
		gt = &gatedToken{Token: d.Token, gate: make(chan struct{}), entered: make(chan struct{}, 8)}
		d.Token = gt
	})
	h.register("client-1", "miner-1")
	env := h.seal("tx-1", "client-1", "miner-1")
	body := map[string]any{"envelope": env, "as": "client-1", "purpose": "dispute"}

	var wg sync.WaitGroup
	for range 2 { // root's two slots, held at the gate
		wg.Add(1)
		go func() {
			defer wg.Done()
			if st, out := h.call("POST", "/v1/transactions/decrypt", body); st != 200 {
				t.Errorf("held request: %d %v", st, out)
			}
		}()
	}
	<-gt.entered
	<-gt.entered
	st, out := h.call("POST", "/v1/transactions/decrypt", body)
	if st != 429 || errCode(out) != "rate_limited" {
		t.Errorf("third request of the same caller: %d %v", st, out)
	}
	if e := h.rec.last(); e.Code != "rate_limited" || e.Caller.UID != 0 {
		t.Errorf("refusal not recorded: %+v", e)
	}
	// Another user is not affected (health does not touch the gate).
	if code, stdout, stderr := h.ctlAs(appUser, "", "health"); code != 0 || !strings.Contains(stdout, "settlement-app") {
		t.Errorf("other caller during the flood: exit %d %s %s", code, stdout, stderr)
	}
	close(gt.gate)
	wg.Wait()
	// Slots come back.
	if st, out := h.call("POST", "/v1/transactions/decrypt", body); st != 200 {
		t.Errorf("after the flood: %d %v", st, out)
	}
}

// TestStalledClientsReleaseTheirSlot: with request_timeout 1s and one
// in-flight slot per caller, a client that sends a stream request's headers
// and then nothing, and one that sends a whole stream but never reads the
// answer, each lose their connection after the timeout, and the caller can
// be served again.
func TestStalledClientsReleaseTheirSlot(t *testing.T) {
	h := newHarnessWith(t, func(d *server.Deps) {
		d.Limits.MaxInFlightPerCaller = 1
		d.Limits.RequestTimeout = duration.Duration(time.Second)
	})
	h.register("miner-1")
	in := filepath.Join(t.TempDir(), "in.jsonl")
	h.sealMany(t, 300, in)
	lines, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	for name, send := range map[string]func(c net.Conn){
		"silent body": func(c net.Conn) {
			fmt.Fprintf(c, "POST /v1/envelopes/rewrap/stream HTTP/1.1\r\nHost: custody\r\nContent-Length: 100000\r\n\r\n{\"envelope\":")
		},
		"never reads": func(c net.Conn) {
			// 6 MB of answers, never read: the socket buffers fill up and
			// the daemon stops reading too (so the body is sent aside).
			body := bytes.Repeat(lines, 30)
			fmt.Fprintf(c, "POST /v1/envelopes/rewrap/stream HTTP/1.1\r\nHost: custody\r\nContent-Length: %d\r\n\r\n", len(body))
			go c.Write(body)
		},
	} {
		c, err := net.Dial("unix", h.socket)
		if err != nil {
			t.Fatal(err)
		}
		send(c)
		// The slot is taken (nothing else competes for it now): a second
		// request of root is refused...
		// Let time pass for the stalled request to reach the handler: the
		// only sign that it holds the slot is a refusal, and polling for one
		// would itself take the slot and could push the stalled request out.
		time.Sleep(300 * time.Millisecond)
		if st, out := h.call("GET", "/v1/health", nil); st != 429 {
			c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			got, _ := io.ReadAll(io.LimitReader(c, 400))
			t.Fatalf("%s: the stalled request does not hold the slot: %d %v; it answered %q", name, st, errCode(out), got)
		}
		// ...until the stalled request times out.
		if !testutil.Poll(10*time.Second, func() bool {
			st, _ := h.call("GET", "/v1/health", nil)
			return st == 200
		}) {
			t.Fatalf("%s: the slot was not released after request_timeout", name)
		}
		c.Close()
	}
	noLeftovers(t, h)
}

// manySessions reports a token of 8 sessions, so that a batch may start up
// to 8 workers.
type manySessions struct{ server.Token }

func (m manySessions) Info() hsm.TokenInfo {
	i := m.Token.Info()
	i.Sessions = 8
	return i
}

// TestBatchesLeaveSlotsForRequests: a batch's workers past the first take
// a caller's in-flight slots only while it holds fewer than half of them.
// With a token of 8 sessions and 4 slots, a second batch and a health check
// of the same caller are served while the first batch is on the device
// (before, the first batch's four workers held all four slots and both
// were refused rate_limited).
func TestBatchesLeaveSlotsForRequests(t *testing.T) {
	g := &gatedToken{gate: make(chan struct{}), entered: make(chan struct{}, 64)}
	h := newHarnessWith(t, func(d *server.Deps) {
		d.Limits.MaxInFlightPerCaller = 4
		g.Token = manySessions{d.Token}
		d.Token = g
	})
	h.register("client-1")
	item := fmt.Sprintf(`{"envelope":%q,"as":"client-1","purpose":"dispute"}`, h.seal("tx-1", "client-1"))
	batch := `{"items":[` + strings.Repeat(item+",", 7) + item + `]}`
	codes := make(chan int, 2)
	send := func() {
		st, out := h.callRaw("POST", "/v1/transactions/decrypt/batch", batch)
		if st != 200 {
			t.Errorf("batch: %d %s", st, out)
		}
		codes <- st
	}
	go send()
	<-g.entered // the first batch's two workers are on the device
	<-g.entered
	go send()
	select {
	case <-g.entered: // the second batch was admitted
	case st := <-codes:
		t.Fatalf("the second batch was answered %d before the first finished", st)
	case <-time.After(10 * time.Second):
		t.Fatal("the second batch never reached the device")
	}
	if st, out := h.call("GET", "/v1/health", nil); st != 200 {
		t.Errorf("health with two batches in progress: %d %v", st, out)
	}
	close(g.gate)
	<-codes
	<-codes
}
