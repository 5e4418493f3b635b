//go:build cgo

package hsm

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"encoding/asn1"
	"fmt"
	"io"
	"math/big"

	"github.com/miekg/pkcs11"
)

// Sign signs a 32-byte digest with CKM_ECDSA and the P-256 sign key labelled
// label, and returns the 64-byte r||s. Errors: ErrInvalidRequest (digest
// length), ErrNotFound, ErrUnsupported (not a P-256 sign key),
// ErrUnavailable.
func (t *Token) Sign(ctx context.Context, label string, digest []byte) ([]byte, error) {
	if len(digest) != 32 {
		return nil, fmt.Errorf("hsm: sign %q: %w: digest is %d bytes, want 32", label, ErrInvalidRequest, len(digest))
	}
	var sig []byte
	err := t.pool.withSessionOf(ctx, func(s session) error {
		h := s.h
		for attempt := 0; ; attempt++ {
			k, err := t.privateKey(s, label)
			if err != nil {
				return err
			}
			if k.alg != P256 || k.usage != UsageSign {
				return fmt.Errorf("%w: key %q is %s/%s, not a P-256 sign key", ErrUnsupported, label, k.alg, k.usage)
			}
			err = t.mod.ctx.SignInit(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}, k.h)
			if err == nil {
				sig, err = t.mod.ctx.Sign(h, digest)
			}
			if isHandleInvalid(err) && attempt == 0 {
				t.forget(label)
				continue
			}
			if err != nil {
				return fmt.Errorf("ECDSA sign: %w", err)
			}
			if len(sig) != 64 {
				return fmt.Errorf("ECDSA sign: token returned %d bytes, want 64", len(sig))
			}
			return nil
		}
	})
	if err != nil {
		return nil, fmt.Errorf("hsm: sign %q: %w", label, err)
	}
	return sig, nil
}

// Signer returns a crypto.Signer for the P-256 sign key labelled label.
// Public returns an *ecdsa.PublicKey. Sign ignores rand (the device draws
// its own nonce), requires a 32-byte digest (SHA-256, or opts.HashFunc() 0
// with 32 bytes) and returns an ASN.1 DER ECDSA-Sig-Value, as crypto.Signer
// specifies. Each Sign uses opts' Context when opts is *SignerOpts, else a
// fresh context bounded by SignerTimeout.
func (t *Token) Signer(ctx context.Context, label string) (crypto.Signer, error) {
	info, err := t.FindKey(ctx, label)
	if err != nil {
		return nil, err
	}
	if info.Alg != P256 || info.Usage != UsageSign {
		return nil, fmt.Errorf("hsm: signer %q: %w: not a P-256 sign key", label, ErrUnsupported)
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(ecdsaCurve(), info.Public)
	if err != nil {
		return nil, fmt.Errorf("hsm: signer %q: public key: %w", label, err)
	}
	return &signer{t: t, label: label, pub: pub}, nil
}

type signer struct {
	t     *Token
	label string
	pub   *ecdsa.PublicKey
}

func (s *signer) Public() crypto.PublicKey { return s.pub }

func (s *signer) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts != nil && opts.HashFunc() != crypto.SHA256 && opts.HashFunc() != 0 {
		return nil, fmt.Errorf("hsm: signer %q: %w: hash %v, want SHA-256", s.label, ErrInvalidRequest, opts.HashFunc())
	}
	ctx := context.Background()
	if o, ok := opts.(*SignerOpts); ok && o.Context != nil {
		ctx = o.Context
	} else {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, SignerTimeout)
		defer cancel()
	}
	rs, err := s.t.Sign(ctx, s.label, digest)
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(struct{ R, S *big.Int }{
		new(big.Int).SetBytes(rs[:32]), new(big.Int).SetBytes(rs[32:]),
	})
}
