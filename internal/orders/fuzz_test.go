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
	return [][]byte{
		full, bare,
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
