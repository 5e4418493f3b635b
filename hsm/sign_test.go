package hsm_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"testing"
	"time"

	"custody/hsm"
)

func TestSign(t *testing.T) {
	t.Parallel()
	tok, _ := openToken(t)
	ctx := testCtx(t)
	k := genKey(t, tok, "log-signer", hsm.P256, hsm.UsageSign)
	pub, err := ecdsa.ParseUncompressedPublicKey(ecdsaP256(), k.Public)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("checkpoint"))
	rs, err := tok.Sign(ctx, k.Label, digest[:])
	if err != nil || len(rs) != 64 {
		t.Fatalf("Sign = %x, %v", rs, err)
	}
	r, s := new(big.Int).SetBytes(rs[:32]), new(big.Int).SetBytes(rs[32:])
	if !ecdsa.Verify(pub, digest[:], r, s) {
		t.Fatal("r||s signature does not verify")
	}
	other := sha256.Sum256([]byte("other"))
	if ecdsa.Verify(pub, other[:], r, s) {
		t.Fatal("signature verifies for another digest")
	}
	if _, err := tok.Sign(ctx, k.Label, digest[:20]); !errors.Is(err, hsm.ErrInvalidRequest) {
		t.Fatalf("short digest: %v", err)
	}
	if _, err := tok.Sign(ctx, "nope", digest[:]); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("unknown key: %v", err)
	}

	signer, err := tok.Signer(ctx, k.Label)
	if err != nil {
		t.Fatal(err)
	}
	if !signer.Public().(*ecdsa.PublicKey).Equal(pub) {
		t.Fatal("Signer.Public differs from the key's public key")
	}
	der, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(pub, digest[:], der) {
		t.Fatal("DER signature does not verify")
	}
	der, err = signer.Sign(nil, digest[:], &hsm.SignerOpts{Context: ctx, Hash: crypto.SHA256})
	if err != nil || !ecdsa.VerifyASN1(pub, digest[:], der) {
		t.Fatalf("Sign with SignerOpts: %v", err)
	}
	// The Signer works where the standard library expects one.
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "custodyd"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	certDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, signer.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(certDER)
	if err != nil || cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature) != nil {
		t.Fatalf("self-signed certificate does not verify: %v", err)
	}
	derive := genKey(t, tok, "derive", hsm.P256, hsm.UsageDerive)
	if _, err := tok.Signer(ctx, derive.Label); !errors.Is(err, hsm.ErrUnsupported) {
		t.Fatalf("Signer on derive key: %v", err)
	}
}
