package server_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"custody/internal/orders/vaulttest"
	"custody/internal/testutil"
)

// TestVaultHangsUnderLoad stops the Vault process (SIGSTOP) while
// participants decrypt and an auditor decrypts under a valid order, then
// resumes it (SIGCONT): audit decrypts fail closed with their own code and
// never reach the escrow key, everything else keeps working, and audit
// decrypts work again once Vault answers, without a restart.
func TestVaultHangsUnderLoad(t *testing.T) {
	vs := vaulttest.Private(t)
	a := newAuditHarnessAt(t, vs, vs.Addr, 500*time.Millisecond)
	env := a.seal("tx-1", "client-1")
	o := a.order()
	o.MaxUses = 100000
	a.issue(o, 2)
	raw, err := os.ReadFile(filepath.Join(vs.Dir, "pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(raw)))
	vaultProc, _ := os.FindProcess(pid)
	t.Cleanup(func() { vaultProc.Signal(syscall.SIGCONT) })

	var phase atomic.Int32 // 0 before, 1 Vault stopped, 2 resumed; -1 while changing
	var mu sync.Mutex
	got := map[string]map[int32]map[string]int{"participant": {0: {}, 1: {}, 2: {}}, "audit": {0: {}, 1: {}, 2: {}}}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	run := func(kind string, call func() (int, map[string]any)) {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			p := phase.Load()
			st, body := call()
			code := errCode(body)
			if st == 200 {
				code = "ok"
			}
			mu.Lock()
			if p >= 0 && phase.Load() == p {
				got[kind][p][code]++
			}
			mu.Unlock()
		}
	}
	wg.Add(3)
	for range 2 {
		go run("participant", func() (int, map[string]any) {
			return a.call("POST", "/v1/transactions/decrypt", map[string]any{"envelope": env, "as": "client-1", "purpose": "dispute"})
		})
	}
	var auditsStarted atomic.Int64 // by the one audit goroutine
	go run("audit", func() (int, map[string]any) {
		auditsStarted.Add(1)
		return a.audit(env, o.ID, "tax-investigation")
	})
	// count is how many calls of kind got code wholly inside phase p.
	count := func(kind string, p int32, code string) int {
		mu.Lock()
		defer mu.Unlock()
		return got[kind][p][code]
	}

	// Each phase lasts until enough calls got its expected answers (the
	// assertions at the end say if they did not).
	testutil.Poll(30*time.Second, func() bool {
		return count("participant", 0, "ok") >= 20 && count("audit", 0, "ok") >= 2
	})
	phase.Store(-1)
	vaultProc.Signal(syscall.SIGSTOP)
	// An audit already past its Vault check finishes its unwrap: wait until
	// the audit goroutine has started another call, so none begun before
	// the stop is still running.
	started := auditsStarted.Load()
	if !testutil.Poll(30*time.Second, func() bool { return auditsStarted.Load() > started }) {
		t.Error("the audit in flight when Vault stopped never returned")
	}
	opensBefore := a.tok.count(a.escrow)
	phase.Store(1)
	testutil.Poll(30*time.Second, func() bool {
		return count("participant", 1, "ok") >= 20 && count("audit", 1, "vault_timeout")+count("audit", 1, "vault_unavailable") >= 3
	})
	phase.Store(-1)
	opensDuring := a.tok.count(a.escrow) - opensBefore
	vaultProc.Signal(syscall.SIGCONT)
	if !testutil.Poll(10*time.Second, func() bool {
		st, _ := a.audit(env, o.ID, "tax-investigation")
		return st == 200
	}) {
		t.Fatal("audit decrypts did not come back after Vault resumed")
	}
	phase.Store(2)
	testutil.Poll(30*time.Second, func() bool {
		return count("participant", 2, "ok") >= 20 && count("audit", 2, "ok") >= 2
	})
	close(stop)
	wg.Wait()

	t.Logf("participant %v; audit %v", got["participant"], got["audit"])
	for p := int32(0); p <= 2; p++ {
		if c := got["participant"][p]; len(c) != 1 || c["ok"] == 0 {
			t.Errorf("participant decrypts in phase %d: %v (must all succeed)", p, c)
		}
	}
	if c := got["audit"][0]; len(c) != 1 || c["ok"] == 0 {
		t.Errorf("audit decrypts before: %v", c)
	}
	if c := got["audit"][1]; c["ok"] != 0 || c["vault_timeout"]+c["vault_unavailable"] == 0 {
		t.Errorf("audit decrypts while Vault was stopped: %v (must fail closed)", c)
	}
	if opensDuring != 0 {
		t.Errorf("%d escrow opens while Vault was stopped", opensDuring)
	}
	if c := got["audit"][2]; len(c) != 1 || c["ok"] == 0 {
		t.Errorf("audit decrypts after Vault resumed: %v", c)
	}
}
