package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/csv"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"filippo.io/age"
	"golang.org/x/mod/sumdb/note"

	"custody/internal/auditlog"
	"custody/internal/ceremony"
)

// reviewerHome gives the test a reviewer configuration directory of its own.
func reviewerHome(t *testing.T) string {
	t.Helper()
	home := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", home)
	return filepath.Join(home, "custody", "reviewer.json")
}

func dirFingerprint(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, auditlog.PublicKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	fp, _, err := keyFingerprint(string(b))
	if err != nil {
		t.Fatal(err)
	}
	return fp
}

// rewriteLog is the attack on the reviewer: whoever can write the log
// directory rebuilds it with entry 5 altered and entry 7 removed, under a
// key of their own with the same origin, and replaces log.pub with that
// key. Every checkpoint is freshly signed and consistent.
func rewriteLog(t *testing.T, dir string) {
	t.Helper()
	var es []auditlog.Entry
	if err := auditlog.ReadEntries(dir, func(i int64, e auditlog.Entry) error {
		if i == 5 {
			e.Principal, e.Outcome, e.Code = "nobody", auditlog.Allowed, ""
		}
		if i != 7 {
			es = append(es, e)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	forged := t.TempDir()
	cfg := auditlog.DefaultConfig()
	cfg.Dir, cfg.Origin = forged, "custody.test/log"
	attacker := auditlog.NewSoftwareSigner(cfg.Origin, ed25519.NewKeyFromSeed(bytes.Repeat([]byte{66}, 32)))
	l, err := auditlog.Open(context.Background(), cfg, attacker, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if err := l.Record(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{auditlog.EntriesFile, auditlog.CheckpointsFile, auditlog.CheckpointFile, auditlog.PublicKeyFile} {
		b, err := os.ReadFile(filepath.Join(forged, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestVerifyNeedsPinnedKey: with only the directory's own key, verify,
// prove and report refuse (exit 1), name errNotPinned, show the
// directory key's fingerprint and the command that pins it.
func TestVerifyNeedsPinnedKey(t *testing.T) {
	reviewerHome(t)
	dir := testLog(t, 20)
	fp := dirFingerprint(t, dir)
	for _, args := range [][]string{
		{"log", "verify", dir},
		{"log", "prove", dir, "3"},
		{"log", "report", dir, "--from", "2026-11-23", "--to", "2026-11-24", "--out", filepath.Join(t.TempDir(), "r.html")},
	} {
		code, out, errs := ctl(args...)
		if code != 1 || strings.Contains(out, "OK") || !strings.Contains(errs, "no pinned log key") ||
			!strings.Contains(errs, fp) || !strings.Contains(errs, "custodyctl log pin "+dir+" --fingerprint "+fp) {
			t.Errorf("%v without a pinned key: exit %d\n%s%s", args[1], code, out, errs)
		}
	}
	fs := newFlagSet()
	if err := logVerify(fs, io.Discard)([]string{dir}); !errors.Is(err, errNotPinned) {
		t.Errorf("logVerify: %v, want errNotPinned", err)
	}
	// --key naming the directory's own log.pub is the same trust: refused.
	code, _, errs := ctl("log", "verify", dir, "--key", filepath.Join(dir, auditlog.PublicKeyFile))
	if code != 1 || !strings.Contains(errs, errDirKey.Error()) {
		t.Errorf("--key DIR/log.pub: exit %d %s", code, errs)
	}
}

// TestRewrittenLogFailsPinnedKey performs the attack: the reviewer pinned
// the log's key (after comparing its fingerprint); someone rewrites the
// directory, replaces log.pub and re-signs every checkpoint. verify with
// the pinned key (or the reviewer's own --key copy) fails, prove fails;
// the in-directory key alone is refused and its fingerprint, shown for
// comparison, is not the one pinned.
func TestRewrittenLogFailsPinnedKey(t *testing.T) {
	cfgPath := reviewerHome(t)
	dir := testLog(t, 30)
	own := ownKey(t, dir)
	fp := dirFingerprint(t, dir)
	if code, out, errs := ctl("log", "pin", dir, "--fingerprint", fp); code != 0 || !strings.Contains(out, "pinned") {
		t.Fatalf("pin: %d %s %s", code, out, errs)
	}
	if code, out, errs := ctl("log", "verify", dir); code != 0 || !strings.Contains(out, "OK: all 30 entries") || !strings.Contains(out, "pinned in "+cfgPath) {
		t.Fatalf("verify with the pinned key before the attack: %d %s %s", code, out, errs)
	}
	rewriteLog(t, dir)
	for _, args := range [][]string{{"log", "verify", dir}, {"log", "verify", dir, "--key", own}} {
		code, out, errs := ctl(args...)
		if code != 1 || strings.Contains(out, "OK:") || !strings.Contains(out, "FAILED") {
			t.Errorf("%v after the rewrite: exit %d\n%s%s", args, code, out, errs)
		}
	}
	if code, out, _ := ctl("log", "prove", dir, "3"); code != 1 || strings.Contains(out, "inclusion") {
		t.Errorf("prove after the rewrite: exit %d %s", code, out)
	}
	// Without the pin the reviewer sees the attacker's key's fingerprint,
	// which is not the published one.
	os.Remove(cfgPath)
	code, _, errs := ctl("log", "verify", dir)
	if forged := dirFingerprint(t, dir); code != 1 || forged == fp || !strings.Contains(errs, forged) {
		t.Errorf("verify of the rewritten log without a pin: exit %d %s", code, errs)
	}
}

// TestReplacedKeyAlone: the entries and checkpoints are intact but log.pub
// was replaced: verify with the pinned key reports the replaced key.
func TestReplacedKeyAlone(t *testing.T) {
	reviewerHome(t)
	dir := testLog(t, 10)
	if code, _, errs := ctl("log", "pin", dir, "--fingerprint", dirFingerprint(t, dir)); code != 0 {
		t.Fatal(errs)
	}
	other := auditlog.NewSoftwareSigner("custody.test/log", ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32)))
	os.WriteFile(filepath.Join(dir, auditlog.PublicKeyFile), []byte(other.VerifierKey()+"\n"), 0o644)
	code, out, _ := ctl("log", "verify", dir)
	if code != 1 || !strings.Contains(out, "key_replaced") || !strings.Contains(out, "FAILED") {
		t.Errorf("verify with a replaced log.pub: exit %d %s", code, out)
	}
}

// TestLogPin: pinning needs the matching fingerprint; the configuration
// is private and checked; a second key for the same origin needs --replace.
func TestLogPin(t *testing.T) {
	cfgPath := reviewerHome(t)
	dir := testLog(t, 5)
	fp := dirFingerprint(t, dir)
	if code, _, errs := ctl("log", "pin", dir); code != 2 || !strings.Contains(errs, fp) {
		t.Errorf("pin without --fingerprint: exit %d %s", code, errs)
	}
	if code, _, errs := ctl("log", "pin", dir, "--fingerprint", strings.Repeat("ab", 32)); code != 1 || !strings.Contains(errs, "not pinned") {
		t.Errorf("pin with another fingerprint: exit %d %s", code, errs)
	}
	if _, err := os.Stat(cfgPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused pin wrote %s: %v", cfgPath, err)
	}
	if code, _, errs := ctl("log", "pin", dir, "--fingerprint", strings.ToUpper(fp)); code != 0 {
		t.Fatalf("pin: %s", errs)
	}
	fi, err := os.Stat(cfgPath)
	di, _ := os.Stat(filepath.Dir(cfgPath))
	if err != nil || fi.Mode().Perm() != 0o600 || di.Mode().Perm() != 0o700 {
		t.Fatalf("reviewer.json %v, dir %v: %v", fi.Mode(), di.Mode(), err)
	}
	if code, out, _ := ctl("log", "pin", dir, "--fingerprint", fp); code != 0 || !strings.Contains(out, "already pinned") {
		t.Errorf("pin twice: %d %s", code, out)
	}
	other := t.TempDir()
	s := auditlog.NewSoftwareSigner("custody.test/log", ed25519.NewKeyFromSeed(bytes.Repeat([]byte{5}, 32)))
	os.WriteFile(filepath.Join(other, auditlog.PublicKeyFile), []byte(s.VerifierKey()+"\n"), 0o644)
	ofp := dirFingerprint(t, other)
	if code, _, errs := ctl("log", "pin", other, "--fingerprint", ofp); code != 1 || !strings.Contains(errs, "--replace") {
		t.Errorf("second key for the origin: exit %d %s", code, errs)
	}
	if code, _, errs := ctl("log", "verify", dir); code != 0 {
		t.Errorf("verify with the pin: %s", errs)
	}
	// A configuration others can write is refused.
	os.Chmod(cfgPath, 0o666)
	if code, _, errs := ctl("log", "verify", dir); code != 1 || !strings.Contains(errs, "lets others change it") {
		t.Errorf("verify with a world-writable reviewer.json: exit %d %s", code, errs)
	}
	os.Chmod(cfgPath, 0o600)
	if code, _, errs := ctl("log", "pin", other, "--fingerprint", ofp, "--replace"); code != 0 {
		t.Fatalf("pin --replace: %s", errs)
	}
	if code, _, _ := ctl("log", "verify", dir); code != 1 {
		t.Error("verify with the replaced pin succeeded")
	}
}

// TestCheckProofPinned: check-proof uses the key pinned for the proof's
// origin; a proof from a rewritten log fails against it.
func TestCheckProofPinned(t *testing.T) {
	reviewerHome(t)
	dir := testLog(t, 12)
	ctl("log", "pin", dir, "--fingerprint", dirFingerprint(t, dir))
	_, out, _ := ctl("log", "prove", dir, "4")
	proof := filepath.Join(t.TempDir(), "proof.json")
	os.WriteFile(proof, []byte(out), 0o644)
	if code, out, errs := ctl("log", "check-proof", proof); code != 0 || !strings.Contains(out, "OK: entry 4") {
		t.Fatalf("check-proof with the pin: %d %s %s", code, out, errs)
	}
	rewriteLog(t, dir)
	// The attacker proves entry 4 of the rewritten log with their own key
	// and hands the proof over: it does not check against the pinned key.
	code, forged, errs := ctl("log", "prove", dir, "4", "--key", ownKey(t, dir))
	if code != 0 {
		t.Fatalf("attacker's prove: %s", errs)
	}
	os.WriteFile(proof, []byte(forged), 0o644)
	if code, out, _ := ctl("log", "check-proof", proof); code != 1 || strings.Contains(out, "OK") {
		t.Errorf("check-proof of the rewritten log's proof: exit %d %s", code, out)
	}
}

func newFlagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("log verify", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

func TestEscapeText(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ in, want string }{
		{"tx-1 plain é 😀", "tx-1 plain é 😀"},
		{"a\x1b[2Jb", `a\x1b[2Jb`},
		{"row\r\nforged\tcol", `row\r\nforged\tcol`},
		{"bell\a nul\x00 del\x7f", `bell\x07 nul\x00 del\x7f`},
		{"c1 \u009b31m \u0085", `c1 \u009b31m \u0085`},
		{"bidi \u202egnp.exe \u2066x\u2069 \u200b\ufeff", `bidi \u202egnp.exe \u2066x\u2069 \u200b\ufeff`},
		{"sep \u2028\u2029", `sep \u2028\u2029`},
		{"tag \U000e0041", `tag \U000e0041`},
		{"bad \xff\xc3", `bad \xff\xc3`},
		{`back\slash \x1b`, `back\\slash \\x1b`},
	} {
		if got := escapeText(c.in); got != c.want {
			t.Errorf("escapeText(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	// Distinct strings stay distinct.
	if escapeText("\x1b") == escapeText(`\x1b`) {
		t.Error("escaping is ambiguous")
	}
}

func TestEscapeJSON(t *testing.T) {
	t.Parallel()
	v := map[string]string{"a": "x\u202ey\u009b\x7f\U000e0041\x1b\n", "b": "é"}
	b, _ := json.MarshalIndent(v, "", "  ")
	out := escapeJSON(b)
	for _, bad := range []string{"\u202e", "\u009b", "\x7f", "\U000e0041", "\x1b"} {
		if bytes.Contains(out, []byte(bad)) {
			t.Errorf("escapeJSON left %q: %s", bad, out)
		}
	}
	var back map[string]string
	if err := json.Unmarshal(out, &back); err != nil || back["a"] != v["a"] || back["b"] != "é" {
		t.Errorf("escapeJSON changed the values: %v %q", err, back)
	}
}

func TestCSVCell(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ in, want string }{
		{"=1+1", "'=1+1"}, {"+1", "'+1"}, {"-2", "'-2"}, {"@SUM(A1)", "'@SUM(A1)"}, {"\tx", "'\tx"}, {"\rx", "'\rx"},
		{"tx-1", "tx-1"}, {"", ""}, {"1=1", "1=1"},
	} {
		if got := csvCell(c.in); got != c.want {
			t.Errorf("csvCell(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	// Through a CSV writer and reader, the cell stays text.
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	w.Write([]string{csvCell(escapeText("=HYPERLINK(\"http://x\")\r\n"))})
	w.Flush()
	r, _ := csv.NewReader(&b).Read()
	if r[0] != `'=HYPERLINK("http://x")\r\n` {
		t.Errorf("csv round trip %q", r[0])
	}
}

// FuzzParseReviewerConfig: the parser never panics, and what it accepts
// writes back (writeReviewerConfig's encoding) to the same keys.
func FuzzParseReviewerConfig(f *testing.F) {
	k1 := auditlog.NewSoftwareSigner("custody.test/log", ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, 32))).VerifierKey()
	k2 := auditlog.NewSoftwareSigner("other/log", ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, 32))).VerifierKey()
	for _, s := range []string{
		`{"version":1,"log_keys":["` + k1 + `"]}`,
		`{"version":1,"log_keys":["` + k1 + `","` + k2 + `"]}`,
		`{"version":1,"log_keys":["` + k1 + `","` + k1 + `"]}`,
		`{"version":1,"log_keys":[" ` + k1 + `"]}`,
		`{"version":2,"log_keys":[]}`,
		`{"version":1,"log_keys":[],"extra":1}`,
		`{"version":1} {}`,
		`{"version":1,"log_keys":["x+y+z"]}`,
		``, `[]`, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		keys, list, err := parseReviewerConfig(b)
		if err != nil {
			return
		}
		again, _ := json.Marshal(reviewerConfig{Version: reviewerConfigVersion, LogKeys: list})
		keys2, _, err := parseReviewerConfig(again)
		if err != nil || len(keys2) != len(keys) {
			t.Fatalf("accepted %q; its re-encoding %q: %v", b, again, err)
		}
		for name, v := range keys {
			if w := keys2[name]; w == nil || w.KeyHash() != v.KeyHash() {
				t.Fatalf("key %q changed", name)
			}
		}
	})
}

// TestFingerprintIsGenesis: the fingerprint log pin checks is the one the
// genesis ceremony prints for the access-log key (ceremony.Fingerprint of
// the Ed25519 public key).
func TestFingerprintIsGenesis(t *testing.T) {
	t.Parallel()
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{3}, 32))
	s := auditlog.NewSoftwareSigner("custody.test/log", priv)
	fp, words, err := keyFingerprint(s.VerifierKey())
	pub := priv.Public().(ed25519.PublicKey)
	if err != nil || fp != ceremony.Fingerprint(pub) || words != ceremony.FingerprintWords(pub) {
		t.Fatalf("fingerprint %s %q %v, want %s", fp, words, err, ceremony.Fingerprint(pub))
	}
}

// TestCeremonyVerifyPinned: without --log-key, ceremony verify checks the
// daemon's signature with the pinned log key; a transcript signed by
// another key of the same name (whoever rewrote the log directory) fails,
// and with no key pinned it refuses.
func TestCeremonyVerifyPinned(t *testing.T) {
	reviewerHome(t)
	work := t.TempDir()
	id, _ := age.GenerateX25519Identity()
	_, vk, err := note.GenerateKey(rand.Reader, "o1")
	if err != nil {
		t.Fatal(err)
	}
	officers := filepath.Join(work, "officers.json")
	os.WriteFile(officers, []byte(fmt.Sprintf(`{"version":1,"officers":[{"name":"o1","user":"root","age_recipient":%q,"signer":%q}]}`, id.Recipient(), vk)), 0o644)
	tr := &ceremony.Transcript{Kind: "genesis", RequestID: "r-1", RequestHash: strings.Repeat("ab", 32), Time: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC),
		TokenSerial: "0001", TokenLabel: "custody"}
	text, err := tr.Text()
	if err != nil {
		t.Fatal(err)
	}
	sign := func(seed byte, file string) {
		s := auditlog.NewSoftwareSigner("custody.test/log", ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, 32)))
		signed, err := ceremony.SignTranscript(text, s)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(file, signed, 0o644)
		os.WriteFile(file+".pub", []byte(s.VerifierKey()+"\n"), 0o644)
	}
	genuine, forged := filepath.Join(work, "genuine.txt"), filepath.Join(work, "forged.txt")
	sign(1, genuine)
	sign(2, forged)
	verify := func(file string) (int, string) {
		code, out, errs := ctl("ceremony", "verify", file, "--officers", officers, "--min-cosigners", "0")
		return code, out + errs
	}
	if code, out := verify(genuine); code != 1 || !strings.Contains(out, "no pinned log key") {
		t.Errorf("verify with no key: %d %s", code, out)
	}
	fp, _, _ := keyFingerprint(string(must(os.ReadFile(genuine + ".pub"))))
	if code, _, errs := ctl("log", "pin", genuine+".pub", "--fingerprint", fp); code != 0 {
		t.Fatal(errs)
	}
	if code, out := verify(genuine); code != 0 || !strings.Contains(out, "transcript verifies") {
		t.Errorf("verify with the pinned key: %d %s", code, out)
	}
	if code, out := verify(forged); code != 1 || strings.Contains(out, "transcript verifies") {
		t.Errorf("a transcript signed by another log key verifies: %d %s", code, out)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// FuzzEscapeText: whatever the input, the output is valid UTF-8 without
// one unsafe rune, and escapeJSON of an encoding decodes to the input.
func FuzzEscapeText(f *testing.F) {
	for _, s := range []string{"", "plain", "\x1b[2J\r\n", "\u202e\u009b\x7f", "\xff\\x1b", "\U000e0041"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := escapeText(s)
		if !utf8.ValidString(out) {
			t.Fatalf("escapeText(%q) = %q: invalid UTF-8", s, out)
		}
		for _, r := range out {
			if unsafeRune(r) {
				t.Fatalf("escapeText(%q) = %q holds %U", s, out, r)
			}
		}
		b, _ := json.Marshal(s)
		var want, back string
		json.Unmarshal(b, &want)
		if err := json.Unmarshal(escapeJSON(b), &back); err != nil || back != want {
			t.Fatalf("escapeJSON(%s) decodes to %q, %v, want %q", b, back, err, want)
		}
	})
}
