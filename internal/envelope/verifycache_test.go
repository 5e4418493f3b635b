package envelope_test

import (
	"crypto/ecdsa"
	"errors"
	"testing"

	"custody/internal/envelope"
)

func TestVerifyCache(t *testing.T) {
	f := newFixture(t, "tx-cache")
	calls := 0
	lookup := func(id string) (*ecdsa.PublicKey, error) { calls++; return f.signer.lookup(id) }
	c := envelope.NewVerifyCache(2)

	if err := c.Verify(f.env, lookup); err != nil || calls != 1 {
		t.Fatalf("first verify: %v, %d lookups", err, calls)
	}
	if err := c.Verify(f.env, lookup); err != nil || calls != 1 {
		t.Fatalf("second verify should hit: %v, %d lookups", err, calls)
	}

	// A tampered signature or header misses and fails, every time.
	bad, _ := envelope.Parse(f.env.Marshal())
	bad.Signature[5] ^= 1
	for range 2 {
		if err := c.Verify(bad, lookup); !errors.Is(err, envelope.ErrSignature) {
			t.Fatalf("tampered signature: %v", err)
		}
	}
	bad2, _ := envelope.Parse(f.env.Marshal())
	bad2.Header.JobID = "job-2"
	if err := c.Verify(bad2, lookup); !errors.Is(err, envelope.ErrSignature) {
		t.Fatalf("tampered header: %v", err)
	}
	// A hit still validates the structure.
	bad3, _ := envelope.Parse(f.env.Marshal())
	bad3.Nonce = bad3.Nonce[:5]
	if err := c.Verify(bad3, lookup); err == nil {
		t.Fatal("short nonce accepted on a cache hit")
	}

	// Eviction: two more envelopes push the first out.
	calls = 0
	c.Verify(newFixtureSigned(t, f, "tx-2"), lookup)
	c.Verify(newFixtureSigned(t, f, "tx-3"), lookup)
	c.Verify(f.env, lookup)
	if calls != 3 {
		t.Errorf("after eviction the first envelope should be verified again: %d lookups", calls)
	}
	c.Reset()
	calls = 0
	c.Verify(f.env, lookup)
	if calls != 1 {
		t.Errorf("after Reset: %d lookups", calls)
	}
	var none *envelope.VerifyCache
	if err := none.Verify(f.env, lookup); err != nil {
		t.Errorf("nil cache: %v", err)
	}
}

// newFixtureSigned seals another transaction with f's signer and parties.
func newFixtureSigned(t *testing.T, f *fixture, tx string) *envelope.Envelope {
	in := f.in
	in.TransactionID = tx
	e, err := envelope.Seal(t.Context(), in, f.signer)
	if err != nil {
		t.Fatal(err)
	}
	return e
}
