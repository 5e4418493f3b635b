package fleet_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"custody/internal/client"
	"custody/internal/keys"
	"custody/internal/testutil"
)

// TestFleetBench measures, on the test's fleet, the total encrypt and
// decrypt throughput of 1, 2 and 3 daemons on the shared token (the same
// number of client workers in each case: this 2-core machine is CPU-bound,
// so the point is the overhead of sharing, not scaling), and the audit
// decrypt p50/p99 through the 3-node cluster against a single dev server,
// in the same run. It runs only with CUSTODY_FLEET_BENCH=1 (make
// bench-fleet); docs/fleet.md quotes its output.
func TestFleetBench(t *testing.T) {
	if os.Getenv("CUSTODY_FLEET_BENCH") != "1" {
		t.Skip("set CUSTODY_FLEET_BENCH=1 (make bench-fleet)")
	}
	dur := 4 * time.Second
	if d, err := time.ParseDuration(os.Getenv("CUSTODY_FLEET_BENCH_TIME")); err == nil {
		dur = d
	}
	const workers = 6
	id := "p-bench-" + random()
	fl.client(1).register(t, id)
	s, code := fl.client(1).seal("tx-"+id, id)
	if code != "ok" {
		t.Fatalf("seal: %s", code)
	}
	rate := func(n int, op func(c *daemon, w int) bool) float64 {
		var wg sync.WaitGroup
		var mu sync.Mutex
		total := 0
		start := time.Now()
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := fl.client(w%n + 1)
				k := 0
				for time.Since(start) < dur {
					if op(c, w) {
						k++
					}
				}
				mu.Lock()
				total += k
				mu.Unlock()
			}()
		}
		wg.Wait()
		return float64(total) / time.Since(start).Seconds()
	}
	var seq sync.Map
	encrypt := func(c *daemon, w int) bool {
		n, _ := seq.LoadOrStore(w, new(int))
		*n.(*int)++
		_, code := c.seal(fmt.Sprintf("tx-b-%d-%d", w, *n.(*int)), id)
		return code == "ok"
	}
	decrypt := func(c *daemon, w int) bool {
		_, code := c.open(s.Envelope, id)
		return code == "ok"
	}
	var enc, dec [4]float64
	for n := 1; n <= daemons; n++ {
		enc[n] = rate(n, encrypt)
		dec[n] = rate(n, decrypt)
	}
	t.Logf("throughput, %d client workers, %v each, on one SoftHSM token:", workers, dur)
	t.Logf("| daemons | encrypt/s | vs 1 | decrypt/s | vs 1 |")
	for n := 1; n <= daemons; n++ {
		t.Logf("| %d | %.0f | %.2f | %.0f | %.2f |", n, enc[n], enc[n]/enc[1], dec[n], dec[n]/dec[1])
	}

	// Audit decrypts, one at a time, through the cluster (daemon 1, whose
	// node may be a standby that forwards) and through a dev server.
	const calls = 300
	clusterTimes := auditTimes(t, fl.client(1), s.Envelope, fl.order(t, 1, 10*calls, "tx-"+id), calls)
	dev := startDevDaemon(t)
	devTimes := auditTimes(t, dev.c, s.Envelope, dev.order(t, 10*calls, "tx-"+id), calls)
	p := func(ts []time.Duration, q float64) time.Duration { return ts[int(q*float64(len(ts)-1))] }
	leaderNote := "a standby (forwards to the active node)"
	if fl.daemonNode(t, 1) == fl.nodeAddr(t, fl.leader(t)) {
		leaderNote = "the active node"
	}
	t.Logf("audit decrypt latency, %d sequential calls (daemon 1's node is %s):", calls, leaderNote)
	t.Logf("| Vault | p50 | p99 |")
	t.Logf("| 3-node raft cluster | %v | %v |", p(clusterTimes, 0.5).Round(10*time.Microsecond), p(clusterTimes, 0.99).Round(10*time.Microsecond))
	t.Logf("| single dev server (inmem) | %v | %v |", p(devTimes, 0.5).Round(10*time.Microsecond), p(devTimes, 0.99).Round(10*time.Microsecond))
	t.Logf("| cluster / dev | %.2f | %.2f |", float64(p(clusterTimes, 0.5))/float64(p(devTimes, 0.5)), float64(p(clusterTimes, 0.99))/float64(p(devTimes, 0.99)))
	// Participant decrypt for comparison (no Vault), same way.
	partTimes := make([]time.Duration, 0, calls)
	for range calls {
		start := time.Now()
		if _, code := fl.client(1).open(s.Envelope, id); code != "ok" {
			t.Fatalf("decrypt: %s", code)
		}
		partTimes = append(partTimes, time.Since(start))
	}
	slices.Sort(partTimes)
	t.Logf("| (participant decrypt, no Vault) | %v | %v |", p(partTimes, 0.5).Round(10*time.Microsecond), p(partTimes, 0.99).Round(10*time.Microsecond))

	// What a reread of the token costs (the registry's Refresh, as a
	// daemon does it after a miss and every keys.refresh_interval), as the
	// token grows.
	tok := fl.openToken(t)
	reg, err := keys.Load(context.Background(), tok, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("| participants on the token | one token reread (Refresh) |")
	for _, add := range []int{0, 200, 400} {
		for range add {
			if _, err := reg.Register(context.Background(), "p-fill-"+random(), time.Now()); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		const n = 5
		for range n {
			if err := reg.Refresh(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("| %d | %v |", len(reg.List(time.Now()))-1, (time.Since(start) / n).Round(10*time.Microsecond))
	}
}

func auditTimes(t *testing.T, c *daemon, env, order string, n int) []time.Duration {
	t.Helper()
	out := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		if code := c.audit(env, order); code != "ok" {
			t.Fatalf("audit decrypt: %s", code)
		}
		out = append(out, time.Since(start))
	}
	slices.Sort(out)
	return out
}

// devDaemon is a fourth custodyd on the fleet's token whose Vault is a
// single dev server (scripts/vault.sh start), for comparison.
type devDaemon struct {
	dir, addr string
	c         *daemon
}

func startDevDaemon(t *testing.T) *devDaemon {
	t.Helper()
	dir := filepath.Join(fl.dir, "bench-dev")
	os.MkdirAll(dir, 0o700)
	vdir := filepath.Join(dir, "vault")
	start := exec.Command(filepath.Join(repo, "scripts/vault.sh"), "start", vdir)
	start.Env = append(os.Environ(), fmt.Sprintf("VAULT_SH_WATCH_PID=%d", os.Getpid()))
	out, err := start.CombinedOutput()
	if err != nil {
		t.Fatalf("vault.sh start: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command(filepath.Join(repo, "scripts/vault.sh"), "stop", vdir).Run() })
	addr := strings.TrimSpace(string(out))
	apply := exec.Command("bash", "-c", `. "$1/scripts/vault-setup.sh" && custody_vault_apply "$("$1/scripts/vault.sh" path)" "$2" "$3/root-token" "$3"`, "_", repo, addr, vdir)
	if out, err := apply.CombinedOutput(); err != nil {
		t.Fatalf("vault setup: %v\n%s", err, out)
	}
	var cfg map[string]any
	b, _ := os.ReadFile(filepath.Join(fl.dir, "custodyd-1/custodyd.json"))
	json.Unmarshal(b, &cfg)
	cfg["socket"] = map[string]any{"path": filepath.Join(dir, "custodyd.sock")}
	cfg["access_log"] = map[string]any{"dir": filepath.Join(dir, "log"), "origin": "custodyd-dev/access-log", "signing_key_label": "custody/log/custodyd-dev/v1"}
	v := cfg["vault"].(map[string]any)
	v["address"], v["token_file"] = addr, filepath.Join(vdir, "custodyd.token")
	b, _ = json.Marshal(cfg)
	os.WriteFile(filepath.Join(dir, "custodyd.json"), b, 0o644)
	cmd := exec.Command(filepath.Join(binDir, "custodyd"), "run", "--config", filepath.Join(dir, "custodyd.json"))
	logf, _ := os.Create(filepath.Join(dir, "custodyd.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM} // gone with the test binary
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait(); logf.Close() })
	d := &devDaemon{dir: dir, addr: addr, c: &daemon{client.New(filepath.Join(dir, "custodyd.sock"))}}
	if !testutil.Poll(30*time.Second, func() bool { _, code := d.c.health(); return code == "ok" }) {
		b, _ := os.ReadFile(filepath.Join(dir, "custodyd.log"))
		t.Fatalf("dev daemon did not start:\n%s", b)
	}
	return d
}

// order is fleet.order against the dev server.
func (d *devDaemon) order(t *testing.T, maxUses int, txs ...string) string {
	t.Helper()
	// fleet.order reads the node address and the intake token from the
	// fleet's directory; point it at the dev server's for this one order.
	tmp := &fleet{dir: d.dir}
	os.MkdirAll(filepath.Join(d.dir, "vault/node-1"), 0o700)
	os.WriteFile(filepath.Join(d.dir, "vault/node-1/addr"), []byte(d.addr), 0o644)
	os.Symlink(filepath.Join(fl.dir, "orders"), filepath.Join(d.dir, "orders"))
	return tmp.order(t, 1, maxUses, txs...)
}
