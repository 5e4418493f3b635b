package envelope_test

import (
	"bytes"
	"compress/flate"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"custody/internal/envelope"
)

// settlementDocument is a realistic settlement_details value: a remittance
// with 40 line items of GPU hours, canonical JSON, about 6 KiB.
func settlementDocument() []byte {
	var items []string
	for i := range 40 {
		items = append(items, fmt.Sprintf(`{"amount":"%d.50","end":"2026-11-%02dT23:59:59Z","node":"fra-2-n%03d","qty":%d,"sku":"gpu-h100-hour","start":"2026-11-%02dT00:00:00Z","unit_price":"2.50"}`,
			1000+37*i, i%28+1, i, 400+i, i%28+1))
	}
	doc := `{"bank":{"bic":"COBADEFFXXX","iban":"DE89370400440532013000","name":"Commerzbank"},"currency":"EUR","due":"2026-12-31",` +
		`"invoice":"INV-2026-11-0042","lines":[` + strings.Join(items, ",") + `],"reference":"ACME-FRA2-2026-11","terms":"net 30"}`
	c, err := envelope.CanonicalJSON([]byte(doc))
	if err != nil {
		panic(err)
	}
	return c
}

// TestV2Compression seals a realistic settlement document with and without
// compression, reports the size saved, and opens both to the same value.
func TestV2Compression(t *testing.T) {
	doc := settlementDocument()
	seal := func(compress bool) *envelope.Envelope {
		f := newFixture(t, "tx-z")
		f.in.Plaintext, f.in.SealedBy, f.in.Compress = nil, "app", compress
		f.in.Fields = []envelope.Field{{Name: "amount", Value: []byte(`"1000"`)}, {Name: "settlement_details", Value: doc}}
		e, err := envelope.SealV2(context.Background(), f.in, f.signer, envelope.SoftwareFields{})
		if err != nil {
			t.Fatal(err)
		}
		e = reparse(t, e)
		pts, err := openFieldsSoftware(e, 0, f.parties[0].priv, 0, 1)
		if err != nil || string(pts[0]) != `"1000"` || !bytes.Equal(pts[1], doc) {
			t.Fatalf("compress=%v: open: %v", compress, err)
		}
		return e
	}
	raw, small := seal(false), seal(true)
	rawSize, smallSize := len(raw.Fields[1].Ciphertext), len(small.Fields[1].Ciphertext)
	if rawSize != len(doc)+1+envelope.TagSize {
		t.Fatalf("uncompressed field is %d bytes for a %d-byte value", rawSize, len(doc))
	}
	if smallSize >= rawSize/2 {
		t.Fatalf("compressed field %d bytes, uncompressed %d: expected at least half saved", smallSize, rawSize)
	}
	// The short field is never compressed.
	if len(small.Fields[0].Ciphertext) != len(`"1000"`)+1+envelope.TagSize {
		t.Fatal("a short field was compressed")
	}
	t.Logf("settlement document: %d bytes raw, sealed %d bytes uncompressed, %d bytes compressed (%.0f%% saved); envelope %d vs %d bytes",
		len(doc), rawSize, smallSize, 100*(1-float64(smallSize)/float64(rawSize)), len(raw.Marshal()), len(small.Marshal()))
}

func TestDecodeValue(t *testing.T) {
	deflate := func(b []byte) []byte {
		var buf bytes.Buffer
		buf.WriteByte(envelope.EncodingDeflate)
		w, _ := flate.NewWriter(&buf, flate.BestSpeed)
		w.Write(b)
		w.Close()
		return buf.Bytes()
	}
	if v, err := envelope.DecodeValue(deflate([]byte(`"x"`))); err != nil || string(v) != `"x"` {
		t.Fatalf("deflate: %q %v", v, err)
	}
	if v, err := envelope.DecodeValue([]byte("\x00[1]")); err != nil || string(v) != `[1]` {
		t.Fatalf("raw: %q %v", v, err)
	}
	for name, in := range map[string][]byte{
		"empty":            {},
		"unknown encoding": []byte("\x02[1]"),
		"corrupt stream":   append([]byte{envelope.EncodingDeflate}, 0xff, 0xff, 0xff),
		"truncated stream": deflate([]byte(strings.Repeat("a", 5000)))[:10],
		"inflates too far": deflate(make([]byte, envelope.MaxPlaintext+1)),
	} {
		if _, err := envelope.DecodeValue(in); !errors.Is(err, envelope.ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}

// FuzzDecodeValue: DecodeValue never panics, answers ErrMalformed or a
// value of at most MaxPlaintext bytes, and a raw value comes back as it is.
func FuzzDecodeValue(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x00\"1000\""))
	f.Add([]byte("\x02x"))
	var buf bytes.Buffer
	buf.WriteByte(envelope.EncodingDeflate)
	w, _ := flate.NewWriter(&buf, flate.BestCompression)
	w.Write(settlementDocument())
	w.Close()
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := envelope.DecodeValue(b)
		if err != nil {
			if !errors.Is(err, envelope.ErrMalformed) {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		if len(v) > envelope.MaxPlaintext {
			t.Fatalf("%d bytes", len(v))
		}
		if b[0] == envelope.EncodingRaw && !bytes.Equal(v, b[1:]) {
			t.Fatal("raw value changed")
		}
	})
}
