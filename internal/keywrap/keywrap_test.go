package keywrap

import (
	"bytes"
	"crypto/aes"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// RFC 5649 section 6, plus 32-byte-key cases cross-checked with OpenSSL's
// id-aes256-wrap-pad (an independent implementation), which is the size the
// envelope uses.
var rfc5649Vectors = []struct {
	name, kek, key, wrapped string
}{
	{"RFC5649/20-octets", "5840df6e29b02af1 ab493b705bf16ea1 ae8338f4dcc176a8",
		"c37b7e6492584340 bed1220780894115 5068f738",
		"138bdeaa9b8fa7fc 61f97742e72248ee 5ae6ae5360d1ae6a 5f54f373fa543b6a"},
	{"RFC5649/7-octets", "5840df6e29b02af1 ab493b705bf16ea1 ae8338f4dcc176a8",
		"466f7250617369", "afbeb0f07dfbf541 9200f2ccb50bb24f"},
	{"openssl/32-octets", "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
		"00112233445566778899aabbccddeeff000102030405060708090a0b0c0d0e0f",
		"4a8029243027353b0694cf1bd8fc745bb0ce8a739b19b1960b12426d4c39cfeda926d103ab34e9f6"},
	{"openssl/8-octets", "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
		"0102030405060708", "35808873fe6b6a455d47109fc67558f4"},
	{"openssl/16-octets", "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
		"00112233445566778899aabbccddeeff", "afc860015ffe2d75bedf43c444fe58f4ad9d89c4ec71e23b"},
}

func TestRFC5649Vectors(t *testing.T) {
	for _, v := range rfc5649Vectors {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			kek, key, want := unhex(t, v.kek), unhex(t, v.key), unhex(t, v.wrapped)
			got, err := WrapWithKey(kek, key)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("Wrap = %x, want %x", got, want)
			}
			back, err := UnwrapWithKey(kek, want)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(back, key) {
				t.Fatalf("Unwrap = %x, want %x", back, key)
			}
		})
	}
}

// RFC 3394 section 4: the wrapping process W is shared by RFC 5649, so its
// vectors (with the RFC 3394 default IV) check wrapCore and unwrapCore.
var rfc3394Vectors = []struct {
	name, kek, key, wrapped string
}{
	{"4.1", "000102030405060708090A0B0C0D0E0F", "00112233445566778899AABBCCDDEEFF",
		"1FA68B0A8112B447 AEF34BD8FB5A7B82 9D3E862371D2CFE5"},
	{"4.2", "000102030405060708090A0B0C0D0E0F1011121314151617", "00112233445566778899AABBCCDDEEFF",
		"96778B25AE6CA435 F92B5B97C050AED2 468AB8A17AD84E5D"},
	{"4.3", "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F", "00112233445566778899AABBCCDDEEFF",
		"64E8C3F9CE0F5BA2 63E9777905818A2A 93C8191E7D6E8AE7"},
	{"4.6", "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
		"00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F",
		"28C9F404C4B810F4 CBCCB35CFB87F826 3F5786E2D80ED326 CBC7F0E71A99F43B FB988B9B7A02DD21"},
}

func TestRFC3394Core(t *testing.T) {
	iv := [8]byte{0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6}
	for _, v := range rfc3394Vectors {
		t.Run(v.name, func(t *testing.T) {
			t.Parallel()
			block, err := aes.NewCipher(unhex(t, v.kek))
			if err != nil {
				t.Fatal(err)
			}
			key, want := unhex(t, v.key), unhex(t, v.wrapped)
			buf := append(make([]byte, 8), key...)
			wrapCore(block, iv, buf)
			if !bytes.Equal(buf, want) {
				t.Fatalf("W = %x, want %x", buf, want)
			}
			a := unwrapCore(block, buf)
			if a != iv || !bytes.Equal(buf[8:], key) {
				t.Fatalf("W^-1 = %x || %x", a, buf[8:])
			}
		})
	}
}

func TestRoundTripAndBitFlips(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, kekLen := range []int{16, 24, 32} {
		for n := 1; n <= 70; n++ {
			kek := make([]byte, kekLen)
			key := make([]byte, n)
			for i := range kek {
				kek[i] = byte(rng.Uint32())
			}
			for i := range key {
				key[i] = byte(rng.Uint32())
			}
			w, err := WrapWithKey(kek, key)
			if err != nil {
				t.Fatal(err)
			}
			if want := (n+7)/8*8 + 8; len(w) != want {
				t.Fatalf("len(Wrap(%d bytes)) = %d, want %d", n, len(w), want)
			}
			got, err := UnwrapWithKey(kek, w)
			if err != nil || !bytes.Equal(got, key) {
				t.Fatalf("round trip of %d bytes: %x, %v", n, got, err)
			}
			// Every single-bit flip of the wrapped key must fail.
			for bit := 0; bit < len(w)*8; bit++ {
				w[bit/8] ^= 1 << (bit % 8)
				if _, err := UnwrapWithKey(kek, w); !errors.Is(err, ErrIntegrity) {
					t.Fatalf("n=%d kek=%d: flipped bit %d: err = %v, want ErrIntegrity", n, kekLen, bit, err)
				}
				w[bit/8] ^= 1 << (bit % 8)
			}
			// A different KEK must fail.
			kek[0] ^= 1
			if _, err := UnwrapWithKey(kek, w); !errors.Is(err, ErrIntegrity) {
				t.Fatalf("wrong KEK: err = %v", err)
			}
		}
	}
}

// TestRejectsBadLengthIndicator builds wrapped keys whose integrity value is
// well formed except for the length indicator or the padding, which only a
// holder of the KEK can do, and checks each is refused.
func TestRejectsBadLengthIndicator(t *testing.T) {
	kek := unhex(t, "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
	block, _ := aes.NewCipher(kek)
	build := func(mli uint32, p []byte) []byte {
		buf := append(make([]byte, 8), p...)
		iv := [8]byte{0xA6, 0x59, 0x59, 0xA6, byte(mli >> 24), byte(mli >> 16), byte(mli >> 8), byte(mli)}
		if len(p) == 8 {
			copy(buf, iv[:])
			block.Encrypt(buf, buf)
		} else {
			wrapCore(block, iv, buf)
		}
		return buf
	}
	p16 := bytes.Repeat([]byte{7}, 16)
	p8 := bytes.Repeat([]byte{7}, 8)
	pad := append(bytes.Repeat([]byte{7}, 12), 0, 0, 0, 1) // non-zero padding byte
	cases := []struct {
		name string
		w    []byte
		ok   bool
	}{
		{"mli=16 ok", build(16, p16), true},
		{"mli=9 ok", build(9, append(bytes.Repeat([]byte{7}, 9), 0, 0, 0, 0, 0, 0, 0)), true},
		{"mli=8 too small for 2 blocks", build(8, p16), false},
		{"mli=17 too large", build(17, p16), false},
		{"mli=0", build(0, p8), false},
		{"mli=9 single block", build(9, p8), false},
		{"mli=2^32-1", build(0xffffffff, p16), false},
		{"non-zero padding", build(12, pad[:16]), false},
		{"non-zero padding single block", build(7, []byte{1, 2, 3, 4, 5, 6, 7, 8}), false},
	}
	for _, c := range cases {
		_, err := Unwrap(block, c.w)
		if c.ok && err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
		if !c.ok && !errors.Is(err, ErrIntegrity) {
			t.Errorf("%s: err = %v, want ErrIntegrity", c.name, err)
		}
	}
}

func TestInputErrors(t *testing.T) {
	kek := make([]byte, 32)
	if _, err := WrapWithKey(kek, nil); !errors.Is(err, ErrInputSize) {
		t.Errorf("Wrap(empty) = %v", err)
	}
	for _, n := range []int{0, 8, 15, 17, 23} {
		if _, err := UnwrapWithKey(kek, make([]byte, n)); !errors.Is(err, ErrInputSize) {
			t.Errorf("Unwrap(%d bytes) = %v", n, err)
		}
	}
	if _, err := WrapWithKey(make([]byte, 20), []byte{1}); !errors.Is(err, ErrKEK) {
		t.Errorf("20-byte KEK: %v", err)
	}
	if _, err := UnwrapWithKey(make([]byte, 0), make([]byte, 16)); !errors.Is(err, ErrKEK) {
		t.Errorf("empty KEK: %v", err)
	}
	if _, err := Wrap(nil, []byte{1}); !errors.Is(err, ErrKEK) {
		t.Errorf("nil block: %v", err)
	}
}

func FuzzUnwrap(f *testing.F) {
	for _, v := range rfc5649Vectors {
		f.Add(unhex(f, v.kek), unhex(f, v.wrapped))
	}
	f.Fuzz(func(t *testing.T, kek, wrapped []byte) {
		key, err := UnwrapWithKey(kek, wrapped)
		if err != nil {
			return
		}
		again, err := WrapWithKey(kek, key)
		if err != nil || !bytes.Equal(again, wrapped) {
			t.Fatalf("Unwrap accepted %x but Wrap(%x) = %x, %v", wrapped, key, again, err)
		}
	})
}
