package envelope_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"testing"
	"time"

	"custody/hsm"
	"custody/internal/envelope"
)

// stream is a deterministic byte stream: SHA-256 of a seed and a counter.
func stream(seed string, n int) *bytes.Reader {
	var out []byte
	for i := 0; len(out) < n; i++ {
		h := sha256.Sum256([]byte{byte(i), byte(i >> 8)})
		h = sha256.Sum256(append([]byte(seed), h[:]...))
		out = append(out, h[:]...)
	}
	return bytes.NewReader(out[:n])
}

// TestV2OnDevice seals a version-2 envelope with the field keys derived on a
// SoftHSM token, checks that it is byte-for-byte what the software twin
// computes from the same randomness, opens chosen fields through every
// stanza with hsm.Token.OpenFields, and checks that a field moved under a
// re-signed header is refused by the device (hsm.ErrIntegrity) and that no
// session object is left behind.
func TestV2OnDevice(t *testing.T) {
	tok := deviceToken(t)
	ctx := context.Background()
	gen := func(label string, alg hsm.KeyAlg) hsm.KeyInfo {
		k, err := tok.GenerateKeyPair(ctx, hsm.KeySpec{Label: label, Alg: alg, Usage: hsm.UsageDerive})
		if err != nil {
			t.Fatalf("GenerateKeyPair(%s): %v", label, err)
		}
		return k
	}
	keys := []hsm.KeyInfo{gen("participant/alice/1", hsm.X25519), gen("participant/bank-b/1", hsm.P256), gen("escrow/1", hsm.P256)}
	fields, err := envelope.SplitFields(v2Confidential)
	if err != nil {
		t.Fatal(err)
	}
	signer := newSigner(t, "custodyd:sig:1")
	in := envelope.SealInput{
		TransactionID: "tx-device-v2", JobID: "job-1", Fields: fields, SealedBy: "settlement-app", CreatedAt: time.UnixMilli(1735689600123),
		Participants: []envelope.Recipient{
			{ID: "alice", KeyVersion: 1, Alg: keys[0].Alg, Public: keys[0].Public},
			{ID: "bank-b", KeyVersion: 1, Alg: keys[1].Alg, Public: keys[1].Public},
		},
		Escrow: envelope.Recipient{KeyVersion: 1, Alg: keys[2].Alg, Public: keys[2].Public},
	}
	in.Rand = stream("v2-device", 4096)
	sealed, err := envelope.SealV2(ctx, in, signer, tok)
	if err != nil {
		t.Fatal(err)
	}
	in.Rand = stream("v2-device", 4096)
	soft, err := envelope.SealV2(ctx, in, signer, envelope.SoftwareFields{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range sealed.Fields {
		if !bytes.Equal(sealed.Fields[i].Ciphertext, soft.Fields[i].Ciphertext) {
			t.Fatalf("field %d: device and software ciphertexts differ", i)
		}
	}
	e, err := envelope.ParseText(sealed.Text())
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Verify(signer.lookup); err != nil {
		t.Fatal(err)
	}
	amount, pricing := e.FieldIndex("amount"), e.FieldIndex("pricing")
	for i, k := range keys {
		req, err := e.OpenFieldsRequest(i, k.Label, k.Public, []int{pricing, amount})
		if err != nil {
			t.Fatal(err)
		}
		pts, err := tok.OpenFields(ctx, req)
		if err != nil {
			t.Fatalf("stanza %d: %v", i, err)
		}
		for k := range pts {
			if pts[k], err = envelope.DecodeValue(pts[k]); err != nil {
				t.Fatal(err)
			}
		}
		if len(pts) != 2 || string(pts[0]) != `{"gpu_hour":"2.50"}` || string(pts[1]) != `"12.50"` {
			t.Fatalf("stanza %d: %q", i, pts)
		}
	}

	open := func(e *envelope.Envelope, idx int) error {
		req, err := e.OpenFieldsRequest(0, keys[0].Label, keys[0].Public, []int{idx})
		if err != nil {
			t.Fatal(err)
		}
		_, err = tok.OpenFields(ctx, req)
		return err
	}
	resign := func(e *envelope.Envelope) {
		d := sha256.Sum256(e.SignedMessage())
		if e.Signature, err = signer.Sign(ctx, d[:]); err != nil {
			t.Fatal(err)
		}
		if err := e.Verify(signer.lookup); err != nil {
			t.Fatal(err)
		}
	}
	iban := e.FieldIndex("iban")
	tampers := map[string]func(c *envelope.Envelope){
		"field swapped with another field": func(c *envelope.Envelope) { c.Fields[amount], c.Fields[iban] = c.Fields[iban], c.Fields[amount] },
		"sealed_by changed":                func(c *envelope.Envelope) { c.Header.SealedBy = "operator" },
		"field from a second seal":         func(c *envelope.Envelope) { c.Fields[amount] = soft.Fields[amount] },
	}
	// The second seal shares the randomness (and so the DEK) of the first:
	// its amount opens. Seal it again with fresh randomness for the test.
	in.Rand = nil
	if soft, err = envelope.SealV2(ctx, in, signer, envelope.SoftwareFields{}); err != nil {
		t.Fatal(err)
	}
	for name, m := range tampers {
		c, _ := envelope.Parse(e.Marshal())
		m(c)
		resign(c)
		if err := open(c, amount); !errors.Is(err, hsm.ErrIntegrity) {
			t.Errorf("%s: OpenFields = %v, want hsm.ErrIntegrity", name, err)
		}
	}
	if n, err := tok.SessionObjectCount(ctx); err != nil || n != 0 {
		t.Errorf("session objects left on the token: %d, %v", n, err)
	}
}
