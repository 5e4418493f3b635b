// Package pop is proof of possession for the derive keys custodyd keeps on
// its token: a challenge-response in which a verifier proves to itself that
// the token holds the private key of a published public key, without the
// key leaving the token and without trusting the daemon's word.
//
// The verifier draws an ephemeral key pair e/E of the key's algorithm and a
// nonce, and sends E and the nonce. The token computes, on the device,
//
//	Z   = ECDH(r, E)                       (r: the private key proved; R its public key)
//	K   = AES-256-ECB_Z(Context(alg, E, R, nonce))
//	MAC = AES-CMAC_K(Message(nonce))       (RFC 4493, 16 bytes)
//
// and the verifier recomputes Z = ECDH(e, R), K and the MAC in software
// (Verify). Context is SHA-256 over a label used for nothing else, both
// public keys and the nonce, so K is unrelated to any envelope KEK
// (docs/envelope.md uses another label) and a MAC answers one challenge
// only. The ECB step is the same ecb-context construction as the envelope
// KDF, for the same reason (SoftHSM 2.6 has no standard KDF), with the same
// caveats.
//
// The package holds no secret beyond the verifier's ephemeral key, which
// the caller owns. CMAC is written out here (golang.org/x/crypto has none)
// and checked against the RFC 4493 vectors.
package pop

import (
	"crypto/aes"
	"crypto/ecdh"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"

	"custody/internal/device"
)

// Domain-separation labels; each is followed by a 0x00 byte.
const (
	LabelContext = "custody.pop/v1/cmac-key"
	LabelMessage = "custody.pop/v1/challenge"
)

// NonceSize bounds are 16..64 bytes; custodyctl sends 32.
const (
	MinNonce = 16
	MaxNonce = 64
)

// Errors.
var (
	// ErrMismatch: the MAC does not verify: the token does not hold the
	// private key of the public key checked against (or the answer was altered).
	ErrMismatch = errors.New("pop: proof of possession does not verify")
	// ErrInvalid: a malformed challenge (nonce length, key sizes).
	ErrInvalid = errors.New("pop: invalid challenge")
)

// Context is the 32-byte derivation context of one challenge:
//
//	SHA-256(LabelContext ‖ 0x00 ‖ u8 alg ‖ u32 len(E) ‖ E ‖ u32 len(R) ‖ R ‖ u32 len(nonce) ‖ nonce)
func Context(alg device.KeyAlg, verifierPublic, proverPublic, nonce []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte(LabelContext))
	h.Write([]byte{0, byte(alg)})
	for _, b := range [][]byte{verifierPublic, proverPublic, nonce} {
		h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(b))))
		h.Write(b)
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// Message is what the MAC covers: LabelMessage ‖ 0x00 ‖ nonce.
func Message(nonce []byte) []byte {
	return append(append([]byte(LabelMessage), 0), nonce...)
}

// CheckNonce reports whether nonce has an acceptable length.
func CheckNonce(nonce []byte) error {
	if len(nonce) < MinNonce || len(nonce) > MaxNonce {
		return fmt.Errorf("%w: nonce is %d bytes, want %d..%d", ErrInvalid, len(nonce), MinNonce, MaxNonce)
	}
	return nil
}

// Curve returns the crypto/ecdh curve of alg (X25519 or P256), or nil.
func Curve(alg device.KeyAlg) ecdh.Curve {
	switch alg {
	case device.X25519:
		return ecdh.X25519()
	case device.P256:
		return ecdh.P256()
	}
	return nil
}

// Verify recomputes the MAC the token must have produced for the challenge
// (eph, nonce) if it holds the private key of proverPublic, and compares it
// with mac in constant time. It returns nil, ErrMismatch, or ErrInvalid.
func Verify(alg device.KeyAlg, eph *ecdh.PrivateKey, proverPublic, nonce, mac []byte) error {
	if err := CheckNonce(nonce); err != nil {
		return err
	}
	c := Curve(alg)
	if c == nil || eph == nil || eph.Curve() != c {
		return fmt.Errorf("%w: ephemeral key does not match algorithm %s", ErrInvalid, alg)
	}
	pub, err := c.NewPublicKey(proverPublic)
	if err != nil {
		return fmt.Errorf("%w: prover public key: %v", ErrInvalid, err)
	}
	z, err := eph.ECDH(pub)
	if err != nil {
		return fmt.Errorf("%w: ECDH: %v", ErrInvalid, err)
	}
	defer clear(z)
	ctx := Context(alg, eph.PublicKey().Bytes(), proverPublic, nonce)
	b, err := aes.NewCipher(z)
	if err != nil {
		return err
	}
	k := make([]byte, 32)
	defer clear(k)
	b.Encrypt(k[:16], ctx[:16])
	b.Encrypt(k[16:], ctx[16:])
	want, err := CMAC(k, Message(nonce))
	if err != nil {
		return err
	}
	if len(mac) != len(want) || subtle.ConstantTimeCompare(mac, want) != 1 {
		return ErrMismatch
	}
	return nil
}

// CMAC is AES-CMAC (RFC 4493, NIST SP 800-38B) of msg under key (16, 24 or
// 32 bytes), a 16-byte tag.
func CMAC(key, msg []byte) ([]byte, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	const bs = aes.BlockSize
	var l, k1, k2 [bs]byte
	b.Encrypt(l[:], l[:])
	shift := func(dst, src *[bs]byte) {
		msb := src[0] >> 7
		for i := 0; i < bs-1; i++ {
			dst[i] = src[i]<<1 | src[i+1]>>7
		}
		dst[bs-1] = src[bs-1] << 1
		dst[bs-1] ^= byte(subtle.ConstantTimeByteEq(msb, 1)) * 0x87
	}
	shift(&k1, &l)
	shift(&k2, &k1)
	n := (len(msg) + bs - 1) / bs
	complete := n > 0 && len(msg)%bs == 0
	if n == 0 {
		n = 1
	}
	var x, last [bs]byte
	for i := 0; i < n-1; i++ {
		subtle.XORBytes(x[:], x[:], msg[i*bs:(i+1)*bs])
		b.Encrypt(x[:], x[:])
	}
	tail := msg[(n-1)*bs:]
	if complete {
		subtle.XORBytes(last[:], tail, k1[:])
	} else {
		copy(last[:], tail)
		last[len(tail)] = 0x80
		subtle.XORBytes(last[:], last[:], k2[:])
	}
	subtle.XORBytes(x[:], x[:], last[:])
	b.Encrypt(x[:], x[:])
	clear(l[:])
	clear(k1[:])
	clear(k2[:])
	return x[:], nil
}
