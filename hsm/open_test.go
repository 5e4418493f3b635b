package hsm_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"custody/hsm"
	"custody/hsm/hsmtest"
)

func TestRFC5649KnownAnswers(t *testing.T) {
	t.Parallel()
	kek, _ := hex.DecodeString("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8")
	for _, tc := range []struct{ key, want string }{
		{"c37b7e6492584340bed12207808941155068f738", "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a"},
		{"466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"},
	} {
		key, _ := hex.DecodeString(tc.key)
		got, err := wrapPad(kek, key)
		if err != nil {
			t.Fatal(err)
		}
		if hex.EncodeToString(got) != tc.want {
			t.Errorf("wrapPad(%s) = %x, want %s", tc.key, got, tc.want)
		}
	}
}

func TestOpenRoundTrip(t *testing.T) {
	t.Parallel()
	tok, _ := openToken(t)
	ctx := testCtx(t)
	for _, alg := range []hsm.KeyAlg{hsm.X25519, hsm.P256} {
		t.Run(alg.String(), func(t *testing.T) {
			key := genKey(t, tok, "recipient-"+alg.String(), alg, hsm.UsageDerive)
			for _, size := range []int{0, 1, 32, 256, 4096} {
				pt := make([]byte, size)
				rand.Read(pt)
				s := seal(t, key, pt, []byte("header v1"))
				got, err := tok.Open(ctx, s.req)
				if err != nil {
					t.Fatalf("Open(%d bytes): %v", size, err)
				}
				if !bytes.Equal(got, pt) {
					t.Fatalf("Open(%d bytes) returned different plaintext", size)
				}
			}
			s := seal(t, key, []byte("no aad"), nil)
			if got, err := tok.Open(ctx, s.req); err != nil || string(got) != "no aad" {
				t.Fatalf("Open without AAD = %q, %v", got, err)
			}
			if n, err := tok.SessionObjectCount(ctx); err != nil || n != 0 {
				t.Fatalf("SessionObjectCount = %d, %v; want 0", n, err)
			}
		})
	}
}

// TestDeviceECDHMatchesSoftware derives Z on the device into an extractable
// secret (possible with the user PIN because SoftHSM has no
// CKA_DERIVE_TEMPLATE, see doc.go) and compares it with crypto/ecdh.
func TestDeviceECDHMatchesSoftware(t *testing.T) {
	t.Parallel()
	tok, cfg := openToken(t)
	r := newRaw(t, cfg)
	for _, alg := range []hsm.KeyAlg{hsm.X25519, hsm.P256} {
		t.Run(alg.String(), func(t *testing.T) {
			key := genKey(t, tok, "kat-"+alg.String(), alg, hsm.UsageDerive)
			ephPub, z := ecdhSoftware(t, alg, key.Public)
			priv := r.find(t, pkcs11.CKO_PRIVATE_KEY, key.Label)
			o, err := r.c.DeriveKey(r.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDH1_DERIVE,
				pkcs11.NewECDH1DeriveParams(pkcs11.CKD_NULL, nil, ephPub))}, priv, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
				pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
				pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, false),
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
			})
			if err != nil {
				t.Fatalf("DeriveKey: %v", err)
			}
			defer r.c.DestroyObject(r.h, o)
			if got := r.attr(t, o, pkcs11.CKA_VALUE); !bytes.Equal(got, z) {
				t.Fatalf("device ECDH %x != crypto/ecdh %x", got, z)
			}
		})
	}
}

func TestOpenTampering(t *testing.T) {
	t.Parallel()
	tok, _ := openToken(t)
	ctx := testCtx(t)
	for _, alg := range []hsm.KeyAlg{hsm.X25519, hsm.P256} {
		t.Run(alg.String(), func(t *testing.T) {
			key := genKey(t, tok, "tamper-"+alg.String(), alg, hsm.UsageDerive)
			other := genKey(t, tok, "other-"+alg.String(), alg, hsm.UsageDerive)
			pt := []byte("attack at dawn")
			good := seal(t, key, pt, []byte("aad")).req
			flip := func(b []byte, i int) []byte {
				c := bytes.Clone(b)
				c[i] ^= 0x01
				return c
			}
			cases := []struct {
				name   string
				mutate func(r *hsm.OpenRequest)
				want   error
			}{
				{"wrapped DEK", func(r *hsm.OpenRequest) { r.WrappedDEK = flip(r.WrappedDEK, 20) }, hsm.ErrIntegrity},
				{"wrapped DEK AIV", func(r *hsm.OpenRequest) { r.WrappedDEK = flip(r.WrappedDEK, 0) }, hsm.ErrIntegrity},
				{"ciphertext", func(r *hsm.OpenRequest) { r.Ciphertext = flip(r.Ciphertext, 0) }, hsm.ErrIntegrity},
				{"tag", func(r *hsm.OpenRequest) { r.Ciphertext = flip(r.Ciphertext, len(r.Ciphertext)-1) }, hsm.ErrIntegrity},
				{"nonce", func(r *hsm.OpenRequest) { r.Nonce = flip(r.Nonce, 3) }, hsm.ErrIntegrity},
				{"aad", func(r *hsm.OpenRequest) { r.AAD = flip(r.AAD, 1) }, hsm.ErrIntegrity},
				{"aad removed", func(r *hsm.OpenRequest) { r.AAD = nil }, hsm.ErrIntegrity},
				{"context", func(r *hsm.OpenRequest) { r.Context[31] ^= 0x80 }, hsm.ErrIntegrity},
				{"wrong peer key", func(r *hsm.OpenRequest) {
					r.PeerPublic, _ = ecdhSoftware(t, alg, key.Public)
				}, hsm.ErrIntegrity},
				{"wrong recipient key", func(r *hsm.OpenRequest) { r.KeyLabel = other.Label }, hsm.ErrIntegrity},
				{"unknown label", func(r *hsm.OpenRequest) { r.KeyLabel = "no-such-key" }, hsm.ErrNotFound},
				{"short nonce", func(r *hsm.OpenRequest) { r.Nonce = r.Nonce[:8] }, hsm.ErrInvalidRequest},
				{"short wrapped DEK", func(r *hsm.OpenRequest) { r.WrappedDEK = r.WrappedDEK[:32] }, hsm.ErrInvalidRequest},
				{"ciphertext shorter than tag", func(r *hsm.OpenRequest) { r.Ciphertext = r.Ciphertext[:15] }, hsm.ErrInvalidRequest},
				{"peer key length", func(r *hsm.OpenRequest) { r.PeerPublic = r.PeerPublic[:31] }, hsm.ErrInvalidRequest},
				{"unknown KDF", func(r *hsm.OpenRequest) { r.KDF = 9 }, hsm.ErrInvalidRequest},
				{"algorithm mismatch", func(r *hsm.OpenRequest) {
					if alg == hsm.X25519 {
						r.Alg = hsm.P256
						r.PeerPublic, _ = ecdhSoftware(t, hsm.P256, genKeyPub(t, tok, "p256-for-mismatch"))
					} else {
						r.Alg = hsm.X25519
						r.PeerPublic = r.PeerPublic[1:33]
					}
				}, hsm.ErrUnsupported},
			}
			for _, tc := range cases {
				req := good
				req.Context = good.Context
				tc.mutate(&req)
				_, err := tok.Open(ctx, req)
				if !errors.Is(err, tc.want) {
					t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
				}
				// The token stays usable after each failure.
				got, err := tok.Open(ctx, good)
				if err != nil || !bytes.Equal(got, pt) {
					t.Fatalf("after %s: good Open = %q, %v", tc.name, got, err)
				}
			}
			if n, err := tok.SessionObjectCount(ctx); err != nil || n != 0 {
				t.Fatalf("SessionObjectCount = %d, %v; want 0", n, err)
			}
		})
	}
}

// genKeyPub returns the public key of a P-256 derive key, creating it once.
func genKeyPub(t *testing.T, tok *hsm.Token, label string) []byte {
	ki, err := tok.FindKey(testCtx(t), label)
	if errors.Is(err, hsm.ErrNotFound) {
		ki = genKey(t, tok, label, hsm.P256, hsm.UsageDerive)
	} else if err != nil {
		t.Fatal(err)
	}
	return ki.Public
}

func TestOpenP256OffCurvePeer(t *testing.T) {
	t.Parallel()
	tok, _ := openToken(t)
	key := genKey(t, tok, "escrow", hsm.P256, hsm.UsageDerive)
	req := seal(t, key, []byte("x"), nil).req
	req.PeerPublic = bytes.Clone(req.PeerPublic)
	req.PeerPublic[64] ^= 1
	if _, err := tok.Open(testCtx(t), req); !errors.Is(err, hsm.ErrIntegrity) {
		t.Fatalf("off-curve peer: err = %v, want ErrIntegrity", err)
	}
}

func TestNoSessionObjectLeak(t *testing.T) {
	t.Parallel()
	tok, _ := openToken(t)
	ctx := testCtx(t)
	keys := []hsm.KeyInfo{
		genKey(t, tok, "leak-x", hsm.X25519, hsm.UsageDerive),
		genKey(t, tok, "leak-p", hsm.P256, hsm.UsageDerive),
	}
	var ok, failed int
	for i := range 200 {
		key := keys[i%2]
		req := seal(t, key, []byte("payload"), []byte("aad")).req
		switch i % 4 {
		case 1:
			req.Ciphertext[0] ^= 1 // fails at GCM, after the DEK exists
		case 3:
			req.WrappedDEK[9] ^= 1 // fails at unwrap, after Z and KEK exist
		}
		if _, err := tok.Open(ctx, req); err == nil {
			ok++
		} else if errors.Is(err, hsm.ErrIntegrity) {
			failed++
		} else {
			t.Fatalf("Open %d: %v", i, err)
		}
	}
	if ok != 100 || failed != 100 {
		t.Fatalf("ok=%d failed=%d, want 100/100", ok, failed)
	}
	if n, err := tok.SessionObjectCount(ctx); err != nil || n != 0 {
		t.Fatalf("SessionObjectCount = %d, %v; want 0", n, err)
	}
}

// TestOpenAfterKeyDestroyedElsewhere: a private key destroyed behind the
// Token's back (another PKCS#11 handle, as another process would) is looked
// up again once, and the caller gets ErrNotFound, not a raw
// CKR_OBJECT_HANDLE_INVALID; the pool stays healthy. With no key copies
// that is the next open; with them, the first open after KeyRecheck (within
// it the copy still opens: the documented window), and the copy is
// destroyed then.
func TestOpenAfterKeyDestroyedElsewhere(t *testing.T) {
	for _, recheck := range []time.Duration{-1, 300 * time.Millisecond} {
		t.Run(fmt.Sprint("recheck=", recheck), func(t *testing.T) {
			cfg := hsmtest.NewToken(t)
			cfg.KeyRecheck = recheck
			tok := openConfig(t, cfg)
			key := genKey(t, tok, "gone", hsm.X25519, hsm.UsageDerive)
			s := seal(t, key, []byte("payload"), []byte("aad"))
			if _, err := tok.Open(testCtx(t), s.req); err != nil { // caches the key
				t.Fatal(err)
			}
			want := 0
			if recheck > 0 {
				want = 1
			}
			if got := tok.KeyCopyCount(); got != want {
				t.Fatalf("KeyCopyCount = %d, want %d", got, want)
			}
			r := newRaw(t, cfg)
			if err := r.c.FindObjectsInit(r.h, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, "gone"),
			}); err != nil {
				t.Fatal(err)
			}
			objs, _, err := r.c.FindObjects(r.h, 2)
			r.c.FindObjectsFinal(r.h)
			if err != nil || len(objs) != 1 {
				t.Fatalf("find: %v %v", objs, err)
			}
			destroyed := time.Now()
			if err := r.c.DestroyObject(r.h, objs[0]); err != nil {
				t.Fatal(err)
			}
			before := tok.Info().Rebuilds
			if recheck > 0 {
				if _, err := tok.Open(testCtx(t), s.req); time.Since(destroyed) < recheck/2 && err != nil {
					t.Fatalf("open within KeyRecheck: %v, want the copy to open (the documented window)", err)
				}
				time.Sleep(recheck)
			}
			if _, err := tok.Open(testCtx(t), s.req); !errors.Is(err, hsm.ErrNotFound) {
				t.Fatalf("open after the key was destroyed elsewhere: %v, want ErrNotFound", err)
			}
			if got := tok.Info().Rebuilds; got != before {
				t.Errorf("a stale key handle rebuilt the pool (%d → %d)", before, got)
			}
			if n := tok.KeyCopyCount(); n != 0 {
				t.Errorf("KeyCopyCount = %d after the key was found gone, want 0", n)
			}
			other := genKey(t, tok, "still-here", hsm.X25519, hsm.UsageDerive)
			if _, err := tok.Open(testCtx(t), seal(t, other, []byte("x"), nil).req); err != nil {
				t.Errorf("the token after the miss: %v", err)
			}
			if n, err := tok.SessionObjectCount(testCtx(t)); err != nil || n != 0 {
				t.Errorf("SessionObjectCount = %d, %v; want 0 (the forgotten copy destroyed)", n, err)
			}
		})
	}
}
