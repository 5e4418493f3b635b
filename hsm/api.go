package hsm

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"strings"
	"time"

	"custody/internal/device"
)

// This file is the part of the package's API that needs no cgo: it builds
// with CGO_ENABLED=0 too (see nocgo.go). What the device shares with the
// formats lives in package device; the names below are aliases of it, kept
// so that hsm.KeyAlg, hsm.OpenRequest, hsm.ErrNotFound and the rest mean
// what they always meant (the same types and the same error values, so
// errors.Is holds across both names).

// Sentinel errors of the device: see package device.
var (
	ErrNotFound       = device.ErrNotFound
	ErrExists         = device.ErrExists
	ErrIntegrity      = device.ErrIntegrity
	ErrUnavailable    = device.ErrUnavailable
	ErrUnsupported    = device.ErrUnsupported
	ErrInvalidRequest = device.ErrInvalidRequest
	ErrSOLogin        = device.ErrSOLogin
)

// Errors of Open and InitToken, beyond the device's.
var (
	// ErrPINFile: the PIN file is missing, empty, or readable by group or others.
	ErrPINFile = errors.New("hsm: unusable PIN file")
	// ErrNoToken: no initialized token with the configured label is present.
	ErrNoToken = errors.New("hsm: token not found")
	// ErrLogin: the token refused the user login (wrong or locked PIN).
	ErrLogin = errors.New("hsm: token login refused")
	// ErrNeedsCgo: this build has no PKCS#11 (CGO_ENABLED=0, see nocgo.go);
	// Open, InitToken and every Token method return it there, and nothing
	// returns it in a cgo build.
	ErrNeedsCgo = errors.New("custody/hsm needs cgo (the PKCS#11 module is a C library): build with CGO_ENABLED=1")
)

// Algorithms, KDF profiles and usages: see package device.
type (
	KeyAlg = device.KeyAlg
	KDF    = device.KDF
	Usage  = device.Usage
)

const (
	X25519        = device.X25519
	P256          = device.P256
	Ed25519       = device.Ed25519 // see eddsa.go
	KDFECBContext = device.KDFECBContext
	UsageDerive   = device.UsageDerive
	UsageSign     = device.UsageSign
)

// Requests, answers and key descriptions: see package device.
type (
	OpenRequest       = device.OpenRequest
	RewrapRequest     = device.RewrapRequest
	WrapTarget        = device.WrapTarget
	Rewrapped         = device.Rewrapped
	RewrapResult      = device.RewrapResult
	PossessionRequest = device.PossessionRequest
	OpenFieldsRequest = device.OpenFieldsRequest
	SealFieldsRequest = device.SealFieldsRequest
	FieldOpen         = device.FieldOpen
	FieldSeal         = device.FieldSeal
	KeySpec           = device.KeySpec
	KeyInfo           = device.KeyInfo
	DataObject        = device.DataObject
)

// Limits of one request: see package device.
const (
	MaxCiphertext    = device.MaxCiphertext
	MaxRewrapTargets = device.MaxRewrapTargets
	MaxRewrapBatch   = device.MaxRewrapBatch
	MaxDataObject    = device.MaxDataObject
	MaxFields        = device.MaxFields
	BackupKEKSize    = device.BackupKEKSize
)

// Config says which token to use and how. It holds no secret: the PIN is
// read from PINFile.
type Config struct {
	// ModulePath is the PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so.
	ModulePath string
	// TokenLabel selects the token (the slot is found by label, again after
	// every recovery, because slot IDs are not stable).
	TokenLabel string
	// PINFile holds the user PIN. Open refuses it (ErrPINFile) if it is
	// missing, empty, or its mode has any group or other bit. One trailing
	// newline is trimmed.
	PINFile string
	// Sessions is the size of the session pool. 0 means
	// min(runtime.NumCPU(), the token's ulMaxSessionCount when that is a real
	// limit), and at least 2.
	Sessions int
	// RecycleAfter bounds the memory a token may keep for destroyed session
	// objects: after that many session objects were created, the pool is
	// rebuilt with C_Finalize and C_Initialize (see "Memory" in doc.go).
	// 0 means DefaultSoftHSMRecycle on SoftHSM and never elsewhere; a
	// negative value means never.
	RecycleAfter int
	// DEKCache bounds the DEK handle cache of OpenFields; the zero value
	// turns it off.
	DEKCache DEKCacheConfig
	// KeyRecheck is how long a session copy of a private key (doc.go,
	// "Private-key copies") may be used before the token object is found
	// again: a key destroyed by another process (another daemon of a
	// fleet) stays usable here that long. 0 means DefaultKeyRecheck; a
	// negative value makes no copies (every use is of the token object,
	// and notices a destroyed key at once).
	KeyRecheck time.Duration
}

// DefaultKeyRecheck is Config.KeyRecheck's default.
const DefaultKeyRecheck = time.Second

// DEKCacheConfig bounds the DEK handle cache (doc.go, "DEK handle cache").
// Entries == 0 turns it off; otherwise MaxAge must be positive and Recheck
// not negative.
type DEKCacheConfig struct {
	Entries int           // stanzas kept at most, least recently used evicted first
	MaxAge  time.Duration // an entry is destroyed this long after its unwrap
	// Recheck is how long a hit may rely on the last check that its private
	// key still exists on the token; 0 checks on every hit. A key destroyed
	// through this Token evicts its entries at once; one destroyed by
	// another process (another daemon of a fleet) is noticed by the first
	// hit after Recheck, which then refuses as a cold open does.
	Recheck time.Duration
}

// DefaultSoftHSMRecycle is RecycleAfter's default on SoftHSM: about 3,300
// opens, bounding the retained memory near 5 MiB.
const DefaultSoftHSMRecycle = 10000

// DEKCacheStats is a snapshot of the DEK handle cache (Token.DEKCacheStats).
type DEKCacheStats struct {
	Enabled         bool
	Entries         int // live entries now
	Capacity        int // Config.DEKCache.Entries
	Objects         int // session objects the cache holds (DEKs and field keys; evicted ones not yet destroyed too)
	Hits, Misses    uint64
	FirstOpens      uint64 // misses not cached: the stanza's first open in the admission window
	EvictedCapacity uint64 // the least recently used, to make room
	EvictedAge      uint64 // older than MaxAge
	EvictedKey      uint64 // their private key was destroyed (key retirement)
	EvictedRebuild  uint64 // the session pool was rebuilt
	EvictedShutdown uint64 // the token was closed
}

// TokenInfo describes the open token for logs and health checks.
type TokenInfo struct {
	Label, Serial, Manufacturer, Model string
	// Sessions is the size of the session pool.
	Sessions int
	// Rebuilds counts successful session-pool rebuilds since Open, planned
	// recycles included.
	Rebuilds uint64
	// Recycles counts the rebuilds that also finalized and re-initialized
	// the module to free retained session objects (Config.RecycleAfter).
	Recycles uint64
	// InUse is the number of sessions borrowed right now.
	InUse int
	// Yields counts the times a background RewrapBatch gave its session
	// back because another call was waiting (priority.Background).
	Yields uint64
}

// Capabilities is what the token can do, as probed at Open.
type Capabilities struct {
	// X25519 is how the token generates X25519 keys:
	// "pkcs11-3.0-montgomery" (CKM_EC_MONTGOMERY_KEY_PAIR_GEN works),
	// "softhsm-edwards-oid" (CKM_EC_EDWARDS_KEY_PAIR_GEN with the X25519 OID
	// 06 03 2B 65 6E works, as on SoftHSM 2.6), or "" (no X25519).
	X25519 string
	// The rest report whether the mechanism is in the token's list:
	// CKM_HKDF_DERIVE, CKM_ECDH1_DERIVE, CKM_AES_KEY_WRAP_PAD, CKM_AES_GCM,
	// CKM_AES_ECB_ENCRYPT_DATA, CKM_ECDSA, CKM_EDDSA, CKM_AES_CMAC.
	HKDF, ECDHDerive, AESKeyWrapPad, AESGCM, ECBEncryptData, ECDSA, EdDSA, AESCMAC bool
}

// X25519 generation paths reported in Capabilities.X25519.
const (
	X25519Montgomery = "pkcs11-3.0-montgomery"
	X25519EdwardsOID = "softhsm-edwards-oid"
)

// String renders the capabilities on one line, e.g.
// "x25519=softhsm-edwards-oid hkdf=no ecdh=yes ...".
func (c Capabilities) String() string {
	yn := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	x := c.X25519
	if x == "" {
		x = "none"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "x25519=%s hkdf=%s ecdh=%s aes-kwp=%s aes-gcm=%s ecb-encrypt-data=%s ecdsa=%s eddsa=%s aes-cmac=%s",
		x, yn(c.HKDF), yn(c.ECDHDerive), yn(c.AESKeyWrapPad), yn(c.AESGCM), yn(c.ECBEncryptData),
		yn(c.ECDSA), yn(c.EdDSA), yn(c.AESCMAC))
	return b.String()
}

// SignerTimeout bounds each Sign call made through a Signer whose opts carry
// no context (crypto.Signer has no ctx parameter).
const SignerTimeout = 10 * time.Second

// SignerOpts lets a caller of the crypto.Signer returned by Token.Signer
// pass a context. Hash must be crypto.SHA256.
type SignerOpts struct {
	Context context.Context
	Hash    crypto.Hash
}

// HashFunc implements crypto.SignerOpts.
func (o *SignerOpts) HashFunc() crypto.Hash { return o.Hash }
