//go:build cgo

package hsm

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/miekg/pkcs11"
)

// OpenFields opens some fields of an envelope v2 on the device. It derives
// Z and the KEK from req.KeyLabel exactly as Open does and unwraps
// req.WrappedDEK into a session AES key that can only derive (sensitive,
// never extractable, no encrypt, decrypt, wrap or unwrap: the KEK's
// CKA_UNWRAP_TEMPLATE forces those attributes). For each requested field, in
// order, it derives the field key AES-256-ECB_DEK(field.Context)
// (CKM_AES_ECB_ENCRYPT_DATA) as a sensitive, non-extractable, decrypt-only
// session key, opens the field with AES-256-GCM, and destroys that key. Only
// the listed fields are decrypted: a field the caller does not list never
// reaches the device. Z, KEK, DEK and every field key are destroyed on
// every path; only the plaintexts are returned, one per field, in order.
//
// Errors: as Open, plus ErrInvalidRequest for no fields, more than
// MaxFields, a bad nonce or tag length, or ciphertexts totalling more than
// MaxCiphertext. ErrIntegrity when the unwrap or any field's decryption
// fails (then no plaintext is returned at all).
func (t *Token) OpenFields(ctx context.Context, req OpenFieldsRequest) ([][]byte, error) {
	if err := validateOpenFields(req); err != nil {
		return nil, fmt.Errorf("hsm: open fields %q: %w", req.KeyLabel, err)
	}
	var out [][]byte
	var created uint64
	err := t.pool.withSessionOf(ctx, func(s session) error {
		return t.withKey(s, req.KeyLabel, req.Alg, func(key cachedKey) error {
			var err error
			if t.deks == nil {
				out, err = t.openFields(s.h, key.h, req)
				created += uint64(3 + len(req.Fields))
				return err
			}
			var n uint64
			out, n, err = t.openFieldsCached(s, key, req)
			created += n
			return err
		})
	})
	if !errors.Is(err, ErrUnavailable) {
		t.pool.noteSessionObjects(ctx, created)
	}
	if errors.Is(err, ErrNotFound) && t.deks != nil {
		// The key is gone (destroyed by another process): so are its DEKs.
		t.deks.evictWhere(evictKey, func(e *dekEntry) bool { return e.label == req.KeyLabel })
	}
	if err != nil {
		return nil, fmt.Errorf("hsm: open fields %q: %w", req.KeyLabel, err)
	}
	return out, nil
}

// SealFields encrypts field values under keys derived on the device from
// req.DEK. It imports req.DEK as a session AES key that can only derive
// (sensitive, never extractable), and for each field derives the field key
// AES-256-ECB_DEK(field.Context) as a sensitive, non-extractable,
// encrypt-only session key, encrypts the field with AES-256-GCM under
// field.Nonce and field.AAD, and destroys the key. The DEK object is
// destroyed before SealFields returns; the caller clears req.DEK. It returns
// one ciphertext‖tag per field, in order.
//
// Errors: ErrInvalidRequest for a DEK that is not 32 bytes, no fields, more
// than MaxFields, a bad nonce length or plaintexts totalling more than
// MaxCiphertext; ErrUnavailable when the token cannot be reached.
func (t *Token) SealFields(ctx context.Context, req SealFieldsRequest) ([][]byte, error) {
	if err := validateSealFields(req); err != nil {
		return nil, fmt.Errorf("hsm: seal fields: %w", err)
	}
	var out [][]byte
	err := t.pool.withSession(ctx, func(h pkcs11.SessionHandle) error {
		var err error
		out, err = t.sealFields(h, req)
		return err
	})
	if !errors.Is(err, ErrUnavailable) {
		t.pool.noteSessionObjects(ctx, uint64(1+len(req.Fields)))
	}
	if err != nil {
		return nil, fmt.Errorf("hsm: seal fields: %w", err)
	}
	return out, nil
}

func validateFieldCount(n, total int) error {
	switch {
	case n == 0:
		return fmt.Errorf("%w: no fields", ErrInvalidRequest)
	case n > MaxFields:
		return fmt.Errorf("%w: %d fields, at most %d", ErrInvalidRequest, n, MaxFields)
	case total > MaxCiphertext:
		return fmt.Errorf("%w: fields total %d bytes, at most %d", ErrInvalidRequest, total, MaxCiphertext)
	}
	return nil
}

func validateOpenFields(req OpenFieldsRequest) error {
	// The key half is Open's; a dummy payload satisfies its payload checks.
	if err := validateOpen(OpenRequest{KeyLabel: req.KeyLabel, Alg: req.Alg, KDF: req.KDF, PeerPublic: req.PeerPublic,
		WrappedDEK: req.WrappedDEK, Nonce: make([]byte, gcmNonceSize), Ciphertext: make([]byte, gcmTagSize)}); err != nil {
		return err
	}
	total := 0
	for i, f := range req.Fields {
		if len(f.Nonce) != gcmNonceSize {
			return fmt.Errorf("%w: field %d: nonce is %d bytes, want %d", ErrInvalidRequest, i, len(f.Nonce), gcmNonceSize)
		}
		if len(f.Ciphertext) < gcmTagSize {
			return fmt.Errorf("%w: field %d: ciphertext shorter than the tag", ErrInvalidRequest, i)
		}
		total += len(f.Ciphertext)
	}
	return validateFieldCount(len(req.Fields), total)
}

func validateSealFields(req SealFieldsRequest) error {
	if len(req.DEK) != 32 {
		return fmt.Errorf("%w: DEK is %d bytes, want 32", ErrInvalidRequest, len(req.DEK))
	}
	total := 0
	for i, f := range req.Fields {
		if len(f.Nonce) != gcmNonceSize {
			return fmt.Errorf("%w: field %d: nonce is %d bytes, want %d", ErrInvalidRequest, i, len(f.Nonce), gcmNonceSize)
		}
		total += len(f.Plaintext)
	}
	return validateFieldCount(len(req.Fields), total)
}

// deriveOnlyDEKTemplate is what the DEK of an envelope v2 looks like on the
// device, unwrapped (forced through the CKA_UNWRAP_TEMPLATE of fieldsKEK) or
// imported for sealing: a session AES key that can derive and do nothing
// else, sensitive and never extractable.
func deriveOnlyDEKTemplate() []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
	}
}

var fieldsUnwrapTemplateValue = sync.OnceValue(func() []byte {
	return attributeArray(deriveOnlyDEKTemplate())
})

// fieldsKEK is the template of the KEK that unwraps an envelope v2 DEK: an
// unwrap-only session key whose CKA_UNWRAP_TEMPLATE is deriveOnlyDEKTemplate.
func fieldsKEK() []*pkcs11.Attribute {
	a := sessionAES(false, false)
	for i, at := range a {
		if at.Type == pkcs11.CKA_UNWRAP {
			a[i] = pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true)
		}
	}
	return append(a, &pkcs11.Attribute{Type: pkcs11.CKA_UNWRAP_TEMPLATE, Value: fieldsUnwrapTemplateValue()})
}

// gcmFieldsOf lists req's fields for gcmFields, with their cached keys
// (from keyOf, which may be nil).
func gcmFieldsOf(req OpenFieldsRequest, keyOf func([32]byte) pkcs11.ObjectHandle) []gcmField {
	fs := make([]gcmField, len(req.Fields))
	for i, f := range req.Fields {
		fs[i] = gcmField{context: f.Context, nonce: f.Nonce, aad: f.AAD, in: f.Ciphertext}
		if keyOf != nil {
			fs[i].key = keyOf(f.Context)
		}
	}
	return fs
}

func (t *Token) openFields(h pkcs11.SessionHandle, priv pkcs11.ObjectHandle, req OpenFieldsRequest) ([][]byte, error) {
	objs := sessionObjects{c: t.mod.ctx, h: h}
	defer objs.destroy()
	dek, err := t.unwrapFieldsDEK(h, &objs, priv, req)
	if err != nil {
		return nil, err
	}
	objs.add(dek)
	out, _, err := t.mod.fns.gcmFields(h, dek, pkcs11.CKA_DECRYPT, false, gcmFieldsOf(req, nil))
	return out, err
}

func (t *Token) sealFields(h pkcs11.SessionHandle, req SealFieldsRequest) ([][]byte, error) {
	fs := make([]gcmField, len(req.Fields))
	for i, f := range req.Fields {
		fs[i] = gcmField{context: f.Context, nonce: f.Nonce, aad: f.AAD, in: f.Plaintext}
	}
	// req.DEK is not cleared here: withSession may run this once more on a
	// fresh session.
	return t.mod.fns.sealDEK(h, req.DEK, fs)
}

// openFieldsCached is openFields through the DEK handle cache, on session s
// (its generation decides which entries it may use). A hit checks that the
// private key still exists on the token (a cold open would fail without
// it: destroyed by another process, say) unless a check or a cold open
// found it within DEKCacheConfig.Recheck, and then derives only the field
// keys not cached yet; a miss runs the cold chain, and caches its DEK and
// field keys once every field opened if the stanza was opened before
// (admit): a first open destroys everything, as with the cache off. It
// returns the plaintexts and how many session objects it created.
func (t *Token) openFieldsCached(s session, pk cachedKey, req OpenFieldsRequest) ([][]byte, uint64, error) {
	priv := pk.h
	c := t.mod.ctx
	key := dekCacheKey(&req)
	defer t.deks.reap(c, s.h, s.gen)
	now := time.Now()
	if e := t.deks.acquire(key, s.gen, now); e != nil {
		defer t.deks.release(e)
		if t.deks.needsCheck(req.KeyLabel, now) {
			if _, err := c.GetAttributeValue(s.h, pk.token, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil)}); err != nil {
				// Gone (withKey looks it up once more and fails as a
				// cold open would) or lost.
				return nil, 0, err
			}
			t.deks.checkedAt(req.KeyLabel, now)
		}
		return t.openCachedFields(s.h, e, req)
	}
	if !t.deks.admit(key) {
		out, err := t.openFields(s.h, priv, req)
		return out, uint64(3 + len(req.Fields)), err
	}
	objs := sessionObjects{c: c, h: s.h}
	defer objs.destroy() // Z and KEK; the DEK belongs to the entry
	dek, err := t.unwrapFieldsDEK(s.h, &objs, priv, req)
	if err != nil {
		return nil, objs.created, err
	}
	created := objs.created + 1
	e := &dekEntry{key: key, label: req.KeyLabel, gen: s.gen, created: time.Now(), dek: dek}
	out, n, err := t.openCachedFields(s.h, e, req)
	if err != nil {
		e.destroy(c, s.h) // the DEK and the field keys derived so far
		return nil, created + n, err
	}
	t.deks.checkedAt(req.KeyLabel, pk.confirmedAt(now)) // the derive used the token object, or its copy made from it then
	if !t.deks.insert(e) {
		e.destroy(c, s.h) // another borrower cached this stanza first
	}
	return out, created + n, nil
}

// unwrapFieldsDEK runs the key half of an envelope v2 open (functionList.
// unwrapDEK: Z and the KEK, destroyed at once and counted in objs, and the
// unwrap of req.WrappedDEK into a derive-only session key, which it
// returns and the caller owns).
func (t *Token) unwrapFieldsDEK(h pkcs11.SessionHandle, objs *sessionObjects, priv pkcs11.ObjectHandle, req OpenFieldsRequest) (pkcs11.ObjectHandle, error) {
	dek, n, err := t.mod.fns.unwrapDEK(h, priv, req.PeerPublic, req.Context, req.WrappedDEK)
	if err == nil {
		n-- // the DEK is the caller's to count
	}
	objs.created += n
	return dek, err
}

// openCachedFields opens req's fields with e's DEK, deriving (and adding
// to e) the field keys e does not hold yet. It returns the plaintexts and
// how many keys it derived; on error no plaintext.
func (t *Token) openCachedFields(h pkcs11.SessionHandle, e *dekEntry, req OpenFieldsRequest) ([][]byte, uint64, error) {
	out, keys, err := t.mod.fns.gcmFields(h, e.dek, pkcs11.CKA_DECRYPT, true, gcmFieldsOf(req, e.fieldKey))
	var derived uint64
	for i, k := range keys {
		if k != 0 {
			derived++
			e.addFieldKey(t.mod.ctx, h, req.Fields[i].Context, k)
		}
	}
	return out, derived, err
}
