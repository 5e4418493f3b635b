package hsm_test

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"custody/hsm"
	"custody/hsm/hsmtest"
)

func TestMain(m *testing.M) { hsmtest.Main(m) }

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// openToken initializes a fresh token and opens it; closed at cleanup.
func openToken(t testing.TB) (*hsm.Token, hsm.Config) {
	t.Helper()
	cfg := hsmtest.NewToken(t)
	return openConfig(t, cfg), cfg
}

// openTokenSO is openToken that also returns the token's SO PIN.
func openTokenSO(t testing.TB) (*hsm.Token, []byte) {
	t.Helper()
	so := []byte(fmt.Sprintf("so-pin-%d", time.Now().UnixNano()))
	return openConfig(t, hsmtest.NewTokenWithSOPIN(t, so)), so
}

func openConfig(t testing.TB, cfg hsm.Config) *hsm.Token {
	t.Helper()
	tok, err := hsm.Open(testCtx(t), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := tok.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return tok
}

func genKey(t testing.TB, tok *hsm.Token, label string, alg hsm.KeyAlg, usage hsm.Usage) hsm.KeyInfo {
	t.Helper()
	ki, err := tok.GenerateKeyPair(testCtx(t), hsm.KeySpec{Label: label, Alg: alg, Usage: usage, Created: time.Now()})
	if err != nil {
		t.Fatalf("GenerateKeyPair(%s): %v", label, err)
	}
	return ki
}

// raw is a second, independent pkcs11.Ctx on the same module and token, as
// another library in the process would have. Its C_Initialize answers
// CKR_CRYPTOKI_ALREADY_INITIALIZED; it never finalizes.
type raw struct {
	c    *pkcs11.Ctx
	slot uint
	h    pkcs11.SessionHandle
}

func newRaw(t testing.TB, cfg hsm.Config) *raw {
	t.Helper()
	c := pkcs11.New(cfg.ModulePath)
	if c == nil {
		t.Fatal("pkcs11.New failed")
	}
	if err := c.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		t.Fatalf("Initialize: %v", err)
	}
	slots, err := c.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	r := &raw{c: c}
	found := false
	for _, s := range slots {
		ti, err := c.GetTokenInfo(s)
		if err == nil && ti.Label == cfg.TokenLabel {
			r.slot, found = s, true
		}
	}
	if !found {
		t.Fatalf("token %q not found", cfg.TokenLabel)
	}
	r.open(t)
	t.Cleanup(func() {
		r.c.CloseSession(r.h)
		r.c.Destroy()
	})
	return r
}

// open opens a session; the process is logged in through the Token already.
func (r *raw) open(t testing.TB) {
	t.Helper()
	h, err := r.c.OpenSession(r.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatalf("OpenSession: %v", err)
	}
	r.h = h
}

func (r *raw) find(t testing.TB, class uint, label string) pkcs11.ObjectHandle {
	t.Helper()
	objs := r.findAll(t, 2, pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
	if len(objs) != 1 {
		t.Fatalf("find %q class %d: %v objects", label, class, len(objs))
	}
	return objs[0]
}

// findAll returns up to max objects matching tmpl.
func (r *raw) findAll(t testing.TB, max int, tmpl ...*pkcs11.Attribute) []pkcs11.ObjectHandle {
	t.Helper()
	if err := r.c.FindObjectsInit(r.h, tmpl); err != nil {
		t.Fatal(err)
	}
	objs, _, err := r.c.FindObjects(r.h, max)
	r.c.FindObjectsFinal(r.h)
	if err != nil {
		t.Fatalf("C_FindObjects: %v", err)
	}
	return objs
}

func (r *raw) attr(t testing.TB, o pkcs11.ObjectHandle, typ uint) []byte {
	t.Helper()
	a, err := r.c.GetAttributeValue(r.h, o, []*pkcs11.Attribute{pkcs11.NewAttribute(typ, nil)})
	if err != nil {
		t.Fatalf("GetAttributeValue(%#x): %v", typ, err)
	}
	return a[0].Value
}

// --- software sealing: what an application does with only public keys ---

// sealed is one payload sealed to a recipient public key.
type sealed struct {
	req hsm.OpenRequest
	z   []byte // the ECDH secret, for known-answer checks
	dek []byte // the DEK, for checks of a rewrap
}

// ecdhSoftware computes Z for the recipient public key with a fresh
// ephemeral key: X25519 output, or the P-256 x-coordinate.
func ecdhSoftware(t testing.TB, alg hsm.KeyAlg, recipient []byte) (ephPub, z []byte) {
	t.Helper()
	curve := ecdh.X25519()
	if alg == hsm.P256 {
		curve = ecdh.P256()
	}
	pub, err := curve.NewPublicKey(recipient)
	if err != nil {
		t.Fatalf("recipient key: %v", err)
	}
	eph, err := curve.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	z, err = eph.ECDH(pub)
	if err != nil {
		t.Fatal(err)
	}
	return eph.PublicKey().Bytes(), z
}

func seal(t testing.TB, key hsm.KeyInfo, plaintext, aad []byte) sealed {
	t.Helper()
	ephPub, z := ecdhSoftware(t, key.Alg, key.Public)
	var context [32]byte
	rand.Read(context[:])
	kek := ecb(t, z, context[:])
	dek := make([]byte, 32)
	rand.Read(dek)
	wrapped, err := wrapPad(kek, dek)
	if err != nil {
		t.Fatal(err)
	}
	nonce := make([]byte, 12)
	rand.Read(nonce)
	block, _ := aes.NewCipher(dek)
	gcm, _ := cipher.NewGCM(block)
	return sealed{
		z:   z,
		dek: dek,
		req: hsm.OpenRequest{
			KeyLabel:   key.Label,
			Alg:        key.Alg,
			KDF:        hsm.KDFECBContext,
			PeerPublic: ephPub,
			Context:    context,
			WrappedDEK: wrapped,
			Nonce:      nonce,
			Ciphertext: gcm.Seal(nil, nonce, plaintext, aad),
			AAD:        aad,
		},
	}
}

// ecb is AES-256-ECB of data (a multiple of 16 bytes) under key.
func ecb(t testing.TB, key, data []byte) []byte {
	t.Helper()
	b, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]byte, len(data))
	for i := 0; i < len(data); i += aes.BlockSize {
		b.Encrypt(out[i:], data[i:])
	}
	return out
}

// wrapPad is RFC 5649 AES key wrap with padding, written out for the tests
// so the device is checked against an independent implementation.
func wrapPad(kek, key []byte) ([]byte, error) {
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	var aiv [8]byte
	binary.BigEndian.PutUint32(aiv[:4], 0xA65959A6)
	binary.BigEndian.PutUint32(aiv[4:], uint32(len(key)))
	padded := make([]byte, (len(key)+7)/8*8)
	copy(padded, key)
	n := len(padded) / 8
	if n == 1 {
		out := make([]byte, 16)
		copy(out, aiv[:])
		copy(out[8:], padded)
		b.Encrypt(out, out)
		return out, nil
	}
	a := aiv
	r := make([]byte, len(padded))
	copy(r, padded)
	var buf [16]byte
	for j := 0; j < 6; j++ {
		for i := 0; i < n; i++ {
			copy(buf[:8], a[:])
			copy(buf[8:], r[8*i:8*i+8])
			b.Encrypt(buf[:], buf[:])
			tv := uint64(n*j + i + 1)
			binary.BigEndian.PutUint64(a[:], binary.BigEndian.Uint64(buf[:8])^tv)
			copy(r[8*i:], buf[8:])
		}
	}
	return append(a[:], r...), nil
}
