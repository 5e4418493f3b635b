//go:build cgo

package hsm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/miekg/pkcs11"
)

// ProvePossession answers a challenge: on the device, Z = ECDH(KeyLabel,
// VerifierPublic) into a session AES key, K = AES-256-ECB_Z(Context) into a
// sign-only session AES key, and AES-CMAC_K(Message) (CKM_AES_CMAC, 16
// bytes). A verifier holding the ephemeral private key recomputes Z, K and
// the MAC in software; only the holder of the private key could have
// produced it. Z and K are destroyed on every path.
//
// Errors: ErrInvalidRequest (lengths, algorithm), ErrNotFound, ErrUnsupported
// (not a derive key of Alg, or no CKM_AES_CMAC), ErrIntegrity (the verifier
// key is not a usable point), ErrUnavailable.
func (t *Token) ProvePossession(ctx context.Context, req PossessionRequest) ([]byte, error) {
	if req.KeyLabel == "" || len(req.Message) > 4096 {
		return nil, fmt.Errorf("hsm: prove %q: %w: empty label or message over 4096 bytes", req.KeyLabel, ErrInvalidRequest)
	}
	if err := checkPeer(req.Alg, req.VerifierPublic); err != nil {
		return nil, fmt.Errorf("hsm: prove %q: %w", req.KeyLabel, err)
	}
	var mac []byte
	err := t.withDeriveKey(ctx, req.KeyLabel, req.Alg, func(h pkcs11.SessionHandle, key pkcs11.ObjectHandle) error {
		var err error
		mac, err = t.prove(h, key, req)
		return err
	})
	if !errors.Is(err, ErrUnavailable) {
		t.pool.noteSessionObjects(ctx, 2)
	}
	if err != nil {
		return nil, fmt.Errorf("hsm: prove %q: %w", req.KeyLabel, err)
	}
	return mac, nil
}

func (t *Token) prove(h pkcs11.SessionHandle, priv pkcs11.ObjectHandle, req PossessionRequest) ([]byte, error) {
	c := t.mod.ctx
	objs := &sessionObjects{c: c, h: h}
	defer objs.destroy()
	key, err := t.deriveKEK(h, objs, priv, req.VerifierPublic, req.Context, sessionAESWith(pkcs11.CKA_SIGN))
	if err != nil {
		return nil, err
	}
	if err := c.SignInit(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_CMAC, nil)}, key); err != nil {
		if isCode(err, pkcs11.CKR_MECHANISM_INVALID) {
			return nil, fmt.Errorf("%w: CKM_AES_CMAC: %w", ErrUnsupported, err)
		}
		return nil, fmt.Errorf("C_SignInit (AES_CMAC): %w", err)
	}
	mac, err := c.Sign(h, req.Message)
	if err != nil {
		return nil, fmt.Errorf("C_Sign (AES_CMAC): %w", err)
	}
	if len(mac) != 16 {
		return nil, fmt.Errorf("AES_CMAC: token returned %d bytes, want 16", len(mac))
	}
	return mac, nil
}

// DestroyKeyPair destroys every token object labelled label (the private
// and the public key), forgets the cached handle and destroys the cached
// DEKs unwrapped under it. It is irreversible:
// whatever was wrapped only for that key can no longer be opened. A label
// with no object is ErrNotFound. Other objects are untouched.
func (t *Token) DestroyKeyPair(ctx context.Context, label string) error {
	if label == "" {
		return fmt.Errorf("hsm: destroy: %w: empty label", ErrInvalidRequest)
	}
	t.createMu.Lock()
	defer t.createMu.Unlock()
	n := 0
	err := t.pool.withSessionOf(ctx, func(s session) error {
		h := s.h
		if t.deks != nil {
			// DEKs unwrapped under the key go first: a hit must never open
			// what the key's absence makes a cold open refuse.
			t.deks.evictWhere(evictKey, func(e *dekEntry) bool { return e.label == label })
			t.deks.reap(t.mod.ctx, h, s.gen)
		}
		t.forget(label) // and this process's copy of the key
		t.reapCopies(s)
		objs, err := t.findObjects(h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		}, 0)
		if err != nil {
			return err
		}
		for _, o := range objs {
			a, err := t.mod.ctx.GetAttributeValue(h, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil)})
			if err != nil {
				return fmt.Errorf("C_GetAttributeValue: %w", err)
			}
			if cl, _ := ulongValue(a[0].Value); cl != pkcs11.CKO_PRIVATE_KEY && cl != pkcs11.CKO_PUBLIC_KEY {
				continue
			}
			if err := t.mod.ctx.DestroyObject(h, o); err != nil && !isHandleInvalid(err) {
				return fmt.Errorf("C_DestroyObject: %w", err)
			}
			n++
		}
		return nil
	})
	t.forget(label)
	if err != nil {
		return fmt.Errorf("hsm: destroy %q: %w", label, err)
	}
	if n == 0 {
		return fmt.Errorf("hsm: destroy: %w: %q", ErrNotFound, label)
	}
	t.log.Info("hsm: key pair destroyed", "label", label, "objects", n)
	return nil
}

// PutDataObject creates a public, non-modifiable CKO_DATA token object.
// A label already used by any object is ErrExists; nothing is overwritten.
func (t *Token) PutDataObject(ctx context.Context, d DataObject) error {
	if d.Label == "" || len(d.Value) > MaxDataObject {
		return fmt.Errorf("hsm: data object: %w: empty label or value over %d bytes", ErrInvalidRequest, MaxDataObject)
	}
	t.createMu.Lock()
	defer t.createMu.Unlock()
	err := t.pool.withSession(ctx, func(h pkcs11.SessionHandle) error {
		objs, err := t.findObjects(h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, d.Label)}, 1)
		if err != nil {
			return err
		}
		if len(objs) > 0 {
			return fmt.Errorf("%w: label %q", ErrExists, d.Label)
		}
		_, err = t.mod.ctx.CreateObject(h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
			pkcs11.NewAttribute(pkcs11.CKA_MODIFIABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, d.Label),
			pkcs11.NewAttribute(pkcs11.CKA_APPLICATION, "custody"),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, d.Value),
		})
		if err != nil {
			return fmt.Errorf("C_CreateObject (data): %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("hsm: data object %q: %w", d.Label, err)
	}
	return nil
}

// ListDataObjects returns the CKO_DATA token objects whose label starts
// with labelPrefix, sorted by label.
func (t *Token) ListDataObjects(ctx context.Context, labelPrefix string) ([]DataObject, error) {
	var out []DataObject
	err := t.pool.withSession(ctx, func(h pkcs11.SessionHandle) error {
		out = out[:0]
		objs, err := t.findObjects(h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_DATA),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		}, 0)
		if err != nil {
			return err
		}
		for _, o := range objs {
			a, err := t.mod.ctx.GetAttributeValue(h, o, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
				pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil),
			})
			if err != nil {
				return fmt.Errorf("C_GetAttributeValue (data): %w", err)
			}
			if l := string(a[0].Value); strings.HasPrefix(l, labelPrefix) {
				out = append(out, DataObject{Label: l, Value: a[1].Value})
			}
		}
		return t.pool.stillPresent()
	})
	if err != nil {
		return nil, fmt.Errorf("hsm: list data objects: %w", err)
	}
	slices.SortFunc(out, func(a, b DataObject) int { return strings.Compare(a.Label, b.Label) })
	return out, nil
}
