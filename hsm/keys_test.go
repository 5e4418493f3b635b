package hsm_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"custody/hsm"
)

func TestKeys(t *testing.T) {
	t.Parallel()
	tok, cfg := openToken(t)
	ctx := testCtx(t)
	r := newRaw(t, cfg)
	created := time.Date(2025, 3, 14, 15, 9, 26, 0, time.UTC)

	x, err := tok.GenerateKeyPair(ctx, hsm.KeySpec{Label: "tx/b", Alg: hsm.X25519, Usage: hsm.UsageDerive, Created: created})
	if err != nil {
		t.Fatal(err)
	}
	p := genKey(t, tok, "tx/a", hsm.P256, hsm.UsageDerive)
	s := genKey(t, tok, "sign/1", hsm.P256, hsm.UsageSign)

	sum := sha256.Sum256([]byte("tx/b"))
	if len(x.Public) != 32 || !bytes.Equal(x.ID, sum[:16]) || x.Alg != hsm.X25519 || x.Usage != hsm.UsageDerive {
		t.Fatalf("X25519 key info = %+v", x)
	}
	if !x.Created.Equal(time.Date(2025, 3, 14, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("Created = %v", x.Created)
	}
	if len(p.Public) != 65 || p.Public[0] != 4 {
		t.Fatalf("P-256 public = %x", p.Public)
	}
	if _, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), p.Public); err != nil {
		t.Fatalf("P-256 public not on curve: %v", err)
	}

	got, err := tok.FindKey(ctx, "tx/b")
	if err != nil || !bytes.Equal(got.Public, x.Public) || got.Label != "tx/b" || !got.Created.Equal(x.Created) {
		t.Fatalf("FindKey = %+v, %v", got, err)
	}
	if _, err := tok.FindKey(ctx, "tx/none"); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("FindKey unknown: %v, want ErrNotFound", err)
	}

	list, err := tok.ListKeys(ctx, "tx/")
	if err != nil || len(list) != 2 || list[0].Label != "tx/a" || list[1].Label != "tx/b" {
		t.Fatalf("ListKeys(tx/) = %+v, %v", list, err)
	}
	if all, err := tok.ListKeys(ctx, ""); err != nil || len(all) != 3 {
		t.Fatalf("ListKeys(\"\") = %d keys, %v", len(all), err)
	}

	// Duplicate label: ErrExists, and the existing key is untouched.
	for _, spec := range []hsm.KeySpec{
		{Label: "tx/b", Alg: hsm.X25519, Usage: hsm.UsageDerive},
		{Label: "tx/b", Alg: hsm.P256, Usage: hsm.UsageSign},
	} {
		if _, err := tok.GenerateKeyPair(ctx, spec); !errors.Is(err, hsm.ErrExists) {
			t.Fatalf("duplicate %+v: %v, want ErrExists", spec, err)
		}
	}
	if again, err := tok.FindKey(ctx, "tx/b"); err != nil || !bytes.Equal(again.Public, x.Public) {
		t.Fatalf("after duplicate: %+v, %v", again, err)
	}
	if all, _ := tok.ListKeys(ctx, "tx/b"); len(all) != 1 {
		t.Fatalf("after duplicate: %d objects labelled tx/b", len(all))
	}

	// Attributes as set.
	ulong := func(v uint) []byte { return binary.NativeEndian.AppendUint64(nil, uint64(v)) }
	for _, tc := range []struct {
		key          hsm.KeyInfo
		derive, sign bool
		allowed      uint
	}{
		{x, true, false, pkcs11.CKM_ECDH1_DERIVE},
		{p, true, false, pkcs11.CKM_ECDH1_DERIVE},
		{s, false, true, pkcs11.CKM_ECDSA},
	} {
		priv := r.find(t, pkcs11.CKO_PRIVATE_KEY, tc.key.Label)
		pub := r.find(t, pkcs11.CKO_PUBLIC_KEY, tc.key.Label)
		want := map[uint][]byte{
			pkcs11.CKA_TOKEN: {1}, pkcs11.CKA_PRIVATE: {1}, pkcs11.CKA_SENSITIVE: {1},
			pkcs11.CKA_EXTRACTABLE: {0}, pkcs11.CKA_NEVER_EXTRACTABLE: {1}, pkcs11.CKA_ALWAYS_SENSITIVE: {1},
			pkcs11.CKA_DERIVE: {b2i(tc.derive)}, pkcs11.CKA_SIGN: {b2i(tc.sign)},
			pkcs11.CKA_DECRYPT: {0}, pkcs11.CKA_UNWRAP: {0}, pkcs11.CKA_SIGN_RECOVER: {0},
			pkcs11.CKA_ALLOWED_MECHANISMS: ulong(tc.allowed),
			pkcs11.CKA_ID:                 tc.key.ID, pkcs11.CKA_LABEL: []byte(tc.key.Label),
		}
		for typ, v := range want {
			if got := r.attr(t, priv, typ); !bytes.Equal(got, v) {
				t.Errorf("%s private attr %#x = %x, want %x", tc.key.Label, typ, got, v)
			}
		}
		for typ, v := range map[uint][]byte{pkcs11.CKA_TOKEN: {1}, pkcs11.CKA_PRIVATE: {0}, pkcs11.CKA_ID: tc.key.ID} {
			if got := r.attr(t, pub, typ); !bytes.Equal(got, v) {
				t.Errorf("%s public attr %#x = %x, want %x", tc.key.Label, typ, got, v)
			}
		}
		// A sensitive key's value cannot be read.
		if _, err := r.c.GetAttributeValue(r.h, priv, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)}); err == nil {
			t.Errorf("%s: CKA_VALUE readable", tc.key.Label)
		}
	}

	// A derive key cannot sign, on the device itself and through the API.
	priv := r.find(t, pkcs11.CKO_PRIVATE_KEY, p.Label)
	err = r.c.SignInit(r.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, priv)
	if err == nil {
		_, err = r.c.Sign(r.h, make([]byte, 32))
	}
	if err == nil {
		t.Fatal("device signed with a derive-only key")
	}
	if _, err := tok.Sign(ctx, p.Label, make([]byte, 32)); !errors.Is(err, hsm.ErrUnsupported) {
		t.Fatalf("Sign with derive key: %v, want ErrUnsupported", err)
	}
	// And a sign key cannot derive.
	req := seal(t, p, []byte("x"), nil).req
	req.KeyLabel = s.Label
	if _, err := tok.Open(ctx, req); !errors.Is(err, hsm.ErrUnsupported) {
		t.Fatalf("Open with sign key: %v, want ErrUnsupported", err)
	}
}

func b2i(b bool) byte {
	if b {
		return 1
	}
	return 0
}

func TestBackupKey(t *testing.T) {
	t.Parallel()
	tok, cfg := openToken(t)
	ctx := testCtx(t)
	r := newRaw(t, cfg)
	k, err := tok.GenerateKeyPair(ctx, hsm.KeySpec{Label: "escrow/v1", Alg: hsm.P256, Usage: hsm.UsageDerive, Backup: true})
	if err != nil {
		t.Fatal(err)
	}
	priv := r.find(t, pkcs11.CKO_PRIVATE_KEY, k.Label)
	for typ, v := range map[uint][]byte{
		pkcs11.CKA_EXTRACTABLE: {1}, pkcs11.CKA_WRAP_WITH_TRUSTED: {1}, pkcs11.CKA_SENSITIVE: {1},
	} {
		if got := r.attr(t, priv, typ); !bytes.Equal(got, v) {
			t.Errorf("attr %#x = %x, want %x", typ, got, v)
		}
	}
	// CKA_WRAP_WITH_TRUSTED is enforced: an untrusted KEK cannot wrap it out.
	kek, err := r.c.GenerateKey(r.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r.c.DestroyObject(r.h, kek)
	if _, err := r.c.WrapKey(r.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, kek, priv); err == nil {
		t.Fatal("backup key wrapped under an untrusted KEK")
	}
	// Still usable for Open.
	if got, err := tok.Open(ctx, seal(t, k, []byte("escrowed"), nil).req); err != nil || string(got) != "escrowed" {
		t.Fatalf("Open = %q, %v", got, err)
	}
	// X25519 backup is refused.
	if _, err := tok.GenerateKeyPair(ctx, hsm.KeySpec{Label: "x-backup", Alg: hsm.X25519, Usage: hsm.UsageDerive, Backup: true}); !errors.Is(err, hsm.ErrUnsupported) {
		t.Fatalf("X25519 backup: %v, want ErrUnsupported", err)
	}
}

func TestGenerateInvalid(t *testing.T) {
	t.Parallel()
	tok, _ := openToken(t)
	for _, spec := range []hsm.KeySpec{
		{Label: "", Alg: hsm.P256, Usage: hsm.UsageSign},
		{Label: "x", Alg: hsm.X25519, Usage: hsm.UsageSign},
		{Label: "x", Alg: 9, Usage: hsm.UsageSign},
		{Label: "x", Alg: hsm.P256, Usage: 7},
	} {
		if _, err := tok.GenerateKeyPair(testCtx(t), spec); !errors.Is(err, hsm.ErrInvalidRequest) {
			t.Errorf("%+v: %v, want ErrInvalidRequest", spec, err)
		}
	}
}

func TestCapabilities(t *testing.T) {
	t.Parallel()
	tok, _ := openToken(t)
	c := tok.Capabilities()
	// What SoftHSM 2.6.1 is measured to do (notes/softhsm-2.6.1.md).
	want := hsm.Capabilities{X25519: hsm.X25519EdwardsOID, ECDHDerive: true, AESKeyWrapPad: true,
		AESGCM: true, ECBEncryptData: true, ECDSA: true, EdDSA: true, AESCMAC: true}
	if c != want {
		t.Fatalf("Capabilities = %s, want %s", c, want)
	}
	info := tok.Info()
	if info.Sessions < 2 || info.Rebuilds != 0 || info.Label == "" || info.Serial == "" {
		t.Fatalf("Info = %+v", info)
	}
	if n, err := tok.SessionObjectCount(testCtx(t)); err != nil || n != 0 {
		t.Fatalf("probe left %d session objects (%v)", n, err)
	}
}

func ecdsaP256() elliptic.Curve { return elliptic.P256() }
