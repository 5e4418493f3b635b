package envelope_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"testing"

	"custody/internal/envelope"
	"custody/internal/keywrap"
)

// openFieldsSoftware opens the fields at indices of e through stanza i with
// priv, doing in software what the device does with e.OpenFieldsRequest,
// and decodes the values (envelope.DecodeValue) as the daemon does.
func openFieldsSoftware(e *envelope.Envelope, i int, priv *ecdh.PrivateKey, indices ...int) ([][]byte, error) {
	req, err := e.OpenFieldsRequest(i, "software", priv.PublicKey().Bytes(), indices)
	if err != nil {
		return nil, err
	}
	peer, err := priv.Curve().NewPublicKey(req.PeerPublic)
	if err != nil {
		return nil, errOpen
	}
	z, err := priv.ECDH(peer)
	if err != nil {
		return nil, errOpen
	}
	zb, _ := aes.NewCipher(z)
	kek := make([]byte, 32)
	zb.Encrypt(kek[:16], req.Context[:16])
	zb.Encrypt(kek[16:], req.Context[16:])
	dek, err := keywrap.UnwrapWithKey(kek, req.WrappedDEK)
	if err != nil || len(dek) != 32 {
		return nil, errOpen
	}
	db, _ := aes.NewCipher(dek)
	var out [][]byte
	for _, f := range req.Fields {
		fk := make([]byte, 32)
		db.Encrypt(fk[:16], f.Context[:16])
		db.Encrypt(fk[16:], f.Context[16:])
		b, _ := aes.NewCipher(fk)
		gcm, _ := cipher.NewGCM(b)
		pt, err := gcm.Open(nil, f.Nonce, f.Ciphertext, f.AAD)
		if err != nil {
			return nil, errOpen
		}
		v, err := envelope.DecodeValue(pt)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// v2Fixture is a version-2 envelope with five fields, sealed in software.
type v2Fixture struct {
	*fixture
}

var v2Confidential = []byte(`{"amount":"12.50","iban":"DE89370400440532013000","pricing":{"gpu_hour":"2.50"},"settlement_details":"net 30","zz":[1,2,3]}`)

func newV2Fixture(t testing.TB, tx string) *v2Fixture {
	t.Helper()
	f := newFixture(t, tx)
	fields, err := envelope.SplitFields(v2Confidential)
	if err != nil {
		t.Fatal(err)
	}
	f.in.Plaintext, f.in.Fields, f.in.SealedBy = nil, fields, "settlement-app"
	e, err := envelope.SealV2(context.Background(), f.in, f.signer, envelope.SoftwareFields{})
	if err != nil {
		t.Fatal(err)
	}
	f.env = e
	return &v2Fixture{f}
}

// resign signs e's (tampered) header again with the fixture's key: what an
// attacker holding the daemon's signing key could do. The field keys and
// AADs must still refuse what was moved.
func (f *v2Fixture) resign(t *testing.T, e *envelope.Envelope) {
	t.Helper()
	digest := sha256.Sum256(e.SignedMessage())
	sig, err := f.signer.Sign(context.Background(), digest[:])
	if err != nil {
		t.Fatal(err)
	}
	e.Signature = sig
}

func reparse(t *testing.T, e *envelope.Envelope) *envelope.Envelope {
	t.Helper()
	c, err := envelope.Parse(e.Marshal())
	if err != nil {
		t.Fatalf("re-parse: %v", err)
	}
	return c
}

func TestV2RoundTrip(t *testing.T) {
	f := newV2Fixture(t, "tx-v2")
	e, err := envelope.ParseText(f.env.Text())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(e.Marshal(), f.env.Marshal()) {
		t.Fatal("Parse(Marshal) differs")
	}
	if !strings.HasPrefix(f.env.Text(), envelope.TextPrefix) {
		t.Fatalf("text form %q", f.env.Text()[:20])
	}
	if err := e.Verify(f.signer.lookup); err != nil {
		t.Fatal(err)
	}
	h := e.Header
	if h.Version != envelope.Version2 || h.SealedBy != "settlement-app" ||
		strings.Join(h.FieldNames, ",") != "amount,iban,pricing,settlement_details,zz" || e.Nonce != nil || e.Ciphertext != nil {
		t.Fatalf("header %+v", h)
	}
	want := []string{`"12.50"`, `"DE89370400440532013000"`, `{"gpu_hour":"2.50"}`, `"net 30"`, `[1,2,3]`}
	for i, p := range f.parties {
		pts, err := openFieldsSoftware(e, i, p.priv, 0, 1, 2, 3, 4)
		if err != nil {
			t.Fatalf("stanza %d: %v", i, err)
		}
		for k, pt := range pts {
			if string(pt) != want[k] {
				t.Errorf("stanza %d field %d = %s, want %s", i, k, pt, want[k])
			}
		}
	}
	// Some fields only, in the order asked.
	pts, err := openFieldsSoftware(e, 0, f.parties[0].priv, e.FieldIndex("pricing"), e.FieldIndex("amount"))
	if err != nil || len(pts) != 2 || string(pts[0]) != want[2] || string(pts[1]) != want[0] {
		t.Fatalf("two fields: %q %v", pts, err)
	}
	if e.FieldIndex("nope") != -1 {
		t.Error("FieldIndex of a missing field")
	}
}

// Each tamper of a version-2 envelope is refused: by the header signature
// (which covers the field names, sealed_by and every field ciphertext) and,
// were the header signed again by the daemon's own key, by the field keys
// and AADs, which bind the envelope and the field name.
func TestV2SwapFieldWithinEnvelope(t *testing.T) {
	f := newV2Fixture(t, "tx-swap")
	e := reparse(t, f.env)
	a, b := e.FieldIndex("amount"), e.FieldIndex("settlement_details")
	e.Fields[a], e.Fields[b] = e.Fields[b], e.Fields[a]
	if err := e.Verify(f.signer.lookup); !errors.Is(err, envelope.ErrSignature) {
		t.Fatalf("Verify = %v, want ErrSignature", err)
	}
	f.resign(t, e)
	if _, err := openFieldsSoftware(e, 0, f.parties[0].priv, a); !errors.Is(err, errOpen) {
		t.Fatalf("re-signed swap opened: %v", err)
	}
}

func TestV2SwapFieldFromOtherEnvelope(t *testing.T) {
	f := newV2Fixture(t, "tx-a")
	other := newV2Fixture(t, "tx-b")
	e := reparse(t, f.env)
	a := e.FieldIndex("amount")
	e.Fields[a] = other.env.Fields[a]
	if err := e.Verify(f.signer.lookup); !errors.Is(err, envelope.ErrSignature) {
		t.Fatalf("Verify = %v, want ErrSignature", err)
	}
	f.resign(t, e)
	if _, err := openFieldsSoftware(e, 0, f.parties[0].priv, a); !errors.Is(err, errOpen) {
		t.Fatalf("field from another envelope opened: %v", err)
	}
	// Even the same transaction sealed twice: another DEK, another binding.
	again := newV2Fixture(t, "tx-a")
	e = reparse(t, f.env)
	e.Fields[a] = again.env.Fields[a]
	f.resign(t, e)
	if _, err := openFieldsSoftware(e, 0, f.parties[0].priv, a); !errors.Is(err, errOpen) {
		t.Fatalf("field from a second seal of the transaction opened: %v", err)
	}
}

func TestV2DropField(t *testing.T) {
	f := newV2Fixture(t, "tx-drop")
	e := reparse(t, f.env)
	d := e.FieldIndex("settlement_details")
	e.Header.FieldNames = append(e.Header.FieldNames[:d:d], e.Header.FieldNames[d+1:]...)
	e.Fields = append(e.Fields[:d:d], e.Fields[d+1:]...)
	if err := e.Verify(f.signer.lookup); !errors.Is(err, envelope.ErrSignature) {
		t.Fatalf("Verify = %v, want ErrSignature", err)
	}
	f.resign(t, e)
	// The field list is in the binding: no remaining field opens either.
	if _, err := openFieldsSoftware(e, 0, f.parties[0].priv, e.FieldIndex("amount")); !errors.Is(err, errOpen) {
		t.Fatalf("after dropping a field, amount opened: %v", err)
	}
	// Dropping only a ciphertext leaves a field list that does not match.
	e = reparse(t, f.env)
	e.Fields = e.Fields[:len(e.Fields)-1]
	if err := e.Validate(); !errors.Is(err, envelope.ErrMalformed) {
		t.Fatalf("Validate = %v, want ErrMalformed", err)
	}
}

func TestV2ReorderFields(t *testing.T) {
	f := newV2Fixture(t, "tx-order")
	// Names out of order: not a valid envelope.
	e := reparse(t, f.env)
	n := e.Header.FieldNames
	n[0], n[1] = n[1], n[0]
	e.Fields[0], e.Fields[1] = e.Fields[1], e.Fields[0]
	if err := e.Validate(); !errors.Is(err, envelope.ErrMalformed) {
		t.Fatalf("Validate = %v, want ErrMalformed", err)
	}
	if _, err := envelope.Parse(e.Marshal()); !errors.Is(err, envelope.ErrMalformed) {
		t.Fatalf("Parse = %v, want ErrMalformed", err)
	}
	// Ciphertexts reordered under the right names: each field is then
	// another field's, refused as in the swap.
	e = reparse(t, f.env)
	e.Fields = append(e.Fields[1:], e.Fields[0])
	if err := e.Verify(f.signer.lookup); !errors.Is(err, envelope.ErrSignature) {
		t.Fatalf("Verify = %v, want ErrSignature", err)
	}
	f.resign(t, e)
	for i := range e.Fields {
		if _, err := openFieldsSoftware(e, 0, f.parties[0].priv, i); !errors.Is(err, errOpen) {
			t.Fatalf("reordered field %d opened: %v", i, err)
		}
	}
}

func TestV2ChangeSealedBy(t *testing.T) {
	f := newV2Fixture(t, "tx-who")
	e := reparse(t, f.env)
	e.Header.SealedBy = "operator"
	if err := e.Verify(f.signer.lookup); !errors.Is(err, envelope.ErrSignature) {
		t.Fatalf("Verify = %v, want ErrSignature", err)
	}
	f.resign(t, e)
	if _, err := openFieldsSoftware(e, 0, f.parties[0].priv, 0); !errors.Is(err, errOpen) {
		t.Fatalf("field opened under another sealed_by: %v", err)
	}
}

func TestV2RewrapKeepsFields(t *testing.T) {
	f := newV2Fixture(t, "tx-rewrap")
	other := newV2Fixture(t, "tx-donor") // a stanza shape to put in
	st := other.env.Header.Stanzas[0]
	st.ParticipantID = f.env.Header.Stanzas[0].ParticipantID
	out, err := envelope.ReplaceStanzas(context.Background(), f.env, map[int]envelope.Stanza{0: st}, f.signer)
	if err != nil {
		t.Fatal(err)
	}
	out = reparse(t, out)
	if out.Header.Version != envelope.Version2 || out.Header.SealedBy != f.env.Header.SealedBy {
		t.Fatalf("rewrapped header %+v", out.Header)
	}
	for i := range f.env.Fields {
		if !bytes.Equal(out.Fields[i].Nonce, f.env.Fields[i].Nonce) || !bytes.Equal(out.Fields[i].Ciphertext, f.env.Fields[i].Ciphertext) {
			t.Errorf("field %d changed by the rewrap", i)
		}
	}
	if err := out.Verify(f.signer.lookup); err != nil {
		t.Fatal(err)
	}
	// The untouched stanzas still open every field.
	if _, err := openFieldsSoftware(out, 1, f.parties[1].priv, 0, 1, 2, 3, 4); err != nil {
		t.Fatal(err)
	}
}

func TestV1WhereV2Required(t *testing.T) {
	f := newFixture(t, "tx-v1")
	if _, err := f.env.OpenFieldsRequest(0, "k", f.parties[0].Public, []int{0}); !errors.Is(err, envelope.ErrVersion) {
		t.Fatalf("OpenFieldsRequest on v1 = %v, want ErrVersion", err)
	}
	v2 := newV2Fixture(t, "tx-v2")
	if _, err := v2.env.OpenFieldsRequest(0, "k", f.parties[0].Public, nil); !errors.Is(err, envelope.ErrInvalidInput) {
		t.Fatalf("no index: %v", err)
	}
	if _, err := v2.env.OpenFieldsRequest(0, "k", f.parties[0].Public, []int{5}); !errors.Is(err, envelope.ErrInvalidInput) {
		t.Fatalf("index out of range: %v", err)
	}
}

func TestSplitFieldsBadInput(t *testing.T) {
	many := make([]string, envelope.MaxFields+1)
	for i := range many {
		many[i] = fmt.Sprintf(`"f%02d":1`, i)
	}
	tests := []struct {
		name string
		js   string
		want error
	}{
		{"name not UTF-8", "{\"a\xff\":1}", envelope.ErrInvalidJSON},
		{"escaped control character in name", `{"a\u0007":1}`, envelope.ErrInvalidInput},
		{"name too long", `{"` + strings.Repeat("n", envelope.MaxFieldName+1) + `":1}`, envelope.ErrInvalidInput},
		{"empty name", `{"":1}`, envelope.ErrInvalidInput},
		{"bidi override in name", "{\"amount\u202e\":1}", envelope.ErrInvalidInput},
		{"too many fields", "{" + strings.Join(many, ",") + "}", envelope.ErrTooLarge},
		{"empty object", `{}`, envelope.ErrInvalidInput},
		{"duplicate field", `{"a":1,"a":2}`, envelope.ErrInvalidJSON},
		{"not an object", `[1]`, envelope.ErrInvalidJSON},
	}
	for _, tt := range tests {
		_, err := envelope.SplitFields([]byte(tt.js))
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
	ok := `{"` + strings.Repeat("n", envelope.MaxFieldName) + `":1,"Betrag€":2}`
	if fs, err := envelope.SplitFields([]byte(ok)); err != nil || len(fs) != 2 {
		t.Errorf("valid names: %v %v", fs, err)
	}
}

func TestSealV2BadInput(t *testing.T) {
	f := newFixture(t, "tx-bad")
	base := f.in
	base.Plaintext = nil
	base.SealedBy = "app"
	base.Fields = []envelope.Field{{Name: "a", Value: []byte(`1`)}, {Name: "b", Value: []byte(`2`)}}
	tests := []struct {
		name string
		m    func(in *envelope.SealInput)
		want error
	}{
		{"duplicate field", func(in *envelope.SealInput) {
			in.Fields = append(in.Fields, envelope.Field{Name: "a", Value: []byte(`3`)})
		}, envelope.ErrInvalidInput},
		{"no fields", func(in *envelope.SealInput) { in.Fields = nil }, envelope.ErrInvalidInput},
		{"bad name", func(in *envelope.SealInput) { in.Fields[0].Name = "a\x00" }, envelope.ErrInvalidInput},
		{"too many", func(in *envelope.SealInput) {
			in.Fields = nil
			for i := range envelope.MaxFields + 1 {
				in.Fields = append(in.Fields, envelope.Field{Name: fmt.Sprint("f", i), Value: []byte(`1`)})
			}
		}, envelope.ErrTooLarge},
		{"plaintext given", func(in *envelope.SealInput) { in.Plaintext = []byte(`{}`) }, envelope.ErrInvalidInput},
		{"bad sealed-by", func(in *envelope.SealInput) { in.SealedBy = "" }, envelope.ErrInvalidInput},
	}
	for _, tt := range tests {
		in := base
		in.Fields = append([]envelope.Field(nil), base.Fields...)
		tt.m(&in)
		if _, err := envelope.SealV2(context.Background(), in, f.signer, envelope.SoftwareFields{}); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
	if _, err := envelope.SealV2(context.Background(), base, f.signer, nil); !errors.Is(err, envelope.ErrInvalidInput) {
		t.Errorf("nil sealer: %v", err)
	}
	// Seal (version 1) refuses version-2 inputs.
	in := f.in
	in.SealedBy = "app"
	if _, err := envelope.Seal(context.Background(), in, f.signer); !errors.Is(err, envelope.ErrInvalidInput) {
		t.Errorf("Seal with sealed-by: %v", err)
	}
}

// A v2 whose field list does not match its ciphertexts does not parse.
func TestV2ParseFieldListMismatch(t *testing.T) {
	f := newV2Fixture(t, "tx-frame")
	b := f.env.Marshal()
	for n := 0; n < len(b); n++ {
		if _, err := envelope.Parse(b[:n]); !errors.Is(err, envelope.ErrMalformed) {
			t.Fatalf("Parse(first %d of %d bytes) = %v, want ErrMalformed", n, len(b), err)
		}
	}
	// One ciphertext more than names: trailing bytes.
	extra := append(bytes.Clone(b), f.env.Fields[0].Nonce...)
	extra = append(extra, 0, 0, 0, 16)
	extra = append(extra, make([]byte, 16)...)
	if _, err := envelope.Parse(extra); !errors.Is(err, envelope.ErrMalformed) {
		t.Fatalf("extra ciphertext: %v", err)
	}
	// Duplicate names.
	e := reparse(t, f.env)
	e.Header.FieldNames[1] = e.Header.FieldNames[0]
	if _, err := envelope.Parse(e.Marshal()); !errors.Is(err, envelope.ErrMalformed) {
		t.Fatalf("duplicate names: %v", err)
	}
	// A version-1 payload inside a v2.
	e = reparse(t, f.env)
	e.Nonce = make([]byte, envelope.NonceSize)
	if err := e.Validate(); !errors.Is(err, envelope.ErrMalformed) {
		t.Fatalf("v2 with a nonce: %v", err)
	}
}
