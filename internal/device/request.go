package device

import "time"

// OpenRequest is everything the device needs to open one payload: derive the
// KEK, unwrap the DEK under it, and decrypt with AES-256-GCM. It carries no
// secret; the private key is named by its label. envelope.Envelope.OpenRequest
// builds it.
type OpenRequest struct {
	KeyLabel   string   // private key on the token
	Alg        KeyAlg   // algorithm of that key and of PeerPublic
	KDF        KDF      // how the KEK is derived
	PeerPublic []byte   // ephemeral public key: 32 bytes (X25519) or 65 bytes (P-256, 04||X||Y)
	Context    [32]byte // KDF context
	WrappedDEK []byte   // RFC 5649 (AES key wrap with padding) of a 32-byte AES-256 DEK
	Nonce      []byte   // 12-byte GCM nonce
	Ciphertext []byte   // GCM ciphertext followed by its 16-byte tag
	AAD        []byte   // additional authenticated data
}

// WrapTarget is one new recipient of a DEK being rewrapped.
type WrapTarget struct {
	// Alg is the recipient's algorithm: X25519 or P256. The device generates
	// an ephemeral key pair of this algorithm.
	Alg KeyAlg
	// RecipientPublic is 32 bytes (X25519) or the 65-byte point 04||X||Y (P256).
	RecipientPublic []byte
	// Context returns the 32-byte KDFECBContext context for the ephemeral
	// public key the device generated (encoded like RecipientPublic). The
	// caller owns the context rule (envelope.WrapTarget computes it); the
	// device only applies it: KEK' = AES-256-ECB_Z'(Context(E')).
	Context func(ephemeralPublic []byte) [32]byte
}

// RewrapRequest names a wrapped DEK the device can open (the same fields as
// the first half of an OpenRequest) and the recipients to wrap it for.
// envelope.Envelope.RewrapRequest builds it.
type RewrapRequest struct {
	KeyLabel   string   // private key of a current recipient
	Alg        KeyAlg   // its algorithm
	KDF        KDF      // KDFECBContext
	PeerPublic []byte   // the stanza's ephemeral public key
	Context    [32]byte // the stanza's KDF context
	WrappedDEK []byte   // the stanza's RFC 5649 wrap of the DEK (40 bytes)
	Targets    []WrapTarget
}

// Rewrapped is the DEK wrapped for one WrapTarget.
type Rewrapped struct {
	EphemeralPublic []byte // the device-generated ephemeral public key, encoded like the recipient's
	WrappedDEK      []byte // RFC 5649 wrap of the DEK under the new KEK (40 bytes)
}

// RewrapResult is the outcome of one request of a batch: Wrapped holds one
// entry per target, in order, or Err says why this request failed.
type RewrapResult struct {
	Wrapped []Rewrapped
	Err     error
}

// PossessionRequest is a proof-of-possession challenge for one derive key.
type PossessionRequest struct {
	KeyLabel string // the private key to prove
	Alg      KeyAlg // its algorithm, and that of VerifierPublic
	// VerifierPublic is the verifier's ephemeral public key: 32 bytes
	// (X25519) or 65 bytes 04||X||Y (P256).
	VerifierPublic []byte
	// Context is the 32-byte derivation context. The caller binds both
	// public keys and the verifier's nonce into it under a label used for
	// nothing else (package pop), so the MAC key is unrelated to any KEK.
	Context [32]byte
	// Message is what the MAC covers (pop puts the nonce there too); at
	// most 4096 bytes.
	Message []byte
}

// KeySpec describes a key pair to generate.
type KeySpec struct {
	// Label is unique on the token. CKA_ID is the first 16 bytes of
	// SHA-256(Label); both are set on the private and the public object.
	Label string
	// Alg is X25519 (UsageDerive only) or P256.
	Alg KeyAlg
	// Usage is UsageDerive or UsageSign.
	Usage Usage
	// Backup makes the private key extractable, but only under a KEK the
	// security officer marked trusted, so a later ceremony can wrap it out.
	// It is meant for the escrow key alone and is accepted for P-256 only
	// (SoftHSM cannot wrap X25519 private keys out). The default, false,
	// makes the private key never extractable.
	Backup bool
	// Created is stored as the start date of both objects (a date: the time
	// of day is lost). Zero leaves it unset.
	Created time.Time
	// RotateAfter is stored as the end date of the public object: the day
	// from which the key is due for rotation. Zero leaves it unset.
	RotateAfter time.Time
}

// KeyInfo describes a key pair on the token. It holds no secret.
type KeyInfo struct {
	Label string
	// ID is CKA_ID: the first 16 bytes of SHA-256(Label).
	ID    []byte
	Alg   KeyAlg
	Usage Usage
	// Public is 32 raw bytes for X25519 and the 65-byte uncompressed point
	// 04||X||Y for P-256.
	Public []byte
	// Created is the start date (midnight UTC of that date); zero if unset.
	Created time.Time
	// RotateAfter is the end date of the public object; zero if unset.
	RotateAfter time.Time
}

// DataObject is a small public token object that records a fact next to
// the keys, such as a destroyed version. It holds no secret; Value is at
// most MaxDataObject bytes.
type DataObject struct {
	Label string
	Value []byte
}

// FieldOpen is one field of an envelope v2 to open: the device derives the
// field key from the DEK as AES-256-ECB_DEK(Context)
// (CKM_AES_ECB_ENCRYPT_DATA) and opens Ciphertext with AES-256-GCM under
// it. The caller owns the context and AAD rules (package envelope).
type FieldOpen struct {
	Context    [32]byte // field-key derivation context
	Nonce      []byte   // 12-byte GCM nonce
	Ciphertext []byte   // GCM ciphertext followed by its 16-byte tag
	AAD        []byte   // additional authenticated data
}

// OpenFieldsRequest names a wrapped DEK the device can open (as the first
// half of an OpenRequest) and the fields to open with keys derived from it.
// Only the listed fields are decrypted; the envelope's other fields never
// reach the device. envelope.Envelope.OpenFieldsRequest builds it.
type OpenFieldsRequest struct {
	KeyLabel   string   // private key on the token
	Alg        KeyAlg   // algorithm of that key and of PeerPublic
	KDF        KDF      // how the KEK is derived
	PeerPublic []byte   // the stanza's ephemeral public key
	Context    [32]byte // the stanza's KDF context
	WrappedDEK []byte   // the stanza's RFC 5649 wrap of the DEK (40 bytes)
	Fields     []FieldOpen
}

// FieldSeal is one field value to encrypt under a key derived from the DEK
// as in FieldOpen.
type FieldSeal struct {
	Context   [32]byte // field-key derivation context
	Nonce     []byte   // 12-byte GCM nonce, fresh for this field
	Plaintext []byte
	AAD       []byte
}

// SealFieldsRequest asks the device to derive one key per field from DEK
// and encrypt each field under its own key. DEK is the one secret a request
// of this package carries: envelope sealing generates the DEK in software
// (it needs only public keys), so the device receives it, imports it as a
// derive-only session key and destroys it before answering. The caller
// clears DEK after the call.
type SealFieldsRequest struct {
	DEK    []byte // 32 bytes
	Fields []FieldSeal
}
