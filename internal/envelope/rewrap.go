package envelope

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"maps"
	"slices"

	"custody/internal/device"
)

// ReplaceStanzas returns a copy of e in which the stanzas at the indices of
// repl are replaced by the given ones and the header is signed again by s
// (whose key id becomes the header's SigningKeyID). Nonce and ciphertext
// (version 1) or every field's nonce and ciphertext (version 2) are
// byte-for-byte e's: the payload AAD, and in version 2 the field keys and
// AADs, cover the binding only, not the stanzas (docs/envelope.md), so the
// payload stays valid; the version stays e's. e is not modified.
//
// Each replacement must be for the same recipient as the stanza it
// replaces: same kind and participant id (a rewrap moves a stanza to
// another key version, never to another recipient). The new stanza is not
// checked against the DEK: the caller produced it on the device from an
// unwrap that succeeded.
//
// Call it only on an envelope that verified. Errors: ErrInvalidInput (an
// index out of range, a replacement for another recipient, a bad stanza,
// no signer or a signature of the wrong size); the signer's error, wrapped.
func ReplaceStanzas(ctx context.Context, e *Envelope, repl map[int]Stanza, s Signer) (*Envelope, error) {
	if s == nil {
		return nil, fmt.Errorf("%w: no signer", ErrInvalidInput)
	}
	out := &Envelope{Header: e.Header, Nonce: bytes.Clone(e.Nonce), Ciphertext: e.Ciphertext, Fields: slices.Clone(e.Fields)}
	out.Header.Stanzas = slices.Clone(e.Header.Stanzas)
	out.Header.SigningKeyID = s.KeyID()
	for _, i := range slices.Sorted(maps.Keys(repl)) {
		if i < 0 || i >= len(out.Header.Stanzas) {
			return nil, fmt.Errorf("%w: stanza %d out of range", ErrInvalidInput, i)
		}
		old, st := out.Header.Stanzas[i], repl[i]
		if st.Kind != old.Kind || st.ParticipantID != old.ParticipantID {
			return nil, fmt.Errorf("%w: stanza %d: a replacement must be for the same recipient", ErrInvalidInput, i)
		}
		st.EphemeralPublic = bytes.Clone(st.EphemeralPublic)
		st.WrappedDEK = bytes.Clone(st.WrappedDEK)
		out.Header.Stanzas[i] = st
	}
	out.Signature = make([]byte, SignatureSize) // so that Validate checks the rest
	if err := out.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidInput, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	digest := sha256.Sum256(out.SignedMessage())
	sig, err := s.Sign(ctx, digest[:])
	if err != nil {
		return nil, fmt.Errorf("envelope: signing header: %w", err)
	}
	if len(sig) != SignatureSize {
		return nil, fmt.Errorf("%w: signer returned %d bytes, want %d (r||s)", ErrInvalidInput, len(sig), SignatureSize)
	}
	out.Signature = bytes.Clone(sig)
	return out, nil
}

// RewrapRequest returns what the device needs to move e's DEK to targets
// (each from WrapTarget): the DEK is unwrapped through stanza number stanza
// with the private key labelled keyLabel, whose public key is
// recipientPublic (as for OpenRequest). Wrap the answer into stanzas with
// the targets' algorithms and KDFECBContext and put them in with
// ReplaceStanzas. The request shares memory with e and targets: do not
// modify them while it is in use. RewrapRequest does not verify: call Verify
// first. It panics if stanza is out of range.
func (e *Envelope) RewrapRequest(stanza int, keyLabel string, recipientPublic []byte, targets []device.WrapTarget) device.RewrapRequest {
	st := &e.Header.Stanzas[stanza]
	return device.RewrapRequest{
		KeyLabel:   keyLabel,
		Alg:        st.Alg,
		KDF:        st.KDF,
		PeerPublic: st.EphemeralPublic,
		Context:    KDFContext(st.Alg, st.KDF, st.EphemeralPublic, recipientPublic),
		WrappedDEK: st.WrappedDEK,
		Targets:    targets,
	}
}

// WrapTarget returns the rewrap target for a new stanza of algorithm alg
// whose recipient key is recipientPublic; its Context is StanzaContext's.
func WrapTarget(alg device.KeyAlg, recipientPublic []byte) device.WrapTarget {
	return device.WrapTarget{Alg: alg, RecipientPublic: recipientPublic, Context: StanzaContext(alg, recipientPublic)}
}

// StanzaContext returns the ecb-context KDF context for a new stanza of
// algorithm alg whose recipient key is recipientPublic, as a function of the
// ephemeral public key (which the device generates during a rewrap).
func StanzaContext(alg device.KeyAlg, recipientPublic []byte) func(ephemeralPublic []byte) [32]byte {
	r := bytes.Clone(recipientPublic)
	return func(eph []byte) [32]byte { return KDFContext(alg, device.KDFECBContext, eph, r) }
}
