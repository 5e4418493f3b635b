package auditlog_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"custody/internal/auditlog"
)

// TestLongLines: a line longer than any entry (longer than the reader's
// buffer) is malformed at its index; Open refuses it when valid entries
// follow and truncates it as a torn tail when it is the incomplete end.
func TestLongLines(t *testing.T) {
	t.Parallel()
	golden := t.TempDir()
	writeLog(t, testConfig(golden), 20)
	huge := bytes.Repeat([]byte("x"), 3<<20)
	v := testVerifier(t)

	// In the middle.
	dir := copyDir(t, golden)
	ls := lines(t, dir)
	ls[7] = huge
	writeLines(t, dir, ls)
	res, err := auditlog.Verify(dir, auditlog.VerifyOptions{Verifier: v})
	if err != nil || res.OK || res.Entries != 20 || res.TrustedUpTo != 0 {
		t.Fatalf("%+v %v", res, err)
	}
	if p := res.Problems[0]; p.Kind != "checkpoint_mismatch" && !(p.Kind == "malformed" && p.Index == 7) {
		t.Fatalf("%+v", res.Problems)
	}
	found := false
	for _, p := range res.Problems {
		found = found || (p.Kind == "malformed" && p.Index == 7 && strings.Contains(p.Detail, "3145728 bytes"))
	}
	if !found {
		t.Fatalf("no malformed problem at 7: %+v", res.Problems)
	}
	if _, err := auditlog.Open(context.Background(), testConfig(dir), testSigner(), nil); !errors.Is(err, auditlog.ErrCorrupt) {
		t.Fatalf("Open: %v", err)
	}
	err = auditlog.ReadEntries(dir, func(int64, auditlog.Entry) error { return nil })
	if !errors.Is(err, auditlog.ErrMalformed) || !strings.Contains(err.Error(), "entry 7:") {
		t.Fatalf("ReadEntries: %v", err)
	}

	// A torn tail of garbage without a newline.
	dir = copyDir(t, golden)
	f, _ := os.OpenFile(filepath.Join(dir, auditlog.EntriesFile), os.O_APPEND|os.O_WRONLY, 0)
	f.Write(huge)
	f.Close()
	res, err = auditlog.Verify(dir, auditlog.VerifyOptions{Verifier: v})
	if err != nil || res.Entries != 20 || res.TrustedUpTo != 20 || len(res.Problems) != 1 || res.Problems[0].Kind != "torn_tail" {
		t.Fatalf("%+v %v", res, err)
	}
	l, err := auditlog.Open(context.Background(), testConfig(dir), testSigner(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if idx, err := l.Append(context.Background(), entry(20)); err != nil || idx != 20 {
		t.Fatal(idx, err)
	}
	l.Close()
	if res, _ := auditlog.Verify(dir, auditlog.VerifyOptions{Verifier: v}); !res.OK || res.Entries != 21 {
		t.Fatalf("%+v", res)
	}
	if ents := lines(t, dir); len(ents) != 21 {
		t.Fatalf("%d lines after the torn tail was truncated", len(ents))
	}
}
