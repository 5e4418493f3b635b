// Package kat generates the envelope known-answer vectors in
// internal/envelope/testdata/vectors.json. Every secret comes from a fixed
// seed (SHA-256 of a label), Seal reads its randomness from a fixed byte
// stream, and the signature is deterministic (RFC 6979, which crypto/ecdsa
// uses when given a nil random source), so Generate returns the same bytes
// on every run. The envelope tests call Generate and compare with the
// committed file; cmd katgen writes it.
package kat

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"custody/internal/device"
	"custody/internal/envelope"
)

// File is the layout of vectors.json.
type File struct {
	Comment string   `json:"comment"`
	Vectors []Vector `json:"vectors"`
}

// Vector is one known answer: all inputs, the intermediate values of every
// stanza, and the resulting envelope in text form.
type Vector struct {
	Name          string      `json:"name"`
	TransactionID string      `json:"transaction_id"`
	JobID         string      `json:"job_id"`
	CreatedAtMS   int64       `json:"created_at_ms"`
	PublicFields  string      `json:"public_fields"`
	Plaintext     string      `json:"plaintext"` // UTF-8 text
	SigningKey    SigningKey  `json:"signing_key"`
	DEK           string      `json:"dek_hex"`
	Nonce         string      `json:"nonce_hex"`
	Rand          string      `json:"rand_hex"`   // the byte stream Seal read: DEK ‖ nonce ‖ ephemeral keys
	Recipients    []Recipient `json:"recipients"` // participants in order, then the escrow
	AAD           string      `json:"aad_hex"`
	SignedDigest  string      `json:"signed_message_sha256_hex"`
	Signature     string      `json:"signature_hex"` // r‖s, RFC 6979
	Envelope      string      `json:"envelope"`      // text form
}

// SigningKey is the software P-256 key that stands in for the daemon's HSM key.
type SigningKey struct {
	ID      string `json:"id"`
	Private string `json:"private_hex"` // 32-byte scalar
	Public  string `json:"public_hex"`  // 04‖X‖Y
}

// Recipient is one recipient key pair and the values of its stanza.
type Recipient struct {
	Kind             string `json:"kind"` // "participant" or "escrow"
	ID               string `json:"id"`
	KeyVersion       uint32 `json:"key_version"`
	Alg              string `json:"alg"`
	Private          string `json:"private_hex"`
	Public           string `json:"public_hex"`
	EphemeralPrivate string `json:"ephemeral_private_hex"`
	EphemeralPublic  string `json:"ephemeral_public_hex"`
	SharedSecret     string `json:"shared_secret_hex"` // Z
	KDFContext       string `json:"kdf_context_hex"`
	KEK              string `json:"kek_hex"`
	WrappedDEK       string `json:"wrapped_dek_hex"`
}

type spec struct {
	name, tx, job, publicFields, plaintext string
	createdMS                              int64
	participants                           []recipSpec
}

type recipSpec struct {
	id      string
	version uint32
	alg     device.KeyAlg
}

var specs = []spec{
	{
		name: "one-x25519-participant", tx: "tx-0001", job: "job:settle.2025-01-01",
		publicFields: `{"amount_currency":"EUR","venue":"XPAR"}`,
		plaintext:    `{"amount":"1250000.00","counterparty":"ACME Corp"}`,
		createdMS:    1735732800123,
		participants: []recipSpec{{"alice", 1, device.X25519}},
	},
	{
		name: "three-participants-mixed", tx: "TX.9f8e7d", job: "batch-42",
		// Deliberately not canonical: Seal stores the canonical form.
		publicFields: `{ "z": [3, 1.50, {"b": true, "a": null}], "a": "<&>", "n": -0 }`,
		plaintext:    "confidential: \u00e9t\u00e9 \u2028 end",
		createdMS:    1700000000000,
		participants: []recipSpec{{"bank-a", 3, device.X25519}, {"bank-b", 1, device.P256}, {"regulator.eu", 7, device.X25519}},
	},
	{
		name: "empty-plaintext", tx: "t", job: "j", publicFields: `{}`, plaintext: "",
		createdMS:    0,
		participants: []recipSpec{{"p1", 0, device.P256}},
	},
}

const escrowVersion = 2

func seed(parts ...string) []byte {
	h := sha256.New()
	h.Write([]byte("custody envelope katgen v1"))
	for _, p := range parts {
		h.Write([]byte{0})
		h.Write([]byte(p))
	}
	return h.Sum(nil)
}

func curveOf(alg device.KeyAlg) ecdh.Curve {
	if alg == device.P256 {
		return ecdh.P256()
	}
	return ecdh.X25519()
}

type signer struct {
	id   string
	priv *ecdsa.PrivateKey
}

func (s signer) KeyID() string { return s.id }

func (s signer) Sign(_ context.Context, digest []byte) ([]byte, error) {
	der, err := s.priv.Sign(nil, digest, crypto.SHA256) // nil: RFC 6979
	if err != nil {
		return nil, err
	}
	return RawSignature(der)
}

// RawSignature converts an ASN.1 DER ECDSA signature to P-256 r‖s.
func RawSignature(der []byte) ([]byte, error) {
	var r, s []byte
	in := cryptobyte.String(der)
	var seq cryptobyte.String
	if !in.ReadASN1(&seq, cbasn1.SEQUENCE) || !in.Empty() ||
		!seq.ReadASN1Integer(&r) || !seq.ReadASN1Integer(&s) || !seq.Empty() ||
		len(r) > 32 || len(s) > 32 {
		return nil, errors.New("kat: bad DER signature")
	}
	out := make([]byte, 64)
	copy(out[32-len(r):32], r)
	copy(out[64-len(s):], s)
	return out, nil
}

// SigningKeyFromHex rebuilds the software signing key of a vector.
func SigningKeyFromHex(private string) (*ecdsa.PrivateKey, error) {
	d, err := hex.DecodeString(private)
	if err != nil {
		return nil, err
	}
	return ecdsa.ParseRawPrivateKey(elliptic.P256(), d)
}

// Generate returns the contents of vectors.json.
func Generate() ([]byte, error) {
	f := File{Comment: "custody envelope v1 known-answer vectors. Generated by `go generate ./internal/envelope` " +
		"(go run ./internal/katgen); do not edit. See docs/envelope.md."}
	for _, sp := range specs {
		v, err := generate(sp)
		if err != nil {
			return nil, fmt.Errorf("kat: %s: %w", sp.name, err)
		}
		f.Vectors = append(f.Vectors, v)
	}
	out, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

func generate(sp spec) (Vector, error) {
	v := Vector{
		Name: sp.name, TransactionID: sp.tx, JobID: sp.job, CreatedAtMS: sp.createdMS,
		Plaintext: sp.plaintext,
	}
	sk, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), seed(sp.name, "signing-key"))
	if err != nil {
		return v, err
	}
	skPub, _ := sk.PublicKey.Bytes()
	skRaw, _ := sk.Bytes()
	v.SigningKey = SigningKey{ID: "custodyd-signing:1", Private: hex.EncodeToString(skRaw), Public: hex.EncodeToString(skPub)}

	dek := seed(sp.name, "dek")
	nonce := seed(sp.name, "nonce")[:envelope.NonceSize]
	stream := append(append([]byte(nil), dek...), nonce...)

	all := append(append([]recipSpec(nil), sp.participants...), recipSpec{"", escrowVersion, device.P256})
	in := envelope.SealInput{
		TransactionID: sp.tx, JobID: sp.job, PublicFields: []byte(sp.publicFields),
		Plaintext: []byte(sp.plaintext), CreatedAt: time.UnixMilli(sp.createdMS),
	}
	type keys struct{ priv, eph *ecdh.PrivateKey }
	var ks []keys
	for i, r := range all {
		role := "participant:" + r.id
		if i == len(all)-1 {
			role = "escrow"
		}
		c := curveOf(r.alg)
		priv, err := c.NewPrivateKey(seed(sp.name, role, "static"))
		if err != nil {
			return v, err
		}
		ephBytes := seed(sp.name, role, "ephemeral")
		eph, err := c.NewPrivateKey(ephBytes)
		if err != nil {
			return v, err // would need rejection sampling: pick another label
		}
		stream = append(stream, ephBytes...)
		ks = append(ks, keys{priv, eph})
		rc := envelope.Recipient{ID: r.id, KeyVersion: r.version, Alg: r.alg, Public: priv.PublicKey().Bytes()}
		if i == len(all)-1 {
			in.Escrow = rc
		} else {
			in.Participants = append(in.Participants, rc)
		}
	}
	in.Rand = bytes.NewReader(stream)
	e, err := envelope.Seal(context.Background(), in, signer{v.SigningKey.ID, sk})
	if err != nil {
		return v, err
	}
	if in.Rand.(*bytes.Reader).Len() != 0 {
		return v, errors.New("envelope.Seal did not consume the whole random stream")
	}
	v.PublicFields = string(e.Header.PublicFields)
	v.DEK, v.Nonce, v.Rand = hex.EncodeToString(dek), hex.EncodeToString(nonce), hex.EncodeToString(stream)
	for i, r := range all {
		st := e.Header.Stanzas[i]
		pub := ks[i].priv.PublicKey()
		z, err := ks[i].eph.ECDH(pub)
		if err != nil {
			return v, err
		}
		ctx := envelope.KDFContext(r.alg, device.KDFECBContext, st.EphemeralPublic, pub.Bytes())
		b, _ := aes.NewCipher(z)
		kek := make([]byte, 32)
		b.Encrypt(kek[:16], ctx[:16])
		b.Encrypt(kek[16:], ctx[16:])
		privBytes := ks[i].priv.Bytes()
		v.Recipients = append(v.Recipients, Recipient{
			Kind: st.Kind.String(), ID: r.id, KeyVersion: r.version, Alg: r.alg.String(),
			Private: hex.EncodeToString(privBytes), Public: hex.EncodeToString(pub.Bytes()),
			EphemeralPrivate: hex.EncodeToString(ks[i].eph.Bytes()),
			EphemeralPublic:  hex.EncodeToString(st.EphemeralPublic),
			SharedSecret:     hex.EncodeToString(z), KDFContext: hex.EncodeToString(ctx[:]),
			KEK: hex.EncodeToString(kek), WrappedDEK: hex.EncodeToString(st.WrappedDEK),
		})
	}
	digest := sha256.Sum256(e.SignedMessage())
	v.AAD = hex.EncodeToString(e.AAD())
	v.SignedDigest = hex.EncodeToString(digest[:])
	v.Signature = hex.EncodeToString(e.Signature)
	v.Envelope = e.Text()
	return v, nil
}
