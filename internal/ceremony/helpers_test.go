package ceremony_test

import (
	"crypto/ecdh"
	"crypto/rand"
)

func ecdhX25519() ([]byte, error) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return k.PublicKey().Bytes(), nil
}
