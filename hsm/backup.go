//go:build cgo

package hsm

import (
	"context"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"
)

// Backup and restore of a KeySpec.Backup private key (the escrow key).
//
// WrapForBackup needs a KEK with CKA_TRUSTED, which only the security
// officer can set. The SO PIN is the caller's: package ceremony combines it
// from the officers' shares for one approved backup and clears it after;
// the daemon has no SO PIN of its own (docs/ceremonies.md). PKCS#11 login state is per process and token, so the
// call takes every session of the pool (other calls wait), logs the user
// out, logs the SO in, creates the KEK as a public session object, logs
// the SO out and the user back in on the same session, wraps, and destroys
// the KEK. Public session objects survive a logout (SoftHSM 2.6.1 destroys
// only private session objects then; backup_test.go checks it). If the
// user login cannot be restored the pool rebuilds on its next call.
//
// RestoreFromBackup needs no SO: unwrapping requires only CKA_UNWRAP on the
// KEK, and the unwrapped private key must be a private token object, which
// only the user can create.
//
// The KEK bytes are the caller's; they pass to the module as a
// CKA_VALUE (miekg/pkcs11 copies them into C memory it frees without
// clearing: best effort only). Nothing here logs them.

// WrapForBackup wraps the private key labelled label under kek with
// CKM_AES_KEY_WRAP_PAD (the token puts PKCS#8 inside) and returns the
// wrapped bytes. kek is imported as a session AES key that is CKA_TRUSTED
// (set in an SO session logged in with soPIN, which the caller clears),
// wrap-only, sensitive and non-extractable, and is destroyed before
// return on every path. The private key must have been generated with
// KeySpec.Backup (CKA_EXTRACTABLE, CKA_WRAP_WITH_TRUSTED); otherwise the token
// refuses (ErrUnsupported). Errors: ErrInvalidRequest, ErrSOLogin, ErrNotFound, ErrUnsupported, ErrUnavailable.
func (t *Token) WrapForBackup(ctx context.Context, label string, soPIN, kek []byte) ([]byte, error) {
	if len(kek) != BackupKEKSize || label == "" || len(soPIN) == 0 {
		return nil, fmt.Errorf("hsm: backup %q: %w: want a label, an SO PIN and a %d-byte KEK", label, ErrInvalidRequest, BackupKEKSize)
	}

	t.createMu.Lock()
	defer t.createMu.Unlock()
	held, err := t.pool.borrowAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("hsm: backup %q: %w", label, err)
	}
	defer t.pool.releaseAll(held)
	h := held[0].h
	c := t.mod.ctx

	var wrapped []byte
	err = func() (err error) {
		if lerr := c.Logout(h); lerr != nil && !isCode(lerr, pkcs11.CKR_USER_NOT_LOGGED_IN) {
			return fmt.Errorf("C_Logout (user): %w", lerr)
		}
		relogin := func() error {
			rerr := c.Login(h, pkcs11.CKU_USER, string(t.pool.pin))
			if rerr != nil && !isCode(rerr, pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
				return fmt.Errorf("C_Login (user, after backup): %w", rerr)
			}
			return nil
		}
		if lerr := c.Login(h, pkcs11.CKU_SO, string(soPIN)); lerr != nil {
			if rerr := relogin(); rerr != nil {
				return errors.Join(fmt.Errorf("%w: %w", ErrSOLogin, lerr), rerr)
			}
			return fmt.Errorf("%w: %w", ErrSOLogin, lerr)
		}
		kekH, cerr := c.CreateObject(h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_TRUSTED, true),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, kek),
		})
		_ = c.Logout(h)
		if rerr := relogin(); rerr != nil {
			if cerr == nil {
				_ = c.DestroyObject(h, kekH)
			}
			return rerr
		}
		if cerr != nil {
			return fmt.Errorf("C_CreateObject (trusted KEK, SO session): %w", cerr)
		}
		defer c.DestroyObject(h, kekH)
		objs, ferr := t.findObjects(h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		}, 1)
		if ferr != nil {
			return ferr
		}
		if len(objs) == 0 {
			return fmt.Errorf("%w: %q", ErrNotFound, label)
		}
		w, werr := c.WrapKey(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, kekH, objs[0])
		if werr != nil {
			if isCode(werr, pkcs11.CKR_KEY_UNEXTRACTABLE) || isCode(werr, pkcs11.CKR_KEY_NOT_WRAPPABLE) {
				return fmt.Errorf("%w: key %q cannot be wrapped out (not generated with Backup): %w", ErrUnsupported, label, werr)
			}
			return fmt.Errorf("C_WrapKey: %w", werr)
		}
		wrapped = w
		return nil
	}()
	t.pool.noteSessionObjects(ctx, 1)
	if err != nil {
		return nil, fmt.Errorf("hsm: backup %q: %w", label, err)
	}
	t.log.Info("hsm: key wrapped for backup", "label", label)
	return wrapped, nil
}

// RestoreFromBackup unwraps wrapped (from WrapForBackup) under kek into a
// P-256 derive key pair labelled label on this token: the private key is a
// private, sensitive token object, CKA_EXTRACTABLE with CKA_WRAP_WITH_TRUSTED
// (so it can be backed up again), derive-only (CKA_ALLOWED_MECHANISMS =
// [CKM_ECDH1_DERIVE]), with the same label and CKA_ID rule as
// GenerateKeyPair; public (the 65-byte point 04||X||Y recorded at backup)
// becomes its public token object. kek is a session key, unwrap-only, destroyed
// on every path. Either both objects exist at return or neither does.
// Errors: ErrInvalidRequest, ErrExists (label or ID taken; nothing touched),
// ErrIntegrity (wrong KEK or tampered wrap: the token cannot say which),
// ErrUnavailable. It does not prove that public matches the private key:
// the caller opens a canary through it.
func (t *Token) RestoreFromBackup(ctx context.Context, label string, kek, wrapped, public []byte) (KeyInfo, error) {
	if len(kek) != BackupKEKSize || label == "" || len(wrapped) == 0 {
		return KeyInfo{}, fmt.Errorf("hsm: restore %q: %w: want a label, a %d-byte KEK and a wrapped key", label, ErrInvalidRequest, BackupKEKSize)
	}
	if err := checkPeer(P256, public); err != nil {
		return KeyInfo{}, fmt.Errorf("hsm: restore %q: public key: %w", label, err)
	}
	id := keyID(label)
	t.createMu.Lock()
	defer t.createMu.Unlock()
	var info KeyInfo
	err := t.pool.withSession(ctx, func(h pkcs11.SessionHandle) error {
		c := t.mod.ctx
		if err := t.checkFree(h, label, id); err != nil {
			return err
		}
		kekH, err := c.CreateObject(h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, kek),
		})
		if err != nil {
			return fmt.Errorf("C_CreateObject (KEK): %w", err)
		}
		defer c.DestroyObject(h, kekH)
		privH, err := c.UnwrapKey(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}, kekH, wrapped, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, true),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP_WITH_TRUSTED, true),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, true),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN, false),
			pkcs11.NewAttribute(pkcs11.CKA_DECRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_UNWRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_SIGN_RECOVER, false),
			pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, ulongs(pkcs11.CKM_ECDH1_DERIVE)),
		})
		if err != nil {
			if isCode(err, pkcs11.CKR_GENERAL_ERROR) || isCode(err, pkcs11.CKR_WRAPPED_KEY_INVALID) ||
				isCode(err, pkcs11.CKR_WRAPPED_KEY_LEN_RANGE) || isCode(err, pkcs11.CKR_ENCRYPTED_DATA_INVALID) {
				return fmt.Errorf("%w: C_UnwrapKey: %w", ErrIntegrity, err)
			}
			return fmt.Errorf("C_UnwrapKey: %w", err)
		}
		point := append([]byte{0x04, byte(len(public))}, public...) // DER OCTET STRING
		pubH, err := c.CreateObject(h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
			pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, false),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			pkcs11.NewAttribute(pkcs11.CKA_ID, id),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, oidP256),
			pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, point),
			pkcs11.NewAttribute(pkcs11.CKA_VERIFY, false),
			pkcs11.NewAttribute(pkcs11.CKA_ENCRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_WRAP, false),
			pkcs11.NewAttribute(pkcs11.CKA_DERIVE, false),
		})
		if err != nil {
			_ = c.DestroyObject(h, privH)
			return fmt.Errorf("C_CreateObject (public key): %w", err)
		}
		info, err = t.keyInfo(h, privH, pubH)
		if err != nil {
			_ = c.DestroyObject(h, privH)
			_ = c.DestroyObject(h, pubH)
			return err
		}
		return nil
	})
	t.pool.noteSessionObjects(ctx, 1)
	if err != nil {
		return KeyInfo{}, fmt.Errorf("hsm: restore %q: %w", label, err)
	}
	t.forget(label)
	t.log.Info("hsm: key restored from backup", "label", label)
	return info, nil
}

// borrowAll takes every session of the pool (waiting for them), for a call
// that changes the login state of the process (WrapForBackup). Callers
// serialize on Token.createMu so two of them never hold part of the pool each.
func (p *pool) borrowAll(ctx context.Context) ([]session, error) {
	var held []session
	for len(held) < p.n {
		s, err := p.borrow(ctx)
		if err != nil {
			p.releaseAll(held)
			return nil, err
		}
		p.mu.Lock()
		stale := s.gen != p.gen
		p.mu.Unlock()
		if stale {
			p.release(s, false)
			continue
		}
		held = append(held, s)
		p.mu.Lock()
		gen := p.gen
		p.mu.Unlock()
		if held[0].gen != gen { // a rebuild happened meanwhile: start over
			p.releaseAll(held)
			held = nil
		}
	}
	return held, nil
}

func (p *pool) releaseAll(held []session) {
	for _, s := range held {
		p.release(s, true)
	}
}
