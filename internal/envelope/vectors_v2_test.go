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

const vectorsV2File = "testdata/vectors-v2.json"

// TestVectorsV2FileUpToDate re-runs the generator and requires the
// committed file to be identical. After an intended format change: go
// generate ./internal/envelope.
func TestVectorsV2FileUpToDate(t *testing.T) {
	want, err := kat.GenerateV2()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(vectorsV2File)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s is stale or edited: run go generate ./internal/envelope", vectorsV2File)
	}
}

// TestVectorsV2 checks each committed v2 vector independently of the
// generator: it parses, verifies under the stated key, names the stated
// sealer and fields, every stanza opens every field in software to the
// stated value, and the field contexts, keys, AADs and digests are what the
// documented formulas give.
func TestVectorsV2(t *testing.T) {
	raw, err := os.ReadFile(vectorsV2File)
	if err != nil {
		t.Fatal(err)
	}
	var file kat.FileV2
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	if len(file.Vectors) < 2 {
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
			if err := e.Verify(func(string) (*ecdsa.PublicKey, error) { return &sk.PublicKey, nil }); err != nil {
				t.Fatal(err)
			}
			if e.Header.Version != envelope.Version2 || e.Header.SealedBy != v.SealedBy || len(e.Fields) != len(v.Fields) {
				t.Fatalf("header %+v", e.Header)
			}
			digest := sha256.Sum256(e.SignedMessage())
			if hex.EncodeToString(digest[:]) != v.SignedDigest || hex.EncodeToString(e.Signature) != v.Signature {
				t.Fatal("signed digest or signature differ")
			}
			bh := e.BindingHash()
			fd := e.FieldsDigest()
			if hex.EncodeToString(bh[:]) != v.BindingHash || hex.EncodeToString(fd[:]) != v.FieldsDigest {
				t.Fatal("binding hash or fields digest differ")
			}
			dek := unhex(t, v.DEK)
			db, _ := aes.NewCipher(dek)
			for i, f := range v.Fields {
				if e.Header.FieldNames[i] != f.Name || hex.EncodeToString(e.Fields[i].Nonce) != f.Nonce || hex.EncodeToString(e.Fields[i].Ciphertext) != f.Ciphertext {
					t.Fatalf("field %d differs from the vector", i)
				}
				// The documented formulas, written out.
				kc := sha256.Sum256(append(append(append([]byte(envelope.LabelFieldKey+"\x00"), bh[:]...), byte(len(f.Name))), f.Name...))
				aad := append(append(append([]byte(envelope.LabelFieldAAD+"\x00"), bh[:]...), byte(len(f.Name))), f.Name...)
				if hex.EncodeToString(kc[:]) != f.KeyContext || hex.EncodeToString(aad) != f.AAD {
					t.Fatalf("field %s: context or AAD differ from the formula", f.Name)
				}
				fk := make([]byte, 32)
				db.Encrypt(fk[:16], kc[:16])
				db.Encrypt(fk[16:], kc[16:])
				if hex.EncodeToString(fk) != f.FieldKey {
					t.Fatalf("field %s: key differs", f.Name)
				}
			}
			all := make([]int, len(e.Fields))
			for i := range all {
				all[i] = i
			}
			for i, r := range v.Recipients {
				c := ecdh.X25519()
				if r.Alg == hsm.P256.String() {
					c = ecdh.P256()
				}
				priv, err := c.NewPrivateKey(unhex(t, r.Private))
				if err != nil {
					t.Fatal(err)
				}
				pts, err := openFieldsSoftware(e, i, priv, all...)
				if err != nil {
					t.Fatalf("stanza %d: %v", i, err)
				}
				for k, pt := range pts {
					if string(pt) != v.Fields[k].Value {
						t.Fatalf("stanza %d field %d: %q", i, k, pt)
					}
				}
			}
		})
	}
}
