// Package shamir splits a secret into N shares of which any M reconstruct it
// (Shamir's secret sharing over GF(2^8), byte by byte), and combines them.
//
// The field is GF(2^8) with the AES reduction polynomial x^8+x^4+x^3+x+1
// (0x11b), so multiplication is checked against FIPS-197's worked examples.
// Arithmetic is constant time: multiplication is a fixed 8-round
// shift-and-add with masks instead of branches or tables, and inversion is
// exponentiation to 254 (a^254 = a^-1 for a ≠ 0) with the same multiplier.
// Share x-coordinates are public (1..N) and are not protected.
//
// Shares are 1 byte (the x-coordinate) followed by len(secret) bytes. The
// package knows nothing of backup ids, officers or files: package ceremony
// frames shares. Split draws its coefficients from crypto/rand; the caller
// owns clearing the secret and the shares (best effort in Go).
//
// Security: fewer than M shares carry no information about the secret
// (every candidate secret is consistent with them, equally likely); a
// wrong share makes Combine return a wrong secret, which it cannot detect:
// callers check a key check value.
package shamir

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
)

// Errors returned by Split and Combine.
var (
	// ErrParams: M or N out of range (2 ≤ M ≤ N ≤ 255) or an empty secret.
	ErrParams = errors.New("shamir: invalid parameters")
	// ErrShares: shares of different lengths, an x-coordinate of 0, a
	// repeated x-coordinate, or fewer than 2 shares.
	ErrShares = errors.New("shamir: invalid shares")
)

// mul multiplies in GF(2^8) mod 0x11b in constant time.
func mul(a, b byte) byte {
	var p byte
	for range 8 {
		p ^= a & -(b & 1)          // add a if the low bit of b is set
		hi := -(a >> 7)            // 0xff if a's top bit is set
		a = (a << 1) ^ (0x1b & hi) // multiply a by x, reduce
		b >>= 1
	}
	return p
}

// inv returns a^-1 (a^254); inv(0) = 0.
func inv(a byte) byte {
	// 254 = 0b11111110: square-and-multiply with a fixed sequence.
	b := mul(a, a) // a^2
	r := b
	for range 6 {
		b = mul(b, b) // a^4, a^8, ... a^128
		r = mul(r, b)
	}
	return r
}

// Split returns n shares of secret, any m of which reconstruct it. Share i
// (0-based) has x-coordinate i+1 in its first byte.
func Split(secret []byte, m, n int) ([][]byte, error) {
	return split(rand.Reader, secret, m, n)
}

func split(rnd io.Reader, secret []byte, m, n int) ([][]byte, error) {
	if m < 2 || n < m || n > 255 || len(secret) == 0 {
		return nil, fmt.Errorf("%w: M=%d N=%d secret %d bytes (want 2 ≤ M ≤ N ≤ 255, non-empty)", ErrParams, m, n, len(secret))
	}
	shares := make([][]byte, n)
	for i := range shares {
		shares[i] = make([]byte, 1+len(secret))
		shares[i][0] = byte(i + 1)
	}
	coef := make([]byte, m) // coef[0] = secret byte, coef[1..] random
	defer clear(coef)
	for j, s := range secret {
		coef[0] = s
		if _, err := io.ReadFull(rnd, coef[1:]); err != nil {
			return nil, fmt.Errorf("shamir: random: %w", err)
		}
		for i := range shares {
			x := shares[i][0]
			// Horner: y = (((c[m-1])x + c[m-2])x + ...)x + c[0]
			var y byte
			for k := m - 1; k >= 0; k-- {
				y = mul(y, x) ^ coef[k]
			}
			shares[i][1+j] = y
		}
	}
	return shares, nil
}

// Combine interpolates the secret at x = 0 from shares. It cannot tell
// whether the shares belong together or are enough: with fewer than M, or
// with a wrong one, the result is a wrong secret.
func Combine(shares [][]byte) ([]byte, error) {
	if len(shares) < 2 {
		return nil, fmt.Errorf("%w: %d shares, need at least 2", ErrShares, len(shares))
	}
	l := len(shares[0])
	if l < 2 {
		return nil, fmt.Errorf("%w: share too short", ErrShares)
	}
	seen := map[byte]bool{}
	for i, s := range shares {
		if len(s) != l {
			return nil, fmt.Errorf("%w: share %d is %d bytes, share 0 is %d", ErrShares, i, len(s), l)
		}
		if s[0] == 0 || seen[s[0]] {
			return nil, fmt.Errorf("%w: x-coordinate %d is zero or repeated", ErrShares, s[0])
		}
		seen[s[0]] = true
	}
	// Lagrange basis at 0: L_i(0) = Π_{j≠i} x_j / (x_j - x_i); minus is xor.
	basis := make([]byte, len(shares))
	for i, si := range shares {
		num, den := byte(1), byte(1)
		for j, sj := range shares {
			if i == j {
				continue
			}
			num = mul(num, sj[0])
			den = mul(den, sj[0]^si[0])
		}
		basis[i] = mul(num, inv(den))
	}
	out := make([]byte, l-1)
	for k := range out {
		var y byte
		for i, s := range shares {
			y ^= mul(basis[i], s[1+k])
		}
		out[k] = y
	}
	return out, nil
}
