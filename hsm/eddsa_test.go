package hsm_test

import (
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"sync"
	"testing"
	"time"

	"custody/hsm"
)

func TestEd25519SignOnDevice(t *testing.T) {
	t.Parallel()
	tok, _ := openToken(t)
	ctx := testCtx(t)
	const label = "custody/log/v1"
	pub, created, err := tok.EnsureEd25519(ctx, label, time.Now())
	if err != nil || !created || len(pub) != ed25519.PublicKeySize {
		t.Fatalf("EnsureEd25519 = %x, %v, %v", pub, created, err)
	}
	again, created, err := tok.EnsureEd25519(ctx, label, time.Now())
	if err != nil || created || !pub.Equal(again) {
		t.Fatalf("second EnsureEd25519 = %x, %v, %v; want the same key, not created", again, created, err)
	}
	if _, err := tok.GenerateEd25519(ctx, label, time.Time{}); !errors.Is(err, hsm.ErrExists) {
		t.Fatalf("GenerateEd25519 twice: %v, want ErrExists", err)
	}
	msg := []byte("custody.example/log\n3\nAAAA\n")
	sig, err := tok.SignEd25519(ctx, label, msg)
	if err != nil {
		t.Fatal(err)
	}
	if !ed25519.Verify(pub, msg, sig) {
		t.Fatal("device signature does not verify with crypto/ed25519")
	}
	if ed25519.Verify(pub, []byte("other"), sig) {
		t.Fatal("signature verifies for another message")
	}
	// Concurrent signers share the pool.
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			m := []byte{byte(i)}
			s, err := tok.SignEd25519(ctx, label, m)
			if err != nil || !ed25519.Verify(pub, m, s) {
				t.Errorf("concurrent sign %d: %v", i, err)
			}
		})
	}
	wg.Wait()

	// One usage per key: the Ed25519 key does not do ECDSA, a P-256 key does not do EdDSA.
	digest := sha256.Sum256(msg)
	if _, err := tok.Sign(ctx, label, digest[:]); !errors.Is(err, hsm.ErrUnsupported) {
		t.Fatalf("ECDSA Sign with the Ed25519 key: %v, want ErrUnsupported", err)
	}
	p := genKey(t, tok, "p256-signer", hsm.P256, hsm.UsageSign)
	if _, err := tok.SignEd25519(ctx, p.Label, msg); !errors.Is(err, hsm.ErrUnsupported) {
		t.Fatalf("EdDSA with a P-256 key: %v, want ErrUnsupported", err)
	}
	if _, err := tok.FindEd25519(ctx, p.Label); !errors.Is(err, hsm.ErrUnsupported) {
		t.Fatalf("FindEd25519 of a P-256 key: %v, want ErrUnsupported", err)
	}
	if _, err := tok.SignEd25519(ctx, "nope", msg); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("unknown key: %v, want ErrNotFound", err)
	}
	// The registry's listing does not see the log key.
	keys, err := tok.ListKeys(ctx, "custody/")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k.Label == label {
			t.Fatalf("ListKeys shows the Ed25519 log key: %+v", k)
		}
	}
}

func BenchmarkSignEd25519(b *testing.B) {
	tok, _ := openToken(b)
	ctx := testCtx(b)
	if _, err := tok.GenerateEd25519(ctx, "bench/ed25519", time.Time{}); err != nil {
		b.Fatal(err)
	}
	msg := make([]byte, 100)
	b.ResetTimer()
	for b.Loop() {
		if _, err := tok.SignEd25519(ctx, "bench/ed25519", msg); err != nil {
			b.Fatal(err)
		}
	}
}
