package fleet_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"custody/internal/testutil"
)

// TestSoak is make soak: mixed traffic on every daemon (register, encrypt,
// decrypt, audit decrypt, rotate) for CUSTODY_SOAK (e.g. "5m") while a
// fault injector kills and restarts daemons (SIGKILL), kills and restarts
// Vault nodes, and removes and restores the shared token. At the end every
// acknowledged encrypt is in its daemon's log, every log verifies with its
// pinned key, the order's allowed audit decrypts are exactly the
// acknowledged ones and never more than its max_uses, and no daemon log
// mentions a panic. It prints the counts. Not part of make test.
//
// Not covered yet (issue 16): filling and freeing the log disk, rewrap
// traffic.
func TestSoak(t *testing.T) {
	dur, err := time.ParseDuration(os.Getenv("CUSTODY_SOAK"))
	if err != nil {
		t.Skip("set CUSTODY_SOAK to a duration (make soak SOAK=5m)")
	}
	id := "p-soak-" + random()
	fl.client(1).register(t, id)
	s, code := fl.client(1).seal("tx-soak-"+id, id)
	if code != "ok" {
		t.Fatalf("seal: %s", code)
	}
	const maxUses = 1000000
	order := fl.order(t, 2, maxUses, "tx-soak-"+id)

	var mu sync.Mutex
	outcomes := map[string]int{} // "op code"
	acked := map[int][]string{}  // daemon -> acknowledged encrypt tx ids
	auditOK := 0
	faults := map[string]int{}
	recoveries := 0
	count := func(op, code string) {
		mu.Lock()
		outcomes[op+" "+code]++
		mu.Unlock()
		if code == "transport" {
			time.Sleep(20 * time.Millisecond) // the daemon is down: do not spin
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 1; i <= daemons; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := fl.client(i)
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				switch n % 10 {
				case 0, 1, 2, 3:
					tx := fmt.Sprintf("tx-soak-%d-%d", i, n)
					_, code := c.seal(tx, id)
					if code == "ok" {
						mu.Lock()
						acked[i] = append(acked[i], tx)
						mu.Unlock()
					}
					count("encrypt", code)
				case 4, 5, 6:
					_, code := c.open(s.Envelope, id)
					count("decrypt", code)
				case 7, 8:
					code := c.audit(s.Envelope, order)
					if code == "ok" {
						mu.Lock()
						auditOK++
						mu.Unlock()
					}
					count("audit-decrypt", code)
				case 9:
					if n%100 == 9 {
						code := c.rotate(id)
						count("rotate", code)
					} else {
						code := c.tryRegister(fmt.Sprintf("p-soak-%d-%d-%s", i, n, random()))
						count("register", code)
					}
				}
			}
		}()
	}

	tokenDir := func() string {
		m, _ := filepath.Glob(filepath.Join(fl.dir, "softhsm/tokens/*/token.object"))
		if len(m) != 1 {
			t.Fatalf("token directories: %v", m)
		}
		return filepath.Dir(m[0])
	}()
	end := time.Now().Add(dur)
	for time.Now().Before(end) {
		time.Sleep(time.Duration(2+rand.IntN(4)) * time.Second)
		switch rand.IntN(3) {
		case 0:
			i := 1 + rand.IntN(daemons)
			syscall.Kill(fl.pid(t, fmt.Sprintf("custodyd-%d/pid", i)), syscall.SIGKILL)
			faults["daemon killed"]++
		case 1:
			k := 1 + rand.IntN(3)
			syscall.Kill(fl.pid(t, fmt.Sprintf("vault/node-%d/pid", k)), syscall.SIGKILL)
			faults["vault node killed"]++
		case 2:
			away := filepath.Join(fl.dir, "softhsm/away")
			if err := os.Rename(tokenDir, away); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Duration(1+rand.IntN(3)) * time.Second)
			if err := os.Rename(away, tokenDir); err != nil {
				t.Fatal(err)
			}
			faults["token removed and restored"]++
		}
		time.Sleep(time.Duration(1+rand.IntN(3)) * time.Second)
		fl.up(t) // restarts what was killed
		recoveries++
	}
	// Let every daemon answer again before the checks.
	for i := 1; i <= daemons; i++ {
		testutil.Poll(60*time.Second, func() bool { _, code := fl.client(i).health(); return code == "ok" })
	}
	close(stop)
	wg.Wait()

	lost := 0
	for i := 1; i <= daemons; i++ {
		fl.verifyLog(t, i)
		logged := map[string]bool{}
		for _, e := range fl.logEntries(t, i, "encrypt") {
			if e["outcome"] == "allowed" {
				logged[fmt.Sprint(e["transaction_id"])] = true
			}
		}
		for _, tx := range acked[i] {
			if !logged[tx] {
				lost++
			}
		}
		b, _ := os.ReadFile(filepath.Join(fl.dir, fmt.Sprintf("custodyd-%d/custodyd.log", i)))
		if strings.Contains(string(b), "panic:") {
			t.Errorf("daemon %d panicked (see %s)", i, filepath.Join(fl.dir, fmt.Sprintf("custodyd-%d/custodyd.log", i)))
		}
	}
	allowed := 0
	for i := 1; i <= daemons; i++ {
		for _, e := range fl.logEntries(t, i, "audit-decrypt") {
			if e["outcome"] == "allowed" && e["court_order"] == order {
				allowed++
			}
		}
	}
	var lines []string
	for k, n := range outcomes {
		lines = append(lines, fmt.Sprintf("%s: %d", k, n))
	}
	sort.Strings(lines)
	t.Logf("soak %v: requests by outcome:\n  %s", dur, strings.Join(lines, "\n  "))
	t.Logf("faults injected: %v; recoveries (fleet.sh up): %d; acknowledged audit decrypts %d, allowed in the logs %d; entries lost: %d", faults, recoveries, auditOK, allowed, lost)
	if lost != 0 {
		t.Errorf("%d acknowledged encrypts are missing from their logs", lost)
	}
	if allowed < auditOK || allowed > maxUses {
		t.Errorf("audit decrypts: %d acknowledged, %d allowed in the logs (max_uses %d)", auditOK, allowed, maxUses)
	}
}
