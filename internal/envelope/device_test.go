package envelope_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"custody/hsm"
	"custody/hsm/hsmtest"
	"custody/internal/envelope"
)

// TestMain runs these tests without SoftHSM too: the device tests then skip
// (or fail with CUSTODY_REQUIRE_HSM=1).
func TestMain(m *testing.M) { hsmtest.MainOptional(m) }

// deviceToken opens a fresh SoftHSM token, or skips the test when SoftHSM is
// not installed and CUSTODY_REQUIRE_HSM is not 1 (hsmtest.NewToken does).
func deviceToken(t *testing.T) *hsm.Token {
	t.Helper()
	tok, err := hsm.Open(context.Background(), hsmtest.NewToken(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tok.Close() })
	return tok
}

func TestLimitsFitDevice(t *testing.T) {
	if envelope.MaxPlaintext+envelope.TagSize > hsm.MaxCiphertext {
		t.Fatalf("largest ciphertext %d exceeds hsm.MaxCiphertext %d", envelope.MaxPlaintext+envelope.TagSize, hsm.MaxCiphertext)
	}
}

// TestOpenOnDevice seals in software to keys generated on a SoftHSM token and
// opens through every stanza with hsm.Token.Open; tampered inputs give
// hsm.ErrIntegrity.
func TestOpenOnDevice(t *testing.T) {
	tok := deviceToken(t)
	ctx := context.Background()
	gen := func(label string, alg hsm.KeyAlg) hsm.KeyInfo {
		k, err := tok.GenerateKeyPair(ctx, hsm.KeySpec{Label: label, Alg: alg, Usage: hsm.UsageDerive})
		if err != nil {
			t.Fatalf("GenerateKeyPair(%s): %v", label, err)
		}
		return k
	}
	keys := []hsm.KeyInfo{
		gen("participant/alice/1", hsm.X25519),
		gen("participant/bank-b/1", hsm.P256),
		gen("participant/carol/1", hsm.X25519),
		gen("escrow/1", hsm.P256),
	}
	signer := newSigner(t, "custodyd:sig:1")
	plaintext := []byte(`{"iban":"DE89370400440532013000"}`)
	in := envelope.SealInput{
		TransactionID: "tx-device", JobID: "job-1", PublicFields: []byte(`{"k":"v"}`),
		Plaintext: plaintext,
		Participants: []envelope.Recipient{
			{ID: "alice", KeyVersion: 1, Alg: keys[0].Alg, Public: keys[0].Public},
			{ID: "bank-b", KeyVersion: 1, Alg: keys[1].Alg, Public: keys[1].Public},
			{ID: "carol", KeyVersion: 1, Alg: keys[2].Alg, Public: keys[2].Public},
		},
		Escrow: envelope.Recipient{KeyVersion: 1, Alg: keys[3].Alg, Public: keys[3].Public},
	}
	sealed, err := envelope.Seal(ctx, in, signer)
	if err != nil {
		t.Fatal(err)
	}
	e, err := envelope.ParseText(sealed.Text())
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Verify(signer.lookup); err != nil {
		t.Fatal(err)
	}
	for i, k := range keys {
		req := e.OpenRequest(i, k.Label, k.Public)
		pt, err := tok.Open(ctx, req)
		if err != nil {
			t.Fatalf("stanza %d (%s): %v", i, k.Label, err)
		}
		if !bytes.Equal(pt, plaintext) {
			t.Fatalf("stanza %d: plaintext %q", i, pt)
		}
	}

	tampers := []struct {
		name string
		m    func(e *envelope.Envelope, stanza int) (label string, pub []byte)
	}{
		{"wrapped DEK", func(e *envelope.Envelope, i int) (string, []byte) {
			e.Header.Stanzas[i].WrappedDEK[5] ^= 0x10
			return "", nil
		}},
		{"ciphertext", func(e *envelope.Envelope, i int) (string, []byte) { e.Ciphertext[0] ^= 1; return "", nil }},
		{"tag", func(e *envelope.Envelope, i int) (string, []byte) {
			e.Ciphertext[len(e.Ciphertext)-1] ^= 1
			return "", nil
		}},
		{"nonce", func(e *envelope.Envelope, i int) (string, []byte) { e.Nonce[0] ^= 1; return "", nil }},
		{"other transaction (AAD)", func(e *envelope.Envelope, i int) (string, []byte) {
			e.Header.TransactionID = "tx-other"
			return "", nil
		}},
		{"other participant list (AAD)", func(e *envelope.Envelope, i int) (string, []byte) {
			e.Header.Participants[0], e.Header.Participants[1] = e.Header.Participants[1], e.Header.Participants[0]
			return "", nil
		}},
		{"wrong recipient public key in context", func(e *envelope.Envelope, i int) (string, []byte) {
			return "", keys[(i+1)%len(keys)].Public
		}},
		{"another stanza's ephemeral key", func(e *envelope.Envelope, i int) (string, []byte) {
			j := sameAlg(keys, i)
			e.Header.Stanzas[i].EphemeralPublic = bytes.Clone(e.Header.Stanzas[j].EphemeralPublic)
			return "", nil
		}},
		{"stanza opened with the wrong key", func(e *envelope.Envelope, i int) (string, []byte) {
			return keys[sameAlg(keys, i)].Label, keys[i].Public
		}},
	}
	for _, tc := range tampers {
		for i, k := range keys {
			t.Run(fmt.Sprintf("%s/stanza%d", tc.name, i), func(t *testing.T) {
				c, err := envelope.Parse(e.Marshal())
				if err != nil {
					t.Fatal(err)
				}
				label, pub := tc.m(c, i)
				if label == "" {
					label = k.Label
				}
				if pub == nil {
					pub = k.Public
				}
				_, err = tok.Open(ctx, c.OpenRequest(i, label, pub))
				if !errors.Is(err, hsm.ErrIntegrity) {
					t.Fatalf("Open = %v, want hsm.ErrIntegrity", err)
				}
			})
		}
	}
}

// TestRewrapOnDevice moves the DEK of an envelope sealed to SoftHSM keys to
// new versions of a participant key and of the escrow key with the requests
// RewrapRequest and WrapTarget build, and opens the new stanzas on the
// device. A request naming the wrong recipient public key fails with
// hsm.ErrIntegrity.
func TestRewrapOnDevice(t *testing.T) {
	tok := deviceToken(t)
	ctx := context.Background()
	gen := func(label string, alg hsm.KeyAlg) hsm.KeyInfo {
		k, err := tok.GenerateKeyPair(ctx, hsm.KeySpec{Label: label, Alg: alg, Usage: hsm.UsageDerive})
		if err != nil {
			t.Fatalf("GenerateKeyPair(%s): %v", label, err)
		}
		return k
	}
	alice1, escrow1 := gen("participant/alice/1", hsm.X25519), gen("escrow/1", hsm.P256)
	alice2, escrow2 := gen("participant/alice/2", hsm.X25519), gen("escrow/2", hsm.P256)
	signer := newSigner(t, "custodyd:sig:1")
	plaintext := []byte(`{"iban":"DE89370400440532013000"}`)
	sealed, err := envelope.Seal(ctx, envelope.SealInput{
		TransactionID: "tx-rewrap-device", JobID: "job-1", PublicFields: []byte(`{}`), Plaintext: plaintext,
		Participants: []envelope.Recipient{{ID: "alice", KeyVersion: 1, Alg: alice1.Alg, Public: alice1.Public}},
		Escrow:       envelope.Recipient{KeyVersion: 1, Alg: escrow1.Alg, Public: escrow1.Public},
	}, signer)
	if err != nil {
		t.Fatal(err)
	}
	e, err := envelope.ParseText(sealed.Text())
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Verify(signer.lookup); err != nil {
		t.Fatal(err)
	}
	targets := []hsm.WrapTarget{envelope.WrapTarget(alice2.Alg, alice2.Public), envelope.WrapTarget(escrow2.Alg, escrow2.Public)}
	esc := e.EscrowStanza()

	if _, err := tok.Rewrap(ctx, e.RewrapRequest(esc, escrow1.Label, alice1.Public, targets)); !errors.Is(err, hsm.ErrIntegrity) {
		t.Fatalf("Rewrap with the wrong recipient public key = %v, want hsm.ErrIntegrity", err)
	}
	wrapped, err := tok.Rewrap(ctx, e.RewrapRequest(esc, escrow1.Label, escrow1.Public, targets))
	if err != nil {
		t.Fatal(err)
	}
	stanza := func(old envelope.Stanza, k hsm.KeyInfo, w hsm.Rewrapped) envelope.Stanza {
		return envelope.Stanza{Kind: old.Kind, ParticipantID: old.ParticipantID, KeyVersion: 2, Alg: k.Alg,
			KDF: hsm.KDFECBContext, EphemeralPublic: w.EphemeralPublic, WrappedDEK: w.WrappedDEK}
	}
	next, err := envelope.ReplaceStanzas(ctx, e, map[int]envelope.Stanza{
		0:   stanza(e.Header.Stanzas[0], alice2, wrapped[0]),
		esc: stanza(e.Header.Stanzas[esc], escrow2, wrapped[1]),
	}, signer)
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range []hsm.KeyInfo{alice2, escrow2} {
		if i == 1 {
			i = esc
		}
		pt, err := tok.Open(ctx, next.OpenRequest(i, k.Label, k.Public))
		if err != nil || !bytes.Equal(pt, plaintext) {
			t.Fatalf("open of rewrapped stanza %d with %s = %q, %v", i, k.Label, pt, err)
		}
	}
}

// sameAlg returns the index of another key with the same algorithm as keys[i].
func sameAlg(keys []hsm.KeyInfo, i int) int {
	for j, k := range keys {
		if j != i && k.Alg == keys[i].Alg {
			return j
		}
	}
	panic("no other key of that algorithm")
}
