// Package device is what the key device and the formats share: the key
// algorithms and KDF profiles, the requests the device takes (open, rewrap,
// proof of possession) and what it answers, the key and data-object
// descriptions, the limits of one request, and the sentinel errors callers
// branch on.
//
// It holds types and constants only. It is cgo-free and knows nothing of
// PKCS#11: package envelope builds these requests and package pop checks
// their answers without linking the driver, so custodyctl builds with
// CGO_ENABLED=0. Package hsm implements the device on a PKCS#11 token and
// keeps every name here as an alias (hsm.KeyAlg is device.KeyAlg, and
// hsm.ErrNotFound is the same value as device.ErrNotFound, so errors.Is
// holds across both names).
package device

import "errors"

// Sentinel errors. Callers branch on these with errors.Is; the wrapped cause
// (a PKCS#11 return code, say) is for logs only. The texts say "hsm:"
// because the token is what raises them.
var (
	// ErrNotFound: no key object with that label on the token.
	ErrNotFound = errors.New("hsm: key not found")
	// ErrExists: an object with that label or CKA_ID already exists; nothing was overwritten.
	ErrExists = errors.New("hsm: key already exists")
	// ErrIntegrity: an authenticated operation failed on the device (bad GCM tag,
	// wrong KEK, tampered wrapped key). The token cannot say which.
	ErrIntegrity = errors.New("hsm: integrity check failed on the device")
	// ErrUnavailable: the token, its sessions or the login are gone and could not be
	// rebuilt right now. The next call tries again.
	ErrUnavailable = errors.New("hsm: token unavailable")
	// ErrUnsupported: the token lacks a mechanism this operation needs.
	ErrUnsupported = errors.New("hsm: mechanism not supported by the token")
	// ErrInvalidRequest: the caller passed malformed arguments (wrong lengths,
	// unknown algorithm or usage). Nothing was sent to the device.
	ErrInvalidRequest = errors.New("hsm: invalid request")
	// ErrSOLogin: the security officer's login was refused (wrong SO PIN, locked).
	ErrSOLogin = errors.New("hsm: security officer login refused")
)

// KeyAlg names the algorithm of a key pair on the device.
type KeyAlg uint8

const (
	// X25519 key agreement (RFC 7748). Public keys are 32 raw bytes.
	X25519 KeyAlg = 1
	// P256 is NIST P-256, for ECDH (escrow) and ECDSA (signing). Public keys are
	// 65-byte uncompressed points 04||X||Y.
	P256 KeyAlg = 2
	// Ed25519 signing (RFC 8032), for the access log's checkpoints. Public
	// keys are 32 raw bytes.
	Ed25519 KeyAlg = 3
)

func (a KeyAlg) String() string {
	switch a {
	case X25519:
		return "X25519"
	case P256:
		return "P-256"
	case Ed25519:
		return "Ed25519"
	}
	return "unknown"
}

// KDF names how the key-encryption key is derived on the device from an ECDH secret.
type KDF uint8

const (
	// KDFECBContext: Z = ECDH(private key, peer public) derived on the device as a
	// 32-byte AES key (for P-256, Z is the x-coordinate); then
	// KEK = AES-256-ECB_Z(Context), Context being 32 bytes chosen by the
	// caller to bind both public keys (package envelope computes it). SoftHSM
	// 2.6 has no standard KDF; this is the compatibility profile.
	KDFECBContext KDF = 1
)

func (k KDF) String() string {
	switch k {
	case KDFECBContext:
		return "ecb-context"
	}
	return "unknown"
}

// Usage is the single purpose of a key pair, fixed at generation.
type Usage uint8

const (
	// UsageDerive: ECDH only.
	UsageDerive Usage = 1
	// UsageSign: signing only (ECDSA for P-256, EdDSA for Ed25519).
	UsageSign Usage = 2
)

func (u Usage) String() string {
	switch u {
	case UsageDerive:
		return "derive"
	case UsageSign:
		return "sign"
	}
	return "unknown"
}

// Limits of one request, checked before anything reaches the device.
const (
	// MaxCiphertext bounds OpenRequest.Ciphertext (tag included), and the
	// sum of the field ciphertexts of an OpenFieldsRequest (or of the
	// plaintexts of a SealFieldsRequest): Open is
	// for small payloads (keys, identifiers), one decrypt call.
	MaxCiphertext = 1 << 20
	// MaxRewrapTargets bounds RewrapRequest.Targets (an envelope has at
	// most 64 participants and the escrow stanza).
	MaxRewrapTargets = 65
	// MaxRewrapBatch bounds the requests of one RewrapBatch, and with it
	// how many new stanzas share one ephemeral key.
	MaxRewrapBatch = 1024
	// MaxFields bounds the fields of one OpenFieldsRequest or
	// SealFieldsRequest (envelope v2 has at most that many fields).
	MaxFields = 32
	// MaxDataObject bounds DataObject.Value.
	MaxDataObject = 4096
	// BackupKEKSize is the only backup KEK length accepted: AES-256.
	BackupKEKSize = 32
)
