package server_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"custody/hsm"
	"custody/internal/server"
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
