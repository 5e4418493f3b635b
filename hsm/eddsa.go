//go:build cgo

package hsm

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"time"

	"github.com/miekg/pkcs11"
)

// Ed25519 sign-only keys (CKM_EC_EDWARDS_KEY_PAIR_GEN, CKM_EDDSA) for the
// access log's checkpoints. They live beside the X25519/P-256 keys of
// keys.go but have their own lookup: FindKey and ListKeys do not show them,
// so the keys registry never mistakes one for a participant key.

// oidEd25519 is the DER OID 1.3.101.112 for CKA_EC_PARAMS.
var oidEd25519 = []byte{0x06, 0x03, 0x2b, 0x65, 0x70}

// edwards25519Name is PrintableString "edwards25519", the curve name some
// tokens store instead of the OID.
var edwards25519Name = append([]byte{0x13, 0x0c}, "edwards25519"...)

func isEd25519Params(p []byte) bool {
	return bytes.Equal(p, oidEd25519) || bytes.Equal(p, edwards25519Name)
}

// GenerateEd25519 creates an Ed25519 token key pair labelled label: the
// private key is private, sensitive, never extractable, may sign and
// nothing else (CKA_ALLOWED_MECHANISMS = [CKM_EDDSA]); CKA_ID is
// SHA-256(label)[:16] on both objects, as for GenerateKeyPair. It never
// overwrites: ErrExists if the label or the CKA_ID is taken. created, when
// not zero, is stored as CKA_START_DATE.
func (t *Token) GenerateEd25519(ctx context.Context, label string, created time.Time) (ed25519.PublicKey, error) {
	if label == "" {
		return nil, fmt.Errorf("hsm: generate Ed25519: %w: empty key label", ErrInvalidRequest)
	}
	id := keyID(label)
	pub := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, ckkECEdwards),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, oidEd25519),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
	}
	priv := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, ckkECEdwards),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN_RECOVER, false),
		pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, ulongs(ckmEdDSA)),
	}
	if !created.IsZero() {
		d := created.UTC()
		pub = append(pub, pkcs11.NewAttribute(pkcs11.CKA_START_DATE, d))
		priv = append(priv, pkcs11.NewAttribute(pkcs11.CKA_START_DATE, d))
	}
	var out ed25519.PublicKey
	err := t.generateNew(ctx, label, id, ckmECEdwardsKeyPairGen, pub, priv, func(h pkcs11.SessionHandle, pubH, _ pkcs11.ObjectHandle) (err error) {
		out, err = t.ed25519Public(h, pubH)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("hsm: generate %q: %w", label, err)
	}
	t.log.Info("hsm: key pair generated", "label", label, "alg", Ed25519.String(), "usage", UsageSign.String())
	return out, nil
}

// FindEd25519 returns the public key of the Ed25519 sign key labelled label.
// Errors: ErrNotFound, ErrUnsupported (the label names another kind of key).
func (t *Token) FindEd25519(ctx context.Context, label string) (ed25519.PublicKey, error) {
	var out ed25519.PublicKey
	err := t.pool.withSession(ctx, func(h pkcs11.SessionHandle) error {
		priv, pubH, err := t.findPair(h, label)
		if err != nil {
			return err
		}
		if err := t.checkEd25519(h, priv, label); err != nil {
			return err
		}
		out, err = t.ed25519Public(h, pubH)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("hsm: find Ed25519 key: %w", err)
	}
	return out, nil
}

// EnsureEd25519 finds the Ed25519 sign key labelled label or, when there is
// none, generates it (created = its CKA_START_DATE). It reports whether the
// key was created now.
func (t *Token) EnsureEd25519(ctx context.Context, label string, created time.Time) (ed25519.PublicKey, bool, error) {
	pub, err := t.FindEd25519(ctx, label)
	if err == nil {
		return pub, false, nil
	}
	if !isNotFound(err) {
		return nil, false, err
	}
	pub, err = t.GenerateEd25519(ctx, label, created)
	if err != nil {
		return nil, false, err
	}
	return pub, true, nil
}

func isNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// SignEd25519 signs msg (the whole message: Ed25519 hashes it itself) with
// CKM_EDDSA and the Ed25519 key labelled label, on the device, and returns
// the 64-byte signature. Errors: ErrNotFound, ErrUnsupported (not an
// Ed25519 sign key), ErrUnavailable.
func (t *Token) SignEd25519(ctx context.Context, label string, msg []byte) ([]byte, error) {
	var sig []byte
	err := t.pool.withSession(ctx, func(h pkcs11.SessionHandle) error {
		for attempt := 0; ; attempt++ {
			k, err := t.ed25519Key(h, label)
			if err != nil {
				return err
			}
			err = t.mod.ctx.SignInit(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmEdDSA, nil)}, k)
			if err == nil {
				sig, err = t.mod.ctx.Sign(h, msg)
			}
			if isHandleInvalid(err) && attempt == 0 {
				t.forget(label)
				continue
			}
			if err != nil {
				return fmt.Errorf("EdDSA sign: %w", err)
			}
			if len(sig) != ed25519.SignatureSize {
				return fmt.Errorf("EdDSA sign: token returned %d bytes, want %d", len(sig), ed25519.SignatureSize)
			}
			return nil
		}
	})
	if err != nil {
		return nil, fmt.Errorf("hsm: sign %q: %w", label, err)
	}
	return sig, nil
}

// ed25519Key returns the handle of the Ed25519 private key labelled label,
// from the handle cache (shared with keys.go, cleared on rebuild) or the token.
func (t *Token) ed25519Key(h pkcs11.SessionHandle, label string) (pkcs11.ObjectHandle, error) {
	t.cacheMu.Lock()
	k, ok := t.cache[label]
	t.cacheMu.Unlock()
	if ok {
		if k.alg != Ed25519 || k.usage != UsageSign {
			return 0, fmt.Errorf("%w: key %q is %s/%s, not an Ed25519 sign key", ErrUnsupported, label, k.alg, k.usage)
		}
		return k.h, nil
	}
	objs, err := t.findObjects(h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}, 1)
	if err != nil {
		return 0, err
	}
	if len(objs) == 0 {
		return 0, fmt.Errorf("%w: %q", ErrNotFound, label)
	}
	if err := t.checkEd25519(h, objs[0], label); err != nil {
		return 0, err
	}
	t.cacheMu.Lock()
	t.cache[label] = cachedKey{h: objs[0], alg: Ed25519, usage: UsageSign}
	t.cacheMu.Unlock()
	return objs[0], nil
}

// checkEd25519 fails with ErrUnsupported unless priv is an Ed25519 sign key.
func (t *Token) checkEd25519(h pkcs11.SessionHandle, priv pkcs11.ObjectHandle, label string) error {
	a, err := t.mod.ctx.GetAttributeValue(h, priv, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, nil),
	})
	if err != nil {
		return fmt.Errorf("C_GetAttributeValue: %w", err)
	}
	kt, ok := ulongValue(a[0].Value)
	if !ok || kt != ckkECEdwards || !isEd25519Params(a[1].Value) || !isTrue(a[2].Value) {
		return fmt.Errorf("%w: key %q is not an Ed25519 sign key", ErrUnsupported, label)
	}
	return nil
}

// ed25519Public reads the 32-byte public key from a public key object
// (CKA_EC_POINT: a DER OCTET STRING, or the raw 32 bytes).
func (t *Token) ed25519Public(h pkcs11.SessionHandle, pub pkcs11.ObjectHandle) (ed25519.PublicKey, error) {
	a, err := t.mod.ctx.GetAttributeValue(h, pub, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	if err != nil {
		return nil, fmt.Errorf("C_GetAttributeValue (public key): %w", err)
	}
	v := a[0].Value
	if len(v) == 34 && v[0] == 0x04 && v[1] == 32 {
		v = v[2:]
	}
	if len(v) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("unexpected Ed25519 CKA_EC_POINT of %d bytes", len(v))
	}
	return ed25519.PublicKey(bytes.Clone(v)), nil
}
