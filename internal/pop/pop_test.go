package pop

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"testing"

	"custody/hsm"
)

// RFC 4493 section 4 test vectors (AES-128), plus SP 800-38B's AES-256 ones.
func TestCMACVectors(t *testing.T) {
	t.Parallel()
	h := func(s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	msg := h("6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e5130c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710")
	k128 := h("2b7e151628aed2a6abf7158809cf4f3c")
	k256 := h("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
	for _, tc := range []struct {
		name string
		key  []byte
		n    int
		want string
	}{
		{"rfc4493-example1-empty", k128, 0, "bb1d6929e95937287fa37d129b756746"},
		{"rfc4493-example2-16", k128, 16, "070a16b46b4d4144f79bdd9dd04a287c"},
		{"rfc4493-example3-40", k128, 40, "dfa66747de9ae63030ca32611497c827"},
		{"rfc4493-example4-64", k128, 64, "51f0bebf7e3b9d92fc49741779363cfe"},
		{"sp800-38b-aes256-empty", k256, 0, "028962f61b7bf89efc6b551f4667d983"},
		{"sp800-38b-aes256-64", k256, 64, "e1992190549f6ed5696a2c056c315410"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CMAC(tc.key, msg[:tc.n])
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(got) != tc.want {
				t.Fatalf("CMAC = %x, want %s", got, tc.want)
			}
		})
	}
}

func TestVerifyRejects(t *testing.T) {
	t.Parallel()
	eph, _ := ecdh.X25519().GenerateKey(rand.Reader)
	other, _ := ecdh.X25519().GenerateKey(rand.Reader)
	nonce := bytes.Repeat([]byte{7}, 32)
	if err := Verify(hsm.X25519, eph, other.PublicKey().Bytes(), nonce, make([]byte, 16)); !errors.Is(err, ErrMismatch) {
		t.Fatalf("zero MAC: %v, want ErrMismatch", err)
	}
	if err := Verify(hsm.X25519, eph, other.PublicKey().Bytes(), nonce[:4], make([]byte, 16)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("short nonce: %v, want ErrInvalid", err)
	}
	if err := Verify(hsm.P256, eph, other.PublicKey().Bytes(), nonce, make([]byte, 16)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("wrong curve: %v, want ErrInvalid", err)
	}
}
