package hsm

import (
	"context"
	"errors"
)

// Sentinel errors. Callers branch on these with errors.Is; the wrapped cause
// (a PKCS#11 return code, say) is for logs only.
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
	// ErrPINFile: the PIN file is missing, empty, or readable by group or others.
	ErrPINFile = errors.New("hsm: unusable PIN file")
)

// KeyAlg names the algorithm of a key pair on the token.
type KeyAlg uint8

const (
	// X25519 key agreement (RFC 7748). Public keys are 32 raw bytes.
	X25519 KeyAlg = 1
	// P256 is NIST P-256, for ECDH (escrow) and ECDSA (signing). Public keys are
	// 65-byte uncompressed points 04||X||Y.
	P256 KeyAlg = 2
	// Ed25519 signing (RFC 8032, CKM_EDDSA), for the access log's checkpoints.
	// Public keys are 32 raw bytes. See eddsa.go.
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
	// 32-byte AES key (CKD_NULL; for P-256, Z is the x-coordinate); then
	// KEK = AES-256-ECB_Z(Context) with CKM_AES_ECB_ENCRYPT_DATA, Context being 32
	// bytes chosen by the caller to bind both public keys. SoftHSM 2.6 has no
	// standard KDF; this is the compatibility profile.
	KDFECBContext KDF = 1
)

func (k KDF) String() string {
	switch k {
	case KDFECBContext:
		return "ecb-context"
	}
	return "unknown"
}

// OpenRequest is everything the device needs to open one payload: derive the
// KEK, unwrap the DEK under it, and decrypt with AES-256-GCM. It carries no
// secret; the private key is named by its label.
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

type backgroundKey struct{}

// WithBackground marks ctx for bulk work that must not slow the others: a
// token call made with it takes a session only when no call without it is
// waiting for one, and RewrapBatch gives its session back between requests
// as soon as one is (starting again afterwards with new wrap keys).
func WithBackground(ctx context.Context) context.Context {
	return context.WithValue(ctx, backgroundKey{}, true)
}

// IsBackground reports whether ctx was marked by WithBackground.
func IsBackground(ctx context.Context) bool {
	b, _ := ctx.Value(backgroundKey{}).(bool)
	return b
}
