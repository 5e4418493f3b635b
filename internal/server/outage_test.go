package server_test

import (
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"custody/hsm/hsmtest"
	"custody/internal/testutil"
)

// TestTokenRemovedUnderLoad takes the token away (its SoftHSM directory
// leaves the token store) while two clients decrypt: requests fail fast
// with hsm_unavailable and nothing else, health says so, and service
// resumes by itself once the directory is back, without a restart.
func TestTokenRemovedUnderLoad(t *testing.T) {
	h := newHarness(t)
	h.register("client-1")
	env := h.seal("tx-1", "client-1")
	body := map[string]any{"envelope": env, "as": "client-1", "purpose": "dispute"}

	var phase atomic.Int32 // 0 before, 1 away, 2 back; -1 while changing
	var mu sync.Mutex
	codes := map[int32]map[string]int{0: {}, 1: {}, 2: {}}
	var slowest time.Duration
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				p := phase.Load()
				start := time.Now()
				st, out := h.call("POST", "/v1/transactions/decrypt", body)
				d := time.Since(start)
				code := errCode(out)
				if st == 200 {
					code = "ok"
				}
				mu.Lock()
				if p >= 0 && phase.Load() == p { // count only requests wholly inside a phase
					codes[p][code]++
					if p == 1 && d > slowest {
						slowest = d
					}
				}
				mu.Unlock()
			}
		}()
	}
	// count is how many requests got code wholly inside phase p.
	count := func(p int32, code string) int {
		mu.Lock()
		defer mu.Unlock()
		return codes[p][code]
	}
	// Each phase lasts until 20 requests (100 during the outage) got its
	// expected answer (the assertions at the end say if they did not).
	testutil.Poll(30*time.Second, func() bool { return count(0, "ok") >= 20 })

	dir := hsmtest.TokenDir(t, h.cfg.TokenLabel)
	away := filepath.Join(filepath.Dir(filepath.Dir(dir)), "away-"+filepath.Base(dir))
	phase.Store(-1)
	if err := os.Rename(dir, away); err != nil {
		t.Fatal(err)
	}
	// The daemon's watchdog pings; health does the same.
	if _, out := h.call("GET", "/v1/health", nil); out["status"] != "hsm_unavailable" {
		t.Errorf("health with the token away: %v", out["status"])
	}
	phase.Store(1)
	testutil.Poll(30*time.Second, func() bool { return count(1, "hsm_unavailable") >= 100 })

	phase.Store(-1)
	if err := os.Rename(away, dir); err != nil {
		t.Fatal(err)
	}
	if !testutil.Poll(10*time.Second, func() bool {
		_, out := h.call("GET", "/v1/health", nil)
		return out["status"] == "ok"
	}) {
		t.Fatal("health never came back")
	}
	phase.Store(2)
	testutil.Poll(30*time.Second, func() bool { return count(2, "ok") >= 20 })
	close(stop)
	wg.Wait()

	t.Logf("before %v, away %v (slowest %v), back %v", codes[0], codes[1], slowest, codes[2])
	if len(codes[0]) != 1 || codes[0]["ok"] == 0 {
		t.Errorf("before the outage: %v", codes[0])
	}
	if len(codes[1]) != 1 || codes[1]["hsm_unavailable"] == 0 {
		t.Errorf("during the outage every request should get hsm_unavailable: %v", codes[1])
	}
	if slowest > time.Second {
		t.Errorf("a request took %v during the outage: not failing fast", slowest)
	}
	if len(codes[2]) != 1 || codes[2]["ok"] == 0 {
		t.Errorf("after the token came back: %v", codes[2])
	}
}
