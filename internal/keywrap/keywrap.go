// Package keywrap implements AES key wrap with padding (RFC 5649), the
// algorithm PKCS#11 calls CKM_AES_KEY_WRAP_PAD.
//
// The Go standard library and golang.org/x/crypto have no AES key wrap, so
// this package provides one, kept deliberately small: the RFC 3394 wrapping
// process W and its inverse over a caller-supplied AES cipher.Block, and the
// RFC 5649 framing (alternative initial value carrying the message length,
// zero padding to a multiple of 8 bytes, single-block case for inputs of at
// most 8 bytes). It is tested against the RFC 5649 section 6 vectors, the
// RFC 3394 section 4 vectors (for the shared W function), and property tests.
//
// In custody it wraps one 32-byte AES-256 DEK per stanza. For 32-byte keys
// the output is byte-identical to SoftHSM 2.6.1's CKM_AES_KEY_WRAP_PAD in
// both directions (for lengths that are not a multiple of 8, SoftHSM's
// C_WrapKey is not RFC 5649; this package follows the RFC).
//
// Unwrap checks the integrity value and the padding in constant time with
// respect to the key material and returns ErrIntegrity on any failure
// without saying which check failed. Functions are safe for concurrent use
// as long as the cipher.Block is (crypto/aes blocks are).
package keywrap

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"math"
)

var (
	// ErrIntegrity is returned by Unwrap when the integrity check fails:
	// wrong KEK, modified ciphertext, bad length indicator or non-zero padding.
	ErrIntegrity = errors.New("keywrap: integrity check failed")
	// ErrInputSize is returned when the input has a length the algorithm
	// cannot take: an empty or over-long key to Wrap, or a wrapped key to
	// Unwrap that is shorter than 16 bytes or not a multiple of 8.
	ErrInputSize = errors.New("keywrap: invalid input length")
	// ErrKEK is returned when the key-encryption key is not an AES key
	// (16, 24 or 32 bytes) or the cipher.Block does not have a 16-byte block.
	ErrKEK = errors.New("keywrap: invalid key-encryption key")
)

// aivPrefix is the 32-bit constant of the RFC 5649 alternative initial value.
var aivPrefix = [4]byte{0xA6, 0x59, 0x59, 0xA6}

// Wrap wraps key under kek with RFC 5649. kek must be an AES cipher.Block.
// key must be 1 to 2^32-1 bytes long. The result is len(key) rounded up to a
// multiple of 8, plus 8 bytes. Wrap is deterministic.
func Wrap(kek cipher.Block, key []byte) ([]byte, error) {
	if kek == nil || kek.BlockSize() != aes.BlockSize {
		return nil, ErrKEK
	}
	if len(key) == 0 || uint64(len(key)) > math.MaxUint32 {
		return nil, ErrInputSize
	}
	var aiv [8]byte
	copy(aiv[:4], aivPrefix[:])
	binary.BigEndian.PutUint32(aiv[4:], uint32(len(key)))

	padded := (len(key) + 7) &^ 7
	out := make([]byte, 8+padded)
	copy(out[8:], key) // zero padding is already there
	if padded == 8 {
		copy(out[:8], aiv[:])
		kek.Encrypt(out, out)
		return out, nil
	}
	wrapCore(kek, aiv, out)
	return out, nil
}

// Unwrap reverses Wrap: it returns the key wrapped in wrapped, or ErrIntegrity
// if wrapped was not produced by Wrap under kek, or ErrInputSize if its length
// is impossible (< 16 bytes or not a multiple of 8).
func Unwrap(kek cipher.Block, wrapped []byte) ([]byte, error) {
	if kek == nil || kek.BlockSize() != aes.BlockSize {
		return nil, ErrKEK
	}
	if len(wrapped) < 16 || len(wrapped)%8 != 0 {
		return nil, ErrInputSize
	}
	buf := make([]byte, len(wrapped))
	var a [8]byte
	if len(wrapped) == 16 {
		kek.Decrypt(buf, wrapped)
		copy(a[:], buf[:8])
	} else {
		copy(buf, wrapped)
		a = unwrapCore(kek, buf)
	}
	p := buf[8:]

	// Constant-time checks: prefix, length indicator range, zero padding.
	// All quantities are below 2^33, so the uint64 differences below never
	// wrap except when the comparison is false, which sets bit 63.
	mli := uint64(binary.BigEndian.Uint32(a[4:]))
	n := uint64(len(p))
	ok := subtle.ConstantTimeCompare(a[:4], aivPrefix[:])
	ok &= lessOrEq(n-8+1, mli) & lessOrEq(mli, n) // n-8 < mli <= n
	var nonzero byte
	for i := range p {
		inPad := lessOrEq(mli, uint64(i)) // i >= mli: a padding byte
		nonzero |= p[i] & byte(-inPad)
	}
	ok &= subtle.ConstantTimeByteEq(nonzero, 0)
	if ok != 1 {
		clear(buf)
		return nil, ErrIntegrity
	}
	key := make([]byte, mli)
	copy(key, p[:mli])
	clear(buf)
	return key, nil
}

// WrapWithKey is Wrap with an AES key-encryption key given as bytes
// (16, 24 or 32 bytes).
func WrapWithKey(kek, key []byte) ([]byte, error) {
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, ErrKEK
	}
	return Wrap(b, key)
}

// UnwrapWithKey is Unwrap with an AES key-encryption key given as bytes
// (16, 24 or 32 bytes).
func UnwrapWithKey(kek, wrapped []byte) ([]byte, error) {
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, ErrKEK
	}
	return Unwrap(b, wrapped)
}

// lessOrEq returns 1 if x <= y and 0 otherwise, without branching, for
// x, y < 2^63.
func lessOrEq(x, y uint64) int {
	return int(1 ^ ((y - x) >> 63))
}

// wrapCore is the RFC 3394 section 2.2.1 wrapping process W with initial
// value iv. buf holds 8 bytes of room followed by n >= 2 plaintext blocks;
// on return it holds C[0] || C[1] || ... || C[n].
func wrapCore(kek cipher.Block, iv [8]byte, buf []byte) {
	n := len(buf)/8 - 1
	var b [16]byte
	copy(b[:8], iv[:])
	for j := 0; j < 6; j++ {
		for i := 1; i <= n; i++ {
			copy(b[8:], buf[8*i:8*i+8])
			kek.Encrypt(b[:], b[:])
			t := uint64(n*j + i)
			for k := 0; k < 8; k++ {
				b[7-k] ^= byte(t >> (8 * k))
			}
			copy(buf[8*i:8*i+8], b[8:])
		}
	}
	copy(buf[:8], b[:8])
	clear(b[:])
}

// unwrapCore is the RFC 3394 section 2.2.2 unwrapping process W^-1. buf holds
// C[0] || ... || C[n] with n >= 2; on return buf[8:] holds the plaintext
// blocks and the recovered integrity value A is returned (not checked here).
func unwrapCore(kek cipher.Block, buf []byte) [8]byte {
	n := len(buf)/8 - 1
	var b [16]byte
	copy(b[:8], buf[:8])
	for j := 5; j >= 0; j-- {
		for i := n; i >= 1; i-- {
			t := uint64(n*j + i)
			for k := 0; k < 8; k++ {
				b[7-k] ^= byte(t >> (8 * k))
			}
			copy(b[8:], buf[8*i:8*i+8])
			kek.Decrypt(b[:], b[:])
			copy(buf[8*i:8*i+8], b[8:])
		}
	}
	var a [8]byte
	copy(a[:], b[:8])
	clear(b[:])
	return a
}
