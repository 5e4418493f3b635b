package envelope

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"custody/internal/device"
	"custody/internal/keywrap"
)

// Seal encrypts in.Plaintext as a version-1 envelope for in.Participants
// and in.Escrow and has s sign the header (SealV2 writes version 2). It uses public keys only and runs in software: a random DEK and
// nonce; per recipient, in order (participants, then escrow), an ephemeral
// key of the recipient's algorithm, Z = ECDH(ephemeral, recipient), KEK =
// AES-256-ECB_Z(KDFContext(...)), and the DEK wrapped under KEK with RFC
// 5649; then the payload AES-256-GCM(DEK, nonce, plaintext, AAD()); then the
// signature over SHA-256(SignedMessage()). The DEK, ephemeral private keys,
// ECDH secrets and KEKs are cleared before Seal returns (best effort).
//
// Errors: ErrInvalidInput (also matching ErrInvalidID or ErrInvalidJSON where
// that is the cause) for bad ids, duplicate participants, a bad or
// wrong-size public key, an escrow recipient that is not P256 or has an ID,
// a nil signer or a signature that is not SignatureSize bytes; ErrTooLarge
// above MaxPlaintext, MaxParticipants or MaxPublicFields; the signer's error
// or ctx.Err() as returned (wrapped).
func Seal(ctx context.Context, in SealInput, s Signer) (*Envelope, error) {
	if in.Fields != nil || in.SealedBy != "" {
		return nil, fmt.Errorf("%w: fields and sealed-by are version 2 (SealV2)", ErrInvalidInput)
	}
	h, err := sealHeader(&in, s)
	if err != nil {
		return nil, err
	}
	r := in.Rand
	if r == nil {
		r = rand.Reader
	}
	dek := make([]byte, DEKSize)
	defer clear(dek)
	nonce := make([]byte, NonceSize)
	if _, err := io.ReadFull(r, dek); err != nil {
		return nil, fmt.Errorf("envelope: reading randomness: %w", err)
	}
	if _, err := io.ReadFull(r, nonce); err != nil {
		return nil, fmt.Errorf("envelope: reading randomness: %w", err)
	}
	recipients := append(append([]Recipient(nil), in.Participants...), in.Escrow)
	for i, rc := range recipients {
		kind := StanzaParticipant
		if i == len(recipients)-1 {
			kind = StanzaEscrow
		}
		st, err := wrapDEK(r, dek, kind, rc)
		if err != nil {
			return nil, err
		}
		h.Stanzas = append(h.Stanzas, st)
	}
	e := &Envelope{Header: *h, Nonce: nonce}

	block, err := aes.NewCipher(dek)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	e.Ciphertext = gcm.Seal(nil, nonce, in.Plaintext, e.AAD())

	if err := ctx.Err(); err != nil {
		return nil, err
	}
	digest := sha256.Sum256(e.SignedMessage())
	sig, err := s.Sign(ctx, digest[:])
	if err != nil {
		return nil, fmt.Errorf("envelope: signing header: %w", err)
	}
	if len(sig) != SignatureSize {
		return nil, fmt.Errorf("%w: signer returned %d bytes, want %d (r||s)", ErrInvalidInput, len(sig), SignatureSize)
	}
	e.Signature = append([]byte(nil), sig...)
	if err := e.Validate(); err != nil { // cannot happen; a guard against drift
		return nil, fmt.Errorf("envelope: sealed envelope fails validation: %w", err)
	}
	return e, nil
}

// sealHeader validates everything in in except randomness and returns the
// version-1 header without stanzas (SealV2 adds its version-2 members).
func sealHeader(in *SealInput, s Signer) (*Header, error) {
	if s == nil {
		return nil, fmt.Errorf("%w: no signer", ErrInvalidInput)
	}
	for _, f := range []struct{ name, id string }{
		{"transaction id", in.TransactionID}, {"job id", in.JobID}, {"signing key id", s.KeyID()},
	} {
		if err := ValidateID(f.id); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrInvalidInput, f.name, err)
		}
	}
	if len(in.Plaintext) > MaxPlaintext {
		return nil, fmt.Errorf("%w: plaintext is %d bytes, limit %d", ErrTooLarge, len(in.Plaintext), MaxPlaintext)
	}
	pf := in.PublicFields
	if len(pf) == 0 {
		pf = []byte("{}")
	}
	pf, err := CanonicalJSON(pf)
	if err != nil {
		if errors.Is(err, ErrTooLarge) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: public fields: %w", ErrInvalidInput, err)
	}
	if len(in.Participants) > MaxParticipants {
		return nil, fmt.Errorf("%w: %d participants, limit %d", ErrTooLarge, len(in.Participants), MaxParticipants)
	}
	if len(in.Participants) == 0 {
		return nil, fmt.Errorf("%w: no participants", ErrInvalidInput)
	}
	seen := make(map[string]bool, len(in.Participants))
	ids := make([]string, 0, len(in.Participants))
	for _, p := range in.Participants {
		if err := ValidateID(p.ID); err != nil {
			return nil, fmt.Errorf("%w: participant: %w", ErrInvalidInput, err)
		}
		if seen[p.ID] {
			return nil, fmt.Errorf("%w: participant %q listed twice", ErrInvalidInput, p.ID)
		}
		seen[p.ID] = true
		if err := checkPublic(p.Alg, p.Public); err != nil {
			return nil, fmt.Errorf("%w: participant %q: %w", ErrInvalidInput, p.ID, err)
		}
		ids = append(ids, p.ID)
	}
	if in.Escrow.ID != "" {
		return nil, fmt.Errorf("%w: escrow recipient must have no ID", ErrInvalidInput)
	}
	if in.Escrow.Alg != device.P256 {
		return nil, fmt.Errorf("%w: escrow key must be P-256", ErrInvalidInput)
	}
	if err := checkPublic(in.Escrow.Alg, in.Escrow.Public); err != nil {
		return nil, fmt.Errorf("%w: escrow: %w", ErrInvalidInput, err)
	}
	created := in.CreatedAt
	if created.IsZero() {
		created = time.Now()
	}
	ms := created.UnixMilli()
	if ms < 0 {
		return nil, fmt.Errorf("%w: created-at before 1970", ErrInvalidInput)
	}
	return &Header{
		Version:       Version1,
		TransactionID: in.TransactionID,
		JobID:         in.JobID,
		PublicFields:  pf,
		CreatedAt:     time.UnixMilli(ms).UTC(),
		Participants:  ids,
		SigningKeyID:  s.KeyID(),
	}, nil
}

// maxScalarTries bounds the rejection sampling of P-256 ephemeral scalars;
// a 32-byte string is out of range with probability about 2^-32.
const maxScalarTries = 8

// ephemeralKey reads 32-byte candidate private keys from r until crypto/ecdh
// accepts one (always the first for X25519).
func ephemeralKey(r io.Reader, c ecdh.Curve) (*ecdh.PrivateKey, error) {
	buf := make([]byte, 32)
	defer clear(buf)
	for range maxScalarTries {
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, fmt.Errorf("envelope: reading randomness: %w", err)
		}
		if k, err := c.NewPrivateKey(buf); err == nil {
			return k, nil
		}
	}
	return nil, fmt.Errorf("envelope: random source gives no valid %v scalar", c)
}

// wrapDEK builds one stanza: the DEK wrapped for rc under an ephemeral key.
func wrapDEK(r io.Reader, dek []byte, kind StanzaKind, rc Recipient) (Stanza, error) {
	c := curve(rc.Alg)
	pub, err := c.NewPublicKey(rc.Public)
	if err != nil {
		return Stanza{}, fmt.Errorf("%w: recipient key: %v", ErrInvalidInput, err)
	}
	eph, err := ephemeralKey(r, c)
	if err != nil {
		return Stanza{}, err
	}
	z, err := eph.ECDH(pub)
	if err != nil { // X25519 low-order point
		return Stanza{}, fmt.Errorf("%w: recipient %q: ECDH failed: %v", ErrInvalidInput, rc.ID, err)
	}
	defer clear(z)
	ephPub := eph.PublicKey().Bytes()
	kek, err := ecbContextKEK(z, KDFContext(rc.Alg, device.KDFECBContext, ephPub, rc.Public))
	if err != nil {
		return Stanza{}, err
	}
	defer clear(kek)
	wrapped, err := keywrap.WrapWithKey(kek, dek)
	if err != nil {
		return Stanza{}, err
	}
	return Stanza{
		Kind:            kind,
		ParticipantID:   rc.ID,
		KeyVersion:      rc.KeyVersion,
		Alg:             rc.Alg,
		KDF:             device.KDFECBContext,
		EphemeralPublic: ephPub,
		WrappedDEK:      wrapped,
	}, nil
}

// ecbContextKEK is the software twin of the device's CKM_AES_ECB_ENCRYPT_DATA
// derivation: the two 16-byte blocks of context encrypted with AES-256 under
// z (a 32-byte ECDH secret).
func ecbContextKEK(z []byte, context [32]byte) ([]byte, error) {
	b, err := aes.NewCipher(z)
	if err != nil {
		return nil, err
	}
	kek := make([]byte, 32)
	b.Encrypt(kek[:16], context[:16])
	b.Encrypt(kek[16:], context[16:])
	return kek, nil
}

// KDFContext returns the 32-byte context of the ecb-context KDF for one
// stanza:
//
//	SHA-256(LabelKDFContext ‖ 0x00 ‖ alg ‖ kdf ‖ u32 len(E) ‖ E ‖ u32 len(R) ‖ R)
//
// where E is ephemeralPublic, R is recipientPublic, alg and kdf are single
// bytes and lengths are big-endian. Both public keys are bound: the context,
// and so the KEK, for one pair of keys is unrelated to that of any other.
func KDFContext(alg device.KeyAlg, kdf device.KDF, ephemeralPublic, recipientPublic []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte(LabelKDFContext))
	h.Write([]byte{0, byte(alg), byte(kdf)})
	h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(ephemeralPublic))))
	h.Write(ephemeralPublic)
	h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(recipientPublic))))
	h.Write(recipientPublic)
	var out [32]byte
	h.Sum(out[:0])
	return out
}
