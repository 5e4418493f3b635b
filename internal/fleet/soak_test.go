package fleet_test

import (
	"errors"
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

	"golang.org/x/sys/unix"

	"custody/internal/api"
	"custody/internal/testutil"
)

// TestSoak is make soak: mixed traffic on every daemon (register, encrypt,
// decrypt, audit decrypt, rewrap, rotate) for CUSTODY_SOAK (e.g. "5m")
// while a fault injector kills and restarts daemons (SIGKILL), kills and
// restarts Vault nodes, removes and restores the shared token, and fills
// and frees the log disk of daemon 3 (its log directory is a 32 MiB
// tmpfs). At the end every acknowledged encrypt is in its daemon's log,
// every log verifies with its pinned key, no use of the court order was
// given twice (the use numbers of the allowed audit decrypts across the
// logs are distinct) and Vault's own counter is at least their number and
// at most max_uses, every acknowledged audit decrypt was allowed in a log,
// and no daemon log mentions a panic. It prints the counts. Not part of
// make test; it ends by itself after CUSTODY_SOAK (plus at most a minute
// for the daemons to answer again).
func TestSoak(t *testing.T) {
	dur, err := time.ParseDuration(os.Getenv("CUSTODY_SOAK"))
	if err != nil {
		t.Skip("set CUSTODY_SOAK to a duration (make soak SOAK=5m)")
	}
	const fullDaemon = 3 // its log directory is a small tmpfs
	logDisk := logOnTmpfs(t, fullDaemon, 32)
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
					if n%20 == 9 {
						ctx, cancel := callCtx()
						res, _, err := c.c.Rewrap(ctx, []api.RewrapItem{{Envelope: s.Envelope}})
						cancel()
						code := codeOf(err)
						if err == nil && res[0].Error != nil {
							code = res[0].Error.Code
						}
						count("rewrap", code)
					} else if n%100 == 19 {
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
		switch rand.IntN(4) {
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
		case 3:
			fill(t, logDisk)
			time.Sleep(time.Duration(1+rand.IntN(3)) * time.Second)
			if err := os.Remove(filepath.Join(logDisk, fillerName)); err != nil {
				t.Fatal(err)
			}
			faults["log disk filled and freed"]++
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
	// Each use of the order is given once fleet-wide: the allowed audit
	// decrypts' use numbers are distinct, and Vault's counter covers them.
	allowed, maxUse, twice := 0, 0, 0
	uses := map[int]string{}
	for i := 1; i <= daemons; i++ {
		for _, e := range fl.logEntries(t, i, "audit-decrypt") {
			if e["outcome"] != "allowed" || e["court_order"] != order {
				continue
			}
			allowed++
			u := int(e["use_number"].(float64))
			if prev, ok := uses[u]; ok {
				twice++
				t.Errorf("use %d of the order was given twice: %s and daemon %d", u, prev, i)
			}
			uses[u] = fmt.Sprintf("daemon %d", i)
			maxUse = max(maxUse, u)
		}
	}
	counter := fl.useCounter(t, order)
	var lines []string
	for k, n := range outcomes {
		lines = append(lines, fmt.Sprintf("%s: %d", k, n))
	}
	sort.Strings(lines)
	t.Logf("soak %v: requests by outcome:\n  %s", dur, strings.Join(lines, "\n  "))
	t.Logf("faults injected: %v; recoveries (fleet.sh up): %d; entries lost: %d", faults, recoveries, lost)
	t.Logf("court order: %d audit decrypts acknowledged, %d allowed in the logs (highest use number %d, %d given twice), Vault's counter %d (%d uses spent without an allowed entry: fail closed)",
		auditOK, allowed, maxUse, twice, counter, counter-allowed)
	if lost != 0 {
		t.Errorf("%d acknowledged encrypts are missing from their logs", lost)
	}
	if allowed < auditOK || counter < allowed || counter < maxUse || counter > maxUses {
		t.Errorf("audit decrypts: %d acknowledged, %d allowed in the logs, highest use %d, Vault's counter %d (max_uses %d)", auditOK, allowed, maxUse, counter, maxUses)
	}
}

// fillerName is the file fill writes into the log disk.
const fillerName = "soak-disk-filler"

// fill writes zeros into dir's filesystem until it is full (ENOSPC).
func fill(t *testing.T, dir string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, fillerName), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return
		}
	}
}

// logOnTmpfs moves daemon i's access log onto a tmpfs of sizeMB MiB
// mounted on its log directory (the daemon stopped, the files copied, the
// daemon started again) and returns the directory. The test's cleanup
// detaches it (lazily: the daemon still has its files open).
func logOnTmpfs(t *testing.T, i, sizeMB int) string {
	t.Helper()
	dir := fl.logDir(i)
	pid := fl.pid(t, fmt.Sprintf("custodyd-%d/pid", i))
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !testutil.Poll(30*time.Second, func() bool { return exited(pid) }) {
		t.Fatalf("daemon %d did not stop", i)
	}
	aside := dir + ".disk"
	if err := os.Rename(dir, aside); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%dm,mode=0750", sizeMB)); err != nil {
		t.Fatalf("mount a tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	files, err := os.ReadDir(aside)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range files {
		if !e.Type().IsRegular() {
			t.Fatalf("%s in the log directory is not a regular file", e.Name())
		}
		b, err := os.ReadFile(filepath.Join(aside, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		info, _ := e.Info()
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, info.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	os.RemoveAll(aside)
	fl.up(t)
	return dir
}

// exited: process pid is gone or a zombie.
func exited(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	if i := strings.LastIndex(s, ") "); i >= 0 && len(s) > i+2 {
		return s[i+2] == 'Z'
	}
	return false
}

// useCounter is Vault's use counter of order (secret/data/custody/uses/<id>),
// read with the fleet's root token: what the daemons consumed, whatever
// their logs say.
func (f *fleet) useCounter(t *testing.T, order string) int {
	t.Helper()
	var out struct {
		Data struct {
			Data struct {
				Uses int `json:"uses"`
			} `json:"data"`
		} `json:"data"`
	}
	f.vaultGet(t, "secret/data/custody/uses/"+order, &out)
	return out.Data.Data.Uses
}
