package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"custody/hsm/hsmtest"
	"custody/internal/testutil"
)

var binDir string

func TestMain(m *testing.M) { hsmtest.Main(m, buildBinaries) }

// buildBinaries builds custodyd and custodyctl into binDir.
func buildBinaries() (cleanup func(), err error) {
	binDir, err = os.MkdirTemp("", "custodyd-test-bin-")
	if err != nil {
		return nil, err
	}
	if out, err := exec.Command("go", "build", "-o", binDir, "custody/cmd/custodyd", "custody/cmd/custodyctl").CombinedOutput(); err != nil {
		os.RemoveAll(binDir)
		return nil, fmt.Errorf("build: %v\n%s", err, out)
	}
	return func() { os.RemoveAll(binDir) }, nil
}

const rootPolicy = `{"version":1,"purposes":[{"name":"settlement","fields":["amount"]}],
 "principals":[{"name":"operator","users":["root"],"roles":["admin","application"],
  "act_as":[{"participants":["p-*"],"purposes":["settlement"]}],
  "seal_for":[{"participants":["p-*"]}]}]}`

const noRootPolicy = `{"version":1,"purposes":[{"name":"settlement","fields":["amount"]}],
 "principals":[{"name":"daemons","users":["daemon"],"roles":["application"]}]}`

// daemon is a custodyd process started from the built binary.
type daemon struct {
	t      *testing.T
	dir    string
	config string
	socket string
	cmd    *exec.Cmd
	log    *syncBuffer
	done   chan error
	env    []string // added to the environment
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// setup writes a configuration for a fresh token and returns the daemon,
// not started.
func setup(t *testing.T) *daemon {
	dir := t.TempDir()
	tok := hsmtest.NewToken(t)
	d := &daemon{t: t, dir: dir, config: filepath.Join(dir, "custodyd.json"), socket: filepath.Join(dir, "c.sock")}
	writeFile(t, filepath.Join(dir, "policy.json"), rootPolicy)
	cfg := map[string]any{
		"pkcs11":      map[string]any{"module": tok.ModulePath, "token_label": tok.TokenLabel, "pin_file": tok.PINFile},
		"socket":      map[string]any{"path": "c.sock", "mode": "0600"},
		"policy_file": "policy.json",
		"metrics":     map[string]any{"listen": "unix:m.sock"},
		"access_log":  map[string]any{"dir": "log"},
		"ceremony":    map[string]any{"auto_genesis": true},
	}
	data, _ := json.Marshal(cfg)
	writeFile(t, d.config, string(data))
	return d
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (d *daemon) start() {
	d.t.Helper()
	d.log = &syncBuffer{}
	d.cmd = exec.Command(filepath.Join(binDir, "custodyd"), "run", "--config", d.config)
	d.cmd.Stderr = d.log
	d.cmd.Env = append(os.Environ(), d.env...)
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.done = make(chan error, 1)
	go func() { d.done <- d.cmd.Wait() }()
	d.t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			d.cmd.Process.Kill()
			<-d.done
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", d.socket); err == nil {
			c.Close()
			return
		}
		select {
		case err := <-d.done:
			d.t.Fatalf("custodyd exited: %v\n%s", err, d.log)
		case <-time.After(50 * time.Millisecond):
		}
	}
	d.t.Fatalf("custodyd did not listen within 30s\n%s", d.log)
}

func (d *daemon) ctl(args ...string) (string, error) {
	out, err := exec.Command(filepath.Join(binDir, "custodyctl"), append([]string{"--socket", d.socket}, args...)...).CombinedOutput()
	return string(out), err
}

func (d *daemon) signal(sig syscall.Signal) { d.cmd.Process.Signal(sig) }

func (d *daemon) waitLog(substr string) {
	d.t.Helper()
	if !testutil.Poll(5*time.Second, func() bool { return strings.Contains(d.log.String(), substr) }) {
		d.t.Fatalf("log never said %q:\n%s", substr, d.log)
	}
}

func TestLifecycle(t *testing.T) {
	d := setup(t)
	// A systemd-style notification socket (Type=notify).
	notifyPath := filepath.Join(d.dir, "notify.sock")
	notes, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notes.Close()
	expectNote := func(want string) {
		t.Helper()
		notes.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 256)
		n, err := notes.Read(buf)
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("notification: %q %v, want %q", buf[:n], err, want)
		}
	}
	d.env = []string{"NOTIFY_SOCKET=" + notifyPath}
	d.start()
	expectNote("READY=1")
	if !strings.Contains(d.log.String(), "created daemon key on the token") {
		t.Errorf("first start did not create the daemon keys:\n%s", d.log)
	}
	if fi, err := os.Stat(d.socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode: %v %v", fi.Mode(), err)
	}
	if out, err := d.ctl("health"); err != nil || !strings.Contains(out, "status:       ok") {
		t.Fatalf("health: %v\n%s", err, out)
	}
	if out, err := d.ctl("participants", "register", "p-1"); err != nil {
		t.Fatalf("register: %v\n%s", err, out)
	}
	// The metrics socket, after that workload.
	page := scrapeMetrics(t, filepath.Join(d.dir, "m.sock"))
	for _, want := range []string{
		`custody_requests_total{code="ok",route="GET /v1/health"} 1`,
		`custody_requests_total{code="ok",route="POST /v1/participants"} 1`,
		`custody_hsm_operation_duration_seconds_count{op="generate",result="ok"} 3`,
		`custody_hsm_token_up 1`,
		`custody_keys{kind="participant"} 1`,
		`custody_keys_due_for_rotation{kind="escrow"} 0`,
		`custody_log_writable 1`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("metrics page lacks %q", want)
		}
	}

	// A broken policy is refused on SIGHUP and the old one stays.
	policyPath := filepath.Join(d.dir, "policy.json")
	writeFile(t, policyPath, `{"version":1,"principals":[{"name":"x","users":["no-such-user-here"],"roles":["admin"]}]}`)
	d.signal(syscall.SIGHUP)
	expectNote("RELOADING=1")
	expectNote("READY=1")
	d.waitLog("policy reload failed; keeping the previous policy")
	if !strings.Contains(d.log.String(), "no-such-user-here") {
		t.Errorf("the reload error does not say why:\n%s", d.log)
	}
	if out, err := d.ctl("health"); err != nil {
		t.Fatalf("health after a bad reload: %v\n%s", err, out)
	}
	// A valid policy that drops root takes effect on SIGHUP.
	writeFile(t, policyPath, noRootPolicy)
	d.signal(syscall.SIGHUP)
	expectNote("RELOADING=1")
	expectNote("READY=1")
	d.waitLog("policy reloaded")
	if out, err := d.ctl("health"); err == nil || !strings.Contains(out, "unknown_caller") {
		t.Fatalf("health after dropping root: %v\n%s", err, out)
	}

	// SIGTERM: clean exit, socket gone.
	d.signal(syscall.SIGTERM)
	expectNote("STOPPING=1")
	select {
	case err := <-d.done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, d.log)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no exit 30s after SIGTERM")
	}
	if _, err := os.Stat(d.socket); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
	// The access log verifies offline, its final checkpoint (signed at
	// shutdown) covers every entry, and it holds the daemon's own events.
	logDir := filepath.Join(d.dir, "log")
	if v := verifyLog(t, logDir); v.Entries == 0 || v.CheckpointSize != v.Entries {
		t.Errorf("final checkpoint covers %d of %d entries", v.CheckpointSize, v.Entries)
	}
	out, _ := exec.Command(filepath.Join(binDir, "custodyctl"), "log", "query", logDir, "--format", "jsonl").CombinedOutput()
	for _, op := range []string{`"op":"daemon.start"`, `"op":"register"`, `"op":"policy.reload"`, `"code":"invalid_policy"`, `"op":"daemon.stop"`} {
		if !strings.Contains(string(out), op) {
			t.Errorf("access log lacks %s:\n%s", op, out)
		}
	}

	// A restart keeps the keys: nothing is created, the participant is there.
	writeFile(t, policyPath, rootPolicy)
	d.env = nil
	d.start()
	if strings.Contains(d.log.String(), "created daemon key") {
		t.Errorf("restart re-created daemon keys:\n%s", d.log)
	}
	if out, err := d.ctl("participants", "show", "p-1"); err != nil || !strings.Contains(out, "active version 1") {
		t.Errorf("participant after restart: %v\n%s", err, out)
	}
}

func TestRefusesReadablePINFile(t *testing.T) {
	d := setup(t)
	var cfg struct {
		PKCS11 struct {
			PINFile string `json:"pin_file"`
		} `json:"pkcs11"`
	}
	data, _ := os.ReadFile(d.config)
	json.Unmarshal(data, &cfg)
	for _, mode := range []os.FileMode{0o640, 0o604} {
		os.Chmod(cfg.PKCS11.PINFile, mode)
		out, err := exec.Command(filepath.Join(binDir, "custodyd"), "run", "--config", d.config).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "PIN file") {
			t.Errorf("mode %o: started or unclear error: %v\n%s", mode, err, out)
		}
		if _, err := os.Stat(d.socket); err == nil {
			t.Errorf("mode %o: socket created", mode)
		}
	}
}

func TestChecks(t *testing.T) {
	dir := t.TempDir()
	run := func(args ...string) (string, error) {
		out, err := exec.Command(filepath.Join(binDir, "custodyd"), args...).CombinedOutput()
		return string(out), err
	}
	if out, err := run("policy", "check", "../../policies/example.json"); err != nil || !strings.Contains(out, ": ok (") {
		t.Errorf("example policy: %v\n%s", err, out)
	}
	bad := filepath.Join(dir, "bad.json")
	writeFile(t, bad, `{"version":1,"purposes":[{"name":"s","fields":["a"]}],"principals":[{"name":"p","users":["root"],"roles":["application"],"act_as":[{"participants":["x"],"purposes":["setlement"]}]}]}`)
	if out, err := run("policy", "check", bad); err == nil || !strings.Contains(out, "principals[0].act_as[0].purposes[0]") {
		t.Errorf("bad policy: %v\n%s", err, out)
	}
	for field, cfg := range map[string]string{
		"socket.mode":            `{"socket":{"path":"x.sock","mode":"777"}}`,
		"pkcs11.sessions":        `{"pkcs11":{"sessions":-1}}`,
		"limits.request_timeout": `{"limits":{"request_timeout":"10ms"}}`,
		"unknown field":          `{"sokcet":{}}`,
	} {
		path := filepath.Join(dir, "c.json")
		writeFile(t, path, cfg)
		if out, err := run("config", "check", "--config", path); err == nil || !strings.Contains(out, field) {
			t.Errorf("config %s: %v\n%s", cfg, err, out)
		}
	}
	if out, err := run("config", "check", "--config", "../../scripts/systemd/custodyd.json"); err != nil || !strings.Contains(out, `"/run/custodyd/custodyd.sock"`) {
		t.Errorf("the systemd example configuration: %v\n%s", err, out)
	}
	if out, err := run("config", "check"); err != nil || !strings.Contains(out, `"token_label": "custody"`) {
		t.Errorf("default config: %v\n%s", err, out)
	}
	if out, err := run("--help"); err != nil || !strings.Contains(out, "custodyd token init") {
		t.Errorf("help: %v\n%s", err, out)
	}
}

func scrapeMetrics(t *testing.T, socket string) string {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	resp, err := c.Get("http://custody/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestSIGTERMUnderLoad stops the daemon while 8 clients encrypt: every
// request the daemon acknowledged is in the access log, the log verifies,
// and its final checkpoint, signed at shutdown, covers every entry.
func TestSIGTERMUnderLoad(t *testing.T) {
	d := setup(t)
	d.start()
	if out, err := d.ctl("participants", "register", "p-1"); err != nil {
		t.Fatalf("register: %v\n%s", err, out)
	}
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", d.socket)
	}}}
	var mu sync.Mutex
	var acked []string
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				tx := fmt.Sprintf("tx-%d-%d", w, i)
				body := fmt.Sprintf(`{"transaction_id":%q,"job_id":"j","confidential":{"a":1},"participants":["p-1"]}`, tx)
				resp, err := c.Post("http://custody/v1/transactions/encrypt", "application/json", strings.NewReader(body))
				if err != nil {
					return // the daemon is gone
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					mu.Lock()
					acked = append(acked, tx)
					mu.Unlock()
				}
			}
		}()
	}
	// Until 10 requests are acknowledged (the assertion below says if not).
	testutil.Poll(30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) >= 10
	})
	d.signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, d.log)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no exit 30s after SIGTERM")
	}
	wg.Wait()
	if len(acked) < 10 {
		t.Fatalf("only %d requests acknowledged before SIGTERM", len(acked))
	}

	logDir := filepath.Join(d.dir, "log")
	v := verifyLog(t, logDir)
	if v.CheckpointSize != v.Entries {
		t.Errorf("final checkpoint covers %d of %d entries", v.CheckpointSize, v.Entries)
	}
	logged := allowedTransactions(t, logDir, "encrypt")
	for _, tx := range acked {
		if !logged[tx] {
			t.Errorf("acknowledged %s is not in the access log", tx)
		}
	}
	t.Logf("%d acknowledged, %d encrypt entries, %d entries in all", len(acked), len(logged), v.Entries)
}

// allowedTransactions asks the reviewer's `log query` for the allowed
// entries of op in dir and returns their transaction ids.
func allowedTransactions(t *testing.T, dir, op string) map[string]bool {
	t.Helper()
	out, err := exec.Command(filepath.Join(binDir, "custodyctl"), "log", "query", dir, "--op", op, "--outcome", "allowed", "--format", "jsonl").CombinedOutput()
	if err != nil {
		t.Fatalf("log query: %v\n%s", err, out)
	}
	logged := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var e struct {
			TX string `json:"transaction_id"`
		}
		json.Unmarshal([]byte(line), &e)
		logged[e.TX] = true
	}
	return logged
}

type logSummary struct {
	Entries        int64 `json:"entries"`
	CheckpointSize int64 `json:"latest_checkpoint_size"`
}

// verifyLog runs the reviewer's offline verification on a log directory
// and fails the test unless it passes. The reviewer's key is a copy of
// log.pub taken here, outside the directory (the directory is the test's
// own: nobody rewrote it); verify refuses the directory's own file.
func verifyLog(t *testing.T, dir string) logSummary {
	t.Helper()
	pub, err := os.ReadFile(filepath.Join(dir, "log.pub"))
	if err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(t.TempDir(), "reviewer-log.pub")
	if err := os.WriteFile(key, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(binDir, "custodyctl"), "log", "verify", dir, "--json", "--key", key).CombinedOutput()
	if err != nil {
		t.Fatalf("log verify %s: %v\n%s", dir, err, out)
	}
	var v logSummary
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("log verify --json: %v\n%s", err, out)
	}
	return v
}
