package envelope

import (
	"bytes"
	"compress/flate"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/crypto/cryptobyte"

	"custody/internal/device"
)

// Version-2 limits.
const (
	// MaxFields is the largest number of fields of a version-2 envelope.
	MaxFields = device.MaxFields
	// MaxFieldName is the longest field name, in bytes.
	MaxFieldName = 64
	// CompressThreshold is the smallest field value SealV2 compresses when
	// asked to (SealInput.Compress); a value is stored compressed only if
	// that saves at least an eighth of it.
	CompressThreshold = 1024
)

// Value encodings: the first byte of every sealed field value (inside the
// GCM ciphertext, so authenticated and hidden), followed by the value.
const (
	// EncodingRaw: the canonical JSON value as it is.
	EncodingRaw = 0x00
	// EncodingDeflate: the canonical JSON value compressed with DEFLATE
	// (RFC 1951, compress/flate).
	EncodingDeflate = 0x01
)

// encodeValue returns the sealed form of a field value: EncodingRaw ‖ v,
// or, when compress is set, v has at least CompressThreshold bytes and
// DEFLATE saves at least an eighth, EncodingDeflate ‖ deflate(v).
func encodeValue(v []byte, compress bool) []byte {
	if compress && len(v) >= CompressThreshold {
		var b bytes.Buffer
		b.WriteByte(EncodingDeflate)
		w, _ := flate.NewWriter(&b, flate.BestCompression) // the level is valid
		w.Write(v)
		w.Close()
		if b.Len()-1 <= len(v)-len(v)/8 {
			return b.Bytes()
		}
	}
	return append([]byte{EncodingRaw}, v...)
}

// DecodeValue returns the field value held by the sealed form sealed (what
// the device returns for a version-2 field): the bytes after an
// EncodingRaw byte, or the DEFLATE stream after an EncodingDeflate byte
// inflated, at most MaxPlaintext bytes. It returns ErrMalformed for an
// empty input, an unknown encoding, a corrupt stream or one that inflates
// beyond MaxPlaintext (the data is authenticated, so only a sealer that is
// not this package's SealV2 could have produced it).
func DecodeValue(sealed []byte) ([]byte, error) {
	if len(sealed) == 0 {
		return nil, fmt.Errorf("%w: empty field value", ErrMalformed)
	}
	switch sealed[0] {
	case EncodingRaw:
		return sealed[1:], nil
	case EncodingDeflate:
		r := flate.NewReader(bytes.NewReader(sealed[1:]))
		defer r.Close()
		v, err := io.ReadAll(io.LimitReader(r, MaxPlaintext+1))
		if err != nil {
			return nil, fmt.Errorf("%w: compressed field value: %v", ErrMalformed, err)
		}
		if len(v) > MaxPlaintext {
			return nil, fmt.Errorf("%w: compressed field value inflates beyond %d bytes", ErrMalformed, MaxPlaintext)
		}
		return v, nil
	}
	return nil, fmt.Errorf("%w: unknown field value encoding %#x", ErrMalformed, sealed[0])
}

// Version-2 domain-separation labels, each followed by 0x00 wherever it is
// hashed or authenticated, each used for exactly one purpose.
const (
	// LabelHeaderSignatureV2 prefixes the signed message of a version-2
	// envelope (encoded Header ‖ FieldsDigest).
	LabelHeaderSignatureV2 = "custody.envelope/v2/header-signature"
	// LabelBinding prefixes the encoded Binding in BindingHash.
	LabelBinding = "custody.envelope/v2/binding"
	// LabelFieldKey prefixes the inputs of a field-key derivation context.
	LabelFieldKey = "custody.envelope/v2/field-key"
	// LabelFieldAAD prefixes a field's additional authenticated data.
	LabelFieldAAD = "custody.envelope/v2/field-aad"
	// LabelFieldsDigest prefixes the field ciphertexts in FieldsDigest.
	LabelFieldsDigest = "custody.envelope/v2/fields-digest"
)

// ValidFieldName reports whether name may name a version-2 field: 1 to
// MaxFieldName bytes of valid UTF-8 without control (Cc) or format (Cf)
// characters, so that a name shown on a terminal or in a spreadsheet is what
// it looks like. It returns nil or an error matching ErrInvalidInput.
func ValidFieldName(name string) error {
	if len(name) == 0 || len(name) > MaxFieldName {
		return fmt.Errorf("%w: field name is %d bytes, want 1..%d", ErrInvalidInput, len(name), MaxFieldName)
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("%w: field name %q is not valid UTF-8", ErrInvalidInput, name)
	}
	if i := strings.IndexFunc(name, func(r rune) bool { return unicode.Is(unicode.Cc, r) || unicode.Is(unicode.Cf, r) }); i >= 0 {
		return fmt.Errorf("%w: field name %q has a control or format character at byte %d", ErrInvalidInput, name, i)
	}
	return nil
}

// SplitFields splits a confidential JSON object into its top-level fields,
// each value in canonical JSON (see CanonicalJSON), sorted by name. Errors:
// ErrInvalidInput for an object with no field, a field name ValidFieldName
// refuses, or (also matching ErrInvalidJSON) input that is not a JSON
// object CanonicalJSON accepts, including a duplicate field; ErrTooLarge
// for more than MaxFields fields or input over MaxPublicFields bytes.
func SplitFields(confidential []byte) ([]Field, error) {
	c, err := CanonicalJSON(confidential)
	if err != nil {
		if errors.Is(err, ErrTooLarge) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", ErrInvalidInput, err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(c, &m); err != nil { // cannot fail on CanonicalJSON output
		return nil, fmt.Errorf("%w: %w: %v", ErrInvalidInput, ErrInvalidJSON, err)
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("%w: the confidential object has no fields", ErrInvalidInput)
	}
	if len(m) > MaxFields {
		return nil, fmt.Errorf("%w: %d fields, limit %d", ErrTooLarge, len(m), MaxFields)
	}
	out := make([]Field, 0, len(m))
	for k, v := range m {
		if err := ValidFieldName(k); err != nil {
			return nil, err
		}
		out = append(out, Field{Name: k, Value: v})
	}
	slices.SortFunc(out, func(a, b Field) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// SealV2 seals in.Fields as a version-2 envelope for in.Participants and
// in.Escrow, records in.SealedBy, and has s sign the header. Like Seal it
// draws a random DEK and wraps it for every recipient in software from
// public keys only (the DEK is in host memory while SealV2 runs, as in
// version 1). It then draws one random nonce per field and has dev — the
// HSM in the daemon — derive each field key from the DEK as
// AES-256-ECB_DEK(FieldKeyContext(name)) and encrypt the field's value with
// AES-256-GCM under it with FieldAAD(name). What is encrypted is the
// value's sealed form: an encoding byte and the value, DEFLATE-compressed
// when in.Compress is set and it is worth it (see CompressThreshold and
// DecodeValue). The field keys exist only on dev. The DEK, ephemeral keys, ECDH secrets and KEKs are cleared before
// SealV2 returns (best effort).
//
// Errors: Seal's, plus ErrInvalidInput for no fields, a duplicate or invalid
// field name, a Plaintext (version 1 only), a SealedBy that breaks
// ValidateID or a nil dev; ErrTooLarge for more than MaxFields fields or
// values totalling more than MaxPlaintext bytes; dev's error, wrapped.
func SealV2(ctx context.Context, in SealInput, s Signer, dev FieldSealer) (*Envelope, error) {
	if dev == nil {
		return nil, fmt.Errorf("%w: no field sealer", ErrInvalidInput)
	}
	if in.Plaintext != nil {
		return nil, fmt.Errorf("%w: version 2 seals fields, not a plaintext", ErrInvalidInput)
	}
	if err := ValidateID(in.SealedBy); err != nil {
		return nil, fmt.Errorf("%w: sealed-by: %w", ErrInvalidInput, err)
	}
	fields := slices.Clone(in.Fields)
	slices.SortFunc(fields, func(a, b Field) int { return strings.Compare(a.Name, b.Name) })
	if len(fields) == 0 {
		return nil, fmt.Errorf("%w: no fields", ErrInvalidInput)
	}
	if len(fields) > MaxFields {
		return nil, fmt.Errorf("%w: %d fields, limit %d", ErrTooLarge, len(fields), MaxFields)
	}
	total := 0
	names := make([]string, len(fields))
	sealed := make([][]byte, len(fields))
	defer func() {
		for _, v := range sealed {
			clear(v)
		}
	}()
	for i, f := range fields {
		if err := ValidFieldName(f.Name); err != nil {
			return nil, err
		}
		if i > 0 && f.Name == fields[i-1].Name {
			return nil, fmt.Errorf("%w: field %q given twice", ErrInvalidInput, f.Name)
		}
		names[i] = f.Name
		total += len(f.Value)
	}
	if total > MaxPlaintext {
		return nil, fmt.Errorf("%w: field values total %d bytes, limit %d", ErrTooLarge, total, MaxPlaintext)
	}
	total = 0
	for i, f := range fields {
		sealed[i] = encodeValue(f.Value, in.Compress)
		total += len(sealed[i]) + TagSize
	}
	if total > device.MaxCiphertext {
		return nil, fmt.Errorf("%w: sealed fields total %d bytes, limit %d", ErrTooLarge, total, device.MaxCiphertext)
	}
	in.Plaintext = nil
	h, err := sealHeader(&in, s)
	if err != nil {
		return nil, err
	}
	h.Version, h.SealedBy, h.FieldNames = Version2, in.SealedBy, names
	r := in.Rand
	if r == nil {
		r = rand.Reader
	}
	dek := make([]byte, DEKSize)
	defer clear(dek)
	if _, err := io.ReadFull(r, dek); err != nil {
		return nil, fmt.Errorf("envelope: reading randomness: %w", err)
	}
	e := &Envelope{Header: *h, Fields: make([]FieldCiphertext, len(fields))}
	for i := range e.Fields {
		e.Fields[i].Nonce = make([]byte, NonceSize)
		if _, err := io.ReadFull(r, e.Fields[i].Nonce); err != nil {
			return nil, fmt.Errorf("envelope: reading randomness: %w", err)
		}
	}
	if err := wrapAll(r, dek, &e.Header, in); err != nil {
		return nil, err
	}
	req := device.SealFieldsRequest{DEK: dek, Fields: make([]device.FieldSeal, len(fields))}
	bh := e.BindingHash()
	for i, f := range fields {
		req.Fields[i] = device.FieldSeal{Context: fieldKeyContext(bh, f.Name), Nonce: e.Fields[i].Nonce, Plaintext: sealed[i], AAD: fieldAAD(bh, f.Name)}
	}
	cts, err := dev.SealFields(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("envelope: sealing fields: %w", err)
	}
	if len(cts) != len(fields) {
		return nil, fmt.Errorf("envelope: field sealer returned %d ciphertexts for %d fields", len(cts), len(fields))
	}
	for i, ct := range cts {
		if len(ct) != len(sealed[i])+TagSize {
			return nil, fmt.Errorf("envelope: field sealer returned %d bytes for field %d of %d", len(ct), i, len(sealed[i]))
		}
		e.Fields[i].Ciphertext = ct
	}
	if err := sign(ctx, e, s); err != nil {
		return nil, err
	}
	return e, nil
}

// wrapAll appends to h one stanza per participant of in, then the escrow
// stanza, each wrapping dek.
func wrapAll(r io.Reader, dek []byte, h *Header, in SealInput) error {
	recipients := append(append([]Recipient(nil), in.Participants...), in.Escrow)
	for i, rc := range recipients {
		kind := StanzaParticipant
		if i == len(recipients)-1 {
			kind = StanzaEscrow
		}
		st, err := wrapDEK(r, dek, kind, rc)
		if err != nil {
			return err
		}
		h.Stanzas = append(h.Stanzas, st)
	}
	return nil
}

// sign has s sign e's header and checks the result.
func sign(ctx context.Context, e *Envelope, s Signer) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	digest := sha256.Sum256(e.SignedMessage())
	sig, err := s.Sign(ctx, digest[:])
	if err != nil {
		return fmt.Errorf("envelope: signing header: %w", err)
	}
	if len(sig) != SignatureSize {
		return fmt.Errorf("%w: signer returned %d bytes, want %d (r||s)", ErrInvalidInput, len(sig), SignatureSize)
	}
	e.Signature = bytes.Clone(sig)
	if err := e.Validate(); err != nil { // cannot happen; a guard against drift
		return fmt.Errorf("envelope: sealed envelope fails validation: %w", err)
	}
	return nil
}

// validateFields checks the version-2 rules of Validate: a sealed-by id;
// 1..MaxFields field names, each valid (ValidFieldName) and in strictly
// increasing byte order (so unique); one field ciphertext per name, each
// with a NonceSize-byte nonce and at least 1+TagSize bytes (the encoding
// byte and the tag); ciphertexts totalling at most device.MaxCiphertext
// (what one OpenFields takes); no version-1 payload.
func (e *Envelope) validateFields() error {
	h := &e.Header
	if err := ValidateID(h.SealedBy); err != nil {
		return fmt.Errorf("%w: sealed-by: %w", ErrMalformed, err)
	}
	if len(h.FieldNames) > MaxFields {
		return fmt.Errorf("%w: %d fields, limit %d", ErrTooLarge, len(h.FieldNames), MaxFields)
	}
	if len(h.FieldNames) == 0 {
		return fmt.Errorf("%w: no fields", ErrMalformed)
	}
	for i, n := range h.FieldNames {
		if err := ValidFieldName(n); err != nil {
			return fmt.Errorf("%w: field %d: %w", ErrMalformed, i, err)
		}
		if i > 0 && n <= h.FieldNames[i-1] {
			return fmt.Errorf("%w: field names not in strictly increasing order at %d (%q after %q)", ErrMalformed, i, n, h.FieldNames[i-1])
		}
	}
	if len(e.Fields) != len(h.FieldNames) {
		return fmt.Errorf("%w: %d field ciphertexts for %d field names", ErrMalformed, len(e.Fields), len(h.FieldNames))
	}
	total := 0
	for i, f := range e.Fields {
		if len(f.Nonce) != NonceSize {
			return fmt.Errorf("%w: field %d: nonce is %d bytes, want %d", ErrMalformed, i, len(f.Nonce), NonceSize)
		}
		if len(f.Ciphertext) < TagSize+1 {
			return fmt.Errorf("%w: field %d: ciphertext shorter than the encoding byte and the GCM tag", ErrMalformed, i)
		}
		total += len(f.Ciphertext)
	}
	if total > device.MaxCiphertext {
		return fmt.Errorf("%w: field ciphertexts total %d bytes, limit %d", ErrTooLarge, total, device.MaxCiphertext)
	}
	if e.Nonce != nil || e.Ciphertext != nil {
		return fmt.Errorf("%w: version 2 has no single payload", ErrMalformed)
	}
	return nil
}

// BindingHash returns SHA-256(LabelBinding ‖ 0x00 ‖ encoded Binding): what
// ties every field key and field AAD of a version-2 envelope to its
// transaction, job, creation time, public fields, participants, sealed-by
// and field names. It excludes the stanzas and signing key id, so a rewrap
// leaves every field ciphertext valid.
func (e *Envelope) BindingHash() [32]byte {
	b := cryptobyte.NewBuilder(make([]byte, 0, 32+e.Header.sizeHint()))
	b.AddBytes([]byte(LabelBinding))
	b.AddUint8(0)
	e.Header.addBinding(b)
	return sha256.Sum256(b.BytesOrPanic())
}

// FieldKeyContext returns the 32-byte derivation context of the key of
// field name: SHA-256(LabelFieldKey ‖ 0x00 ‖ BindingHash ‖ u8 len(name) ‖
// name). The field key is AES-256-ECB_DEK(context), computed on the device.
func (e *Envelope) FieldKeyContext(name string) [32]byte {
	return fieldKeyContext(e.BindingHash(), name)
}

// FieldAAD returns the GCM additional data of field name: LabelFieldAAD ‖
// 0x00 ‖ BindingHash ‖ u8 len(name) ‖ name.
func (e *Envelope) FieldAAD(name string) []byte {
	return fieldAAD(e.BindingHash(), name)
}

func fieldKeyContext(bh [32]byte, name string) [32]byte {
	h := sha256.New()
	h.Write([]byte(LabelFieldKey))
	h.Write([]byte{0})
	h.Write(bh[:])
	h.Write([]byte{byte(len(name))})
	h.Write([]byte(name))
	var out [32]byte
	h.Sum(out[:0])
	return out
}

func fieldAAD(bh [32]byte, name string) []byte {
	out := make([]byte, 0, len(LabelFieldAAD)+1+32+1+len(name))
	out = append(out, LabelFieldAAD...)
	out = append(out, 0)
	out = append(out, bh[:]...)
	out = append(out, byte(len(name)))
	return append(out, name...)
}

// FieldsDigest returns SHA-256(LabelFieldsDigest ‖ 0x00 ‖ for each field:
// nonce ‖ u32 len(ciphertext) ‖ ciphertext), which the version-2 header
// signature covers.
func (e *Envelope) FieldsDigest() [32]byte {
	h := sha256.New()
	h.Write([]byte(LabelFieldsDigest))
	h.Write([]byte{0})
	for _, f := range e.Fields {
		h.Write(f.Nonce)
		h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(f.Ciphertext))))
		h.Write(f.Ciphertext)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// FieldIndex returns the index of field name in a version-2 envelope, or
// -1 if it has no such field.
func (e *Envelope) FieldIndex(name string) int {
	i, ok := slices.BinarySearch(e.Header.FieldNames, name)
	if !ok {
		return -1
	}
	return i
}

// OpenFieldsRequest returns what the device needs to open the fields at
// indices (each from FieldIndex; in any order, the answer follows it) of a
// version-2 envelope through stanza number stanza, as OpenRequest does for
// version 1. It returns an error matching ErrVersion for a version-1
// envelope and ErrInvalidInput for no index or one out of range. The
// request shares memory with e. It does not verify: call Verify first. It
// panics if stanza is out of range.
func (e *Envelope) OpenFieldsRequest(stanza int, keyLabel string, recipientPublic []byte, indices []int) (device.OpenFieldsRequest, error) {
	if e.Header.Version != Version2 {
		return device.OpenFieldsRequest{}, fmt.Errorf("%w: version %d has no fields to open one by one", ErrVersion, e.Header.Version)
	}
	if len(indices) == 0 {
		return device.OpenFieldsRequest{}, fmt.Errorf("%w: no field to open", ErrInvalidInput)
	}
	st := &e.Header.Stanzas[stanza]
	req := device.OpenFieldsRequest{
		KeyLabel:   keyLabel,
		Alg:        st.Alg,
		KDF:        st.KDF,
		PeerPublic: st.EphemeralPublic,
		Context:    KDFContext(st.Alg, st.KDF, st.EphemeralPublic, recipientPublic),
		WrappedDEK: st.WrappedDEK,
		Fields:     make([]device.FieldOpen, len(indices)),
	}
	bh := e.BindingHash()
	for k, i := range indices {
		if i < 0 || i >= len(e.Fields) {
			return device.OpenFieldsRequest{}, fmt.Errorf("%w: field index %d out of range", ErrInvalidInput, i)
		}
		name := e.Header.FieldNames[i]
		req.Fields[k] = device.FieldOpen{Context: fieldKeyContext(bh, name), Nonce: e.Fields[i].Nonce, Ciphertext: e.Fields[i].Ciphertext, AAD: fieldAAD(bh, name)}
	}
	return req, nil
}

// SoftwareFields is a FieldSealer that computes in software exactly what
// the device computes: field key = AES-256-ECB_DEK(Context), then
// AES-256-GCM. It exists for the known-answer generator and for tests; the
// daemon seals through the HSM so that field keys exist only there.
type SoftwareFields struct{}

// SealFields implements FieldSealer.
func (SoftwareFields) SealFields(_ context.Context, req device.SealFieldsRequest) ([][]byte, error) {
	if len(req.DEK) != DEKSize {
		return nil, fmt.Errorf("%w: DEK is %d bytes", device.ErrInvalidRequest, len(req.DEK))
	}
	out := make([][]byte, len(req.Fields))
	for i, f := range req.Fields {
		key, err := ecbContextKEK(req.DEK, f.Context)
		if err != nil {
			return nil, err
		}
		block, err := aes.NewCipher(key)
		clear(key)
		if err != nil {
			return nil, err
		}
		gcm, err := cipher.NewGCM(block)
		if err != nil {
			return nil, err
		}
		if len(f.Nonce) != gcm.NonceSize() {
			return nil, fmt.Errorf("%w: nonce is %d bytes", device.ErrInvalidRequest, len(f.Nonce))
		}
		out[i] = gcm.Seal(nil, f.Nonce, f.Plaintext, f.AAD)
	}
	return out, nil
}
