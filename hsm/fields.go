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
		return t.withKey(s.h, req.KeyLabel, req.Alg, func(key pkcs11.ObjectHandle) error {
			var err error
			if t.deks == nil {
				out, err = t.openFields(s.h, key, req)
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

// deriveFieldKey derives the field key AES-256-ECB_dek(context) as a
// sensitive, non-extractable session key whose only usage is usage
// (CKA_ENCRYPT or CKA_DECRYPT).
func (t *Token) deriveFieldKey(h pkcs11.SessionHandle, dek pkcs11.ObjectHandle, context [32]byte, usage uint) (pkcs11.ObjectHandle, error) {
	param, cdata := keyDerivationStringData(context[:])
	defer cdata.free()
	k, err := t.mod.ctx.DeriveKey(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_ECB_ENCRYPT_DATA, param)}, dek, sessionAESWith(usage))
	if err != nil {
		return 0, fmt.Errorf("field key derive (AES_ECB_ENCRYPT_DATA): %w", err)
	}
	return k, nil
}

func (t *Token) openFields(h pkcs11.SessionHandle, priv pkcs11.ObjectHandle, req OpenFieldsRequest) ([][]byte, error) {
	objs := sessionObjects{c: t.mod.ctx, h: h}
	defer objs.destroy()
	dek, err := t.unwrapFieldsDEK(h, &objs, priv, req)
	if err != nil {
		return nil, err
	}
	objs.add(dek)
	out := make([][]byte, len(req.Fields))
	for i, f := range req.Fields {
		pt, err := t.fieldOp(h, dek, f.Context, pkcs11.CKA_DECRYPT, f.Nonce, f.AAD, f.Ciphertext)
		if err != nil {
			for _, p := range out[:i] {
				clear(p)
			}
			return nil, fmt.Errorf("field %d: %w", i, err)
		}
		out[i] = pt
	}
	return out, nil
}

func (t *Token) sealFields(h pkcs11.SessionHandle, req SealFieldsRequest) ([][]byte, error) {
	c := t.mod.ctx
	objs := sessionObjects{c: c, h: h}
	defer objs.destroy()
	tmpl := append(deriveOnlyDEKTemplate(),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, req.DEK))
	// The template shares req.DEK (not cleared here: withSession may run
	// this once more on a fresh session); miekg copies it into C memory for
	// the call only.
	dek, err := c.CreateObject(h, tmpl)
	if err != nil {
		if isLost(err) {
			return nil, err
		}
		return nil, fmt.Errorf("import DEK (C_CreateObject): %w", err)
	}
	objs.add(dek)
	out := make([][]byte, len(req.Fields))
	for i, f := range req.Fields {
		ct, err := t.fieldOp(h, dek, f.Context, pkcs11.CKA_ENCRYPT, f.Nonce, f.AAD, f.Plaintext)
		if err != nil {
			return nil, fmt.Errorf("field %d: %w", i, err)
		}
		out[i] = ct
	}
	return out, nil
}

// fieldOp derives one field key from dek, runs one AES-256-GCM encryption
// or decryption (usage CKA_ENCRYPT or CKA_DECRYPT) of in with it, and
// destroys the key.
func (t *Token) fieldOp(h pkcs11.SessionHandle, dek pkcs11.ObjectHandle, context [32]byte, usage uint, nonce, aad, in []byte) ([]byte, error) {
	c := t.mod.ctx
	fk, err := t.deriveFieldKey(h, dek, context, usage)
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.DestroyObject(h, fk) }()
	if usage != pkcs11.CKA_ENCRYPT {
		return gcmDecrypt(c, h, fk, nonce, aad, in)
	}
	gcm := pkcs11.NewGCMParams(nonce, aad, 8*gcmTagSize)
	defer gcm.Free()
	if err := c.EncryptInit(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, gcm)}, fk); err != nil {
		return nil, fmt.Errorf("C_EncryptInit (AES_GCM): %w", err)
	}
	ct, err := c.Encrypt(h, in)
	if err != nil {
		return nil, fmt.Errorf("encrypt (AES_GCM): %w", err)
	}
	return ct, nil
}

// gcmDecrypt opens ct (ciphertext‖tag) with AES-256-GCM under key k.
func gcmDecrypt(c *pkcs11.Ctx, h pkcs11.SessionHandle, k pkcs11.ObjectHandle, nonce, aad, ct []byte) ([]byte, error) {
	gcm := pkcs11.NewGCMParams(nonce, aad, 8*gcmTagSize)
	defer gcm.Free()
	if err := c.DecryptInit(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, gcm)}, k); err != nil {
		return nil, fmt.Errorf("C_DecryptInit (AES_GCM): %w", err)
	}
	pt, err := c.Decrypt(h, ct)
	if err != nil {
		return nil, integrity("decrypt (AES_GCM)", err)
	}
	return pt, nil
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
func (t *Token) openFieldsCached(s session, priv pkcs11.ObjectHandle, req OpenFieldsRequest) ([][]byte, uint64, error) {
	c := t.mod.ctx
	key := dekCacheKey(&req)
	defer t.deks.reap(c, s.h, s.gen)
	now := time.Now()
	if e := t.deks.acquire(key, s.gen, now); e != nil {
		defer t.deks.release(e)
		if t.deks.needsCheck(req.KeyLabel, now) {
			if _, err := c.GetAttributeValue(s.h, priv, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil)}); err != nil {
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
	t.deks.checkedAt(req.KeyLabel, now) // the ECDH derive just used the key
	if !t.deks.insert(e) {
		e.destroy(c, s.h) // another borrower cached this stanza first
	}
	return out, created + n, nil
}

// unwrapFieldsDEK runs the key half of an envelope v2 open: Z and the KEK
// (added to objs) and the unwrap of req.WrappedDEK into a derive-only
// session key, which it returns and the caller owns.
func (t *Token) unwrapFieldsDEK(h pkcs11.SessionHandle, objs *sessionObjects, priv pkcs11.ObjectHandle, req OpenFieldsRequest) (pkcs11.ObjectHandle, error) {
	kek, err := t.deriveKEK(h, objs, priv, req.PeerPublic, req.Context, fieldsKEK())
	if err != nil {
		return 0, err
	}
	dek, err := t.mod.ctx.UnwrapKey(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, kek, req.WrappedDEK, deriveOnlyDEKTemplate())
	if err != nil {
		return 0, integrity("unwrap DEK (AES_KEY_WRAP_PAD)", err)
	}
	return dek, nil
}

// openCachedFields opens req's fields with e's DEK, deriving (and adding
// to e) the field keys e does not hold yet. It returns the plaintexts and
// how many keys it derived; on error no plaintext.
func (t *Token) openCachedFields(h pkcs11.SessionHandle, e *dekEntry, req OpenFieldsRequest) ([][]byte, uint64, error) {
	c := t.mod.ctx
	var derived uint64
	out := make([][]byte, len(req.Fields))
	fail := func(i int, err error) ([][]byte, uint64, error) {
		for _, p := range out[:i] {
			clear(p)
		}
		return nil, derived, fmt.Errorf("field %d: %w", i, err)
	}
	for i, f := range req.Fields {
		fk := e.fieldKey(f.Context)
		if fk == 0 {
			k, err := t.deriveFieldKey(h, e.dek, f.Context, pkcs11.CKA_DECRYPT)
			if err != nil {
				return fail(i, err)
			}
			derived++
			fk = e.addFieldKey(c, h, f.Context, k)
		}
		pt, err := gcmDecrypt(c, h, fk, f.Nonce, f.AAD, f.Ciphertext)
		if err != nil {
			return fail(i, err)
		}
		out[i] = pt
	}
	return out, derived, nil
}
