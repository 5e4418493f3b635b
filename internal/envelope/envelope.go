// Package envelope owns the custody envelope format, versions 1 and 2: how
// one transaction's confidential fields are encrypted, for whom, and how
// that is bound to the transaction and signed. It encodes and strictly parses
// envelopes, seals them in software from public keys only, verifies their
// header signature, and builds the device.OpenRequest and
// device.RewrapRequest with which the device opens one or moves its DEK to
// new recipient keys. It never holds a private key and never opens a
// payload itself: opening happens inside the HSM (package hsm). It does not
// link the HSM's driver (package device holds the shared types).
//
// # Structure
//
// An envelope is a header, a signature over the header, and a payload:
//
//	Envelope = magic ‖ Header ‖ Signature ‖ Nonce ‖ Ciphertext
//	Header   = Binding ‖ Stanzas ‖ SigningKeyID
//	Binding  = version ‖ TransactionID ‖ JobID ‖ CreatedAt ‖ PublicFields ‖ Participants
//
// The payload is AES-256-GCM under a fresh random 32-byte DEK and a random
// 96-bit nonce. Its additional data (AAD) is a domain label followed by the
// encoded Binding, so a payload only decrypts under the transaction, job,
// creation time, public fields and participant list it was sealed for. The
// AAD deliberately excludes the stanzas and the signing key id: rewrapping
// (new stanzas, new signature) leaves the payload byte-for-byte unchanged.
//
// Each stanza wraps the DEK for one recipient: the participants, in list
// order, then exactly one escrow stanza, last. A stanza carries an ephemeral
// public key E; with the recipient public key R and the ECDH secret Z,
//
//	Context = SHA-256(LabelKDFContext ‖ 0x00 ‖ alg ‖ kdf ‖ u32 len(E) ‖ E ‖ u32 len(R) ‖ R)
//	KEK     = AES-256-ECB_Z(Context)          (device.KDFECBContext)
//	Wrapped = RFC 5649 AES key wrap of the DEK under KEK
//
// which is exactly what SoftHSM 2.6.1 can do on the device
// (CKM_ECDH1_DERIVE with CKD_NULL, CKM_AES_ECB_ENCRYPT_DATA,
// CKM_AES_KEY_WRAP_PAD). docs/envelope.md says what this profile does and
// does not guarantee.
//
// The daemon signs SHA-256(SignedMessage()) — a domain label followed by the
// whole encoded Header — with a P-256 key inside the HSM. Because the escrow
// stanza, the participant list, the public fields and every stanza byte are
// under that signature, and Verify runs before every open, an envelope whose
// escrow copy was removed, whose recipients were changed or whose public
// fields were edited does not open. The GCM tag catches a payload moved
// from another transaction.
//
// # Version 2
//
// Version 2 (SealV2, v2.go) adds to the Binding the sealing principal
// (SealedBy) and the field names, and replaces the single payload by one
// AES-256-GCM ciphertext per top-level field of the confidential object,
// each under the field key AES-256-ECB_DEK(FieldKeyContext(name)), derived
// on the device, with its own nonce and FieldAAD(name); both bind the field
// name and BindingHash. The signed message adds FieldsDigest, a digest of
// every field ciphertext. Stanzas, the stanza KDF and the DEK wrap are
// version 1's, so rewrap works on both versions unchanged and keeps every
// field ciphertext byte-identical. OpenFieldsRequest names only the fields
// to open: the device derives and decrypts nothing else. Sealing still draws
// the DEK in software and wraps it from public keys only; the field keys
// are derived by a FieldSealer (the HSM in the daemon; SoftwareFields, the
// software twin, in vector generation and tests).
//
// # Text form
//
// Text is the binary form in unpadded base64url (RFC 4648 §5), for JSON
// transport. The 12-byte magic is chosen so that every text form begins with
// "custody-envelope".
//
// # Strictness and limits
//
// Parse accepts exactly the byte strings Marshal produces for a valid
// envelope: one encoding per envelope, bounded lengths (MaxEnvelopeSize,
// MaxPlaintext, MaxParticipants, MaxPublicFields, MaxIDLength), canonical
// public fields, and no trailing bytes. The fuzz targets check that
// whatever parses re-marshals to the same bytes.
//
// # Concurrency and secrets
//
// Functions and methods are safe for concurrent use on distinct values; an
// Envelope is a plain value and must not be modified while another goroutine
// reads it. Seal holds the DEK, the ephemeral private keys, the ECDH secrets
// and the KEKs in memory only while sealing and clears them afterwards (best
// effort: Go may have copied them, and crypto/aes and crypto/ecdh keep their
// own internal copies that this package cannot clear).
package envelope

//go:generate go run ./internal/katgen -o testdata/vectors.json -o2 testdata/vectors-v2.json

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"io"
	"time"

	"custody/internal/device"
)

// Format versions. Parse reads both; Seal writes Version1 (one payload under
// the DEK), SealV2 writes Version2 (sealed_by, one ciphertext per top-level
// field under a key derived on the device). The daemon seals new envelopes
// in Version.
const (
	Version1 = 1
	Version2 = 2
	Version  = Version2
)

// Limits. Parse and Seal refuse anything larger with ErrTooLarge.
const (
	// MaxPlaintext is the largest payload plaintext, in bytes.
	// It is 1 MiB minus the GCM tag, so that the ciphertext fits the 1 MiB
	// that hsm.Token.Open takes (device.MaxCiphertext).
	MaxPlaintext = 1<<20 - TagSize
	// MaxParticipants is the largest number of participants (the escrow
	// stanza comes on top).
	MaxParticipants = 64
	// MaxPublicFields is the largest canonical public-fields JSON, in bytes.
	MaxPublicFields = 64 << 10
	// MaxIDLength is the longest id (transaction, job, participant, signing key).
	MaxIDLength = 128
	// MaxEnvelopeSize is the largest binary envelope. Every envelope within
	// the other limits fits: the header can take at most about 90 KiB.
	MaxEnvelopeSize = MaxPlaintext + 128<<10
	// MaxTextSize is the length of the text form of a MaxEnvelopeSize envelope.
	MaxTextSize = (MaxEnvelopeSize*8 + 5) / 6
)

// Sizes fixed by the format.
const (
	// DEKSize is the size of the AES-256 data-encryption key.
	DEKSize = 32
	// NonceSize is the size of the GCM nonce.
	NonceSize = 12
	// TagSize is the size of the GCM tag at the end of Ciphertext.
	TagSize = 16
	// SignatureSize is the size of a P-256 ECDSA signature r‖s.
	SignatureSize = 64
	// WrappedDEKSize is the size of the RFC 5649 wrap of a 32-byte DEK.
	WrappedDEKSize = DEKSize + 8
)

// Domain-separation labels. Each one is used for exactly one purpose and is
// followed by a 0x00 byte wherever it is hashed or authenticated.
const (
	// LabelPayloadAAD prefixes the encoded Binding in the payload AAD.
	LabelPayloadAAD = "custody.envelope/v1/payload-aad"
	// LabelHeaderSignature prefixes the encoded Header in the signed message.
	LabelHeaderSignature = "custody.envelope/v1/header-signature"
	// LabelKDFContext prefixes the inputs of the ecb-context KDF context hash.
	LabelKDFContext = "custody.envelope/v1/kdf/ecb-context"
)

// Sentinel errors. Callers branch on these with errors.Is; an error may match
// more than one (a bad id in a parsed envelope is both ErrMalformed and
// ErrInvalidID).
var (
	// ErrMalformed: the bytes are not a valid version-1 envelope.
	ErrMalformed = errors.New("envelope: malformed")
	// ErrVersion: the magic is right but the format version is neither
	// Version1 nor Version2, or an operation needs the other version.
	ErrVersion = errors.New("envelope: unsupported version")
	// ErrTooLarge: the envelope, its plaintext, public fields or participant
	// list exceeds a limit.
	ErrTooLarge = errors.New("envelope: too large")
	// ErrSignature: the header signature does not verify, or its key could
	// not be found or is not a P-256 key.
	ErrSignature = errors.New("envelope: header signature invalid")
	// ErrNoStanza: the envelope has no stanza for that participant.
	ErrNoStanza = errors.New("envelope: no stanza for participant")
	// ErrInvalidInput: Seal was given inputs it cannot seal (bad key,
	// duplicate participant, missing signer, ...).
	ErrInvalidInput = errors.New("envelope: invalid input")
	// ErrInvalidID: an id breaks the ValidateID rules.
	ErrInvalidID = errors.New("envelope: invalid id")
	// ErrInvalidJSON: public fields are not a JSON object CanonicalJSON accepts.
	ErrInvalidJSON = errors.New("envelope: invalid public fields JSON")
)

// StanzaKind says whom a stanza is for.
type StanzaKind uint8

const (
	// StanzaParticipant wraps the DEK for a named participant.
	StanzaParticipant StanzaKind = 1
	// StanzaEscrow wraps the DEK for the audit escrow key.
	StanzaEscrow StanzaKind = 2
)

func (k StanzaKind) String() string {
	switch k {
	case StanzaParticipant:
		return "participant"
	case StanzaEscrow:
		return "escrow"
	}
	return "unknown"
}

// Stanza is the DEK wrapped for one recipient key.
type Stanza struct {
	Kind            StanzaKind
	ParticipantID   string        // the participant; "" for the escrow stanza
	KeyVersion      uint32        // version of the recipient key (participant or escrow)
	Alg             device.KeyAlg // X25519 or P256; always P256 for escrow
	KDF             device.KDF    // always device.KDFECBContext in version 1
	EphemeralPublic []byte        // 32 bytes (X25519) or 65 bytes 04‖X‖Y (P256)
	WrappedDEK      []byte        // RFC 5649 wrap of the DEK, WrappedDEKSize bytes
}

// Header is the signed part of an envelope.
type Header struct {
	Version              uint8 // Version1 or Version2
	TransactionID, JobID string
	PublicFields         []byte    // canonical JSON object (see CanonicalJSON)
	CreatedAt            time.Time // millisecond precision, UTC, not before 1970
	Participants         []string  // ordered recipient list
	Stanzas              []Stanza  // one per participant, same order, then exactly one escrow stanza, last
	SigningKeyID         string    // which daemon key signed the header
	// SealedBy is the principal that asked for the seal (version 2; "" in
	// version 1). It satisfies ValidateID.
	SealedBy string
	// FieldNames names the sealed top-level fields of the confidential
	// object (version 2; nil in version 1): 1..MaxFields names that satisfy
	// ValidFieldName, in strictly increasing byte order. Names are not
	// secret; values are.
	FieldNames []string
}

// Envelope is one transaction's sealed confidential data.
type Envelope struct {
	Header     Header
	Signature  []byte // SignatureSize bytes, P-256 ECDSA r‖s over SHA-256(SignedMessage())
	Nonce      []byte // version 1: NonceSize bytes; nil in version 2
	Ciphertext []byte // version 1: GCM ciphertext ‖ tag; nil in version 2
	// Fields are the field ciphertexts of a version-2 envelope, one per
	// Header.FieldNames entry, same order; nil in version 1.
	Fields []FieldCiphertext
}

// FieldCiphertext is one sealed field of a version-2 envelope.
type FieldCiphertext struct {
	Nonce      []byte // NonceSize bytes
	Ciphertext []byte // GCM ciphertext ‖ tag
}

// Field is one top-level field of a confidential object to seal: its name
// and its value as canonical JSON (see SplitFields).
type Field struct {
	Name  string
	Value []byte
}

// FieldSealer encrypts the field values of a version-2 envelope under keys
// derived from the DEK (see SealV2). In the daemon it is the HSM
// (*hsm.Token), which derives the keys on the device; SoftwareFields
// computes the same bytes in software for known-answer vectors and tests.
type FieldSealer interface {
	SealFields(ctx context.Context, req device.SealFieldsRequest) ([][]byte, error)
}

// Recipient is a public key that Seal wraps the DEK for.
type Recipient struct {
	ID         string        // participant id; must be "" for the escrow recipient
	KeyVersion uint32        // recorded in the stanza
	Alg        device.KeyAlg // X25519 or P256 (escrow: P256 only)
	Public     []byte        // 32 bytes (X25519) or 65 bytes 04‖X‖Y (P256)
}

// Signer signs envelope headers. In the daemon it is a P-256 key inside the
// HSM.
type Signer interface {
	// KeyID names the signing key; it is written into the header and is what
	// a KeyLookup receives. It must satisfy ValidateID.
	KeyID() string
	// Sign returns the P-256 ECDSA signature of the 32-byte SHA-256 digest as
	// the 64-byte big-endian concatenation r‖s.
	Sign(ctx context.Context, digest []byte) ([]byte, error)
}

// KeyLookup returns the P-256 public key of the signing key named keyID, or
// an error if the key is unknown or not trusted for envelope headers.
type KeyLookup func(keyID string) (*ecdsa.PublicKey, error)

// SealInput is everything Seal needs.
type SealInput struct {
	TransactionID, JobID string
	PublicFields         []byte      // a JSON object; Seal stores CanonicalJSON of it; empty means {}
	Plaintext            []byte      // at most MaxPlaintext bytes
	Participants         []Recipient // 1..MaxParticipants, unique ids, in the order to record
	Escrow               Recipient   // the audit escrow key (P256, ID "")
	CreatedAt            time.Time   // truncated to milliseconds; zero means time.Now()
	// Rand supplies the DEK, the nonce (version 1) or one nonce per field
	// in name order (version 2), and the ephemeral private keys, read in
	// that order (see docs/envelope.md). nil means crypto/rand; set it only
	// in known-answer generators.
	Rand io.Reader

	// Version 2 only (SealV2; Seal refuses them): the fields to seal, in
	// any order (SealV2 sorts them by name), instead of Plaintext; and the
	// sealing principal, which must satisfy ValidateID.
	Fields   []Field
	SealedBy string
	// Compress asks SealV2 to DEFLATE-compress field values of at least
	// CompressThreshold bytes when that saves an eighth or more. Sealed
	// sizes then depend on the values' content: see docs/envelope.md.
	Compress bool
}
