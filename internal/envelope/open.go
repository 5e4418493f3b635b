package envelope

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"fmt"
	"math/big"

	"custody/internal/device"
)

// Verify checks that e is valid (see Validate) and that its signature is a
// P-256 ECDSA signature of SHA-256(e.SignedMessage()) by the key lookup
// returns for e.Header.SigningKeyID. It returns nil, an ErrMalformed or
// ErrTooLarge error from Validate, or an error matching ErrSignature (which
// also wraps lookup's error when the key could not be found). Verify must
// succeed before any stanza of e is opened.
func (e *Envelope) Verify(lookup KeyLookup) error {
	if err := e.Validate(); err != nil {
		return err
	}
	return e.verifySignature(lookup)
}

// verifySignature is Verify for an envelope that passed Validate.
func (e *Envelope) verifySignature(lookup KeyLookup) error {
	if lookup == nil {
		return fmt.Errorf("%w: no key lookup", ErrSignature)
	}
	pub, err := lookup(e.Header.SigningKeyID)
	if err != nil {
		return fmt.Errorf("%w: signing key %q: %w", ErrSignature, e.Header.SigningKeyID, err)
	}
	if pub == nil || pub.Curve != elliptic.P256() {
		return fmt.Errorf("%w: signing key %q is not a P-256 key", ErrSignature, e.Header.SigningKeyID)
	}
	digest := sha256.Sum256(e.SignedMessage())
	r := new(big.Int).SetBytes(e.Signature[:32])
	s := new(big.Int).SetBytes(e.Signature[32:])
	if !ecdsa.Verify(pub, digest[:], r, s) {
		return fmt.Errorf("%w: signature does not verify under %q", ErrSignature, e.Header.SigningKeyID)
	}
	return nil
}

// ParticipantStanza returns the index in e.Header.Stanzas of the participant
// stanza for id, or an error matching ErrNoStanza.
func (e *Envelope) ParticipantStanza(id string) (int, error) {
	for i, st := range e.Header.Stanzas {
		if st.Kind == StanzaParticipant && st.ParticipantID == id {
			return i, nil
		}
	}
	return -1, fmt.Errorf("%w: %q", ErrNoStanza, id)
}

// EscrowStanza returns the index of the escrow stanza: the last stanza in
// any envelope that Parse or Seal returned or that passed Validate. It
// returns -1 if the last stanza is not an escrow stanza.
func (e *Envelope) EscrowStanza() int {
	n := len(e.Header.Stanzas)
	if n == 0 || e.Header.Stanzas[n-1].Kind != StanzaEscrow {
		return -1
	}
	return n - 1
}

// OpenRequest returns what the device needs to open e's payload through
// stanza number stanza (from ParticipantStanza or EscrowStanza) with the
// private key labelled keyLabel, whose public key is recipientPublic (the
// caller knows it from its key store; it enters the KDF context, so a wrong
// value makes the unwrap fail on the device). The request shares memory with
// e: do not modify either while the other is in use. OpenRequest does not
// verify: call Verify first. It panics if stanza is out of range.
func (e *Envelope) OpenRequest(stanza int, keyLabel string, recipientPublic []byte) device.OpenRequest {
	st := &e.Header.Stanzas[stanza]
	return device.OpenRequest{
		KeyLabel:   keyLabel,
		Alg:        st.Alg,
		KDF:        st.KDF,
		PeerPublic: st.EphemeralPublic,
		Context:    KDFContext(st.Alg, st.KDF, st.EphemeralPublic, recipientPublic),
		WrappedDEK: st.WrappedDEK,
		Nonce:      e.Nonce,
		Ciphertext: e.Ciphertext,
		AAD:        e.AAD(),
	}
}
