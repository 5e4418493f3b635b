//go:build cgo

package hsm

import (
	"context"
	"crypto/ecdh"
	"fmt"
	"slices"
	"sync"

	"github.com/miekg/pkcs11"

	"custody/internal/priority"
)

// maxBatchRecipients bounds the wrap keys a batch keeps on the device at
// once; past it they are destroyed and made afresh. (The limits callers
// see, MaxRewrapTargets and MaxRewrapBatch, are package device's.)
const maxBatchRecipients = 256

// Rewrap is RewrapBatch of the single request req.
func (t *Token) Rewrap(ctx context.Context, req RewrapRequest) ([]Rewrapped, error) {
	r := t.RewrapBatch(ctx, []RewrapRequest{req})[0]
	return r.Wrapped, r.Err
}

// RewrapBatch moves the DEKs of reqs to new recipients without any DEK
// ever leaving the token. It runs the requests in order on one session (on
// a background context it may hand that session over and go on with a
// new one; see below).
//
// For each request it derives Z and the KEK exactly as Open does and
// unwraps WrappedDEK into a session AES key that is sensitive, can neither
// encrypt nor decrypt, and is extractable only so that C_WrapKey can wrap
// it (the KEK's CKA_UNWRAP_TEMPLATE forces those attributes). It then wraps
// that DEK with CKM_AES_KEY_WRAP_PAD (RFC 5649 for a 32-byte key, checked
// against software in rewrap_test.go) under a wrap key for each target.
//
// The wrap key for a recipient is made once per batch (once per session
// the batch runs on): an ephemeral key pair of the target's algorithm
// generated on the device (session objects; X25519 through the path the
// capability probe found), Z' = ECDH(ephemeral, RecipientPublic), KEK' =
// AES-256-ECB_Z'(Context(E')) as a wrap-only key; the ephemeral private key
// and Z' are destroyed at once. Every request of
// the batch with a target of the same Alg and RecipientPublic shares that
// E' and KEK' (their Context functions must agree, as the envelope's rule
// does). This is what makes a rewrap cost about as much as an open: a key
// generation and an ECDH per stanza would cost twice the open chain again.
// The price is that stanzas rewrapped in one batch for one recipient carry
// the same ephemeral public key, so they can be linked to that batch; see
// docs/envelope.md.
//
// With a background context (priority.Background) the batch gives its session
// back between two requests whenever another call waits for one, and goes
// on with what is left when it gets one again (with new wrap keys).
//
// Every session object is destroyed before RewrapBatch returns; results
// hold only public values. Results are per request, in order:
// ErrInvalidRequest for wrong lengths, an unknown algorithm or KDF, no or
// too many targets (or more than MaxRewrapBatch requests: then for every
// request); ErrNotFound for an unknown label; ErrIntegrity if the source
// stanza does not unwrap (tampered or mismatched) or a target public key is
// not a valid point; ErrUnsupported for a key of another kind or a token
// without X25519 generation; ErrUnavailable, or the context's error, for
// every request not finished when the token or the caller went away. A
// failed request does not stop the others.
func (t *Token) RewrapBatch(ctx context.Context, reqs []RewrapRequest) []RewrapResult {
	res := make([]RewrapResult, len(reqs))
	done := make([]bool, len(reqs))
	fail := func(i int, err error) {
		res[i], done[i] = RewrapResult{Err: fmt.Errorf("hsm: rewrap %q: %w", reqs[i].KeyLabel, err)}, true
	}
	pending := 0
	for i, req := range reqs {
		var err error
		if len(reqs) > MaxRewrapBatch {
			err = fmt.Errorf("%w: batch of %d requests, at most %d", ErrInvalidRequest, len(reqs), MaxRewrapBatch)
		} else {
			err = validateRewrap(req)
		}
		if err != nil {
			fail(i, err)
			continue
		}
		pending++
	}
	if pending == 0 {
		return res
	}
	var created uint64
	b := &rewrapBatch{t: t, wrapKeys: map[string]wrapKey{}}
	background := priority.IsBackground(ctx)
	var err error
	for {
		yielded := false
		err = t.pool.withSessionOf(ctx, func(s session) error {
			h := s.h
			b.h = h
			defer func() {
				// The wrap keys go with the session: a new borrow makes new ones.
				b.destroyWrapKeys()
				created += b.created
				b.created = 0
			}()
			did := 0
			for i, req := range reqs {
				if done[i] {
					continue
				}
				if err := ctx.Err(); err != nil {
					return err
				}
				if background && did > 0 && t.pool.contended() {
					yielded = true
					t.pool.yields.Add(1)
					return nil
				}
				did++
				var out []Rewrapped
				err := t.withKey(s, req.KeyLabel, req.Alg, func(key cachedKey) error {
					var err error
					out, err = b.rewrap(key.h, req)
					return err
				})
				if err = t.pool.diagnose(h, err); isLost(err) {
					return err // withSession rebuilds and runs what is left on a new session
				}
				if err != nil {
					fail(i, err)
					continue
				}
				res[i], done[i] = RewrapResult{Wrapped: out}, true
			}
			return nil
		})
		if err != nil || !yielded {
			break
		}
	}
	t.pool.noteSessionObjects(ctx, created)
	if err != nil {
		for i := range reqs {
			if !done[i] {
				fail(i, err)
			}
		}
	}
	return res
}

// rewrapBatch is the state of one RewrapBatch: the session it runs on now
// and the wrap key made there for each recipient so far.
type rewrapBatch struct {
	t        *Token
	h        pkcs11.SessionHandle
	wrapKeys map[string]wrapKey // by alg byte ‖ recipient public key
	keks     []pkcs11.ObjectHandle
	created  uint64 // session objects created, for the pool's recycling
}

// destroyWrapKeys destroys every wrap key of the batch so far.
func (b *rewrapBatch) destroyWrapKeys() {
	for _, o := range b.keks {
		_ = b.t.mod.ctx.DestroyObject(b.h, o)
	}
	b.keks = nil
	clear(b.wrapKeys)
}

// wrapKey is a recipient's wrap-only KEK' on the device and the ephemeral
// public key E' it was derived with.
type wrapKey struct {
	kek             pkcs11.ObjectHandle
	ephemeralPublic []byte
}

func validateRewrap(req RewrapRequest) error {
	switch {
	case req.KeyLabel == "":
		return fmt.Errorf("%w: empty key label", ErrInvalidRequest)
	case req.KDF != KDFECBContext:
		return fmt.Errorf("%w: unknown KDF %d", ErrInvalidRequest, req.KDF)
	case len(req.WrappedDEK) != wrappedDEKSize:
		return fmt.Errorf("%w: wrapped DEK is %d bytes, want %d", ErrInvalidRequest, len(req.WrappedDEK), wrappedDEKSize)
	case len(req.Targets) == 0 || len(req.Targets) > MaxRewrapTargets:
		return fmt.Errorf("%w: %d targets, want 1..%d", ErrInvalidRequest, len(req.Targets), MaxRewrapTargets)
	}
	if err := checkPeer(req.Alg, req.PeerPublic); err != nil {
		return err
	}
	for i, tg := range req.Targets {
		if tg.Context == nil {
			return fmt.Errorf("%w: target %d has no context function", ErrInvalidRequest, i)
		}
		if err := checkPeer(tg.Alg, tg.RecipientPublic); err != nil {
			return fmt.Errorf("target %d: %w", i, err)
		}
	}
	return nil
}

// checkPeer checks the length (and for P-256 the curve membership) of a
// public key sent to the device.
func checkPeer(alg KeyAlg, pub []byte) error {
	switch alg {
	case X25519:
		if len(pub) != 32 {
			return fmt.Errorf("%w: X25519 public key is %d bytes, want 32", ErrInvalidRequest, len(pub))
		}
	case P256:
		if len(pub) != 65 {
			return fmt.Errorf("%w: P-256 public key is %d bytes, want 65", ErrInvalidRequest, len(pub))
		}
		if _, err := ecdh.P256().NewPublicKey(pub); err != nil {
			return fmt.Errorf("%w: public key is not a P-256 point", ErrIntegrity)
		}
	default:
		return fmt.Errorf("%w: unknown algorithm %d", ErrInvalidRequest, alg)
	}
	return nil
}

// rewrapDEKTemplate is what a DEK unwrapped for rewrapping must look like:
// a sensitive session AES key that can do nothing but be wrapped (and
// CKA_EXTRACTABLE only for that). It is forced through the
// CKA_UNWRAP_TEMPLATE of the rewrap KEK.
func rewrapDEKTemplate() []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
	}
}

var rewrapUnwrapTemplateValue = sync.OnceValue(func() []byte {
	return attributeArray(rewrapDEKTemplate())
})

// rewrapKEK is the template of the KEK that unwraps a DEK for rewrapping.
func rewrapKEK() []*pkcs11.Attribute {
	a := sessionAES(false, false)
	for i, at := range a {
		if at.Type == pkcs11.CKA_UNWRAP {
			a[i] = pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true)
		}
	}
	return append(a, &pkcs11.Attribute{Type: pkcs11.CKA_UNWRAP_TEMPLATE, Value: rewrapUnwrapTemplateValue()})
}

// sessionAESWith is sessionAES(false, false) with one usage attribute set.
func sessionAESWith(usage uint) []*pkcs11.Attribute {
	a := sessionAES(false, false)
	for i, at := range a {
		if at.Type == usage {
			a[i] = pkcs11.NewAttribute(usage, true)
			return a
		}
	}
	return append(a, pkcs11.NewAttribute(usage, true))
}

// sessionObjects collects the session objects of one chain and destroys
// them all; created counts every object added.
type sessionObjects struct {
	c       *pkcs11.Ctx
	h       pkcs11.SessionHandle
	objs    []pkcs11.ObjectHandle
	created uint64
}

func (s *sessionObjects) add(o ...pkcs11.ObjectHandle) {
	s.objs = append(s.objs, o...)
	s.created += uint64(len(o))
}

// keep takes o off the list destroy works through (it stays counted).
func (s *sessionObjects) keep(o pkcs11.ObjectHandle) {
	s.objs = slices.DeleteFunc(s.objs, func(x pkcs11.ObjectHandle) bool { return x == o })
}

func (s *sessionObjects) destroy() {
	for _, o := range s.objs {
		_ = s.c.DestroyObject(s.h, o)
	}
	s.objs = nil
}

// deriveKEK runs ECDH(priv, peer) into Z and AES-ECB_Z(context) into a
// session AES key with template kekTmpl. Z is added to objs, the KEK too.
func (t *Token) deriveKEK(h pkcs11.SessionHandle, objs *sessionObjects, priv pkcs11.ObjectHandle, peer []byte, context [32]byte, kekTmpl []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	c := t.mod.ctx
	z, err := c.DeriveKey(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDH1_DERIVE,
		pkcs11.NewECDH1DeriveParams(pkcs11.CKD_NULL, nil, peer))}, priv, sessionAES(true, false))
	if err != nil {
		if isLost(err) || isHandleInvalid(err) {
			return 0, err
		}
		return 0, fmt.Errorf("%w: ECDH derive: %w", ErrIntegrity, err)
	}
	objs.add(z)
	param, cdata := keyDerivationStringData(context[:])
	kek, err := c.DeriveKey(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_ECB_ENCRYPT_DATA, param)}, z, kekTmpl)
	cdata.free()
	if err != nil {
		return 0, fmt.Errorf("KEK derive (AES_ECB_ENCRYPT_DATA): %w", err)
	}
	objs.add(kek)
	return kek, nil
}

// ephemeralPair generates a session key pair of alg that can only derive.
func (t *Token) ephemeralPair(h pkcs11.SessionHandle, objs *sessionObjects, alg KeyAlg) (pkcs11.ObjectHandle, []byte, error) {
	var mech, keyType uint
	var params []byte
	switch alg {
	case X25519:
		if t.caps.X25519 == "" {
			return 0, nil, fmt.Errorf("%w: X25519 key generation", ErrUnsupported)
		}
		mech, keyType = x25519Mechanism(t.caps.X25519)
		params = oidX25519
	case P256:
		mech, keyType, params = pkcs11.CKM_EC_KEY_PAIR_GEN, pkcs11.CKK_EC, oidP256
	default:
		return 0, nil, fmt.Errorf("%w: unknown algorithm %d", ErrInvalidRequest, alg)
	}
	pub := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, params),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
		pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
	}
	priv := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_DERIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
		pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
	}
	pubH, privH, err := t.mod.ctx.GenerateKeyPair(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(mech, nil)}, pub, priv)
	if err != nil {
		return 0, nil, fmt.Errorf("C_GenerateKeyPair (ephemeral %s): %w", alg, err)
	}
	objs.add(pubH, privH)
	a, err := t.mod.ctx.GetAttributeValue(h, pubH, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	if err != nil {
		return 0, nil, fmt.Errorf("C_GetAttributeValue (ephemeral public): %w", err)
	}
	point, err := parseECPoint(alg, a[0].Value)
	if err != nil {
		return 0, nil, err
	}
	return privH, point, nil
}

// wrapKey returns the batch's wrap key for tg, making it on first use.
func (b *rewrapBatch) wrapKey(tg WrapTarget) (wrapKey, error) {
	id := string(append([]byte{byte(tg.Alg)}, tg.RecipientPublic...))
	if wk, ok := b.wrapKeys[id]; ok {
		return wk, nil
	}
	if len(b.wrapKeys) == maxBatchRecipients {
		b.destroyWrapKeys()
	}
	eph := sessionObjects{c: b.t.mod.ctx, h: b.h}
	defer func() {
		b.created += eph.created
		eph.destroy()
	}()
	ephPriv, ephPub, err := b.t.ephemeralPair(b.h, &eph, tg.Alg)
	if err != nil {
		return wrapKey{}, err
	}
	kek, err := b.t.deriveKEK(b.h, &eph, ephPriv, tg.RecipientPublic, tg.Context(ephPub), sessionAESWith(pkcs11.CKA_WRAP))
	if err != nil {
		return wrapKey{}, err
	}
	// KEK' outlives the ephemeral pair and Z': the batch destroys it.
	eph.keep(kek)
	b.keks = append(b.keks, kek)
	wk := wrapKey{kek: kek, ephemeralPublic: ephPub}
	b.wrapKeys[id] = wk
	return wk, nil
}

// rewrap unwraps req's DEK with the private key priv and wraps it for each
// target. The source's Z, KEK and DEK are destroyed before it returns.
func (b *rewrapBatch) rewrap(priv pkcs11.ObjectHandle, req RewrapRequest) ([]Rewrapped, error) {
	c := b.t.mod.ctx
	objs := &sessionObjects{c: c, h: b.h}
	defer func() {
		b.created += objs.created
		objs.destroy()
	}()

	kek, err := b.t.deriveKEK(b.h, objs, priv, req.PeerPublic, req.Context, rewrapKEK())
	if err != nil {
		return nil, err
	}
	dek, err := c.UnwrapKey(b.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, kek, req.WrappedDEK, rewrapDEKTemplate())
	if err != nil {
		return nil, integrity("unwrap DEK for rewrap (AES_KEY_WRAP_PAD)", err)
	}
	objs.add(dek)

	out := make([]Rewrapped, 0, len(req.Targets))
	for i, tg := range req.Targets {
		wk, err := b.wrapKey(tg)
		if err != nil {
			return nil, fmt.Errorf("target %d: %w", i, err)
		}
		wrapped, err := c.WrapKey(b.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, wk.kek, dek)
		if err != nil {
			return nil, fmt.Errorf("target %d: C_WrapKey (AES_KEY_WRAP_PAD): %w", i, err)
		}
		if len(wrapped) != wrappedDEKSize {
			return nil, fmt.Errorf("target %d: token wrapped the DEK into %d bytes, want %d", i, len(wrapped), wrappedDEKSize)
		}
		out = append(out, Rewrapped{EphemeralPublic: wk.ephemeralPublic, WrappedDEK: wrapped})
	}
	return out, nil
}
