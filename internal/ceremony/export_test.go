package ceremony

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"
)

// NewTestSigner is a software envelope header signer for tests.
func NewTestSigner(t testing.TB) throwawaySigner {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return throwawaySigner{k}
}
