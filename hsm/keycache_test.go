package hsm_test

import (
	"testing"

	"github.com/miekg/pkcs11"

	"custody/hsm"
)

// TestKeyCopyStaysOnTheDevice: the session copy the key cache makes of a
// private key is as sensitive and unextractable as the token object: its
// value cannot be read, and it cannot be wrapped out, from another handle
// of this process (the only one that can see a session object).
func TestKeyCopyStaysOnTheDevice(t *testing.T) {
	t.Parallel()
	tok, cfg := openToken(t)
	key := genKey(t, tok, "copied", hsm.X25519, hsm.UsageDerive)
	if _, err := tok.Open(testCtx(t), seal(t, key, []byte("payload"), nil).req); err != nil {
		t.Fatal(err)
	}
	if n := tok.KeyCopyCount(); n != 1 {
		t.Fatalf("KeyCopyCount = %d after an open, want 1", n)
	}
	r := newRaw(t, cfg)
	if err := r.c.FindObjectsInit(r.h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, "copied"),
	}); err != nil {
		t.Fatal(err)
	}
	objs, _, err := r.c.FindObjects(r.h, 2)
	r.c.FindObjectsFinal(r.h)
	if err != nil || len(objs) != 1 {
		t.Fatalf("find the copy: %v %v", objs, err)
	}
	a, err := r.c.GetAttributeValue(r.h, objs[0], []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_ALWAYS_SENSITIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_NEVER_EXTRACTABLE, nil),
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []byte{1, 0, 1, 1} {
		if len(a[i].Value) != 1 || a[i].Value[0] != want {
			t.Errorf("attribute %#x = %v, want %d", a[i].Type, a[i].Value, want)
		}
	}
	if v, err := r.c.GetAttributeValue(r.h, objs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)}); err == nil {
		t.Fatalf("read CKA_VALUE of the copy: %d bytes, want a refusal", len(v[0].Value))
	}
	// Weakening the copy is refused too.
	if err := r.c.SetAttributeValue(r.h, objs[0], []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true)}); err == nil {
		t.Fatal("set CKA_EXTRACTABLE on the copy: accepted")
	}
	if err := tok.DestroyKeyPair(testCtx(t), key.Label); err != nil {
		t.Fatal(err)
	}
	if n, err := tok.SessionObjectCount(testCtx(t)); err != nil || n != 0 || tok.KeyCopyCount() != 0 {
		t.Fatalf("after DestroyKeyPair: %d session objects (%v), %d copies; want none", n, err, tok.KeyCopyCount())
	}
}
