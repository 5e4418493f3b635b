//go:build cgo

package hsm

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/miekg/pkcs11"
)

// MaxHMACKey bounds an imported HMAC key (a TOTP seed is 20 bytes).
const MaxHMACKey = 64

// ImportHMACKey creates a token object labelled label holding secret as a
// CKK_GENERIC_SECRET key that is private, sensitive, never extractable
// and allowed only to sign and verify (CKM_SHA_1_HMAC): from then on the
// secret is used on the device only and cannot be read back, wrapped or
// derived from. A label already used by any object is ErrExists; nothing is
// overwritten. The caller clears secret afterwards (the PKCS#11 binding
// copies it into C memory it frees without clearing: hsm doc, "Memory").
func (t *Token) ImportHMACKey(ctx context.Context, label string, secret []byte) error {
	return t.importHMACKey(ctx, label, secret, false)
}

// ImportRelabelableHMACKey is ImportHMACKey but for CKA_MODIFIABLE, which
// is true so that RelabelHMACKey can move the key to another label later
// (a self-enrolled factor waiting for an admin's confirmation, package
// mfa). Sensitive and non-extractable are one-way attributes: no change
// the token accepts makes the value readable or the key wrappable.
func (t *Token) ImportRelabelableHMACKey(ctx context.Context, label string, secret []byte) error {
	return t.importHMACKey(ctx, label, secret, true)
}

func (t *Token) importHMACKey(ctx context.Context, label string, secret []byte, modifiable bool) error {
	if label == "" || len(secret) < 16 || len(secret) > MaxHMACKey {
		return fmt.Errorf("hsm: import HMAC key: %w: empty label, or a secret not of 16..%d bytes", ErrInvalidRequest, MaxHMACKey)
	}
	t.createMu.Lock()
	defer t.createMu.Unlock()
	err := t.pool.withSession(ctx, func(h pkcs11.SessionHandle) error {
		objs, err := t.findObjects(h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)}, 1)
		if err != nil {
			return err
		}
		if len(objs) > 0 {
			return fmt.Errorf("%w: label %q", ErrExists, label)
		}
		_, err = t.mod.ctx.CreateObject(h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, modifiable),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_ID, keyID(label)),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, secret),
		})
		if err != nil {
			return fmt.Errorf("C_CreateObject (generic secret): %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("hsm: import HMAC key %q: %w", label, err)
	}
	return nil
}

// HMACSHA1 is HMAC-SHA-1 of msg under the HMAC key labelled label,
// computed on the device (CKM_SHA_1_HMAC): 20 bytes. No such key is
// ErrNotFound; a token without the mechanism, ErrUnsupported.
func (t *Token) HMACSHA1(ctx context.Context, label string, msg []byte) ([]byte, error) {
	if label == "" || len(msg) > 4096 {
		return nil, fmt.Errorf("hsm: HMAC %q: %w: empty label or message over 4096 bytes", label, ErrInvalidRequest)
	}
	var mac []byte
	err := t.pool.withSession(ctx, func(h pkcs11.SessionHandle) error {
		key, err := t.hmacKey(h, label)
		if err != nil {
			return err
		}
		c := t.mod.ctx
		if err := c.SignInit(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA_1_HMAC, nil)}, key); err != nil {
			if isCode(err, pkcs11.CKR_MECHANISM_INVALID) {
				return fmt.Errorf("%w: CKM_SHA_1_HMAC: %w", ErrUnsupported, err)
			}
			return fmt.Errorf("C_SignInit (SHA_1_HMAC): %w", err)
		}
		mac, err = c.Sign(h, msg)
		if err != nil {
			return fmt.Errorf("C_Sign (SHA_1_HMAC): %w", err)
		}
		if len(mac) != 20 {
			return fmt.Errorf("SHA_1_HMAC: token returned %d bytes, want 20", len(mac))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("hsm: HMAC %q: %w", label, err)
	}
	return mac, nil
}

// DestroyHMACKey destroys the HMAC key labelled label; none is ErrNotFound.
func (t *Token) DestroyHMACKey(ctx context.Context, label string) error {
	t.createMu.Lock()
	defer t.createMu.Unlock()
	err := t.pool.withSession(ctx, func(h pkcs11.SessionHandle) error {
		key, err := t.hmacKey(h, label)
		if err != nil {
			return err
		}
		if err := t.mod.ctx.DestroyObject(h, key); err != nil {
			return fmt.Errorf("C_DestroyObject: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("hsm: destroy HMAC key %q: %w", label, err)
	}
	return nil
}

// RelabelHMACKey gives the HMAC key labelled from the label to (the only
// attribute it changes). No key labelled from is ErrNotFound; an object
// already labelled to is ErrExists (nothing is changed); a key imported
// by ImportHMACKey (not modifiable) is refused by the token.
func (t *Token) RelabelHMACKey(ctx context.Context, from, to string) error {
	if from == "" || to == "" {
		return fmt.Errorf("hsm: relabel HMAC key: %w: empty label", ErrInvalidRequest)
	}
	t.createMu.Lock()
	defer t.createMu.Unlock()
	err := t.pool.withSession(ctx, func(h pkcs11.SessionHandle) error {
		key, err := t.hmacKey(h, from)
		if err != nil {
			return err
		}
		objs, err := t.findObjects(h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, to)}, 1)
		if err != nil {
			return err
		}
		if len(objs) > 0 {
			return fmt.Errorf("%w: label %q", ErrExists, to)
		}
		if err := t.mod.ctx.SetAttributeValue(h, key, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, to)}); err != nil {
			return fmt.Errorf("C_SetAttributeValue (CKA_LABEL): %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("hsm: relabel HMAC key %q: %w", from, err)
	}
	return nil
}

// HMACKeyLabels lists the labels of the token's HMAC (generic secret)
// keys that start with prefix, sorted. It reads labels only: never a value.
func (t *Token) HMACKeyLabels(ctx context.Context, prefix string) ([]string, error) {
	var out []string
	err := t.pool.withSession(ctx, func(h pkcs11.SessionHandle) error {
		objs, err := t.findObjects(h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		}, 0)
		if err != nil {
			return err
		}
		for _, o := range objs {
			a, err := t.mod.ctx.GetAttributeValue(h, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
			if err != nil {
				return fmt.Errorf("C_GetAttributeValue (CKA_LABEL): %w", err)
			}
			if l := string(a[0].Value); strings.HasPrefix(l, prefix) {
				out = append(out, l)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("hsm: list HMAC keys: %w", err)
	}
	slices.Sort(out)
	return out, nil
}

// HMACKeyExtractable reports the key's CKA_SENSITIVE and CKA_EXTRACTABLE
// as the token holds them and whether C_GetAttributeValue gives out its
// CKA_VALUE, for tests and health: a usable seed key is sensitive, not
// extractable, and its value unreadable.
func (t *Token) HMACKeyExtractable(ctx context.Context, label string) (sensitive, extractable, valueReadable bool, err error) {
	err = t.pool.withSession(ctx, func(h pkcs11.SessionHandle) error {
		key, err := t.hmacKey(h, label)
		if err != nil {
			return err
		}
		a, err := t.mod.ctx.GetAttributeValue(h, key, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil),
		})
		if err != nil {
			return fmt.Errorf("C_GetAttributeValue: %w", err)
		}
		sensitive, extractable = isTrue(a[0].Value), isTrue(a[1].Value)
		v, verr := t.mod.ctx.GetAttributeValue(h, key, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
		valueReadable = verr == nil && len(v) == 1 && len(v[0].Value) > 0
		return nil
	})
	return
}

func (t *Token) hmacKey(h pkcs11.SessionHandle, label string) (pkcs11.ObjectHandle, error) {
	objs, err := t.findObjects(h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}, 2)
	if err != nil {
		return 0, err
	}
	switch len(objs) {
	case 0:
		return 0, fmt.Errorf("%w: HMAC key %q", ErrNotFound, label)
	case 1:
		return objs[0], nil
	}
	return 0, fmt.Errorf("%w: two HMAC keys labelled %q", ErrExists, label)
}
