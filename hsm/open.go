//go:build cgo

package hsm

import (
	"context"
	"crypto/ecdh"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"
)

// Request size limits checked before anything reaches the device.
const (
	gcmNonceSize = 12
	gcmTagSize   = 16
	// wrappedDEKSize is RFC 5649 of a 32-byte key: 8-byte AIV + 32 bytes.
	wrappedDEKSize = 40
)

// Open decrypts one payload on the device. With the private key req.KeyLabel
// it derives Z = ECDH(key, req.PeerPublic) into a session AES key, then the
// KEK = AES-256-ECB_Z(req.Context) (KDFECBContext), unwraps req.WrappedDEK
// (RFC 5649) into a decrypt-only session key (CKA_UNWRAP_TEMPLATE on the KEK
// enforces it) and opens req.Ciphertext with AES-256-GCM. Z, KEK and DEK
// never leave the device and are destroyed on every path; only the
// plaintext is returned.
//
// Errors: ErrInvalidRequest for wrong lengths or an unknown algorithm or
// KDF; ErrNotFound for an unknown key label; ErrIntegrity when the peer key
// is not a valid point or the unwrap or decryption fails on the device
// (tampered or mismatched data: the token cannot say which); ErrUnsupported
// if the key is not a derive key of req.Alg; ErrUnavailable when the token
// cannot be reached.
func (t *Token) Open(ctx context.Context, req OpenRequest) ([]byte, error) {
	if err := validateOpen(req); err != nil {
		return nil, fmt.Errorf("hsm: open %q: %w", req.KeyLabel, err)
	}
	var pt []byte
	err := t.withDeriveKey(ctx, req.KeyLabel, req.Alg, func(h pkcs11.SessionHandle, key pkcs11.ObjectHandle) error {
		var err error
		pt, err = t.open(h, key, req)
		return err
	})
	// Each chain creates (and destroys) up to three session objects: Z, KEK,
	// DEK; none when no session could be had.
	if !errors.Is(err, ErrUnavailable) {
		t.pool.noteSessionObjects(ctx, 3)
	}
	if err != nil {
		return nil, fmt.Errorf("hsm: open %q: %w", req.KeyLabel, err)
	}
	return pt, nil
}

// withDeriveKey runs fn on a pooled session with the handle of the derive
// key labelled label (see withKey).
func (t *Token) withDeriveKey(ctx context.Context, label string, alg KeyAlg, fn func(h pkcs11.SessionHandle, key pkcs11.ObjectHandle) error) error {
	return t.pool.withSessionOf(ctx, func(s session) error {
		return t.withKey(s, label, alg, func(key cachedKey) error { return fn(s.h, key.h) })
	})
}

// withKey runs fn on session s with the derive key labelled label, which
// must be of algorithm alg; if the token says the cached handle is stale
// (the object was replaced behind our back, or its copy's session is
// gone), it looks the key up once more and runs fn again.
func (t *Token) withKey(s session, label string, alg KeyAlg, fn func(key cachedKey) error) error {
	for attempt := 0; ; attempt++ {
		k, err := t.privateKey(s, label)
		if err != nil {
			return err
		}
		if k.alg != alg || k.usage != UsageDerive {
			return fmt.Errorf("%w: key %q is %s/%s, request is %s/derive", ErrUnsupported, label, k.alg, k.usage, alg)
		}
		err = fn(k)
		if isHandleInvalid(err) && attempt == 0 {
			t.forget(label)
			continue
		}
		return err
	}
}

func validateOpen(req OpenRequest) error {
	switch {
	case req.KeyLabel == "":
		return fmt.Errorf("%w: empty key label", ErrInvalidRequest)
	case req.KDF != KDFECBContext:
		return fmt.Errorf("%w: unknown KDF %d", ErrInvalidRequest, req.KDF)
	case len(req.WrappedDEK) != wrappedDEKSize:
		return fmt.Errorf("%w: wrapped DEK is %d bytes, want %d", ErrInvalidRequest, len(req.WrappedDEK), wrappedDEKSize)
	case len(req.Nonce) != gcmNonceSize:
		return fmt.Errorf("%w: nonce is %d bytes, want %d", ErrInvalidRequest, len(req.Nonce), gcmNonceSize)
	case len(req.Ciphertext) < gcmTagSize || len(req.Ciphertext) > MaxCiphertext:
		return fmt.Errorf("%w: ciphertext is %d bytes, want %d..%d", ErrInvalidRequest, len(req.Ciphertext), gcmTagSize, MaxCiphertext)
	}
	switch req.Alg {
	case X25519:
		if len(req.PeerPublic) != 32 {
			return fmt.Errorf("%w: X25519 peer key is %d bytes, want 32", ErrInvalidRequest, len(req.PeerPublic))
		}
	case P256:
		if len(req.PeerPublic) != 65 {
			return fmt.Errorf("%w: P-256 peer key is %d bytes, want 65", ErrInvalidRequest, len(req.PeerPublic))
		}
		// A point off the curve can only come from a damaged envelope.
		if _, err := ecdh.P256().NewPublicKey(req.PeerPublic); err != nil {
			return fmt.Errorf("%w: peer key is not a P-256 point", ErrIntegrity)
		}
	default:
		return fmt.Errorf("%w: unknown algorithm %d", ErrInvalidRequest, req.Alg)
	}
	return nil
}

// sessionAES is the common template of the session keys Z and KEK.
func sessionAES(derive, unwrap bool) []*pkcs11.Attribute {
	a := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, derive),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, unwrap),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
	}
	if unwrap {
		a = append(a, &pkcs11.Attribute{Type: pkcs11.CKA_UNWRAP_TEMPLATE, Value: unwrapTemplateValue()})
	}
	return a
}

// open runs the device chain on one session. Every session object it creates
// is destroyed before it returns.
func (t *Token) open(h pkcs11.SessionHandle, priv pkcs11.ObjectHandle, req OpenRequest) ([]byte, error) {
	c := t.mod.ctx
	var objs []pkcs11.ObjectHandle
	defer func() {
		for _, o := range objs {
			_ = c.DestroyObject(h, o)
		}
	}()

	z, err := c.DeriveKey(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDH1_DERIVE,
		pkcs11.NewECDH1DeriveParams(pkcs11.CKD_NULL, nil, req.PeerPublic))}, priv, sessionAES(true, false))
	if err != nil {
		if isLost(err) || isHandleInvalid(err) {
			return nil, err
		}
		// e.g. an X25519 low-order point: the envelope is damaged.
		return nil, fmt.Errorf("%w: ECDH derive: %w", ErrIntegrity, err)
	}
	objs = append(objs, z)

	param, cdata := keyDerivationStringData(req.Context[:])
	kek, err := c.DeriveKey(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_ECB_ENCRYPT_DATA, param)}, z, sessionAES(false, true))
	cdata.free()
	if err != nil {
		return nil, fmt.Errorf("KEK derive (AES_ECB_ENCRYPT_DATA): %w", err)
	}
	objs = append(objs, kek)

	dek, err := c.UnwrapKey(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, kek, req.WrappedDEK, dekTemplate())
	if err != nil {
		return nil, integrity("unwrap DEK (AES_KEY_WRAP_PAD)", err)
	}
	objs = append(objs, dek)

	gcm := pkcs11.NewGCMParams(req.Nonce, req.AAD, 8*gcmTagSize)
	defer gcm.Free()
	if err := c.DecryptInit(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, gcm)}, dek); err != nil {
		return nil, fmt.Errorf("C_DecryptInit (AES_GCM): %w", err)
	}
	pt, err := c.Decrypt(h, req.Ciphertext)
	if err != nil {
		return nil, integrity("decrypt (AES_GCM)", err)
	}
	return pt, nil
}

// integrity maps the codes a token uses for failed authentication to ErrIntegrity.
func integrity(step string, err error) error {
	if isIntegrity(err) {
		return fmt.Errorf("%w: %s: %w", ErrIntegrity, step, err)
	}
	return fmt.Errorf("%s: %w", step, err)
}
