//go:build cgo

package hsm

import (
	"context"
	"errors"
	"fmt"
	"sync"

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
	err := t.withDeriveKey(ctx, req.KeyLabel, req.Alg, func(h pkcs11.SessionHandle, key pkcs11.ObjectHandle) error {
		var err error
		out, err = t.openFields(h, key, req)
		return err
	})
	if !errors.Is(err, ErrUnavailable) {
		t.pool.noteSessionObjects(ctx, uint64(3+len(req.Fields)))
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
	c := t.mod.ctx
	objs := sessionObjects{c: c, h: h}
	defer objs.destroy()
	kek, err := t.deriveKEK(h, &objs, priv, req.PeerPublic, req.Context, fieldsKEK())
	if err != nil {
		return nil, err
	}
	dek, err := c.UnwrapKey(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, kek, req.WrappedDEK, deriveOnlyDEKTemplate())
	if err != nil {
		return nil, integrity("unwrap DEK (AES_KEY_WRAP_PAD)", err)
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
	gcm := pkcs11.NewGCMParams(nonce, aad, 8*gcmTagSize)
	defer gcm.Free()
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, gcm)}
	if usage == pkcs11.CKA_ENCRYPT {
		if err := c.EncryptInit(h, mech, fk); err != nil {
			return nil, fmt.Errorf("C_EncryptInit (AES_GCM): %w", err)
		}
		ct, err := c.Encrypt(h, in)
		if err != nil {
			return nil, fmt.Errorf("encrypt (AES_GCM): %w", err)
		}
		return ct, nil
	}
	if err := c.DecryptInit(h, mech, fk); err != nil {
		return nil, fmt.Errorf("C_DecryptInit (AES_GCM): %w", err)
	}
	pt, err := c.Decrypt(h, in)
	if err != nil {
		return nil, integrity("decrypt (AES_GCM)", err)
	}
	return pt, nil
}
