package envelope_test

import (
	"bytes"
	"crypto/aes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"testing"

	"custody/hsm"
	"custody/internal/envelope"
	"custody/internal/envelope/internal/kat"
)

const vectorsFile = "testdata/vectors.json"

// TestVectorsFileUpToDate re-runs the generator and requires the committed
// file to be identical. After an intended format change: go generate.
func TestVectorsFileUpToDate(t *testing.T) {
	want, err := kat.Generate()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(vectorsFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is stale or edited: run go generate ./internal/envelope", vectorsFile)
	}
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestVectors checks each committed vector independently of the generator:
// it parses, verifies under the stated signing key, every stanza opens in
// software to the stated plaintext, and the intermediate values are right.
func TestVectors(t *testing.T) {
	raw, err := os.ReadFile(vectorsFile)
	if err != nil {
		t.Fatal(err)
	}
	var file kat.File
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	if len(file.Vectors) < 3 {
		t.Fatalf("only %d vectors", len(file.Vectors))
	}
	for _, v := range file.Vectors {
		t.Run(v.Name, func(t *testing.T) {
			t.Parallel()
			e, err := envelope.ParseText(v.Envelope)
			if err != nil {
				t.Fatal(err)
			}
			sk, err := kat.SigningKeyFromHex(v.SigningKey.Private)
			if err != nil {
				t.Fatal(err)
			}
			pubBytes, _ := sk.PublicKey.Bytes()
			if hex.EncodeToString(pubBytes) != v.SigningKey.Public {
				t.Fatal("signing public key does not match private key")
			}
			lookup := func(id string) (*ecdsa.PublicKey, error) {
				if id != v.SigningKey.ID {
					t.Fatalf("lookup(%q)", id)
				}
				return &sk.PublicKey, nil
			}
			if err := e.Verify(lookup); err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(e.Signature) != v.Signature {
				t.Error("signature_hex differs from the envelope's")
			}
			if d := sha256.Sum256(e.SignedMessage()); hex.EncodeToString(d[:]) != v.SignedDigest {
				t.Error("signed message digest")
			}
			if hex.EncodeToString(e.AAD()) != v.AAD {
				t.Error("AAD")
			}
			h := e.Header
			if h.TransactionID != v.TransactionID || h.JobID != v.JobID || h.CreatedAt.UnixMilli() != v.CreatedAtMS ||
				string(h.PublicFields) != v.PublicFields || hex.EncodeToString(e.Nonce) != v.Nonce {
				t.Error("header fields differ from the vector")
			}
			if len(v.Recipients) != len(h.Stanzas) {
				t.Fatalf("%d recipients, %d stanzas", len(v.Recipients), len(h.Stanzas))
			}
			for i, r := range v.Recipients {
				st := h.Stanzas[i]
				c := ecdh.X25519()
				if st.Alg == hsm.P256 {
					c = ecdh.P256()
				}
				priv, err := c.NewPrivateKey(unhex(t, r.Private))
				if err != nil {
					t.Fatal(err)
				}
				if r.Alg != st.Alg.String() || r.Kind != st.Kind.String() || r.ID != st.ParticipantID || r.KeyVersion != st.KeyVersion ||
					hex.EncodeToString(priv.PublicKey().Bytes()) != r.Public || hex.EncodeToString(st.EphemeralPublic) != r.EphemeralPublic ||
					hex.EncodeToString(st.WrappedDEK) != r.WrappedDEK {
					t.Errorf("stanza %d differs from the vector", i)
				}
				eph, err := c.NewPrivateKey(unhex(t, r.EphemeralPrivate))
				if err != nil || !bytes.Equal(eph.PublicKey().Bytes(), st.EphemeralPublic) {
					t.Fatalf("stanza %d: ephemeral private key does not match", i)
				}
				z, _ := priv.ECDH(eph.PublicKey())
				ctx := envelope.KDFContext(st.Alg, st.KDF, st.EphemeralPublic, priv.PublicKey().Bytes())
				b, _ := aes.NewCipher(z)
				kek := make([]byte, 32)
				b.Encrypt(kek[:16], ctx[:16])
				b.Encrypt(kek[16:], ctx[16:])
				if hex.EncodeToString(z) != r.SharedSecret || hex.EncodeToString(ctx[:]) != r.KDFContext || hex.EncodeToString(kek) != r.KEK {
					t.Errorf("stanza %d: intermediate values differ", i)
				}
				pt, err := openSoftware(e, i, priv)
				if err != nil {
					t.Fatalf("stanza %d: %v", i, err)
				}
				if string(pt) != v.Plaintext {
					t.Fatalf("stanza %d: plaintext %q, want %q", i, pt, v.Plaintext)
				}
			}
			if !bytes.HasPrefix(unhex(t, v.Rand), append(unhex(t, v.DEK), unhex(t, v.Nonce)...)) {
				t.Error("rand stream does not start with DEK ‖ nonce")
			}
		})
	}
}
