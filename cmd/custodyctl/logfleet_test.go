package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"custody/internal/auditlog"
)

// fleetLogs writes three daemons' logs under one directory (d-1/log …
// d-3/log), each with its own origin and key, and the fleet manifest
// fleet.json listing them with their keys. Transaction tx-7 is sealed on
// d-1, opened on d-2 by a participant, and audit-opened on d-3 under
// order-7 (and refused once there for another order); other entries are
// noise.
func fleetLogs(t *testing.T) (root, manifest string) {
	t.Helper()
	root = t.TempDir()
	t0 := time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)
	var ml []fleetManifestLog
	for d := 1; d <= 3; d++ {
		dir := filepath.Join(root, fmt.Sprintf("d-%d", d), "log")
		cfg := auditlog.DefaultConfig()
		cfg.Dir, cfg.Origin = dir, fmt.Sprintf("d-%d/access-log", d)
		s := auditlog.NewSoftwareSigner(cfg.Origin, ed25519.NewKeyFromSeed(bytes.Repeat([]byte{byte(d)}, 32)))
		l, err := auditlog.Open(context.Background(), cfg, s, nil)
		if err != nil {
			t.Fatal(err)
		}
		rec := func(e auditlog.Entry) {
			if err := l.Record(context.Background(), e); err != nil {
				t.Fatal(err)
			}
		}
		for k := range 5 { // noise
			rec(auditlog.Entry{Time: t0.Add(time.Duration(k*d) * time.Second), Operation: "encrypt", Principal: "app",
				TransactionID: fmt.Sprintf("tx-n%d-%d", d, k), Participants: []string{"p-1"}, Outcome: auditlog.Allowed})
		}
		switch d {
		case 1:
			rec(auditlog.Entry{Time: t0.Add(time.Minute), Operation: "encrypt", Principal: "app", TransactionID: "tx-7", Participants: []string{"p-1"}, Outcome: auditlog.Allowed})
		case 2:
			rec(auditlog.Entry{Time: t0.Add(2 * time.Minute), Operation: "decrypt", Principal: "desk", TransactionID: "tx-7", Participant: "p-1", Purpose: "settlement", Outcome: auditlog.Allowed})
		case 3:
			rec(auditlog.Entry{Time: t0.Add(3 * time.Minute), Operation: "audit-decrypt", Principal: "auditor", TransactionID: "tx-7", Purpose: "investigation", CourtOrder: "order-7", OrderVersion: 1, UseNumber: 1, Outcome: auditlog.Allowed})
			rec(auditlog.Entry{Time: t0.Add(4 * time.Minute), Operation: "audit-decrypt", Principal: "auditor", TransactionID: "tx-7", Purpose: "investigation", CourtOrder: "order-8", Outcome: auditlog.Denied, Code: "order_scope"})
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		ml = append(ml, fleetManifestLog{Name: fmt.Sprintf("d-%d", d), Dir: fmt.Sprintf("d-%d/log", d), Key: s.VerifierKey()})
	}
	// The reviewer's copy of the manifest, outside the logs' directory
	// (relative dirs resolve against the manifest's own directory: a copy
	// of the whole tree with it).
	b, _ := json.Marshal(fleetManifest{Version: 1, Logs: ml})
	manifest = filepath.Join(root, "fleet.json")
	if err := os.WriteFile(manifest, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return root, manifest
}

// TestLogQueryFleet: who opened transaction tx-7 on any daemon, under which
// order, from the fleet manifest: one line per entry, in time order, each
// naming its log. An altered log fails the whole query with no answer and
// names the log; so does a log whose key is not the manifest's.
func TestLogQueryFleet(t *testing.T) {
	reviewerHome(t)
	root, manifest := fleetLogs(t)
	code, out, errs := ctl("log", "query", "--fleet", manifest, "--transaction", "tx-7", "--format", "jsonl")
	if code != 0 {
		t.Fatalf("query: %d %s", code, errs)
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var e struct {
			Log, Outcome, Principal string
			Operation               string `json:"op"`
			Index                   int64
			Order                   string `json:"court_order"`
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		got = append(got, fmt.Sprintf("%s#%d %s %s %s %s", e.Log, e.Index, e.Operation, e.Outcome, e.Principal, e.Order))
	}
	want := []string{"d-1#5 encrypt allowed app ", "d-2#5 decrypt allowed desk ", "d-3#5 audit-decrypt allowed auditor order-7", "d-3#6 audit-decrypt denied auditor order-8"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("fleet answer:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// Who opened it under an order, as a table: the LOG column says where.
	code, out, _ = ctl("log", "query", "--fleet", manifest, "--transaction", "tx-7", "--op", "audit-decrypt", "--outcome", "allowed")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); code != 0 || len(lines) != 2 || !strings.HasPrefix(lines[0], "LOG ") ||
		!strings.HasPrefix(lines[1], "d-3 ") || !strings.Contains(lines[1], "order-7") {
		t.Fatalf("table: %d\n%s", code, out)
	}
	if code, out, _ := ctl("log", "query", "--fleet", manifest, "--transaction", "tx-7", "--format", "csv"); code != 0 || !strings.HasPrefix(out, "log,index,") || strings.Count(out, "\n") != 5 {
		t.Fatalf("csv: %d\n%s", code, out)
	}

	// Several DIRs, each with its pinned key: the same answer.
	for d := 1; d <= 3; d++ {
		dir := filepath.Join(root, fmt.Sprintf("d-%d", d), "log")
		if code, out, errs := ctl("log", "pin", dir, "--fingerprint", dirFingerprint(t, dir)); code != 0 {
			t.Fatalf("pin: %s %s", out, errs)
		}
	}
	dirs := []string{filepath.Join(root, "d-1/log"), filepath.Join(root, "d-2/log"), filepath.Join(root, "d-3/log")}
	code, out, errs = ctl(append([]string{"log", "query", "--transaction", "tx-7", "--format", "jsonl"}, dirs...)...)
	if code != 0 || strings.Count(out, "\n") != 4 || !strings.Contains(out, `"log":"d-3/access-log"`) {
		t.Fatalf("query of pinned dirs: %d %s\n%s", code, errs, out)
	}
	if code, out, errs := ctl(append([]string{"log", "verify"}, dirs...)...); code != 0 || !strings.Contains(out, "OK: all 3 logs verify") {
		t.Fatalf("verify of pinned dirs: %d %s %s", code, out, errs)
	}
	if code, out, errs := ctl("log", "verify", "--fleet", manifest); code != 0 || !strings.Contains(out, "OK: all 3 logs verify") {
		t.Fatalf("verify --fleet: %d %s %s", code, out, errs)
	}

	// An altered entry in d-2's log: no answer at all, d-2 named.
	entries := filepath.Join(root, "d-2/log", auditlog.EntriesFile)
	orig, _ := os.ReadFile(entries)
	os.WriteFile(entries, bytes.Replace(orig, []byte(`"principal":"desk"`), []byte(`"principal":"dusk"`), 1), 0o640)
	code, out, errs = ctl("log", "query", "--fleet", manifest, "--transaction", "tx-7", "--format", "jsonl")
	if code == 0 || out != "" || !strings.Contains(errs, "1 of 3 logs failed verification") || !strings.Contains(errs, "d-2") {
		t.Fatalf("query with an altered log: %d\nout %q\nerr %s", code, out, errs)
	}
	if code, out, _ := ctl("log", "verify", "--fleet", manifest); code == 0 || !strings.Contains(out, "FAILED") {
		t.Fatalf("verify --fleet with an altered log: %d\n%s", code, out)
	}
	os.WriteFile(entries, orig, 0o640)

	// A manifest whose key for d-1 is d-2's: d-1 does not verify.
	b, _ := os.ReadFile(manifest)
	var m fleetManifest
	json.Unmarshal(b, &m)
	m.Logs[0].Key = m.Logs[1].Key
	wrongKey := filepath.Join(t.TempDir(), "fleet.json")
	for i := range m.Logs {
		m.Logs[i].Dir = filepath.Join(root, m.Logs[i].Dir) // absolute: the copy is elsewhere
	}
	b, _ = json.Marshal(m)
	os.WriteFile(wrongKey, b, 0o644)
	if code, out, errs := ctl("log", "query", "--fleet", wrongKey, "--transaction", "tx-7"); code == 0 || out != "" || !strings.Contains(errs, "d-1") {
		t.Fatalf("query with another log's key: %d\n%s\n%s", code, out, errs)
	}

	// A manifest inside a log directory it lists is refused (whoever can
	// rewrite the log can rewrite it).
	m.Logs[0].Key = m.Logs[2].Key
	b, _ = json.Marshal(m)
	planted := filepath.Join(root, "d-3/log/fleet.json")
	os.WriteFile(planted, b, 0o644)
	if code, _, errs := ctl("log", "query", "--fleet", planted, "--transaction", "tx-7"); code == 0 || !strings.Contains(errs, "inside the log directory") {
		t.Fatalf("manifest inside a log: %d %s", code, errs)
	}
	if code, _, errs := ctl("log", "query"); code != 2 || !strings.Contains(errs, "missing argument: want DIR...") {
		t.Fatalf("no log: %d %s", code, errs)
	}
}

// TestLogReportFleet: one report over the fleet's logs: each log named
// with its verification and count, the totals counted together.
func TestLogReportFleet(t *testing.T) {
	reviewerHome(t)
	root, manifest := fleetLogs(t)
	html := filepath.Join(t.TempDir(), "report.html")
	code, out, errs := ctl("log", "report", "--fleet", manifest, "--from", "2026-11-23", "--to", "2026-11-23", "--out", html)
	if code != 0 || !strings.Contains(out, "19 entries") {
		t.Fatalf("report: %d %s %s", code, out, errs)
	}
	b, _ := os.ReadFile(html)
	page := string(b)
	for _, want := range []string{"3 logs of a fleet counted together", "<td>d-1</td>", "<td>d-2</td>", "<td>d-3</td>", "order-7", "order-8"} {
		if !strings.Contains(page, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if n := strings.Count(page, `class="ok">verified`); n != 3 {
		t.Errorf("%d logs shown verified, want 3", n)
	}
	// Each log's count: 5 noise + its own (1, 1, 2).
	for _, row := range []string{"<td>d-1</td><td><code>" + filepath.Join(root, "d-1/log") + "</code></td><td>6</td>", "<td>d-3</td><td><code>" + filepath.Join(root, "d-3/log") + "</code></td><td>7</td>"} {
		if !strings.Contains(page, row) {
			t.Errorf("report lacks the row %q", row)
		}
	}
	// A tampered log is shown NOT VERIFIED, by name.
	entries := filepath.Join(root, "d-2/log", auditlog.EntriesFile)
	orig, _ := os.ReadFile(entries)
	os.WriteFile(entries, bytes.Replace(orig, []byte(`"principal":"desk"`), []byte(`"principal":"dusk"`), 1), 0o640)
	if code, _, errs := ctl("log", "report", "--fleet", manifest, "--from", "2026-11-23", "--to", "2026-11-23", "--out", html); code != 0 {
		t.Fatalf("report with a tampered log: %s", errs)
	}
	b, _ = os.ReadFile(html)
	if !strings.Contains(string(b), "NOT VERIFIED") || strings.Count(string(b), `class="ok">verified`) != 2 {
		t.Errorf("tampered d-2 not shown as such:\n%s", b)
	}
}

func TestParseFleetManifest(t *testing.T) {
	k := auditlog.NewSoftwareSigner("d-1/access-log", ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, 32))).VerifierKey()
	ok := `{"version":1,"logs":[{"name":"d-1","dir":"d-1/log","key":"` + k + `"},{"name":"d-2","dir":"/x/d-2/log"}]}`
	if m, err := parseFleetManifest([]byte(ok)); err != nil || len(m.Logs) != 2 || m.Logs[1].Key != "" {
		t.Fatalf("%v %+v", err, m)
	}
	for _, bad := range []string{
		``, `[]`, `{}`, `{"version":2,"logs":[{"name":"a","dir":"b"}]}`,
		`{"version":1,"logs":[]}`,
		`{"version":1,"logs":[{"name":"a","dir":"b"}],"extra":1}`,
		`{"version":1,"logs":[{"name":"a","dir":"b","pin":"x"}]}`,
		`{"version":1,"logs":[{"name":"a","dir":"b"},{"name":"a","dir":"c"}]}`,
		`{"version":1,"logs":[{"name":"","dir":"b"}]}`,
		`{"version":1,"logs":[{"name":"a b","dir":"b"}]}`,
		`{"version":1,"logs":[{"name":"a\u202e","dir":"b"}]}`,
		`{"version":1,"logs":[{"name":"a","dir":""}]}`,
		`{"version":1,"logs":[{"name":"a","dir":"b","key":"not a key"}]}`,
		`{"version":1,"logs":[{"name":"a","dir":"b"}]} {}`,
		`{"version":1,"logs":[{"name":"` + strings.Repeat("n", 65) + `","dir":"b"}]}`,
	} {
		if _, err := parseFleetManifest([]byte(bad)); !errors.Is(err, errManifest) {
			t.Errorf("%q: %v, want errManifest", bad, err)
		}
	}
	var many []string
	for i := range maxFleetLogs + 1 {
		many = append(many, fmt.Sprintf(`{"name":"d-%d","dir":"d"}`, i))
	}
	if _, err := parseFleetManifest([]byte(`{"version":1,"logs":[` + strings.Join(many, ",") + `]}`)); !errors.Is(err, errManifest) {
		t.Errorf("%d logs: %v", len(many), err)
	}
}

func FuzzParseFleetManifest(f *testing.F) {
	k := auditlog.NewSoftwareSigner("d-1/access-log", ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, 32))).VerifierKey()
	for _, s := range []string{
		`{"version":1,"logs":[{"name":"d-1","dir":"d-1/log","key":"` + k + `"}]}`,
		`{"version":1,"logs":[{"name":"d-1","dir":"d-1/log"},{"name":"d-2","dir":"/abs/log"}]}`,
		`{"version":1,"logs":[{"name":"a","dir":"b"},{"name":"a","dir":"c"}]}`,
		`{"version":1,"logs":[{"name":"a\u001b","dir":"b"}]}`,
		`{"version":1,"logs":[{"name":"a","dir":"b","key":"x+y+z"}]}`,
		`{"version":1,"logs":[]}`, `{"version":1} {}`, ``, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseFleetManifest(b)
		if err != nil {
			if !errors.Is(err, errManifest) {
				t.Fatalf("error %v does not wrap errManifest", err)
			}
			return
		}
		// What is accepted re-encodes to something accepted and equal.
		again, _ := json.Marshal(m)
		m2, err := parseFleetManifest(again)
		if err != nil || len(m2.Logs) != len(m.Logs) {
			t.Fatalf("accepted %q; its re-encoding %q: %v", b, again, err)
		}
		names := map[string]bool{}
		for i, l := range m.Logs {
			if l != m2.Logs[i] || names[l.Name] || l.Name == "" || l.Dir == "" || escapeText(l.Name) != l.Name {
				t.Fatalf("log %d %+v accepted", i, l)
			}
			names[l.Name] = true
		}
	})
}

// TestLogQueryFleetHostileLogName: a log's name in a fleet answer comes
// from its key (several DIRs) and is printed escaped like every string of
// an entry: a bidi override or a zero-width character in a log origin reaches neither
// the terminal nor the spreadsheet raw.
func TestLogQueryFleetHostileLogName(t *testing.T) {
	reviewerHome(t)
	root, _ := fleetLogs(t)
	dir := filepath.Join(t.TempDir(), "log")
	cfg := auditlog.DefaultConfig()
	cfg.Dir, cfg.Origin = dir, "d-\u202e4\u200b/access-log" // auditlog refuses C0 controls, not bidi or zero-width characters
	s := auditlog.NewSoftwareSigner(cfg.Origin, ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32)))
	l, err := auditlog.Open(context.Background(), cfg, s, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Record(context.Background(), auditlog.Entry{Time: time.Date(2026, 11, 23, 9, 5, 0, 0, time.UTC), Operation: "decrypt",
		Principal: "desk", TransactionID: "tx-7", Participant: "p-1", Purpose: "settlement", Outcome: auditlog.Allowed}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	other := filepath.Join(root, "d-1/log")
	for _, d := range []string{dir, other} {
		if code, out, errs := ctl("log", "pin", d, "--fingerprint", dirFingerprint(t, d)); code != 0 {
			t.Fatalf("pin: %s %s", out, errs)
		}
	}
	for _, format := range []string{"table", "csv", "jsonl"} {
		code, out, errs := ctl("log", "query", other, dir, "--transaction", "tx-7", "--format", format)
		if code != 0 || strings.Count(out, "tx-7") != 2 {
			t.Fatalf("%s: %d %s\n%s", format, code, errs, out)
		}
		if strings.ContainsAny(out, "\u202e\u200b") || !strings.Contains(out, `\u202e`) {
			t.Errorf("%s: the log name is not escaped:\n%q", format, out)
		}
	}
}

func TestManifestInside(t *testing.T) {
	root := t.TempDir()
	logDir := filepath.Join(root, "d-1", "log")
	os.MkdirAll(logDir, 0o750)
	os.WriteFile(filepath.Join(logDir, "fleet.json"), []byte("{}"), 0o644)
	link := filepath.Join(root, "link.json")
	os.Symlink(filepath.Join(logDir, "fleet.json"), link)
	for _, tc := range []struct {
		file, dir string
		want      bool
	}{
		{filepath.Join(logDir, "fleet.json"), logDir, true},
		{filepath.Join(logDir, "sub", "fleet.json"), logDir, true},
		{link, logDir, true}, // a link to a file in the log
		{filepath.Join(root, "fleet.json"), logDir, false},
		{filepath.Join(root, "d-1", "log.json"), logDir, false},
		{filepath.Join(root, "d-1", "logx", "fleet.json"), logDir, false},
	} {
		if got := inside(tc.file, tc.dir); got != tc.want {
			t.Errorf("inside(%s, %s) = %v", tc.file, tc.dir, got)
		}
	}
}
