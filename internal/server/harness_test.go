package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"custody/hsm"
	"custody/hsm/hsmtest"
	"custody/internal/auditlog"
	"custody/internal/config"
	"custody/internal/keys"
	"custody/internal/orders/vaulttest"
	"custody/internal/policy"
	"custody/internal/server"
	"custody/internal/store/pgtest"
)

// Test users, created by TestMain (the suite runs as root) and removed after.
const (
	appUser   = "custody-t-app"   // an application principal: may act as miner-* for settlement
	otherUser = "custody-t-other" // covered by no principal: denied everywhere
)

var (
	setProcs sync.Once // the daemon's GOMAXPROCS, set by the first harness
	binDir   string    // custodyctl built for the tests, reachable by the test users
	users    = map[string]*user.User{}
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if os.Getenv(clientModeEnv) != "" {
		return runClientMode() // this binary re-executed as another user: see fairness_test.go
	}
	if os.Getenv(rawModeEnv) != "" {
		return runRawMode() // one request as another user: see logsafe_test.go
	}
	if os.Getuid() != 0 {
		fmt.Fprintln(os.Stderr, "internal/server tests run as root: they create Unix users (make test in CI runs as root)")
		return 1
	}
	stopVault := func() (func(), error) {
		return vaulttest.Stop, nil // the dev Vault of the audit tests, if they started one
	}
	stopPostgres := func() (func(), error) {
		return pgtest.Stop, nil // the PostgreSQL of the store tests, if they started one
	}
	return hsmtest.Run(m, stopVault, stopPostgres, createUsers, installBinaries)
}

// createUsers creates the test's Unix users (shared with concurrent test
// runs: see shareTestUsers) and fills users.
func createUsers() (cleanup func(), err error) {
	// The officers of ceremony_test.go are real Unix users too.
	names := append([]string{appUser, otherUser, complianceUser, mfaAdminUser, auditorUser}, officerUsers...) // complianceUser: status_test.go; mfaAdminUser, auditorUser: mfa_policy_test.go
	release, err := shareTestUsers()
	if err != nil {
		return nil, err
	}
	for _, name := range names {
		u, err := addUser(name)
		if err != nil {
			release(names)
			return nil, err
		}
		users[name] = u
	}
	return func() { release(names) }, nil
}

// installBinaries puts a copy of this test binary (re-executed as other
// users) and a freshly built custodyctl into binDir.
func installBinaries() (cleanup func(), err error) {
	binDir, err = os.MkdirTemp("", "custody-bin-")
	if err != nil {
		return nil, err
	}
	cleanup = func() { os.RemoveAll(binDir) }
	os.Chmod(binDir, 0o755)
	if err := copyFile(os.Args[0], filepath.Join(binDir, "server.test")); err != nil {
		cleanup()
		return nil, err
	}
	if out, err := exec.Command("go", "build", "-o", binDir, "custody/cmd/custodyctl").CombinedOutput(); err != nil {
		cleanup()
		return nil, fmt.Errorf("building custodyctl: %v\n%s", err, out)
	}
	return cleanup, nil
}

func addUser(name string) (*user.User, error) {
	if u, err := user.Lookup(name); err == nil {
		return u, nil
	}
	if out, err := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("useradd %s: %v: %s", name, err, out)
	}
	return user.Lookup(name)
}

// testPolicy: root administers and may act as any p-* participant; the app
// user may act as miner-* for settlement only; the other user is unknown.
const testPolicy = `{
  "version": 1,
  "purposes": [
    {"name": "settlement", "fields": ["amount", "pricing"]},
    {"name": "dispute", "fields": ["*"]},
    {"name": "night-audit", "fields": ["amount"]}
  ],
  "principals": [
    {"name": "operator", "users": ["root"], "roles": ["admin", "application", "reviewer"],
     "act_as": [
       {"participants": ["client-*", "miner-*"], "purposes": ["settlement", "dispute"]},
       {"participants": ["client-*"], "purposes": ["night-audit"],
        "windows": [{"days": ["sun"], "start": "02:00", "end": "03:00", "time_zone": "UTC"}]}
     ],
     "seal_for": [{"participants": ["*"]}]},
    {"name": "settlement-app", "users": ["custody-t-app"], "roles": ["application"],
     "act_as": [{"participants": ["miner-*"], "purposes": ["settlement"]}],
     "seal_for": [{"participants": ["miner-*"]}]}
  ]
}`

// recorder keeps the recent entries for assertions and can be told to fail.
type recorder struct {
	mu      sync.Mutex
	entries []auditlog.Entry
	fail    bool
	hold    chan struct{} // when set, Record of a decrypt entry waits for it to close
}

func (r *recorder) Record(_ context.Context, e auditlog.Entry) error {
	r.mu.Lock()
	hold := r.hold
	r.mu.Unlock()
	if hold != nil && e.Operation == "decrypt" {
		<-hold
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail {
		return fmt.Errorf("injected: log device full")
	}
	r.entries = append(r.entries, e)
	if len(r.entries) > 2000 { // bounded, so benchmarks measure the daemon, not this
		r.entries = append(r.entries[:0], r.entries[1000:]...)
	}
	return nil
}

func (r *recorder) last() auditlog.Entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.entries) == 0 {
		return auditlog.Entry{}
	}
	return r.entries[len(r.entries)-1]
}

func (r *recorder) setFail(v bool) {
	r.mu.Lock()
	r.fail = v
	r.mu.Unlock()
}

// harness is a daemon serving on a real Unix socket in a temporary
// directory, on a fresh SoftHSM token.
type harness struct {
	t      testing.TB
	dir    string
	socket string
	token  *hsm.Token
	cfg    hsm.Config
	keys   *keys.Registry
	store  *policy.Store
	rec    *recorder
	srv    *server.Server
	peer   server.Peer // the caller of httptest requests (newHandlerHarness)
	now    time.Time   // fixed clock: a Wednesday noon UTC
	client *http.Client
}

func newHarness(t testing.TB) *harness { return newHarnessWith(t, nil) }

// newHarnessWith lets a test change the server's dependencies (limits, a
// wrapped token) before it starts.
func newHarnessWith(t testing.TB, adjust func(*server.Deps)) *harness {
	t.Helper()
	h, deps := newHarnessDeps(t, adjust)
	h.serve(deps)
	return h
}

// newHandlerHarness is a harness without a socket: h.call and its helpers
// serve each request with httptest through the server's Handler, as the
// caller h.peer (root, this process, unless the test changes it).
func newHandlerHarness(t testing.TB) *harness {
	t.Helper()
	h, deps := newHarnessDeps(t, nil)
	h.fillDeps(&deps)
	var err error
	if h.srv, err = server.New(deps); err != nil {
		t.Fatal(err)
	}
	h.peer = server.Peer{UID: 0, GID: 0, PID: int32(os.Getpid())}
	return h
}

// newHarnessDeps makes the token, keys, policy and recorder of a harness
// and the server's Deps, changed by adjust when not nil.
func newHarnessDeps(t testing.TB, adjust func(*server.Deps)) (*harness, server.Deps) {
	t.Helper()
	return newHarnessDepsCache(t, adjust, true)
}

// newHarnessNoCache is newHarness with the DEK handle cache off: every open
// runs the whole chain on the device.
func newHarnessNoCache(t testing.TB) *harness {
	t.Helper()
	h, deps := newHarnessDepsCache(t, nil, false)
	h.serve(deps)
	return h
}

func newHarnessDepsCache(t testing.TB, adjust func(*server.Deps), cache bool) (*harness, server.Deps) {
	t.Helper()
	dir, err := os.MkdirTemp("", "custody-srv-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755) // the test users must reach the socket
	h := &harness{t: t, dir: dir, socket: filepath.Join(dir, "custodyd.sock"), rec: &recorder{},
		now: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)}
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(testLogOutput(), nil))
	h.cfg = hsmtest.NewToken(t)
	if cache {
		dc := config.Default().PKCS11.DEKCache // the daemon's default: the cache is on
		h.cfg.DEKCache = hsm.DEKCacheConfig{Entries: dc.Entries, MaxAge: dc.MaxAge.Std(), Recheck: dc.Recheck.Std()}
	}
	h.token, err = hsm.Open(ctx, h.cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.token.Close() })
	setProcs.Do(func() { hsm.SetProcs(h.token.Info().Sessions) }) // as custodyd does
	h.keys, err = keys.Load(ctx, h.token, log)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.keys.Genesis(ctx, h.now, "test harness"); err != nil { // escrow and signing keys, genesis marker
		t.Fatal(err)
	}
	policyPath := filepath.Join(dir, "policy.json")
	if err := os.WriteFile(policyPath, []byte(testPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	h.store, err = policy.NewStore(policyPath)
	if err != nil {
		t.Fatal(err)
	}
	limits := config.Default().Limits
	limits.MaxBodyBytes = 4 << 20
	limits.MaxBatchItems = 50
	deps := server.Deps{Token: h.token, Keys: h.keys, Policy: h.store, Recorder: h.rec, Log: log,
		Limits: limits, Now: func() time.Time { return h.now }, Version: "test"}
	if adjust != nil {
		adjust(&deps)
	}
	return h, deps
}

// fillDeps sets the device collaborators a test left out to h's token.
func (h *harness) fillDeps(deps *server.Deps) {
	if deps.Rewrapper == nil { // the tests' wrapped tokens wrap Open only
		deps.Rewrapper = h.token
	}
	if deps.Prover == nil {
		deps.Prover = h.token
	}
}

// serve starts a server with deps on h.socket (mode 0666, so that the test
// users reach it), stops it at the test's end, and points h.client at it.
func (h *harness) serve(deps server.Deps) {
	h.t.Helper()
	h.fillDeps(&deps)
	var err error
	h.srv, err = server.New(deps)
	if err != nil {
		h.t.Fatal(err)
	}
	ln, err := server.Listen(h.socket, 0o666)
	if err != nil {
		h.t.Fatal(err)
	}
	go h.srv.Serve(ln)
	h.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		h.srv.Shutdown(ctx)
	})
	h.client = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", h.socket)
	}}}
}

// call sends a request as root (this process) and decodes the answer.
func (h *harness) call(method, path string, body any) (int, map[string]any) {
	h.t.Helper()
	status, raw := h.callRaw(method, path, body)
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		h.t.Fatalf("%s %s: response is not JSON: %v: %s", method, path, err, raw)
	}
	return status, out
}

func (h *harness) callRaw(method, path string, body any) (int, []byte) {
	h.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = bytes.NewReader([]byte(b))
	default:
		data, err := json.Marshal(b)
		if err != nil {
			h.t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, "http://custody"+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Custody-End-User-IP", "192.0.2.7")
	req.Header.Set("Custody-End-User-Agent", "harness/1")
	if h.client == nil { // newHandlerHarness: no socket
		rr := httptest.NewRecorder()
		h.srv.Handler().ServeHTTP(rr, req.WithContext(server.WithPeer(req.Context(), h.peer)))
		return rr.Code, rr.Body.Bytes()
	}
	resp, err := h.client.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	return resp.StatusCode, raw
}

// errCode returns the error code of an error response, or "".
func errCode(body map[string]any) string {
	e, _ := body["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

// register creates participants as root.
func (h *harness) register(ids ...string) {
	h.t.Helper()
	for _, id := range ids {
		if st, body := h.call("POST", "/v1/participants", map[string]string{"id": id}); st != 200 {
			h.t.Fatalf("register %s: %d %v", id, st, body)
		}
	}
}

// seal encrypts a standard transaction for participants as root and
// returns the envelope text.
func (h *harness) seal(txid string, participants ...string) string {
	h.t.Helper()
	st, body := h.encrypt(txid, participants...)
	if st != 200 {
		h.t.Fatalf("encrypt %s: %d %v", txid, st, body)
	}
	return body["envelope"].(string)
}

// encrypt asks for an envelope of the test record for participants and
// returns the answer as it came.
func (h *harness) encrypt(txid string, participants ...string) (int, map[string]any) {
	h.t.Helper()
	return h.call("POST", "/v1/transactions/encrypt", map[string]any{
		"transaction_id": txid, "job_id": "job-" + txid,
		"public_data":  map[string]any{"status": "completed", "job_id": "job-" + txid},
		"confidential": map[string]any{"amount": "1000", "pricing": map[string]any{"per_hour": 2.5}, "settlement_details": "IBAN DE00"},
		"participants": participants,
	})
}

// ctlAs runs custodyctl as a Unix user with the given stdin; it returns the
// exit code, stdout and stderr.
func (h *harness) ctlAs(name string, stdin string, args ...string) (int, string, string) {
	h.t.Helper()
	u := users[name]
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	cmd := exec.Command(filepath.Join(binDir, "custodyctl"), append([]string{"--socket", h.socket}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	cmd.Stdin = bytes.NewReader([]byte(stdin))
	cmd.Dir = "/"
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		h.t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

// testLogOutput is where the daemon's log goes in tests: nowhere, unless
// CUSTODY_TEST_LOG=1.
func testLogOutput() io.Writer {
	if os.Getenv("CUSTODY_TEST_LOG") == "1" {
		return os.Stderr
	}
	return io.Discard
}

func copyFile(from, to string) error {
	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, data, 0o755)
}

// shareTestUsers lets several test runs on one machine share the test users:
// each run holds a shared lock on a file while it runs, and the returned
// release deletes the users only when no other run still holds it.
func shareTestUsers() (release func(names []string), err error) {
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "custody-test-users.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH); err != nil {
		f.Close()
		return nil, err
	}
	return func(names []string) {
		defer f.Close()
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			return // another run still uses the users; the last one out deletes them
		}
		for _, name := range names {
			exec.Command("userdel", name).Run()
		}
	}, nil
}
