package hsm_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/miekg/pkcs11"

	"custody/hsm"
	"custody/internal/pop"
)

func curveOf(alg hsm.KeyAlg) ecdh.Curve {
	if alg == hsm.P256 {
		return ecdh.P256()
	}
	return ecdh.X25519()
}

// testContext stands in for envelope.KDFContext: any function of the
// ephemeral key the software side can recompute.
func testContext(recipient []byte) func([]byte) [32]byte {
	return func(eph []byte) [32]byte { return sha256.Sum256(append(append([]byte("t\x00"), eph...), recipient...)) }
}

func noSessionObjects(t *testing.T, tok *hsm.Token) {
	t.Helper()
	n, err := tok.SessionObjectCount(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("%d session objects left on the token", n)
	}
}

// TestRewrapMatchesSoftware unwraps a DEK sealed in software on the device
// and rewraps it for software-held recipients of both algorithms: the
// device's C_WrapKey output must be byte-for-byte RFC 5649 (wrapPad, an
// independent implementation) of the same DEK under the KEK the recipient
// derives, and the rewrapped DEK must still open the original payload.
func TestRewrapMatchesSoftware(t *testing.T) {
	t.Parallel()
	tok, _ := openToken(t)
	ctx := testCtx(t)
	for _, srcAlg := range []hsm.KeyAlg{hsm.X25519, hsm.P256} {
		key := genKey(t, tok, "rewrap-src-"+srcAlg.String(), srcAlg, hsm.UsageDerive)
		// Seal with a known DEK.
		dek := make([]byte, 32)
		rand.Read(dek)
		ephPub, z := ecdhSoftware(t, srcAlg, key.Public)
		var context [32]byte
		rand.Read(context[:])
		wrapped, err := wrapPad(ecb(t, z, context[:]), dek)
		if err != nil {
			t.Fatal(err)
		}
		var targets []hsm.WrapTarget
		var privs []*ecdh.PrivateKey
		for _, alg := range []hsm.KeyAlg{hsm.X25519, hsm.P256, hsm.X25519} {
			p, _ := curveOf(alg).GenerateKey(rand.Reader)
			privs = append(privs, p)
			targets = append(targets, hsm.WrapTarget{Alg: alg, RecipientPublic: p.PublicKey().Bytes(), Context: testContext(p.PublicKey().Bytes())})
		}
		out, err := tok.Rewrap(ctx, hsm.RewrapRequest{KeyLabel: key.Label, Alg: srcAlg, KDF: hsm.KDFECBContext,
			PeerPublic: ephPub, Context: context, WrappedDEK: wrapped, Targets: targets})
		if err != nil {
			t.Fatalf("%s: Rewrap: %v", srcAlg, err)
		}
		if len(out) != len(targets) {
			t.Fatalf("%d results for %d targets", len(out), len(targets))
		}
		for i, r := range out {
			epub, err := curveOf(targets[i].Alg).NewPublicKey(r.EphemeralPublic)
			if err != nil {
				t.Fatalf("target %d: ephemeral public key: %v", i, err)
			}
			z2, err := privs[i].ECDH(epub)
			if err != nil {
				t.Fatal(err)
			}
			c2 := targets[i].Context(r.EphemeralPublic)
			want, _ := wrapPad(ecb(t, z2, c2[:]), dek)
			if !bytes.Equal(r.WrappedDEK, want) {
				t.Fatalf("%s→%s: device wrap %x != RFC 5649 %x", srcAlg, targets[i].Alg, r.WrappedDEK, want)
			}
		}
		if bytes.Equal(out[0].EphemeralPublic, out[2].EphemeralPublic) {
			t.Fatal("two targets got the same ephemeral key")
		}
	}
	noSessionObjects(t, tok)
}

func TestRewrapRefusals(t *testing.T) {
	t.Parallel()
	tok, _ := openToken(t)
	ctx := testCtx(t)
	key := genKey(t, tok, "rewrap-refuse", hsm.X25519, hsm.UsageDerive)
	s := seal(t, key, []byte("x"), nil).req
	p, _ := ecdh.X25519().GenerateKey(rand.Reader)
	target := hsm.WrapTarget{Alg: hsm.X25519, RecipientPublic: p.PublicKey().Bytes(), Context: testContext(p.PublicKey().Bytes())}
	base := hsm.RewrapRequest{KeyLabel: key.Label, Alg: key.Alg, KDF: hsm.KDFECBContext, PeerPublic: s.PeerPublic,
		Context: s.Context, WrappedDEK: s.WrappedDEK, Targets: []hsm.WrapTarget{target}}
	tampered := base
	tampered.WrappedDEK = bytes.Clone(base.WrappedDEK)
	tampered.WrappedDEK[9] ^= 1
	wrongCtx := base
	wrongCtx.Context[0] ^= 1
	noTargets := base
	noTargets.Targets = nil
	unknown := base
	unknown.KeyLabel = "nope"
	badPoint := base
	badPoint.Targets = []hsm.WrapTarget{{Alg: hsm.P256, RecipientPublic: append([]byte{4}, make([]byte, 64)...), Context: target.Context}}
	for name, tc := range map[string]struct {
		req  hsm.RewrapRequest
		want error
	}{
		"tampered wrap":   {tampered, hsm.ErrIntegrity},
		"wrong context":   {wrongCtx, hsm.ErrIntegrity},
		"no targets":      {noTargets, hsm.ErrInvalidRequest},
		"unknown label":   {unknown, hsm.ErrNotFound},
		"off-curve point": {badPoint, hsm.ErrIntegrity},
	} {
		if _, err := tok.Rewrap(ctx, tc.req); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	noSessionObjects(t, tok)
}

// TestRewrapDEKCannotDecrypt checks the KEK's CKA_UNWRAP_TEMPLATE on the
// rewrap path: an unwrap through it that asks for a decrypting DEK is refused.
func TestRewrapDEKTemplateEnforced(t *testing.T) {
	t.Parallel()
	tok, cfg := openToken(t)
	key := genKey(t, tok, "rewrap-tmpl", hsm.X25519, hsm.UsageDerive)
	s := seal(t, key, []byte("x"), nil)
	r := newRaw(t, cfg)
	priv := r.find(t, pkcs11.CKO_PRIVATE_KEY, key.Label)
	z, err := r.c.DeriveKey(r.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDH1_DERIVE,
		pkcs11.NewECDH1DeriveParams(pkcs11.CKD_NULL, nil, s.req.PeerPublic))}, priv, hsm.SessionAESForTest(true, false))
	if err != nil {
		t.Fatal(err)
	}
	defer r.c.DestroyObject(r.h, z)
	kek, err := hsm.DeriveRewrapKEKForTest(r.c, r.h, z, s.req.Context)
	if err != nil {
		t.Fatal(err)
	}
	defer r.c.DestroyObject(r.h, kek)
	tmpl := hsm.RewrapDEKTemplateForTest()
	for i, a := range tmpl {
		if a.Type == pkcs11.CKA_DECRYPT {
			tmpl[i] = pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, true)
		}
	}
	if o, err := r.c.UnwrapKey(r.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, kek, s.req.WrappedDEK, tmpl); err == nil {
		r.c.DestroyObject(r.h, o)
		t.Fatal("the rewrap KEK unwrapped a DEK that can decrypt")
	}
	o, err := r.c.UnwrapKey(r.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, kek, s.req.WrappedDEK, hsm.RewrapDEKTemplateForTest())
	if err != nil {
		t.Fatalf("unwrap with the rewrap template: %v", err)
	}
	defer r.c.DestroyObject(r.h, o)
	if v := r.attr(t, o, pkcs11.CKA_SENSITIVE); !bytes.Equal(v, []byte{1}) {
		t.Fatal("rewrap DEK is not sensitive")
	}
	gcm := pkcs11.NewGCMParams(s.req.Nonce, nil, 128)
	defer gcm.Free()
	if err := r.c.DecryptInit(r.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, gcm)}, o); err == nil {
		t.Fatal("rewrap DEK can decrypt")
	}
}

func TestProvePossession(t *testing.T) {
	t.Parallel()
	tok, _ := openToken(t)
	ctx := testCtx(t)
	for _, alg := range []hsm.KeyAlg{hsm.X25519, hsm.P256} {
		key := genKey(t, tok, "pop-"+alg.String(), alg, hsm.UsageDerive)
		eph, _ := curveOf(alg).GenerateKey(rand.Reader)
		nonce := make([]byte, 32)
		rand.Read(nonce)
		e := eph.PublicKey().Bytes()
		mac, err := tok.ProvePossession(ctx, hsm.PossessionRequest{KeyLabel: key.Label, Alg: alg, VerifierPublic: e,
			Context: pop.Context(alg, e, key.Public, nonce), Message: pop.Message(nonce)})
		if err != nil {
			t.Fatalf("%s: %v", alg, err)
		}
		if err := pop.Verify(alg, eph, key.Public, nonce, mac); err != nil {
			t.Fatalf("%s: verify: %v", alg, err)
		}
		// A public key the token does not hold does not verify.
		stranger, _ := curveOf(alg).GenerateKey(rand.Reader)
		if err := pop.Verify(alg, eph, stranger.PublicKey().Bytes(), nonce, mac); !errors.Is(err, pop.ErrMismatch) {
			t.Fatalf("%s: stranger key: %v, want ErrMismatch", alg, err)
		}
		nonce[0] ^= 1
		if err := pop.Verify(alg, eph, key.Public, nonce, mac); !errors.Is(err, pop.ErrMismatch) {
			t.Fatalf("%s: other nonce: %v, want ErrMismatch", alg, err)
		}
	}
	noSessionObjects(t, tok)
}

func TestDestroyKeyPairAndDataObjects(t *testing.T) {
	t.Parallel()
	tok, _ := openToken(t)
	ctx := testCtx(t)
	key := genKey(t, tok, "doomed", hsm.X25519, hsm.UsageDerive)
	keep := genKey(t, tok, "doomed-not", hsm.X25519, hsm.UsageDerive)
	s := seal(t, key, []byte("x"), nil).req
	if _, err := tok.Open(ctx, s); err != nil { // caches the handle
		t.Fatal(err)
	}
	if err := tok.DestroyKeyPair(ctx, key.Label); err != nil {
		t.Fatal(err)
	}
	if _, err := tok.Open(ctx, s); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("open after destroy: %v, want ErrNotFound", err)
	}
	if _, err := tok.FindKey(ctx, keep.Label); err != nil {
		t.Fatalf("the other key went too: %v", err)
	}
	if err := tok.DestroyKeyPair(ctx, key.Label); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("second destroy: %v, want ErrNotFound", err)
	}
	if err := tok.PutDataObject(ctx, hsm.DataObject{Label: "custody/x/1", Value: []byte(`{"a":1}`)}); err != nil {
		t.Fatal(err)
	}
	if err := tok.PutDataObject(ctx, hsm.DataObject{Label: "custody/x/1", Value: []byte(`{}`)}); !errors.Is(err, hsm.ErrExists) {
		t.Fatalf("second put: %v, want ErrExists", err)
	}
	ds, err := tok.ListDataObjects(ctx, "custody/x/")
	if err != nil || len(ds) != 1 || string(ds[0].Value) != `{"a":1}` {
		t.Fatalf("ListDataObjects = %v, %v", ds, err)
	}
	noSessionObjects(t, tok)
}

// BenchmarkRewrapVsOpen alternates the rewrap chain (one X25519 target) and
// the open chain on the same token: the device cost of a rewrap relative to
// a decrypt, without the daemon around it.
func BenchmarkRewrapVsOpen(b *testing.B) {
	tok, _ := openToken(b)
	ctx := testCtx(b)
	key := genKey(b, tok, "bench-rewrap", hsm.X25519, hsm.UsageDerive)
	s := seal(b, key, make([]byte, 256), []byte("aad")).req
	p, _ := ecdh.X25519().GenerateKey(rand.Reader)
	req := hsm.RewrapRequest{KeyLabel: key.Label, Alg: key.Alg, KDF: hsm.KDFECBContext, PeerPublic: s.PeerPublic,
		Context: s.Context, WrappedDEK: s.WrappedDEK,
		Targets: []hsm.WrapTarget{{Alg: hsm.X25519, RecipientPublic: p.PublicKey().Bytes(), Context: testContext(p.PublicKey().Bytes())}}}
	_ = cipher.NewGCM
	_ = aes.NewCipher
	b.Run("open", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := tok.Open(ctx, s); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	b.Run("rewrap", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := tok.Rewrap(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}
