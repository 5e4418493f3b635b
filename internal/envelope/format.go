package envelope

import (
	"bytes"
	"crypto/ecdh"
	"encoding/base64"
	"fmt"
	"math"
	"strings"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"custody/internal/device"
)

// magic starts every binary envelope. Its base64url encoding is
// "custody-envelope", so every text form starts with that string.
var magic = [12]byte{0x72, 0xeb, 0x2d, 0xa1, 0xdc, 0xbe, 0x7a, 0x7b, 0xde, 0x96, 0x8a, 0x5e}

// TextPrefix begins the text form of every envelope (of any version).
const TextPrefix = "custody-envelope"

// Marshal returns the binary encoding of e. It does not validate: encode only
// envelopes that Seal or Parse returned, or that passed Validate. It panics if
// a field is too long for its length prefix.
func (e *Envelope) Marshal() []byte {
	var b cryptobyte.Builder
	b.AddBytes(magic[:])
	e.Header.addHeader(&b)
	b.AddBytes(e.Signature)
	if e.Header.Version == Version2 {
		addFields(&b, e.Fields)
	} else {
		b.AddBytes(e.Nonce)
		addBytes32(&b, e.Ciphertext)
	}
	return b.BytesOrPanic()
}

// addFields encodes version-2 field ciphertexts: per field, nonce ‖ u32
// length ‖ ciphertext. The count is the header's.
func addFields(b *cryptobyte.Builder, fields []FieldCiphertext) {
	for _, f := range fields {
		b.AddBytes(f.Nonce)
		addBytes32(b, f.Ciphertext)
	}
}

// Text returns the text form of e: Marshal in unpadded base64url.
func (e *Envelope) Text() string {
	return base64.RawURLEncoding.EncodeToString(e.Marshal())
}

// AAD returns the additional authenticated data of the version-1 payload:
// LabelPayloadAAD ‖ 0x00 ‖ encoded Binding (see the package documentation).
// (Version 2 has one AAD per field: FieldAAD.)
func (e *Envelope) AAD() []byte {
	var b cryptobyte.Builder
	b.AddBytes([]byte(LabelPayloadAAD))
	b.AddUint8(0)
	e.Header.addBinding(&b)
	return b.BytesOrPanic()
}

// SignedMessage returns what the header signature covers:
// LabelHeaderSignature ‖ 0x00 ‖ encoded Header (Binding, stanzas, signing key
// id). The signature is over its SHA-256 digest.
//
// In version 2 the label is LabelHeaderSignatureV2 and the encoded Header
// is followed by FieldsDigest(), so the signature covers every field
// ciphertext too.
func (e *Envelope) SignedMessage() []byte {
	b := cryptobyte.NewBuilder(make([]byte, 0, 64+e.Header.sizeHint()))
	if e.Header.Version == Version2 {
		b.AddBytes([]byte(LabelHeaderSignatureV2))
	} else {
		b.AddBytes([]byte(LabelHeaderSignature))
	}
	b.AddUint8(0)
	e.Header.addHeader(b)
	if e.Header.Version == Version2 {
		d := e.FieldsDigest()
		b.AddBytes(d[:])
	}
	return b.BytesOrPanic()
}

// addString8, addBytes8 and addBytes32 write a u8 or u32 length and the
// bytes: what cryptobyte's Add*LengthPrefixed writes, without a child
// builder per field (the header is encoded for every signature check). A
// value too long for its prefix sets b's error, so BytesOrPanic panics.
func addString8(b *cryptobyte.Builder, s string) {
	if len(s) > math.MaxUint8 {
		b.SetError(fmt.Errorf("%w: a %d-byte string has a 1-byte length prefix", ErrTooLarge, len(s)))
		return
	}
	b.AddUint8(uint8(len(s)))
	b.AddBytes([]byte(s))
}

func addBytes8(b *cryptobyte.Builder, p []byte) {
	if len(p) > math.MaxUint8 {
		b.SetError(fmt.Errorf("%w: a %d-byte value has a 1-byte length prefix", ErrTooLarge, len(p)))
		return
	}
	b.AddUint8(uint8(len(p)))
	b.AddBytes(p)
}

func addBytes32(b *cryptobyte.Builder, p []byte) {
	if uint64(len(p)) > math.MaxUint32 {
		b.SetError(fmt.Errorf("%w: a %d-byte value has a 4-byte length prefix", ErrTooLarge, len(p)))
		return
	}
	b.AddUint32(uint32(len(p)))
	b.AddBytes(p)
}

// sizeHint is about the size of h's encoding, to size a builder once.
func (h *Header) sizeHint() int {
	n := 64 + len(h.TransactionID) + len(h.JobID) + len(h.PublicFields) + len(h.SealedBy) + len(h.SigningKeyID)
	for _, p := range h.Participants {
		n += 1 + len(p)
	}
	for _, f := range h.FieldNames {
		n += 1 + len(f)
	}
	for i := range h.Stanzas {
		s := &h.Stanzas[i]
		n += 16 + len(s.ParticipantID) + len(s.EphemeralPublic) + len(s.WrappedDEK)
	}
	return n
}

func (h *Header) addBinding(b *cryptobyte.Builder) {
	b.AddUint8(h.Version)
	addString8(b, h.TransactionID)
	addString8(b, h.JobID)
	ms := h.CreatedAt.UnixMilli()
	if ms < 0 {
		b.SetError(fmt.Errorf("%w: created-at before 1970", ErrMalformed))
	}
	b.AddUint64(uint64(ms))
	addBytes32(b, h.PublicFields)
	if len(h.Participants) > math.MaxUint8 {
		b.SetError(fmt.Errorf("%w: too many participants", ErrTooLarge))
	}
	b.AddUint8(uint8(len(h.Participants)))
	for _, p := range h.Participants {
		addString8(b, p)
	}
	if h.Version == Version2 {
		addString8(b, h.SealedBy)
		if len(h.FieldNames) > math.MaxUint8 {
			b.SetError(fmt.Errorf("%w: too many fields", ErrTooLarge))
		}
		b.AddUint8(uint8(len(h.FieldNames)))
		for _, n := range h.FieldNames {
			addString8(b, n)
		}
	}
}

func (h *Header) addHeader(b *cryptobyte.Builder) {
	h.addBinding(b)
	if len(h.Stanzas) > math.MaxUint8 {
		b.SetError(fmt.Errorf("%w: too many stanzas", ErrTooLarge))
	}
	b.AddUint8(uint8(len(h.Stanzas)))
	for i := range h.Stanzas {
		s := &h.Stanzas[i]
		b.AddUint8(uint8(s.Kind))
		addString8(b, s.ParticipantID)
		b.AddUint32(s.KeyVersion)
		b.AddUint8(uint8(s.Alg))
		b.AddUint8(uint8(s.KDF))
		addBytes8(b, s.EphemeralPublic)
		addBytes8(b, s.WrappedDEK)
	}
	addString8(b, h.SigningKeyID)
}

// ParseText parses the text form of an envelope. It rejects padding, line
// breaks, the standard base64 alphabet and non-canonical trailing bits with
// ErrMalformed, input longer than MaxTextSize with ErrTooLarge, and otherwise
// behaves like Parse.
func ParseText(s string) (*Envelope, error) {
	if len(s) > MaxTextSize {
		return nil, fmt.Errorf("%w: text form is %d bytes, limit %d", ErrTooLarge, len(s), MaxTextSize)
	}
	// The decoder skips CR and LF; the text form has none.
	if strings.ContainsAny(s, "\r\n") {
		return nil, fmt.Errorf("%w: line break in text form", ErrMalformed)
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: text form: %v", ErrMalformed, err)
	}
	return Parse(b)
}

// Parse decodes a binary envelope and checks it against every rule of the
// format (see Validate and docs/envelope.md). Errors: ErrTooLarge above
// MaxEnvelopeSize or any other limit; ErrVersion for a known magic with an
// unknown version; ErrMalformed for everything else, including trailing
// bytes. Parse does not verify the signature: call Verify. The returned
// envelope does not share memory with b.
func Parse(b []byte) (*Envelope, error) {
	if len(b) > MaxEnvelopeSize {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(b), MaxEnvelopeSize)
	}
	s := cryptobyte.String(b)
	var m []byte
	if !s.ReadBytes(&m, len(magic)) || !bytes.Equal(m, magic[:]) {
		return nil, fmt.Errorf("%w: not an envelope (bad magic)", ErrMalformed)
	}
	var v uint8
	if !s.ReadUint8(&v) {
		return nil, fmt.Errorf("%w: truncated before version", ErrMalformed)
	}
	if v != Version1 && v != Version2 {
		return nil, fmt.Errorf("%w: version %d, this build reads %d and %d", ErrVersion, v, Version1, Version2)
	}
	e := &Envelope{Header: Header{Version: v}}
	if err := e.decode(&s); err != nil {
		return nil, err
	}
	if !s.Empty() {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(s))
	}
	if err := e.Validate(); err != nil {
		return nil, err
	}
	return e, nil
}

// readUint32Prefixed reads a big-endian uint32 length and that many bytes.
func readUint32Prefixed(s *cryptobyte.String, out *cryptobyte.String) bool {
	var n uint32
	if !s.ReadUint32(&n) || uint64(n) > uint64(len(*s)) {
		return false
	}
	var v []byte
	if !s.ReadBytes(&v, int(n)) {
		return false
	}
	*out = v
	return true
}

func truncated(what string) error {
	return fmt.Errorf("%w: truncated or bad length in %s", ErrMalformed, what)
}

func readString8(s *cryptobyte.String, dst *string, what string) error {
	var v cryptobyte.String
	if !s.ReadUint8LengthPrefixed(&v) {
		return truncated(what)
	}
	*dst = string(v)
	return nil
}

func readBytes8(s *cryptobyte.String, dst *[]byte, what string) error {
	var v cryptobyte.String
	if !s.ReadUint8LengthPrefixed(&v) {
		return truncated(what)
	}
	*dst = bytes.Clone([]byte(v))
	return nil
}

// decode reads everything after the version byte; it checks structure and
// limits, Validate checks the rest.
func (e *Envelope) decode(s *cryptobyte.String) error {
	h := &e.Header
	if err := readString8(s, &h.TransactionID, "transaction id"); err != nil {
		return err
	}
	if err := readString8(s, &h.JobID, "job id"); err != nil {
		return err
	}
	var ms uint64
	if !s.ReadUint64(&ms) {
		return truncated("created-at")
	}
	if ms > math.MaxInt64 {
		return fmt.Errorf("%w: created-at out of range", ErrMalformed)
	}
	h.CreatedAt = time.UnixMilli(int64(ms)).UTC()
	var pf cryptobyte.String
	if !readUint32Prefixed(s, &pf) {
		return truncated("public fields")
	}
	if len(pf) > MaxPublicFields {
		return fmt.Errorf("%w: public fields are %d bytes, limit %d", ErrTooLarge, len(pf), MaxPublicFields)
	}
	h.PublicFields = bytes.Clone([]byte(pf))
	var n uint8
	if !s.ReadUint8(&n) {
		return truncated("participant count")
	}
	if n > MaxParticipants {
		return fmt.Errorf("%w: %d participants, limit %d", ErrTooLarge, n, MaxParticipants)
	}
	h.Participants = make([]string, n)
	for i := range h.Participants {
		if err := readString8(s, &h.Participants[i], "participant id"); err != nil {
			return err
		}
	}
	if h.Version == Version2 {
		if err := readString8(s, &h.SealedBy, "sealed-by"); err != nil {
			return err
		}
		if !s.ReadUint8(&n) {
			return truncated("field count")
		}
		if n > MaxFields {
			return fmt.Errorf("%w: %d fields, limit %d", ErrTooLarge, n, MaxFields)
		}
		h.FieldNames = make([]string, n)
		for i := range h.FieldNames {
			if err := readString8(s, &h.FieldNames[i], "field name"); err != nil {
				return err
			}
		}
	}
	if !s.ReadUint8(&n) {
		return truncated("stanza count")
	}
	if int(n) != len(h.Participants)+1 {
		return fmt.Errorf("%w: %d stanzas for %d participants, want one each plus escrow", ErrMalformed, n, len(h.Participants))
	}
	h.Stanzas = make([]Stanza, n)
	for i := range h.Stanzas {
		st := &h.Stanzas[i]
		var kind, alg, kdf uint8
		if !s.ReadUint8(&kind) {
			return truncated("stanza kind")
		}
		st.Kind = StanzaKind(kind)
		if err := readString8(s, &st.ParticipantID, "stanza participant id"); err != nil {
			return err
		}
		if !s.ReadUint32(&st.KeyVersion) || !s.ReadUint8(&alg) || !s.ReadUint8(&kdf) {
			return truncated("stanza")
		}
		st.Alg, st.KDF = device.KeyAlg(alg), device.KDF(kdf)
		if err := readBytes8(s, &st.EphemeralPublic, "ephemeral public key"); err != nil {
			return err
		}
		if err := readBytes8(s, &st.WrappedDEK, "wrapped DEK"); err != nil {
			return err
		}
	}
	if err := readString8(s, &h.SigningKeyID, "signing key id"); err != nil {
		return err
	}
	var sig, nonce []byte
	if h.Version == Version2 {
		if !s.ReadBytes(&sig, SignatureSize) {
			return truncated("signature")
		}
		e.Signature = bytes.Clone(sig)
		e.Fields = make([]FieldCiphertext, len(h.FieldNames))
		for i := range e.Fields {
			var ct cryptobyte.String
			if !s.ReadBytes(&nonce, NonceSize) || !readUint32Prefixed(s, &ct) {
				return truncated(fmt.Sprintf("ciphertext of field %d", i))
			}
			e.Fields[i] = FieldCiphertext{Nonce: bytes.Clone(nonce), Ciphertext: bytes.Clone([]byte(ct))}
		}
		return nil
	}
	if !s.ReadBytes(&sig, SignatureSize) || !s.ReadBytes(&nonce, NonceSize) {
		return truncated("signature and nonce")
	}
	e.Signature, e.Nonce = bytes.Clone(sig), bytes.Clone(nonce)
	var ct cryptobyte.String
	if !readUint32Prefixed(s, &ct) {
		return truncated("ciphertext")
	}
	e.Ciphertext = bytes.Clone([]byte(ct))
	return nil
}

// Validate checks every rule Parse enforces beyond the byte layout: valid
// ids; canonical public fields within MaxPublicFields; CreatedAt not before
// 1970 and a whole number of milliseconds; 1..MaxParticipants unique
// participants; one participant stanza per participant in the same order,
// then exactly one escrow stanza (P256, no participant id), last; known
// algorithms and KDF; ephemeral keys of the right size (and on the curve for
// P256); WrappedDEKSize-byte wrapped DEKs; a SignatureSize-byte signature, a
// NonceSize-byte nonce, and a ciphertext of TagSize to MaxPlaintext+TagSize
// bytes. Errors are ErrTooLarge for limits and ErrMalformed otherwise.
//
// Version 2 replaces the nonce and ciphertext rules by validateFields'.
func (e *Envelope) Validate() error {
	h := &e.Header
	if h.Version != Version1 && h.Version != Version2 {
		return fmt.Errorf("%w: version %d", ErrMalformed, h.Version)
	}
	for _, f := range []struct{ name, id string }{
		{"transaction id", h.TransactionID}, {"job id", h.JobID}, {"signing key id", h.SigningKeyID},
	} {
		if err := ValidateID(f.id); err != nil {
			return fmt.Errorf("%w: %s: %w", ErrMalformed, f.name, err)
		}
	}
	ms := h.CreatedAt.UnixMilli()
	if ms < 0 || !h.CreatedAt.Equal(time.UnixMilli(ms)) {
		return fmt.Errorf("%w: created-at must be a whole millisecond since 1970", ErrMalformed)
	}
	if len(h.PublicFields) > MaxPublicFields {
		return fmt.Errorf("%w: public fields are %d bytes, limit %d", ErrTooLarge, len(h.PublicFields), MaxPublicFields)
	}
	if !IsCanonicalJSON(h.PublicFields) { // the scan; CanonicalJSON says why not
		c, err := CanonicalJSON(h.PublicFields)
		if err != nil {
			return fmt.Errorf("%w: public fields: %w", ErrMalformed, err)
		}
		if !bytes.Equal(c, h.PublicFields) {
			return fmt.Errorf("%w: public fields are not in canonical form", ErrMalformed)
		}
		return fmt.Errorf("%w: public fields: IsCanonicalJSON and CanonicalJSON disagree", ErrMalformed) // fail closed
	}
	if len(h.Participants) > MaxParticipants {
		return fmt.Errorf("%w: %d participants, limit %d", ErrTooLarge, len(h.Participants), MaxParticipants)
	}
	if len(h.Participants) == 0 {
		return fmt.Errorf("%w: no participants", ErrMalformed)
	}
	seen := make(map[string]bool, len(h.Participants))
	for _, p := range h.Participants {
		if err := ValidateID(p); err != nil {
			return fmt.Errorf("%w: participant: %w", ErrMalformed, err)
		}
		if seen[p] {
			return fmt.Errorf("%w: participant %q listed twice", ErrMalformed, p)
		}
		seen[p] = true
	}
	if len(h.Stanzas) != len(h.Participants)+1 {
		return fmt.Errorf("%w: %d stanzas for %d participants, want one each plus escrow", ErrMalformed, len(h.Stanzas), len(h.Participants))
	}
	for i := range h.Stanzas {
		st := &h.Stanzas[i]
		if i < len(h.Participants) {
			if st.Kind != StanzaParticipant || st.ParticipantID != h.Participants[i] {
				return fmt.Errorf("%w: stanza %d is not the participant stanza for %q", ErrMalformed, i, h.Participants[i])
			}
		} else {
			if st.Kind != StanzaEscrow || st.ParticipantID != "" || st.Alg != device.P256 {
				return fmt.Errorf("%w: last stanza is not a P-256 escrow stanza", ErrMalformed)
			}
		}
		if st.KDF != device.KDFECBContext {
			return fmt.Errorf("%w: stanza %d: unknown KDF %d", ErrMalformed, i, st.KDF)
		}
		if err := checkPublic(st.Alg, st.EphemeralPublic); err != nil {
			return fmt.Errorf("%w: stanza %d ephemeral key: %w", ErrMalformed, i, err)
		}
		if len(st.WrappedDEK) != WrappedDEKSize {
			return fmt.Errorf("%w: stanza %d: wrapped DEK is %d bytes, want %d", ErrMalformed, i, len(st.WrappedDEK), WrappedDEKSize)
		}
	}
	if len(e.Signature) != SignatureSize {
		return fmt.Errorf("%w: signature is %d bytes, want %d", ErrMalformed, len(e.Signature), SignatureSize)
	}
	if h.Version == Version2 {
		return e.validateFields()
	}
	if h.SealedBy != "" || h.FieldNames != nil || e.Fields != nil {
		return fmt.Errorf("%w: version 1 has no sealed-by and no fields", ErrMalformed)
	}
	if len(e.Nonce) != NonceSize {
		return fmt.Errorf("%w: nonce is %d bytes, want %d", ErrMalformed, len(e.Nonce), NonceSize)
	}
	if len(e.Ciphertext) > MaxPlaintext+TagSize {
		return fmt.Errorf("%w: ciphertext is %d bytes, limit %d", ErrTooLarge, len(e.Ciphertext), MaxPlaintext+TagSize)
	}
	if len(e.Ciphertext) < TagSize {
		return fmt.Errorf("%w: ciphertext shorter than the GCM tag", ErrMalformed)
	}
	return nil
}

// publicSize returns the public key size for alg, or 0 if alg is unknown.
func publicSize(alg device.KeyAlg) int {
	switch alg {
	case device.X25519:
		return 32
	case device.P256:
		return 65
	}
	return 0
}

// curve returns the crypto/ecdh curve for alg, or nil.
func curve(alg device.KeyAlg) ecdh.Curve {
	switch alg {
	case device.X25519:
		return ecdh.X25519()
	case device.P256:
		return ecdh.P256()
	}
	return nil
}

// checkPublic checks that pub is an encoded public key of alg: 32 bytes for
// X25519, an uncompressed point on the curve for P256.
func checkPublic(alg device.KeyAlg, pub []byte) error {
	n := publicSize(alg)
	if n == 0 {
		return fmt.Errorf("unknown algorithm %d", alg)
	}
	if len(pub) != n {
		return fmt.Errorf("%s public key is %d bytes, want %d", alg, len(pub), n)
	}
	if _, err := curve(alg).NewPublicKey(pub); err != nil {
		return fmt.Errorf("invalid %s public key", alg)
	}
	return nil
}
