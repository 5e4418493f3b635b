package hsm_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"sync"
	"testing"

	"custody/hsm"
)

// TestBackupRestore: an escrow key generated with Backup is wrapped under a
// trusted KEK (SO session), restored into a second token, and opens what
// was sealed to it; while the backup runs, concurrent opens wait and then
// succeed (the user login is restored).
func TestBackupRestore(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	src, so := openTokenSO(t)
	dst, _ := openToken(t)
	key, err := src.GenerateKeyPair(ctx, hsm.KeySpec{Label: "custody/escrow/v1", Alg: hsm.P256, Usage: hsm.UsageDerive, Backup: true})
	if err != nil {
		t.Fatal(err)
	}
	kek := make([]byte, 32)
	rand.Read(kek)
	s := seal(t, key, []byte("canary"), []byte("aad"))

	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got, err := src.Open(ctx, s.req); err != nil || string(got) != "canary" {
				t.Errorf("Open during backup = %q, %v", got, err)
			}
		}()
	}
	wrapped, err := src.WrapForBackup(ctx, key.Label, so, kek)
	wg.Wait()
	if err != nil {
		t.Fatalf("WrapForBackup: %v", err)
	}
	if got, err := src.Open(ctx, s.req); err != nil || string(got) != "canary" {
		t.Fatalf("Open after backup = %q, %v", got, err)
	}
	if n, _ := src.SessionObjectCount(ctx); n != 0 {
		t.Fatalf("%d session objects left after backup", n)
	}

	// Wrong KEK: integrity failure, nothing created.
	bad := bytes.Clone(kek)
	bad[0] ^= 1
	if _, err := dst.RestoreFromBackup(ctx, key.Label, bad, wrapped, key.Public); !errors.Is(err, hsm.ErrIntegrity) {
		t.Fatalf("restore with wrong KEK: %v, want ErrIntegrity", err)
	}
	if _, err := dst.FindKey(ctx, key.Label); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("after failed restore FindKey: %v, want ErrNotFound", err)
	}
	info, err := dst.RestoreFromBackup(ctx, key.Label, kek, wrapped, key.Public)
	if err != nil {
		t.Fatalf("RestoreFromBackup: %v", err)
	}
	if !bytes.Equal(info.Public, key.Public) || info.Usage != hsm.UsageDerive || info.Alg != hsm.P256 {
		t.Fatalf("restored key info %+v", info)
	}
	if got, err := dst.Open(ctx, s.req); err != nil || string(got) != "canary" {
		t.Fatalf("Open on restored token = %q, %v", got, err)
	}
	if _, err := dst.RestoreFromBackup(ctx, key.Label, kek, wrapped, key.Public); !errors.Is(err, hsm.ErrExists) {
		t.Fatalf("second restore: %v, want ErrExists", err)
	}
	if n, _ := dst.SessionObjectCount(ctx); n != 0 {
		t.Fatalf("%d session objects left after restore", n)
	}
}

func TestBackupRefusals(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	tok, so := openTokenSO(t)
	kek := make([]byte, 32)
	plain := genKey(t, tok, "not-backup", hsm.P256, hsm.UsageDerive)
	if _, err := tok.WrapForBackup(ctx, plain.Label, so, kek); !errors.Is(err, hsm.ErrUnsupported) {
		t.Fatalf("wrap of a non-backup key: %v, want ErrUnsupported", err)
	}
	if _, err := tok.WrapForBackup(ctx, "missing", so, kek); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("wrap of a missing key: %v, want ErrNotFound", err)
	}
	// Anything but the SO PIN is refused, and the user stays logged in.
	if _, err := tok.WrapForBackup(ctx, plain.Label, []byte("not-the-so-pin"), kek); !errors.Is(err, hsm.ErrSOLogin) {
		t.Fatalf("wrap with a wrong SO PIN: %v, want ErrSOLogin", err)
	}
	if _, err := tok.FindKey(ctx, plain.Label); err != nil {
		t.Fatalf("after a refused SO login: %v", err)
	}
	if _, err := tok.WrapForBackup(ctx, plain.Label, so, kek[:16]); !errors.Is(err, hsm.ErrInvalidRequest) {
		t.Fatalf("short KEK: %v, want ErrInvalidRequest", err)
	}
	// The token still works for the user afterwards.
	s := seal(t, plain, []byte("x"), nil)
	if _, err := tok.Open(ctx, s.req); err != nil {
		t.Fatalf("Open after refusals: %v", err)
	}
}
