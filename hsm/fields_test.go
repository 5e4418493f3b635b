//go:build cgo

package hsm_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"testing"

	"github.com/miekg/pkcs11"

	"custody/hsm"
)

// fieldsRequest turns a sealed v1 test payload into a v2 open of two fields
// under keys derived in software from the same DEK (what the device must
// derive with CKM_AES_ECB_ENCRYPT_DATA).
func fieldsRequest(t testing.TB, s sealed, values ...string) hsm.OpenFieldsRequest {
	t.Helper()
	req := hsm.OpenFieldsRequest{KeyLabel: s.req.KeyLabel, Alg: s.req.Alg, KDF: s.req.KDF, PeerPublic: s.req.PeerPublic,
		Context: s.req.Context, WrappedDEK: s.req.WrappedDEK}
	for i, v := range values {
		var c [32]byte
		c[0] = byte(i + 1)
		fk := ecb(t, s.dek, c[:])
		b, _ := aes.NewCipher(fk)
		gcm, _ := cipher.NewGCM(b)
		nonce := bytes.Repeat([]byte{byte(i)}, 12)
		aad := []byte{byte(i)}
		req.Fields = append(req.Fields, hsm.FieldOpen{Context: c, Nonce: nonce, AAD: aad, Ciphertext: gcm.Seal(nil, nonce, []byte(v), aad)})
	}
	return req
}

func TestOpenAndSealFields(t *testing.T) {
	t.Parallel()
	tok, _ := openToken(t)
	ctx := testCtx(t)
	for _, alg := range []hsm.KeyAlg{hsm.X25519, hsm.P256} {
		key := genKey(t, tok, "fields-"+alg.String(), alg, hsm.UsageDerive)
		s := seal(t, key, []byte("unused"), nil)
		req := fieldsRequest(t, s, `"1000"`, `{"iban":"DE00"}`)
		pts, err := tok.OpenFields(ctx, req)
		if err != nil || len(pts) != 2 || string(pts[0]) != `"1000"` || string(pts[1]) != `{"iban":"DE00"}` {
			t.Fatalf("%s: OpenFields = %q, %v", alg, pts, err)
		}
		// Only the second field: the first is not in the request at all.
		one := req
		one.Fields = req.Fields[1:]
		if pts, err := tok.OpenFields(ctx, one); err != nil || len(pts) != 1 || string(pts[0]) != `{"iban":"DE00"}` {
			t.Fatalf("%s: one field = %q, %v", alg, pts, err)
		}
		// A field under another field's context (key) or AAD: refused.
		bad := req
		bad.Fields = []hsm.FieldOpen{req.Fields[0]}
		bad.Fields[0].Context = req.Fields[1].Context
		if _, err := tok.OpenFields(ctx, bad); !errors.Is(err, hsm.ErrIntegrity) {
			t.Fatalf("%s: wrong field key: %v", alg, err)
		}
		bad.Fields[0] = req.Fields[0]
		bad.Fields[0].AAD = []byte{9}
		if _, err := tok.OpenFields(ctx, bad); !errors.Is(err, hsm.ErrIntegrity) {
			t.Fatalf("%s: wrong AAD: %v", alg, err)
		}
		// The second field tampered after a good first: nothing is returned
		// (the chain stops inside one device call; its keys are destroyed).
		bad.Fields = []hsm.FieldOpen{req.Fields[0], req.Fields[1]}
		bad.Fields[1].Ciphertext = bytes.Clone(req.Fields[1].Ciphertext)
		bad.Fields[1].Ciphertext[0] ^= 1
		if pts, err := tok.OpenFields(ctx, bad); !errors.Is(err, hsm.ErrIntegrity) || pts != nil {
			t.Fatalf("%s: tampered second field: %q, %v", alg, pts, err)
		}
		// A damaged wrapped DEK fails in the key half.
		bad = req
		bad.WrappedDEK = bytes.Clone(req.WrappedDEK)
		bad.WrappedDEK[3] ^= 1
		if _, err := tok.OpenFields(ctx, bad); !errors.Is(err, hsm.ErrIntegrity) {
			t.Fatalf("%s: damaged wrapped DEK: %v", alg, err)
		}
		// SealFields from the same DEK gives what software computes, field
		// by field.
		seals := []hsm.FieldSeal{
			{Context: req.Fields[0].Context, Nonce: req.Fields[0].Nonce, AAD: req.Fields[0].AAD, Plaintext: []byte(`"1000"`)},
			{Context: req.Fields[1].Context, Nonce: req.Fields[1].Nonce, AAD: req.Fields[1].AAD, Plaintext: []byte(`{"iban":"DE00"}`)},
		}
		cts, err := tok.SealFields(ctx, hsm.SealFieldsRequest{DEK: s.dek, Fields: seals})
		if err != nil || len(cts) != 2 || !bytes.Equal(cts[0], req.Fields[0].Ciphertext) || !bytes.Equal(cts[1], req.Fields[1].Ciphertext) {
			t.Fatalf("%s: SealFields = %x, %v; want %x", alg, cts, err, []any{req.Fields[0].Ciphertext, req.Fields[1].Ciphertext})
		}
	}
	for name, r := range map[string]hsm.OpenFieldsRequest{
		"no fields":  {KeyLabel: "k", Alg: hsm.X25519, KDF: hsm.KDFECBContext, PeerPublic: make([]byte, 32), WrappedDEK: make([]byte, 40)},
		"bad nonce":  {KeyLabel: "k", Alg: hsm.X25519, KDF: hsm.KDFECBContext, PeerPublic: make([]byte, 32), WrappedDEK: make([]byte, 40), Fields: []hsm.FieldOpen{{Nonce: make([]byte, 11), Ciphertext: make([]byte, 16)}}},
		"too many":   {KeyLabel: "k", Alg: hsm.X25519, KDF: hsm.KDFECBContext, PeerPublic: make([]byte, 32), WrappedDEK: make([]byte, 40), Fields: make([]hsm.FieldOpen, hsm.MaxFields+1)},
		"short wrap": {KeyLabel: "k", Alg: hsm.X25519, KDF: hsm.KDFECBContext, PeerPublic: make([]byte, 32), WrappedDEK: make([]byte, 39), Fields: []hsm.FieldOpen{{Nonce: make([]byte, 12), Ciphertext: make([]byte, 16)}}},
	} {
		if _, err := tok.OpenFields(ctx, r); !errors.Is(err, hsm.ErrInvalidRequest) {
			t.Errorf("%s: %v, want ErrInvalidRequest", name, err)
		}
	}
	if _, err := tok.SealFields(ctx, hsm.SealFieldsRequest{DEK: make([]byte, 16), Fields: []hsm.FieldSeal{{Nonce: make([]byte, 12)}}}); !errors.Is(err, hsm.ErrInvalidRequest) {
		t.Errorf("short DEK: %v", err)
	}
	if n, err := tok.SessionObjectCount(ctx); err != nil || n != 0 {
		t.Errorf("session objects left: %d, %v", n, err)
	}
}

// TestFieldsDEKTemplateEnforced: the v2 KEK unwraps the DEK only as a
// derive-only key. Asking for one that can decrypt, or is extractable,
// fails on the token; the one it gives cannot decrypt and is sensitive.
func TestFieldsDEKTemplateEnforced(t *testing.T) {
	t.Parallel()
	tok, cfg := openToken(t)
	key := genKey(t, tok, "fields-tmpl", hsm.X25519, hsm.UsageDerive)
	s := seal(t, key, []byte("x"), nil)
	r := newRaw(t, cfg)
	priv := r.find(t, pkcs11.CKO_PRIVATE_KEY, key.Label)
	z, err := r.c.DeriveKey(r.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDH1_DERIVE,
		pkcs11.NewECDH1DeriveParams(pkcs11.CKD_NULL, nil, s.req.PeerPublic))}, priv, hsm.SessionAESForTest(true, false))
	if err != nil {
		t.Fatal(err)
	}
	defer r.c.DestroyObject(r.h, z)
	kek, err := hsm.DeriveFieldsKEKForTest(r.c, r.h, z, s.req.Context)
	if err != nil {
		t.Fatal(err)
	}
	defer r.c.DestroyObject(r.h, kek)
	kwp := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}
	for _, weaken := range []uint{pkcs11.CKA_DECRYPT, pkcs11.CKA_EXTRACTABLE, pkcs11.CKA_ENCRYPT, pkcs11.CKA_WRAP} {
		tmpl := hsm.FieldsDEKTemplateForTest()
		for i, a := range tmpl {
			if a.Type == weaken {
				tmpl[i] = pkcs11.NewAttribute(weaken, true)
			}
		}
		if o, err := r.c.UnwrapKey(r.h, kwp, kek, s.req.WrappedDEK, tmpl); err == nil {
			r.c.DestroyObject(r.h, o)
			t.Fatalf("the v2 KEK unwrapped a DEK with attribute %#x true", weaken)
		}
	}
	o, err := r.c.UnwrapKey(r.h, kwp, kek, s.req.WrappedDEK, hsm.FieldsDEKTemplateForTest())
	if err != nil {
		t.Fatalf("unwrap with the v2 template: %v", err)
	}
	defer r.c.DestroyObject(r.h, o)
	if v := r.attr(t, o, pkcs11.CKA_SENSITIVE); !bytes.Equal(v, []byte{1}) {
		t.Fatal("v2 DEK is not sensitive")
	}
	if v := r.attr(t, o, pkcs11.CKA_EXTRACTABLE); !bytes.Equal(v, []byte{0}) {
		t.Fatal("v2 DEK is extractable")
	}
	gcm := pkcs11.NewGCMParams(s.req.Nonce, nil, 128)
	defer gcm.Free()
	if err := r.c.DecryptInit(r.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, gcm)}, o); err == nil {
		t.Fatal("v2 DEK can decrypt")
	}
}
