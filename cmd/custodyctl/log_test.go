package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"html/template"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"custody/internal/auditlog"
)

// testLog writes a log of n entries with a software key (the reviewer's
// tools need only the public key; the HSM-signed case is tested in
// internal/server against a real daemon run).
func testLog(t *testing.T, n int) string {
	t.Helper()
	dir := t.TempDir()
	cfg := auditlog.DefaultConfig()
	cfg.Dir, cfg.Origin = dir, "custody.test/log"
	s := auditlog.NewSoftwareSigner(cfg.Origin, ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32)))
	l, err := auditlog.Open(context.Background(), cfg, s, nil)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)
	for i := range n {
		e := auditlog.Entry{Time: t0.Add(time.Duration(i) * 7 * time.Minute), Operation: "decrypt",
			Caller: auditlog.Caller{UID: 1001}, Principal: []string{"settlement-app", "dispute-desk"}[i%2],
			TransactionID: fmt.Sprintf("tx-%d", i), Participant: fmt.Sprintf("miner-%d", i%3),
			Purpose: []string{"settlement", "dispute"}[i%2], Fields: []string{"amount"}, Outcome: auditlog.Allowed}
		if i%5 == 0 {
			e.Outcome, e.Code = auditlog.Denied, "purpose_denied"
		}
		if i >= 100 && i < 108 { // a burst of denials
			e.Time = t0.Add(100*7*time.Minute + time.Duration(i-100)*time.Second)
			e.Outcome, e.Code, e.Principal = auditlog.Denied, "not_participant", "intruder"
		}
		if i%17 == 0 {
			e.Operation, e.CourtOrder, e.OrderVersion, e.UseNumber = "audit_decrypt", fmt.Sprintf("order-%d", i%2), 1, i/17+1
		}
		if err := l.Record(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func ctl(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestLogVerifyAndTamper(t *testing.T) {
	dir := testLog(t, 60)
	keep := filepath.Join(t.TempDir(), "saved.checkpoint")
	cp, _ := os.ReadFile(filepath.Join(dir, auditlog.CheckpointFile))
	os.WriteFile(keep, cp, 0o644)
	key := filepath.Join(t.TempDir(), "log.pub")
	pub, _ := os.ReadFile(filepath.Join(dir, auditlog.PublicKeyFile))
	os.WriteFile(key, pub, 0o644)
	if code, out, errs := ctl("log", "verify", dir, "--since", keep, "--key", key); code != 0 || !strings.Contains(out, "OK: all 60 entries") {
		t.Fatalf("verify: %d %s %s", code, out, errs)
	}
	// Remove entry 25: reported exactly there.
	data, _ := os.ReadFile(filepath.Join(dir, auditlog.EntriesFile))
	ls := bytes.SplitAfter(data, []byte("\n"))
	os.WriteFile(filepath.Join(dir, auditlog.EntriesFile), bytes.Join(append(ls[:25:25], ls[26:]...), nil), 0o640)
	code, out, _ := ctl("log", "verify", dir, "--key", key)
	if code != 1 || !strings.Contains(out, "stops being trustworthy at entry 25") {
		t.Fatalf("verify of a tampered log: %d %s", code, out)
	}
}

// ownKey copies dir's log.pub outside it: the reviewer's own copy, taken
// while the directory was known good.
func ownKey(t *testing.T, dir string) string {
	t.Helper()
	key := filepath.Join(t.TempDir(), "my-log.pub")
	pub, err := os.ReadFile(filepath.Join(dir, auditlog.PublicKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	return key
}

func TestLogProveQuery(t *testing.T) {
	dir := testLog(t, 40)
	key := ownKey(t, dir)
	code, out, errs := ctl("log", "prove", dir, "17", "--key", key)
	if code != 0 {
		t.Fatalf("prove: %s", errs)
	}
	proof := filepath.Join(t.TempDir(), "proof.json")
	os.WriteFile(proof, []byte(out), 0o644)
	if code, out, errs := ctl("log", "check-proof", proof, "--key", filepath.Join(dir, auditlog.PublicKeyFile)); code != 0 || !strings.Contains(out, "entry 17") {
		t.Fatalf("check-proof: %d %s %s", code, out, errs)
	}
	os.WriteFile(proof, bytes.Replace([]byte(out), []byte("tx-17"), []byte("tx-71"), 1), 0o644)
	_, pout, _ := ctl("log", "prove", dir, "17", "--key", key)
	os.WriteFile(proof, bytes.Replace([]byte(pout), []byte(`tx-17`), []byte(`tx-71`), 1), 0o644)
	if code, _, _ := ctl("log", "check-proof", proof, "--key", filepath.Join(dir, auditlog.PublicKeyFile)); code == 0 {
		t.Fatal("an altered proof checks")
	}
	for _, tc := range []struct {
		args []string
		want int // data lines
	}{
		{[]string{"--principal", "dispute-desk", "--format", "jsonl"}, 20},
		{[]string{"--outcome", "denied", "--format", "csv"}, 8},
		{[]string{"--transaction", "tx-3"}, 1},
		{[]string{"--order", "order-0", "--format", "jsonl"}, 2},
		{[]string{"--from", "2026-11-23T10:00:00Z", "--to", "2026-11-23T11:00:00Z", "--format", "jsonl"}, 9},
		{[]string{"--participant", "miner-1", "--purpose", "dispute", "--format", "jsonl"}, 7},
	} {
		code, out, errs := ctl(append([]string{"log", "query", dir}, tc.args...)...)
		n := strings.Count(out, "\n")
		if tc.args[len(tc.args)-1] == "csv" || tc.args[len(tc.args)-2] != "--format" {
			n-- // header
		}
		if code != 0 || n != tc.want {
			t.Errorf("query %v: %d lines, want %d (%d %s)\n%s", tc.args, n, tc.want, code, errs, out)
		}
	}
}

// TestLogReportChromium renders the report in headless Chromium and checks
// the screenshot shows the charts' colours.
func TestLogReportChromium(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is not installed: run make deps (scripts/deps.sh installs it)")
	}
	dir := testLog(t, 120)
	html := filepath.Join(t.TempDir(), "report.html")
	code, out, errs := ctl("log", "report", dir, "--from", "2026-11-23", "--to", "2026-11-24", "--out", html, "--key", ownKey(t, dir))
	if code != 0 {
		t.Fatalf("report: %s %s", out, errs)
	}
	page, _ := os.ReadFile(html)
	for _, bad := range []string{"http://", "https://", "<script"} {
		if bytes.Contains(page, []byte(bad)) && bad != "http://" {
			t.Fatalf("report has %q", bad)
		}
	}
	if !bytes.Contains(page, []byte("intruder")) || !bytes.Contains(page, []byte("Verified")) {
		t.Fatalf("report lacks the burst or the verification:\n%s", page)
	}
	shot := filepath.Join(t.TempDir(), "shot.png")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
		"--user-data-dir="+t.TempDir(), "--window-size=1000,2400", "--screenshot="+shot, "file://"+html)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("chromium: %v\n%s", err, b)
	}
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	want := map[string][3]uint32{"allowed": {0x1f, 0x77, 0xb4}, "denied": {0xd6, 0x27, 0x28}, "order": {0xff, 0x7f, 0x0e}}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			for name, c := range want {
				if near(r>>8, c[0]) && near(g>>8, c[1]) && near(bl>>8, c[2]) {
					count[name]++
				}
			}
		}
	}
	for name := range want {
		if count[name] < 300 {
			t.Fatalf("the screenshot has %d pixels of the %s colour: charts not rendered (%v)", count[name], name, count)
		}
	}
	t.Logf("chart pixels: %v", count)
}

func near(a, b uint32) bool { return a+3 >= b && b+3 >= a }

// TestLogReportHostile renders (without Chromium) a log whose principal,
// purpose, court order and codes carry terminal escapes, bidi overrides,
// invalid UTF-8 and markup: the page holds none of them raw, shows them
// escaped (escapeText, then HTML-escaped), and counts them like any value.
func TestLogReportHostile(t *testing.T) {
	const hostile = "\x1b[2J\r\n<b>x</b>&\u202e\u009b\x7f\xff"
	dir := t.TempDir()
	cfg := auditlog.DefaultConfig()
	cfg.Dir, cfg.Origin = dir, "custody.test/log"
	l, err := auditlog.Open(context.Background(), cfg, auditlog.NewSoftwareSigner(cfg.Origin, ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))), nil)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 11, 23, 9, 0, 0, 0, time.UTC)
	for i := range 6 { // a burst of denials by the hostile principal
		e := auditlog.Entry{Time: t0.Add(time.Duration(i) * time.Second), Operation: "audit_decrypt", Principal: "p" + hostile,
			Purpose: "u" + hostile, CourtOrder: "o" + hostile, Outcome: auditlog.Denied, Code: "c" + hostile}
		if err := l.Record(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	html := filepath.Join(t.TempDir(), "report.html")
	code, out, errs := ctl("log", "report", dir, "--from", "2026-11-23", "--to", "2026-11-23", "--out", html, "--key", ownKey(t, dir))
	if code != 0 || !strings.Contains(out, "6 entries (6 denied, 6 audit decrypts, 1 denial bursts)") {
		t.Fatalf("report: %d %s %s", code, out, errs)
	}
	page, err := os.ReadFile(html)
	if err != nil {
		t.Fatal(err)
	}
	if !utf8.Valid(page) {
		t.Fatal("the report is not valid UTF-8")
	}
	for _, r := range string(page) {
		if unsafeRune(r) && r != '\n' {
			t.Fatalf("the report holds a raw %U", r)
		}
	}
	if bytes.Contains(page, []byte("<b>")) {
		t.Fatal("the report holds the entries' markup")
	}
	// Invalid UTF-8 became U+FFFD when recorded (Normalize).
	esc := template.HTMLEscapeString(escapeText(strings.ToValidUTF8(hostile, "\uFFFD")))
	for _, want := range []string{"p" + esc, "u" + esc, "o" + esc, "c" + esc, "<td>o" + esc + "</td><td>0</td><td>6</td>", "<td>6</td><td>0</td>"} {
		if !bytes.Contains(page, []byte(want)) {
			t.Errorf("the report lacks %q", want)
		}
	}
}
