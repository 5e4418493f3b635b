package orders_test

import (
	"encoding/json"
	"os"
	"testing"

	"custody/internal/orders"
)

func writeFile(p string, b []byte, mode os.FileMode) error { return os.WriteFile(p, b, mode) }

// recordSeeds are valid and nearly valid records for the corpus.
func recordSeeds() [][]byte {
	o := fixedOrder()
	a, b := newSigner("judge-a"), newSigner("judge-b")
	rec := orders.Record{Order: *o, Signatures: []orders.Signature{orders.Sign(o, a.name, a.key), orders.Sign(o, b.name, b.key)}}
	full, _ := json.Marshal(rec)
	o2 := fixedOrder()
	o2.Scope = orders.Scope{Jobs: []string{"job-1", "job-2"}}
	bare, _ := json.Marshal(orders.Record{Order: *o2, Signatures: []orders.Signature{}})
	am := fixedAmendment()
	amended, _ := json.Marshal(orders.Record{Order: *am, Signatures: []orders.Signature{orders.Sign(am, a.name, a.key)}})
	return [][]byte{
		full, bare, amended,
		[]byte(`{"order":{},"signatures":[]}`),
		[]byte(`{"order":null}`),
		[]byte(`{"order":{"version":1},"order":{"version":2}}`),
		[]byte(`[]`), []byte(``), []byte(`{"signatures":[{"signer":"a","signature":"!!"}]}`),
	}
}

// FuzzParseRecord: ParseRecord never panics, and what it accepts has a
// canonical body that ParseOrder accepts and that encodes the same again.
func FuzzParseRecord(f *testing.F) {
	for _, s := range recordSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rec, err := orders.ParseRecord(data)
		if err != nil {
			return
		}
		c := rec.Order.Canonical()
		o, err := orders.ParseOrder(c)
		if err != nil {
			t.Fatalf("accepted record, refused its canonical body: %v\n%s", err, c)
		}
		if string(o.Canonical()) != string(c) {
			t.Fatalf("canonical form not stable:\n%s\n%s", c, o.Canonical())
		}
		again, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := orders.ParseRecord(again); err != nil {
			t.Fatalf("re-encoded record refused: %v", err)
		}
	})
}

// FuzzParseOrder: the canonical encoding's parser accepts exactly the
// canonical encodings of valid orders.
func FuzzParseOrder(f *testing.F) {
	f.Add(fixedOrder().Canonical())
	f.Add(fixedAmendment().Canonical())
	o := fixedOrder()
	o.Scope.Transactions = nil
	f.Add(o.Canonical())
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{"version":1,"id":"x","auditor":"a","scope":{"transactions":["t"]},"purpose":"p","document_sha256":"00","authority":"a","not_before":"2026-01-01T00:00:00Z","not_after":"2027-01-01T00:00:00Z","max_uses":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := orders.ParseOrder(data)
		if err != nil {
			return
		}
		if string(o.Canonical()) != string(data) {
			t.Fatalf("accepted a non-canonical encoding:\n%s\n%s", data, o.Canonical())
		}
		if err := o.Validate(); err != nil {
			t.Fatalf("accepted an invalid order: %v", err)
		}
	})
}

// FuzzParseBody: the reviewed-copy parser never panics, accepts only valid
// orders, and what it accepts has a canonical form that ParseOrder accepts
// with the same SHA-256.
func FuzzParseBody(f *testing.F) {
	for _, o := range []*orders.Order{fixedOrder(), fixedAmendment()} {
		f.Add(o.Canonical())
		indented, _ := json.MarshalIndent(o, "", "  ")
		f.Add(indented)
	}
	f.Add([]byte(`{"version":2,"supersedes":"x","id":"x"}`))
	f.Add([]byte(`{"version":1,"supersedes":"order-1"}`))
	f.Add([]byte(`{"max_uses":1,"max_uses":2}`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := orders.ParseBody(data)
		if err != nil {
			return
		}
		if err := o.Validate(); err != nil {
			t.Fatalf("accepted an invalid order: %v", err)
		}
		back, err := orders.ParseOrder(o.Canonical())
		if err != nil || back.BodySHA256() != o.BodySHA256() {
			t.Fatalf("canonical form of an accepted body: %v", err)
		}
	})
}
