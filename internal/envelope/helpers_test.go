package envelope_test

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"
	"time"

	"custody/hsm"
	"custody/internal/envelope"
	"custody/internal/envelope/internal/kat"
	"custody/internal/keywrap"
)

// errOpen is what the software open returns for any integrity failure, like
// the device's hsm.ErrIntegrity.
var errOpen = errors.New("software open failed")

// openSoftware opens e through stanza i with priv, doing in software exactly
// what the device does with e.OpenRequest. It exists only in tests: the
// package never opens payloads.
func openSoftware(e *envelope.Envelope, i int, priv *ecdh.PrivateKey) ([]byte, error) {
	req := e.OpenRequest(i, "software", priv.PublicKey().Bytes())
	if req.KDF != hsm.KDFECBContext {
		return nil, fmt.Errorf("unknown KDF %v", req.KDF)
	}
	peer, err := priv.Curve().NewPublicKey(req.PeerPublic)
	if err != nil {
		return nil, errOpen
	}
	z, err := priv.ECDH(peer)
	if err != nil {
		return nil, errOpen
	}
	zb, err := aes.NewCipher(z)
	if err != nil {
		return nil, err
	}
	kek := make([]byte, 32)
	zb.Encrypt(kek[:16], req.Context[:16])
	zb.Encrypt(kek[16:], req.Context[16:])
	dek, err := keywrap.UnwrapWithKey(kek, req.WrappedDEK)
	if err != nil {
		return nil, errOpen
	}
	if len(dek) != 32 {
		return nil, errOpen
	}
	b, _ := aes.NewCipher(dek)
	gcm, _ := cipher.NewGCM(b)
	pt, err := gcm.Open(nil, req.Nonce, req.Ciphertext, req.AAD)
	if err != nil {
		return nil, errOpen
	}
	return pt, nil
}

// testSigner is a software P-256 signer standing in for the HSM.
type testSigner struct {
	id   string
	priv *ecdsa.PrivateKey
}

func newSigner(t testing.TB, id string) *testSigner {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return &testSigner{id, k}
}

func (s *testSigner) KeyID() string { return s.id }

func (s *testSigner) Sign(_ context.Context, digest []byte) ([]byte, error) {
	der, err := ecdsa.SignASN1(rand.Reader, s.priv, digest)
	if err != nil {
		return nil, err
	}
	return kat.RawSignature(der)
}

func (s *testSigner) lookup(id string) (*ecdsa.PublicKey, error) {
	if id != s.id {
		return nil, errUnknownKey
	}
	return &s.priv.PublicKey, nil
}

var errUnknownKey = errors.New("unknown signing key")

// party is a recipient with its private key.
type party struct {
	envelope.Recipient
	priv *ecdh.PrivateKey
}

func newParty(t testing.TB, id string, alg hsm.KeyAlg) party {
	t.Helper()
	c := ecdh.X25519()
	if alg == hsm.P256 {
		c = ecdh.P256()
	}
	k, err := c.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return party{envelope.Recipient{ID: id, KeyVersion: 1, Alg: alg, Public: k.PublicKey().Bytes()}, k}
}

// fixture is a sealed envelope with everything needed to open it.
type fixture struct {
	env       *envelope.Envelope
	in        envelope.SealInput
	parties   []party // participants, then escrow
	signer    *testSigner
	plaintext []byte
}

func newFixture(t testing.TB, tx string) *fixture {
	t.Helper()
	parties := []party{
		newParty(t, "alice", hsm.X25519),
		newParty(t, "bank-b", hsm.P256),
		newParty(t, "carol.eu", hsm.X25519),
	}
	escrow := newParty(t, "", hsm.P256)
	escrow.KeyVersion = 4
	f := &fixture{parties: append(parties, escrow), signer: newSigner(t, "custodyd:sig:1"),
		plaintext: []byte(`{"amount":"12.50","iban":"DE89370400440532013000"}`)}
	f.in = envelope.SealInput{
		TransactionID: tx, JobID: "job-1",
		PublicFields: []byte(`{"currency": "EUR", "legs": [1, 2]}`),
		Plaintext:    f.plaintext,
		CreatedAt:    time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC),
		Escrow:       escrow.Recipient,
	}
	for _, p := range parties {
		f.in.Participants = append(f.in.Participants, p.Recipient)
	}
	e, err := envelope.Seal(context.Background(), f.in, f.signer)
	if err != nil {
		t.Fatal(err)
	}
	f.env = e
	return f
}

// opensAny reports whether any stanza of e opens to want with its key.
func (f *fixture) opensAny(e *envelope.Envelope) bool {
	for i := range e.Header.Stanzas {
		if i >= len(f.parties) {
			break
		}
		if _, err := openSoftware(e, i, f.parties[i].priv); err == nil {
			return true
		}
	}
	return false
}
