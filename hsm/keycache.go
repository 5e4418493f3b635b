//go:build cgo

package hsm

import (
	"fmt"
	"time"

	"github.com/miekg/pkcs11"
)

// The private-key handle cache (doc.go, "Private-key copies"). Every use of
// a token object costs SoftHSM 2.6.1 file I/O (docs/performance.md, cause
// 2), so by default a key found by label is used through a session copy of
// it (C_CopyObject with CKA_TOKEN false: still sensitive and not
// extractable, on the device, visible to this process only and gone with
// the session that made it). The token object itself is looked at again
// once per Config.KeyRecheck: a key destroyed by another process stays
// usable here for at most that long.

// keyRecheck resolves Config.KeyRecheck: 0 is the default, a negative value
// no copies (0 here).
func keyRecheck(d time.Duration) time.Duration {
	switch {
	case d == 0:
		return DefaultKeyRecheck
	case d < 0:
		return 0
	}
	return d
}

// cachedKey is a private key found by label.
type cachedKey struct {
	h      pkcs11.ObjectHandle // what to use: the session copy, or the token object
	token  pkcs11.ObjectHandle // the token object
	copied bool                // h is a session copy, made in a session of generation gen
	gen    uint64
	seen   time.Time // when the token object was last found (copies only)
	alg    KeyAlg
	usage  Usage
}

// confirmedAt is when key k was last known to be on the token, for a use of
// it at now: a token object is checked by the use itself.
func (k cachedKey) confirmedAt(now time.Time) time.Time {
	if k.copied {
		return k.seen
	}
	return now
}

// clearCache forgets every cached key. It runs when the sessions that held
// the copies are gone (pool rebuild, Close): their copies went with them.
func (t *Token) clearCache() {
	t.cacheMu.Lock()
	clear(t.cache)
	t.staleCopies = nil
	t.cacheMu.Unlock()
}

// forget drops label's cached key; its copy, if any, is destroyed by the
// next privateKey call on a session of its generation.
func (t *Token) forget(label string) {
	t.cacheMu.Lock()
	if k, ok := t.cache[label]; ok && k.copied {
		t.staleCopies = append(t.staleCopies, k)
	}
	delete(t.cache, label)
	t.cacheMu.Unlock()
}

// reapCopies destroys the forgotten copies made in sessions of s's
// generation and drops those of older ones (gone with their sessions).
func (t *Token) reapCopies(s session) {
	t.cacheMu.Lock()
	stale := t.staleCopies
	t.staleCopies = nil
	t.cacheMu.Unlock()
	t.destroyCopies(s, stale)
}

// destroyCopies destroys those of stale made in sessions of s's generation.
func (t *Token) destroyCopies(s session, stale []cachedKey) {
	for _, k := range stale {
		if k.gen == s.gen {
			_ = t.mod.ctx.DestroyObject(s.h, k.h)
		}
	}
}

// privateKey returns the private key labelled label, from the cache or the
// token, on session s. A cached copy whose token object was last found
// more than KeyRecheck ago is checked first: gone, the copy is forgotten
// and the label looked up again (ErrNotFound when nothing has it now).
func (t *Token) privateKey(s session, label string) (cachedKey, error) {
	now := time.Now()
	t.cacheMu.Lock()
	k, ok := t.cache[label]
	stale := t.staleCopies
	t.staleCopies = nil
	t.cacheMu.Unlock()
	t.destroyCopies(s, stale)
	if ok && (!k.copied || now.Sub(k.seen) < t.keyRecheck) {
		return k, nil
	}
	if ok {
		_, err := t.mod.ctx.GetAttributeValue(s.h, k.token, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil)})
		switch {
		case err == nil:
			k.seen = now
			t.cacheMu.Lock()
			if c, ok := t.cache[label]; ok && c.h == k.h && c.gen == k.gen {
				t.cache[label] = k
			}
			t.cacheMu.Unlock()
			return k, nil
		case isHandleInvalid(err):
			t.forget(label)
			t.reapCopies(s)
		default:
			return cachedKey{}, fmt.Errorf("C_GetAttributeValue: %w", err)
		}
	}
	k, err := t.findPrivateKey(s.h, label)
	if err != nil {
		return cachedKey{}, err
	}
	k.seen = now
	if t.keyRecheck > 0 {
		// A token that refuses the copy (CKA_COPYABLE false) is used
		// through its token object.
		if c, err := t.mod.ctx.CopyObject(s.h, k.token, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false)}); err == nil {
			k.h, k.copied, k.gen = c, true, s.gen
		}
	}
	t.cacheMu.Lock()
	defer t.cacheMu.Unlock()
	if c, ok := t.cache[label]; ok {
		// Another borrower cached it first: use that, destroy ours.
		if k.copied {
			_ = t.mod.ctx.DestroyObject(s.h, k.h)
		}
		return c, nil
	}
	if k.copied && s.gen != t.pool.generation() {
		// The pool was rebuilt meanwhile: this session and its copy are
		// on their way out; use the copy this once.
		return k, nil
	}
	t.cache[label] = k
	return k, nil
}

// KeyCopyCount is how many session copies of private keys the key cache
// holds (doc.go, "Private-key copies").
func (t *Token) KeyCopyCount() int {
	t.cacheMu.Lock()
	defer t.cacheMu.Unlock()
	n := 0
	for _, k := range t.cache {
		if k.copied {
			n++
		}
	}
	return n
}

// isKeyCopyLocked reports whether o is a copy the cache holds (a forgotten
// one not destroyed yet is not). The caller holds cacheMu.
func (t *Token) isKeyCopyLocked(o pkcs11.ObjectHandle) bool {
	for _, k := range t.cache {
		if k.copied && k.h == o {
			return true
		}
	}
	return false
}

// findPrivateKey looks up the private key labelled label on the token.
func (t *Token) findPrivateKey(h pkcs11.SessionHandle, label string) (cachedKey, error) {
	objs, err := t.findObjects(h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	}, 1)
	if err != nil {
		return cachedKey{}, err
	}
	if len(objs) == 0 {
		return cachedKey{}, fmt.Errorf("%w: %q", ErrNotFound, label)
	}
	a, err := t.mod.ctx.GetAttributeValue(h, objs[0], []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, nil),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, nil),
	})
	if err != nil {
		return cachedKey{}, fmt.Errorf("C_GetAttributeValue: %w", err)
	}
	alg, ok := algOf(a[0].Value, a[1].Value)
	if !ok {
		return cachedKey{}, fmt.Errorf("%w: key %q is not an X25519 or P-256 key", ErrUnsupported, label)
	}
	k := cachedKey{h: objs[0], token: objs[0], alg: alg}
	if isTrue(a[2].Value) {
		k.usage = UsageDerive
	} else if isTrue(a[3].Value) {
		k.usage = UsageSign
	}
	return k, nil
}
