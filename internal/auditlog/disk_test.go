package auditlog_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"custody/hsm"
	"custody/hsm/hsmtest"
	"custody/internal/auditlog"
)

func TestMain(m *testing.M) { hsmtest.Main(m) }

// TestDiskFull fills a 1 MiB tmpfs: Record refuses with ErrUnavailable and
// keeps refusing, nothing acknowledged is lost, and appends resume once
// space is freed.
func TestDiskFull(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("needs root to mount a tmpfs (make test runs as root)")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	filler := filepath.Join(mnt, "filler")
	if err := os.WriteFile(filler, make([]byte, 256<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(filepath.Join(mnt, "log"))
	cfg.CheckpointEvery = 100
	l := openLog(t, cfg)
	ctx := context.Background()
	acked := 0
	var refused error
	for i := 0; i < 100000; i++ {
		if err := l.Record(ctx, entry(i)); err != nil {
			refused = err
			break
		}
		acked++
	}
	if !errors.Is(refused, auditlog.ErrUnavailable) {
		t.Fatalf("after %d entries: %v, want ErrUnavailable", acked, refused)
	}
	for range 3 {
		if err := l.Record(ctx, entry(acked)); !errors.Is(err, auditlog.ErrUnavailable) {
			t.Fatalf("a full disk accepted an entry: %v", err)
		}
	}
	if st := l.Status(); st.Writable || st.Entries != int64(acked) {
		t.Fatalf("Status = %+v, want not writable with %d entries", st, acked)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := l.Record(ctx, entry(acked+i)); err != nil {
			t.Fatalf("after freeing space: %v", err)
		}
	}
	if st := l.Status(); !st.Writable {
		t.Fatalf("Status = %+v", st)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	n := int64(0)
	err := auditlog.ReadEntries(cfg.Dir, func(i int64, e auditlog.Entry) error {
		if want := entry(int(i)).TransactionID; e.TransactionID != want {
			return fmt.Errorf("entry %d is %s, want %s", i, e.TransactionID, want)
		}
		n++
		return nil
	})
	if err != nil || n != int64(acked+10) {
		t.Fatalf("after recovery: %d entries (%d acknowledged + 10), %v", n, acked, err)
	}
	res, err := auditlog.Verify(cfg.Dir, auditlog.VerifyOptions{Verifier: testVerifier(t)})
	if err != nil || !res.OK {
		t.Fatalf("verify: %+v %v", res, err)
	}
	t.Logf("%d entries acknowledged before the disk filled", acked)
}

// TestDirectoryRemoved: entries written to an unlinked file would be in no
// log; Record refuses.
func TestDirectoryRemoved(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "log")
	l := openLog(t, testConfig(dir))
	defer l.Close()
	if err := l.Record(context.Background(), entry(0)); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(dir)
	for range 2 {
		if err := l.Record(context.Background(), entry(1)); !errors.Is(err, auditlog.ErrUnavailable) {
			t.Fatalf("Record into a removed directory: %v", err)
		}
	}
}

// TestDeviceSigner signs checkpoints with Ed25519 inside SoftHSM.
func TestDeviceSigner(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cfgTok := hsmtest.NewToken(t)
	tok, err := hsm.Open(ctx, cfgTok, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	s, created, err := auditlog.EnsureDeviceSigner(ctx, tok, testOrigin, auditlog.DefaultSigningKeyLabel, time.Now())
	if err != nil || !created {
		t.Fatalf("EnsureDeviceSigner: %v %v", created, err)
	}
	dir := t.TempDir()
	cfg := testConfig(dir)
	l, err := auditlog.Open(ctx, cfg, s, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := l.Record(ctx, entry(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// Second start: the same key is found, not created.
	s2, created, err := auditlog.EnsureDeviceSigner(ctx, tok, testOrigin, auditlog.DefaultSigningKeyLabel, time.Now())
	if err != nil || created || s2.VerifierKey() != s.VerifierKey() {
		t.Fatalf("second EnsureDeviceSigner: %v %v", created, err)
	}
	v, err := auditlog.ParseVerifierKey(readFile(t, dir, auditlog.PublicKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	res, err := auditlog.Verify(dir, auditlog.VerifyOptions{Verifier: v})
	if err != nil || !res.OK || res.LatestSize != 5 {
		t.Fatalf("verify of an HSM-signed log: %+v %v", res, err)
	}
}
