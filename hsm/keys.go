//go:build cgo

package hsm

import (
	"bytes"
	"context"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/miekg/pkcs11"
)

// keyID is CKA_ID for a label.
func keyID(label string) []byte {
	h := sha256.Sum256([]byte(label))
	return h[:16]
}

func ulongs(vs ...uint) []byte {
	b := make([]byte, 0, 8*len(vs))
	for _, v := range vs {
		b = binary.NativeEndian.AppendUint64(b, uint64(v))
	}
	return b
}

// GenerateKeyPair creates a token key pair as spec says and returns its info.
// The private key is CKA_TOKEN, CKA_PRIVATE and CKA_SENSITIVE; never
// extractable unless spec.Backup; it can derive (UsageDerive) or sign
// (UsageSign) and nothing else, enforced by CKA_ALLOWED_MECHANISMS. The
// public key is a public token object. Creation is serialized within the
// process; if any object already has the label or the CKA_ID the result is
// ErrExists and nothing is touched. (Two processes creating the same label at
// the same instant are not excluded: the token offers no such lock.) X25519
// uses the generation path found by the probe; without one, ErrUnsupported.
func (t *Token) GenerateKeyPair(ctx context.Context, spec KeySpec) (KeyInfo, error) {
	if spec.Label == "" {
		return KeyInfo{}, fmt.Errorf("%w: empty key label", ErrInvalidRequest)
	}
	var mech, keyType uint
	var params []byte
	switch spec.Alg {
	case X25519:
		if spec.Usage != UsageDerive {
			return KeyInfo{}, fmt.Errorf("%w: X25519 keys can only derive", ErrInvalidRequest)
		}
		if spec.Backup {
			return KeyInfo{}, fmt.Errorf("%w: backup of X25519 private keys (use P-256)", ErrUnsupported)
		}
		if t.caps.X25519 == "" {
			return KeyInfo{}, fmt.Errorf("%w: X25519 key generation", ErrUnsupported)
		}
		mech, keyType = x25519Mechanism(t.caps.X25519)
		params = oidX25519
	case P256:
		if spec.Usage != UsageDerive && spec.Usage != UsageSign {
			return KeyInfo{}, fmt.Errorf("%w: unknown usage %d", ErrInvalidRequest, spec.Usage)
		}
		mech, keyType, params = pkcs11.CKM_EC_KEY_PAIR_GEN, pkcs11.CKK_EC, oidP256
	default:
		return KeyInfo{}, fmt.Errorf("%w: unknown key algorithm %d", ErrInvalidRequest, spec.Alg)
	}
	derive, sign := spec.Usage == UsageDerive, spec.Usage == UsageSign
	allowed := uint(pkcs11.CKM_ECDH1_DERIVE)
	if sign {
		allowed = pkcs11.CKM_ECDSA
	}
	id := keyID(spec.Label)
	pub := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, spec.Label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, sign),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
	}
	priv := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, spec.Backup),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, spec.Label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, id),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, derive),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, sign),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN_RECOVER, false),
		pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, ulongs(allowed)),
	}
	if spec.Backup {
		priv = append(priv, pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, true))
	}
	if !spec.Created.IsZero() {
		d := spec.Created.UTC()
		pub = append(pub, pkcs11.NewAttribute(pkcs11.CKA_START_DATE, d))
		priv = append(priv, pkcs11.NewAttribute(pkcs11.CKA_START_DATE, d))
	}
	if !spec.RotateAfter.IsZero() {
		pub = append(pub, pkcs11.NewAttribute(pkcs11.CKA_END_DATE, spec.RotateAfter.UTC()))
	}

	var info KeyInfo
	err := t.generateNew(ctx, spec.Label, id, mech, pub, priv, func(h pkcs11.SessionHandle, pubH, privH pkcs11.ObjectHandle) (err error) {
		info, err = t.keyInfo(h, privH, pubH)
		return err
	})
	if err != nil {
		return KeyInfo{}, fmt.Errorf("hsm: generate %q: %w", spec.Label, err)
	}
	t.log.Info("hsm: key pair generated", "label", spec.Label, "alg", spec.Alg.String(),
		"usage", spec.Usage.String(), "backup", spec.Backup)
	return info, nil
}

// generateNew creates a key pair with mech and the two templates unless an
// object already has label or id (ErrExists: nothing is overwritten), then
// calls read on the new objects in the same session. Creation is serialized
// within the process.
func (t *Token) generateNew(ctx context.Context, label string, id []byte, mech uint, pub, priv []*pkcs11.Attribute,
	read func(h pkcs11.SessionHandle, pubH, privH pkcs11.ObjectHandle) error) error {
	t.createMu.Lock()
	defer t.createMu.Unlock()
	return t.pool.withSession(ctx, func(h pkcs11.SessionHandle) error {
		if err := t.checkFree(h, label, id); err != nil {
			return err
		}
		pubH, privH, err := t.mod.ctx.GenerateKeyPair(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, pub, priv)
		if err != nil {
			if isCode(err, pkcs11.CKR_MECHANISM_INVALID) {
				return fmt.Errorf("%w: C_GenerateKeyPair: %w", ErrUnsupported, err)
			}
			return fmt.Errorf("C_GenerateKeyPair: %w", err)
		}
		return read(h, pubH, privH)
	})
}

// checkFree returns ErrExists if any object has label or id: keys are never
// overwritten. Callers hold createMu.
func (t *Token) checkFree(h pkcs11.SessionHandle, label string, id []byte) error {
	for _, q := range [][]*pkcs11.Attribute{
		{pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)},
		{pkcs11.NewAttribute(pkcs11.CKA_ID, id)},
	} {
		objs, err := t.findObjects(h, q, 1)
		if err != nil {
			return err
		}
		if len(objs) > 0 {
			return fmt.Errorf("%w: label %q", ErrExists, label)
		}
	}
	return nil
}

// findObjects returns up to max objects matching tmpl (max <= 0: all).
func (t *Token) findObjects(h pkcs11.SessionHandle, tmpl []*pkcs11.Attribute, max int) ([]pkcs11.ObjectHandle, error) {
	if err := t.mod.ctx.FindObjectsInit(h, tmpl); err != nil {
		return nil, fmt.Errorf("C_FindObjectsInit: %w", err)
	}
	var out []pkcs11.ObjectHandle
	for {
		batch := 64
		if max > 0 {
			batch = min(batch, max-len(out))
		}
		objs, _, err := t.mod.ctx.FindObjects(h, batch)
		if err != nil {
			_ = t.mod.ctx.FindObjectsFinal(h)
			return nil, fmt.Errorf("C_FindObjects: %w", err)
		}
		out = append(out, objs...)
		if len(objs) < batch || (max > 0 && len(out) >= max) {
			break
		}
	}
	if err := t.mod.ctx.FindObjectsFinal(h); err != nil {
		return nil, fmt.Errorf("C_FindObjectsFinal: %w", err)
	}
	return out, nil
}

// keyInfo reads a key pair's public description.
func (t *Token) keyInfo(h pkcs11.SessionHandle, priv, pub pkcs11.ObjectHandle) (KeyInfo, error) {
	a, err := t.mod.ctx.GetAttributeValue(h, priv, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
		pkcs11.NewAttribute(pkcs11.CKA_ID, nil),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, nil),
	})
	if err != nil {
		return KeyInfo{}, fmt.Errorf("C_GetAttributeValue (private key): %w", err)
	}
	info := KeyInfo{Label: string(a[0].Value), ID: a[1].Value}
	alg, ok := algOf(a[2].Value, a[3].Value)
	if !ok {
		return KeyInfo{}, fmt.Errorf("%w: key %q is not an X25519 or P-256 key pair", ErrUnsupported, info.Label)
	}
	info.Alg = alg
	switch {
	case isTrue(a[4].Value):
		info.Usage = UsageDerive
	case isTrue(a[5].Value):
		info.Usage = UsageSign
	}
	// CKA_START_DATE is read from the public object: SoftHSM 2.6 answers
	// CKR_GENERAL_ERROR when reading it from a CKA_PRIVATE object.
	pa, err := t.mod.ctx.GetAttributeValue(h, pub, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil),
		pkcs11.NewAttribute(pkcs11.CKA_START_DATE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_END_DATE, nil),
	})
	if err != nil {
		return KeyInfo{}, fmt.Errorf("C_GetAttributeValue (public key): %w", err)
	}
	info.Created = parseDate(pa[1].Value)
	info.RotateAfter = parseDate(pa[2].Value)
	info.Public, err = parseECPoint(alg, pa[0].Value)
	if err != nil {
		return KeyInfo{}, fmt.Errorf("key %q: %w", info.Label, err)
	}
	return info, nil
}

func isTrue(v []byte) bool { return len(v) == 1 && v[0] != 0 }

func ulongValue(v []byte) (uint, bool) {
	if len(v) != 8 {
		return 0, false
	}
	return uint(binary.NativeEndian.Uint64(v)), true
}

func algOf(keyType, params []byte) (KeyAlg, bool) {
	kt, ok := ulongValue(keyType)
	if !ok {
		return 0, false
	}
	switch {
	case kt == pkcs11.CKK_EC && bytes.Equal(params, oidP256):
		return P256, true
	case (kt == ckkECEdwards || kt == ckkECMontgomery) &&
		(bytes.Equal(params, oidX25519) || bytes.Equal(params, curve25519Name)):
		return X25519, true
	}
	return 0, false
}

// parseECPoint unwraps CKA_EC_POINT: a DER OCTET STRING per the standard,
// or the raw point (SoftHSM's X25519 keys).
func parseECPoint(alg KeyAlg, v []byte) ([]byte, error) {
	want := 65
	if alg == X25519 {
		want = 32
	}
	if len(v) == want+2 && v[0] == 0x04 && int(v[1]) == want {
		v = v[2:]
	}
	if len(v) != want || (alg == P256 && v[0] != 0x04) {
		return nil, fmt.Errorf("unexpected CKA_EC_POINT of %d bytes for %s", len(v), alg)
	}
	return bytes.Clone(v), nil
}

// parseDate reads a CK_DATE ("YYYYMMDD"); zero if unset or malformed.
func parseDate(v []byte) time.Time {
	if len(v) != 8 || strings.TrimSpace(string(v)) == "" || string(v) == "00000000" {
		return time.Time{}
	}
	d, err := time.Parse("20060102", string(v))
	if err != nil {
		return time.Time{}
	}
	return d
}

// findPair finds the private and public token objects labelled label.
func (t *Token) findPair(h pkcs11.SessionHandle, label string) (priv, pub pkcs11.ObjectHandle, err error) {
	for _, class := range []uint{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
		objs, err := t.findObjects(h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		}, 1)
		if err != nil {
			return 0, 0, err
		}
		if len(objs) == 0 {
			return 0, 0, fmt.Errorf("%w: %q", ErrNotFound, label)
		}
		if class == pkcs11.CKO_PRIVATE_KEY {
			priv = objs[0]
		} else {
			pub = objs[0]
		}
	}
	return priv, pub, nil
}

// FindKey returns the key pair labelled label, or ErrNotFound.
func (t *Token) FindKey(ctx context.Context, label string) (KeyInfo, error) {
	var info KeyInfo
	err := t.pool.withSession(ctx, func(h pkcs11.SessionHandle) error {
		priv, pub, err := t.findPair(h, label)
		if err != nil {
			return err
		}
		info, err = t.keyInfo(h, priv, pub)
		return err
	})
	if err != nil {
		return KeyInfo{}, fmt.Errorf("hsm: find key: %w", err)
	}
	return info, nil
}

// ListKeys returns the key pairs (private and public object both present,
// X25519 or P-256) whose label starts with labelPrefix, sorted by label.
// Other objects on the token are skipped. It costs two object searches
// whatever the token holds (all private keys, all public keys, matched by
// label here), not a search per key: on SoftHSM's file store every search
// walks every object, so a search per key made a listing quadratic (50 s
// for ~400 objects with other processes on the token: docs/fleet.md).
func (t *Token) ListKeys(ctx context.Context, labelPrefix string) ([]KeyInfo, error) {
	var out []KeyInfo
	err := t.pool.withSession(ctx, func(h pkcs11.SessionHandle) error {
		out = out[:0]
		byLabel := func(class uint) (map[string][]pkcs11.ObjectHandle, error) {
			objs, err := t.findObjects(h, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_CLASS, class),
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			}, 0)
			if err != nil {
				return nil, err
			}
			m := map[string][]pkcs11.ObjectHandle{}
			for _, o := range objs {
				a, err := t.mod.ctx.GetAttributeValue(h, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
				if err != nil {
					return nil, fmt.Errorf("C_GetAttributeValue: %w", err)
				}
				if label := string(a[0].Value); strings.HasPrefix(label, labelPrefix) {
					m[label] = append(m[label], o)
				}
			}
			return m, nil
		}
		privs, err := byLabel(pkcs11.CKO_PRIVATE_KEY)
		if err != nil {
			return err
		}
		pubs, err := byLabel(pkcs11.CKO_PUBLIC_KEY)
		if err != nil {
			return err
		}
		for label, ps := range privs {
			pub := pubs[label]
			if len(pub) == 0 {
				continue // no public half: not one of ours
			}
			for _, priv := range ps {
				// Two objects with one label (two processes created it at
				// the same instant) are both listed, as before.
				info, err := t.keyInfo(h, priv, pub[0])
				if err != nil {
					continue
				}
				out = append(out, info)
			}
		}
		return t.pool.stillPresent()
	})
	if err != nil {
		return nil, fmt.Errorf("hsm: list keys: %w", err)
	}
	slices.SortFunc(out, func(a, b KeyInfo) int { return strings.Compare(a.Label, b.Label) })
	return out, nil
}

// SessionObjectCount is the number of session objects (CKA_TOKEN=false) this
// process currently has on the token, not counting the private-key copies
// the key cache holds. Every operation destroys its session
// objects, so outside a running operation this is 0: it exists for leak
// tests and health checks.
func (t *Token) SessionObjectCount(ctx context.Context) (int, error) {
	var n int
	err := t.pool.withSession(ctx, func(h pkcs11.SessionHandle) error {
		objs, err := t.findObjects(h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false)}, 0)
		t.cacheMu.Lock()
		defer t.cacheMu.Unlock()
		n = 0
		for _, o := range objs {
			if !t.isKeyCopyLocked(o) {
				n++
			}
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("hsm: count session objects: %w", err)
	}
	return n, nil
}

// isHandleInvalid reports a stale cached object handle (the object was
// destroyed, possibly by another process).
func isHandleInvalid(err error) bool {
	return isCode(err, pkcs11.CKR_OBJECT_HANDLE_INVALID) || isCode(err, pkcs11.CKR_KEY_HANDLE_INVALID)
}

func ecdsaCurve() elliptic.Curve { return elliptic.P256() }
