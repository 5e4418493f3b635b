package envelope_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"testing"

	"custody/hsm"
	"custody/internal/envelope"
	"custody/internal/keywrap"
)

// softwareDEK recovers the DEK of stanza i with priv (tests only).
func softwareDEK(t *testing.T, e *envelope.Envelope, i int, priv *ecdh.PrivateKey) []byte {
	t.Helper()
	req := e.OpenRequest(i, "software", priv.PublicKey().Bytes())
	peer, _ := priv.Curve().NewPublicKey(req.PeerPublic)
	z, err := priv.ECDH(peer)
	if err != nil {
		t.Fatal(err)
	}
	zb, _ := aes.NewCipher(z)
	kek := make([]byte, 32)
	zb.Encrypt(kek[:16], req.Context[:16])
	zb.Encrypt(kek[16:], req.Context[16:])
	dek, err := keywrap.UnwrapWithKey(kek, req.WrappedDEK)
	if err != nil {
		t.Fatal(err)
	}
	return dek
}

// softwareStanza wraps dek for rc the way the device does in a rewrap.
func softwareStanza(t *testing.T, dek []byte, kind envelope.StanzaKind, rc envelope.Recipient) envelope.Stanza {
	t.Helper()
	c := ecdh.X25519()
	if rc.Alg == hsm.P256 {
		c = ecdh.P256()
	}
	eph, _ := c.GenerateKey(rand.Reader)
	pub, _ := c.NewPublicKey(rc.Public)
	z, _ := eph.ECDH(pub)
	ctx := envelope.StanzaContext(rc.Alg, rc.Public)(eph.PublicKey().Bytes())
	zb, _ := aes.NewCipher(z)
	kek := make([]byte, 32)
	zb.Encrypt(kek[:16], ctx[:16])
	zb.Encrypt(kek[16:], ctx[16:])
	w, err := keywrap.WrapWithKey(kek, dek)
	if err != nil {
		t.Fatal(err)
	}
	return envelope.Stanza{Kind: kind, ParticipantID: rc.ID, KeyVersion: rc.KeyVersion, Alg: rc.Alg, KDF: hsm.KDFECBContext,
		EphemeralPublic: eph.PublicKey().Bytes(), WrappedDEK: w}
}

func TestReplaceStanzas(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "tx-rewrap")
	orig := f.env.Marshal()
	dek := softwareDEK(t, f.env, 0, f.parties[0].priv)
	alice2 := newParty(t, "alice", hsm.X25519)
	alice2.KeyVersion = 2
	escrow2 := newParty(t, "", hsm.P256)
	escrow2.KeyVersion = 5
	last := len(f.env.Header.Stanzas) - 1
	signer2 := newSigner(t, "custodyd:sig:2")
	out, err := envelope.ReplaceStanzas(context.Background(), f.env, map[int]envelope.Stanza{
		0:    softwareStanza(t, dek, envelope.StanzaParticipant, alice2.Recipient),
		last: softwareStanza(t, dek, envelope.StanzaEscrow, escrow2.Recipient),
	}, signer2)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(f.env.Marshal(), orig) {
		t.Fatal("ReplaceStanzas modified its input")
	}
	if err := out.Verify(signer2.lookup); err != nil {
		t.Fatalf("rewrapped envelope does not verify: %v", err)
	}
	if err := out.Verify(f.signer.lookup); !errors.Is(err, envelope.ErrSignature) {
		t.Fatalf("verified under the old signer: %v", err)
	}
	if !bytes.Equal(out.Nonce, f.env.Nonce) || !bytes.Equal(out.Ciphertext, f.env.Ciphertext) || !bytes.Equal(out.AAD(), f.env.AAD()) {
		t.Fatal("payload changed")
	}
	if out.Header.Stanzas[0].KeyVersion != 2 || out.Header.Stanzas[last].KeyVersion != 5 {
		t.Fatal("key versions not replaced")
	}
	for i, priv := range map[int]*ecdh.PrivateKey{0: alice2.priv, 1: f.parties[1].priv, 2: f.parties[2].priv, last: escrow2.priv} {
		pt, err := openSoftware(out, i, priv)
		if err != nil || !bytes.Equal(pt, f.plaintext) {
			t.Fatalf("stanza %d: %q, %v", i, pt, err)
		}
	}
	if _, err := openSoftware(out, 0, f.parties[0].priv); err == nil {
		t.Fatal("the old key still opens the replaced stanza")
	}
	// Round trip through the text form.
	if back, err := envelope.ParseText(out.Text()); err != nil || !bytes.Equal(back.Marshal(), out.Marshal()) {
		t.Fatalf("text round trip: %v", err)
	}
}

func TestReplaceStanzasRefusals(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "tx-rewrap-bad")
	dek := softwareDEK(t, f.env, 0, f.parties[0].priv)
	mallory := newParty(t, "mallory", hsm.X25519)
	good := softwareStanza(t, dek, envelope.StanzaParticipant, f.parties[0].Recipient)
	for name, repl := range map[string]map[int]envelope.Stanza{
		"other recipient": {0: softwareStanza(t, dek, envelope.StanzaParticipant, mallory.Recipient)},
		"wrong index":     {1: good},
		"out of range":    {9: good},
		"escrow kind":     {0: func() envelope.Stanza { s := good; s.Kind = envelope.StanzaEscrow; return s }()},
		"short wrap":      {0: func() envelope.Stanza { s := good; s.WrappedDEK = s.WrappedDEK[:8]; return s }()},
	} {
		if _, err := envelope.ReplaceStanzas(context.Background(), f.env, repl, f.signer); !errors.Is(err, envelope.ErrInvalidInput) {
			t.Errorf("%s: %v, want ErrInvalidInput", name, err)
		}
	}
	if _, err := envelope.ReplaceStanzas(context.Background(), f.env, nil, nil); !errors.Is(err, envelope.ErrInvalidInput) {
		t.Errorf("nil signer: %v", err)
	}
}

// TestRewrapRequest checks that RewrapRequest names the stanza as
// OpenRequest does and that WrapTarget's context is StanzaContext's, bound
// to the recipient key.
func TestRewrapRequest(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "tx-rewrap-req")
	e := f.env
	i, _ := e.ParticipantStanza("bank-b")
	targets := []hsm.WrapTarget{envelope.WrapTarget(f.parties[0].Alg, f.parties[0].Public)}
	req := e.RewrapRequest(i, "participant/bank-b/v1", f.parties[1].Public, targets)
	open := e.OpenRequest(i, "participant/bank-b/v1", f.parties[1].Public)
	if req.KeyLabel != open.KeyLabel || req.Alg != open.Alg || req.KDF != open.KDF || req.Context != open.Context ||
		!bytes.Equal(req.PeerPublic, open.PeerPublic) || !bytes.Equal(req.WrappedDEK, open.WrappedDEK) || len(req.Targets) != 1 {
		t.Fatalf("RewrapRequest = %+v, OpenRequest = %+v", req, open)
	}
	tg := req.Targets[0]
	eph := bytes.Repeat([]byte{9}, 32)
	if tg.Alg != hsm.X25519 || !bytes.Equal(tg.RecipientPublic, f.parties[0].Public) ||
		tg.Context(eph) != envelope.StanzaContext(hsm.X25519, f.parties[0].Public)(eph) {
		t.Fatalf("WrapTarget = %+v", tg)
	}
	if other := envelope.WrapTarget(hsm.X25519, f.parties[2].Public); other.Context(eph) == tg.Context(eph) {
		t.Fatal("WrapTarget's context does not bind the recipient key")
	}
}
