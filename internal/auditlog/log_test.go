package auditlog_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"custody/internal/auditlog"
	"custody/internal/config/duration"
)

func TestVerifierKeyFormat(t *testing.T) {
	t.Parallel()
	const vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
	raw, _ := base64.StdEncoding.DecodeString(strings.Split(vkey, "+")[2])
	if got := auditlog.VerifierKey("PeterNeumann", ed25519.PublicKey(raw[1:])); got != vkey {
		t.Fatalf("VerifierKey = %q, want %q", got, vkey)
	}
}

func TestRecordVerifyProve(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := testConfig(dir)
	cfg.CheckpointEvery = 7
	l := openLog(t, cfg)
	ctx := context.Background()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 25 {
				if err := l.Record(ctx, entry(g*25+i)); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if got := l.Size(); got != 200 {
		t.Fatalf("Size = %d", got)
	}
	es, err := l.Entries(10, 20)
	if err != nil || len(es) != 10 {
		t.Fatalf("Entries = %d, %v", len(es), err)
	}
	for _, e := range es {
		if _, _, err := auditlog.ParseEntry(e.Data, e.Index); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Entries(0, 201); !errors.Is(err, auditlog.ErrRange) {
		t.Fatalf("Entries beyond the log: %v", err)
	}
	p, err := l.ProveInclusion(42, 200)
	if err != nil || p.Check() != nil {
		t.Fatalf("inclusion: %v %v", err, p.Check())
	}
	c, err := l.ProveConsistency(50, 200)
	if err != nil || c.Check() != nil {
		t.Fatalf("consistency: %v %v", err, c.Check())
	}
	c.OldRoot[0] ^= 1
	if c.Check() == nil {
		t.Fatal("a consistency proof with a wrong old root checks")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Record(ctx, entry(0)); !errors.Is(err, auditlog.ErrClosed) {
		t.Fatalf("Record after Close: %v", err)
	}
	// Close signed a checkpoint covering everything; offline verify agrees.
	v := testVerifier(t)
	res, err := auditlog.Verify(dir, auditlog.VerifyOptions{Verifier: v})
	if err != nil || !res.OK || res.Entries != 200 || res.LatestSize != 200 || res.Checkpoints < 2 {
		t.Fatalf("Verify = %+v, %v", res, err)
	}
	b, err := auditlog.Prove(dir, v, 123)
	if err != nil {
		t.Fatal(err)
	}
	if err := auditlog.CheckBundle(b, v); err != nil {
		t.Fatal(err)
	}
	b.Entry = strings.Replace(b.Entry, `"op":"`, `"op":"x`, 1)
	if err := auditlog.CheckBundle(b, v); err == nil {
		t.Fatal("a bundle with an altered entry checks")
	}
	// The public key file is the note verifier key.
	if got := strings.TrimSpace(string(readFile(t, dir, auditlog.PublicKeyFile))); got != testSigner().VerifierKey() {
		t.Fatalf("log.pub = %q", got)
	}
	// Reopen: the tree continues.
	l = openLog(t, cfg)
	if l.Size() != 200 {
		t.Fatalf("reopened size %d", l.Size())
	}
	idx, err := l.Append(ctx, entry(200))
	if err != nil || idx != 200 {
		t.Fatalf("Append = %d, %v", idx, err)
	}
	l.Close()
}

// TestIndexMemoryBounded records 20,000 entries (1.4 MB of hashes and
// offsets): the log keeps at most two flush thresholds of them in memory,
// and entries, inclusion and consistency proofs read back right from the
// index files, before and after a reopen, which leaves no file behind.
func TestIndexMemoryBounded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	l := openLog(t, testConfig(dir))
	ctx := context.Background()
	const n = 20000
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := g; i < n; i += 16 {
				if err := l.Record(ctx, entry(i)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	check := func(l *auditlog.Log) {
		t.Helper()
		if m := auditlog.IndexMemory(l); m > 2*256<<10 {
			t.Fatalf("%d bytes of index in memory after %d entries", m, n)
		}
		for _, r := range [][2]int64{{0, 1000}, {9500, 10500}, {n - 1000, n}} {
			es, err := l.Entries(r[0], r[1])
			if err != nil || len(es) != int(r[1]-r[0]) {
				t.Fatalf("Entries%v: %d, %v", r, len(es), err)
			}
			for _, e := range es {
				if _, _, err := auditlog.ParseEntry(e.Data, e.Index); err != nil {
					t.Fatalf("entry %d: %v", e.Index, err)
				}
			}
		}
		for _, i := range []int64{0, 4321, n - 1} {
			p, err := l.ProveInclusion(i, n)
			if err != nil || p.Check() != nil {
				t.Fatalf("inclusion of %d: %v %v", i, err, p.Check())
			}
		}
		c, err := l.ProveConsistency(777, n)
		if err != nil || c.Check() != nil {
			t.Fatalf("consistency: %v %v", err, c.Check())
		}
	}
	check(l)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openLog(t, testConfig(dir))
	check(l)
	l.Close()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".index") {
			t.Fatalf("index file %s left in the log directory", e.Name())
		}
	}
}

func TestOneWriter(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t.TempDir())
	l := openLog(t, cfg)
	defer l.Close()
	if _, err := auditlog.Open(context.Background(), cfg, testSigner(), nil); !errors.Is(err, auditlog.ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
}

func TestKeyMismatch(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t.TempDir())
	writeLog(t, cfg, 3)
	other := auditlog.NewSoftwareSigner(testOrigin, ed25519.NewKeyFromSeed(make([]byte, 32)))
	if _, err := auditlog.Open(context.Background(), cfg, other, nil); !errors.Is(err, auditlog.ErrKeyMismatch) {
		t.Fatalf("Open with another key: %v", err)
	}
}

func TestInvalidEntry(t *testing.T) {
	t.Parallel()
	l := openLog(t, testConfig(t.TempDir()))
	defer l.Close()
	e := entry(1)
	e.Outcome = "maybe"
	if err := l.Record(context.Background(), e); !errors.Is(err, auditlog.ErrInvalidEntry) {
		t.Fatalf("bad outcome: %v", err)
	}
	// An oversize entry is no longer refused: Normalize clips it
	// (TestOversizeEntryRecorded).
	if err := l.Record(context.Background(), entry(2)); err != nil {
		t.Fatalf("after refused entries: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	// checkpoint_interval is out of range here; a value that is no duration
	// ("soon") is refused when decoding (config.TestLoadErrorsNameTheField).
	for field, mut := range map[string]func(*auditlog.Config){
		"dir":                 func(c *auditlog.Config) { c.Dir = "" },
		"checkpoint_every":    func(c *auditlog.Config) { c.CheckpointEvery = 0 },
		"checkpoint_interval": func(c *auditlog.Config) { c.CheckpointInterval = duration.Duration(time.Hour + 1) },
		"origin":              func(c *auditlog.Config) { c.Origin = "a b" },
		"signing_key_label":   func(c *auditlog.Config) { c.SigningKeyLabel = "" },
	} {
		c := auditlog.DefaultConfig()
		mut(&c)
		err := c.Validate()
		if !errors.Is(err, auditlog.ErrConfig) || !strings.Contains(err.Error(), "access_log."+field) {
			t.Errorf("%s: %v", field, err)
		}
	}
	if err := auditlog.DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

// lines splits the entries file into lines (without newlines).
func lines(t testing.TB, dir string) [][]byte {
	b := readFile(t, dir, auditlog.EntriesFile)
	ls := bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
	return ls
}

func writeLines(t testing.TB, dir string, ls [][]byte) {
	t.Helper()
	var b []byte
	for _, l := range ls {
		b = append(append(b, l...), '\n')
	}
	if err := os.WriteFile(filepath.Join(dir, auditlog.EntriesFile), b, 0o640); err != nil {
		t.Fatal(err)
	}
}

func copyDir(t testing.TB, src string) string {
	t.Helper()
	dst := t.TempDir()
	for _, n := range []string{auditlog.EntriesFile, auditlog.CheckpointsFile, auditlog.CheckpointFile, auditlog.PublicKeyFile} {
		b, err := os.ReadFile(filepath.Join(src, n))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dst, n), b, 0o640)
	}
	return dst
}

// TestTamper: each way of altering a closed log is detected, and reported
// at the index where the log stops being trustworthy.
func TestTamper(t *testing.T) {
	t.Parallel()
	golden := t.TempDir()
	cfg := testConfig(golden)
	cfg.CheckpointEvery = 1 // a checkpoint per entry: content changes are located exactly
	l := openLog(t, cfg)
	for i := range 40 {
		if err := l.Record(context.Background(), entry(i)); err != nil {
			t.Fatal(err)
		}
		if err := l.Checkpoint(); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	v := testVerifier(t)
	since := readFile(t, golden, auditlog.CheckpointFile)

	cases := []struct {
		name   string
		mutate func(t *testing.T, dir string)
		kind   string
		index  int64
	}{
		{"modified", func(t *testing.T, dir string) {
			ls := lines(t, dir)
			ls[17] = bytes.Replace(ls[17], []byte(`"settlement"`), []byte(`"dispute"`), 1)
			ls[17] = bytes.Replace(ls[17], []byte(`"dispute","fields"`), []byte(`"settlement","fields"`), 1)
			writeLines(t, dir, ls)
		}, "checkpoint_mismatch", 17},
		{"modified-malformed", func(t *testing.T, dir string) {
			ls := lines(t, dir)
			ls[9] = bytes.Replace(ls[9], []byte(`"op":`), []byte(`"op" :`), 1)
			writeLines(t, dir, ls)
		}, "malformed", 9},
		{"removed", func(t *testing.T, dir string) {
			ls := lines(t, dir)
			writeLines(t, dir, append(ls[:12:12], ls[13:]...))
		}, "out_of_order", 12},
		{"reordered", func(t *testing.T, dir string) {
			ls := lines(t, dir)
			ls[20], ls[21] = ls[21], ls[20]
			writeLines(t, dir, ls)
		}, "out_of_order", 20},
		{"inserted", func(t *testing.T, dir string) {
			ls := lines(t, dir)
			forged, _ := auditlog.EncodeEntry(30, entry(99))
			writeLines(t, dir, append(ls[:30:30], append([][]byte{forged}, ls[30:]...)...))
		}, "checkpoint_mismatch", 30},
		{"truncated", func(t *testing.T, dir string) {
			writeLines(t, dir, lines(t, dir)[:33])
		}, "truncated", 33},
		{"appended", func(t *testing.T, dir string) {
			forged, _ := auditlog.EncodeEntry(40, entry(40))
			writeLines(t, dir, append(lines(t, dir), forged))
		}, "unsigned_tail", 40},
		{"checkpoint-forged", func(t *testing.T, dir string) {
			cp := readFile(t, dir, auditlog.CheckpointFile)
			cp = bytes.Replace(cp, []byte("\n40\n"), []byte("\n41\n"), 1)
			os.WriteFile(filepath.Join(dir, auditlog.CheckpointFile), cp, 0o644)
		}, "bad_checkpoint", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := copyDir(t, golden)
			tc.mutate(t, dir)
			res, err := auditlog.Verify(dir, auditlog.VerifyOptions{Verifier: v, Since: since})
			if err != nil {
				t.Fatal(err)
			}
			if res.OK {
				t.Fatalf("tampering not detected: %+v", res)
			}
			found := false
			for _, p := range res.Problems {
				if p.Kind == tc.kind && p.Index == tc.index {
					found = true
				}
			}
			if !found {
				t.Fatalf("want a %s problem at %d, got %+v", tc.kind, tc.index, res.Problems)
			}
			if tc.kind != "bad_checkpoint" && res.TrustedUpTo != tc.index {
				t.Fatalf("trusted up to %d, want %d", res.TrustedUpTo, tc.index)
			}
			// And the daemon refuses to open a tampered log rather than
			// continuing a tree nobody could verify.
			if tc.kind == "checkpoint_mismatch" || tc.kind == "truncated" || tc.kind == "out_of_order" {
				c := testConfig(dir)
				if _, err := auditlog.Open(context.Background(), c, testSigner(), nil); !errors.Is(err, auditlog.ErrCorrupt) {
					t.Fatalf("Open of a tampered log: %v, want ErrCorrupt", err)
				}
			}
		})
	}
	// The untouched log verifies, also against the saved checkpoint, and a
	// different key rejects it.
	res, err := auditlog.Verify(golden, auditlog.VerifyOptions{Verifier: v, Since: since})
	if err != nil || !res.OK || res.TrustedUpTo != 40 {
		t.Fatalf("golden: %+v %v", res, err)
	}
	otherV, _ := note.NewVerifier(auditlog.VerifierKey(testOrigin, ed25519.NewKeyFromSeed(make([]byte, 32)).Public().(ed25519.PublicKey)))
	if res, _ := auditlog.Verify(golden, auditlog.VerifyOptions{Verifier: otherV}); res.OK {
		t.Fatal("verified with another key")
	}
}

// TestTornTail: a cut-short last entry (a crash mid-write) is truncated at
// Open, reported, and the tree continues.
func TestTornTail(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := testConfig(dir)
	writeLog(t, cfg, 10)
	half, _ := auditlog.EncodeEntry(10, entry(10))
	f, _ := os.OpenFile(filepath.Join(dir, auditlog.EntriesFile), os.O_APPEND|os.O_WRONLY, 0)
	f.Write(half[:len(half)/2])
	f.Close()
	var logBuf bytes.Buffer
	l, err := auditlog.Open(context.Background(), cfg, testSigner(), slogTo(&logBuf))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logBuf.String(), "torn tail truncated") {
		t.Fatalf("no log line about the torn tail: %s", logBuf.String())
	}
	if l.Size() != 10 {
		t.Fatalf("size %d", l.Size())
	}
	if idx, err := l.Append(context.Background(), entry(10)); err != nil || idx != 10 {
		t.Fatal(idx, err)
	}
	l.Close()
	if res, _ := auditlog.Verify(dir, auditlog.VerifyOptions{Verifier: testVerifier(t)}); !res.OK || res.Entries != 11 {
		t.Fatalf("%+v", res)
	}
}

// TestInvalidUTF8FromOutside: strings from outside the daemon (an
// executable path, a forwarded user agent) may hold invalid UTF-8; the
// entry is stored with U+FFFD instead, and the log still reopens and
// verifies.
func TestInvalidUTF8FromOutside(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	l := openLog(t, cfg)
	e := entry(0)
	e.Caller.Executable = "/opt/app\xff\xfe/bin"
	e.EndUser.UserAgent = "agent\xc3"
	e.Fields = []string{"ok", "bad\x80"}
	if err := l.Record(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	if err := l.Record(context.Background(), entry(1)); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openLog(t, cfg)
	defer l.Close()
	es, err := l.Entries(0, 1)
	if err != nil {
		t.Fatal(err)
	}
	_, got, err := auditlog.ParseEntry(es[0].Data, 0)
	if err != nil || got.Caller.Executable != "/opt/app\uFFFD/bin" || got.EndUser.UserAgent != "agent\uFFFD" || got.Fields[1] != "bad\uFFFD" {
		t.Fatalf("stored %+v, %v", got, err)
	}
	if res, err := auditlog.Verify(dir, auditlog.VerifyOptions{Verifier: testVerifier(t)}); err != nil || !res.OK {
		t.Fatalf("verify: %+v %v", res, err)
	}
}

// TestStart: an entry started is queued at once and durable when wait
// returns; wait reports what Record would (ErrClosed after Close, an
// invalid entry at once).
func TestStart(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, testConfig(dir))
	ctx := context.Background()
	wait := l.Start(ctx, entry(0))
	if err := wait(); err != nil {
		t.Fatal(err)
	}
	if err := wait(); err != nil { // again: the same answer, no block
		t.Fatal(err)
	}
	if st := l.Status(); st.Entries != 1 {
		t.Fatalf("after wait: %d durable entries, want 1", st.Entries)
	}
	if err := l.Start(ctx, auditlog.Entry{})(); !errors.Is(err, auditlog.ErrInvalidEntry) {
		t.Errorf("an empty entry: %v, want ErrInvalidEntry", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Start(ctx, entry(1))(); !errors.Is(err, auditlog.ErrClosed) {
		t.Errorf("after Close: %v, want ErrClosed", err)
	}
}
