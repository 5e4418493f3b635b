package auditlog_test

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"custody/internal/auditlog"
)

const testOrigin = "custody.test/log"

// testSigner is a software signer with a fixed key (the HSM signer has its
// own test against SoftHSM).
func testSigner() *auditlog.SoftwareSigner {
	seed := make([]byte, ed25519.SeedSize)
	copy(seed, "custody auditlog test key seed!!")
	return auditlog.NewSoftwareSigner(testOrigin, ed25519.NewKeyFromSeed(seed))
}

func testVerifier(t testing.TB) note.Verifier {
	v, err := note.NewVerifier(testSigner().VerifierKey())
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func testConfig(dir string) auditlog.Config {
	c := auditlog.DefaultConfig()
	c.Dir, c.Origin = dir, testOrigin
	return c
}

func logger() *slog.Logger {
	if os.Getenv("CUSTODY_TEST_LOG") == "1" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}

func openLog(t testing.TB, cfg auditlog.Config) *auditlog.Log {
	t.Helper()
	l, err := auditlog.Open(context.Background(), cfg, testSigner(), logger())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return l
}

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// entry i of a synthetic workload.
func entry(i int) auditlog.Entry {
	ops := []string{"decrypt", "encrypt", "register", "audit_decrypt"}
	outcomes := []auditlog.Outcome{auditlog.Allowed, auditlog.Allowed, auditlog.Denied, auditlog.Failed}
	e := auditlog.Entry{
		Time:          t0.Add(time.Duration(i) * time.Second),
		Operation:     ops[i%len(ops)],
		Caller:        auditlog.Caller{UID: 1000 + uint32(i%3), GID: 1000, PID: int32(4000 + i), Executable: "/usr/bin/settler"},
		Principal:     []string{"settlement-app", "operator", "auditor-1"}[i%3],
		TransactionID: fmt.Sprintf("tx-%06d", i),
		JobID:         fmt.Sprintf("job-%06d", i),
		Participant:   fmt.Sprintf("miner-%d", i%5),
		KeyLabel:      fmt.Sprintf("custody/participant/miner-%d/v1", i%5),
		KeyVersion:    1,
		Purpose:       []string{"settlement", "dispute"}[i%2],
		Fields:        []string{"amount", "pricing"},
		EndUser:       auditlog.EndUser{IP: "192.0.2.7", UserAgent: "test/1", RequestID: fmt.Sprintf("req-%d", i)},
		Outcome:       outcomes[i%len(outcomes)],
	}
	if e.Outcome != auditlog.Allowed {
		e.Code = "purpose_denied"
	}
	if e.Operation == "audit_decrypt" {
		e.CourtOrder, e.OrderVersion, e.DocumentHash, e.UseNumber = fmt.Sprintf("order-%d", i%2), 1, "sha256:abcd", i/4+1
	}
	return e
}

// writeLog appends n entries and closes the log.
func writeLog(t testing.TB, cfg auditlog.Config, n int) {
	t.Helper()
	l := openLog(t, cfg)
	for i := range n {
		if err := l.Record(context.Background(), entry(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

func readFile(t testing.TB, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func slogTo(w interface{ Write([]byte) (int, error) }) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, nil))
}
