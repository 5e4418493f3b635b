package compliance_test

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"custody/internal/compliance"
	"custody/internal/config/duration"
	"custody/internal/orders"
	"custody/internal/orders/vaulttest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	vaulttest.Stop()
	os.Exit(code)
}

// newStore is a Store on vs with the daemon's own Vault policy (custodyd).
func newStore(t testing.TB, vs *vaulttest.Server, ttl, stale time.Duration) *compliance.Store {
	t.Helper()
	pub, _, _ := ed25519.GenerateKey(nil)
	cfg := orders.Config{Address: vs.Addr, TokenFile: vaulttest.TokenFile(t, vs.Token(t, "custodyd")), Timeout: duration.Duration(500 * time.Millisecond),
		Signers: []orders.Signer{{Name: "judge-a", PublicKey: base64.StdEncoding.EncodeToString(pub)}}, Quorum: 1}
	c, err := orders.NewChecker(context.Background(), cfg, orders.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	st, err := compliance.NewStore(c.KV(), compliance.Config{
		CacheTTL: duration.Duration(ttl), MaxStale: duration.Duration(stale)}, compliance.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func doc(r compliance.Record) compliance.Stored {
	return compliance.Stored{Status: r, Updated: now, By: "compliance", Reason: "review", Reference: "CASE-1"}
}

// TestStoreCAS: versions count up; a change naming an old version is
// ErrConflict and writes nothing; concurrent writers of one version: one wins.
func TestStoreCAS(t *testing.T) {
	st := newStore(t, vaulttest.Shared(t), time.Second, time.Minute)
	ctx := context.Background()
	m1 := "miner-" + vaulttest.Random(4)
	if d, v, err := st.Get(ctx, m1); d != nil || v != 0 || err != nil {
		t.Fatalf("no record: %v %d %v", d, v, err)
	}
	v1, err := st.Put(ctx, m1, doc(*good()), 0)
	if err != nil || v1 != 1 {
		t.Fatalf("create: %d %v", v1, err)
	}
	if _, err := st.Put(ctx, m1, doc(compliance.Record{}), 0); !errors.Is(err, compliance.ErrConflict) {
		t.Fatalf("second create: %v", err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() { _, errs[i] = st.Put(ctx, m1, doc(compliance.Record{Sanctions: compliance.SanctionsHit}), 1) })
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, compliance.ErrConflict):
			t.Fatal(err)
		}
	}
	if won != 1 {
		t.Fatalf("%d writers of version 1 won, want 1", won)
	}
	d, v, err := st.Get(ctx, m1)
	if err != nil || v != 2 || d.Status.Sanctions != compliance.SanctionsHit {
		t.Fatalf("%+v %d %v", d, v, err)
	}
	if _, err := st.Put(ctx, m1, doc(compliance.Record{Suspended: true}), 2); !errors.Is(err, compliance.ErrInvalid) {
		t.Fatalf("invalid record: %v", err)
	}
}

// TestStoreFailsClosedWhenStale: Vault sealed → the cached copy is used
// while younger than max_stale, then ErrUnavailable; a participant never
// read is ErrUnavailable at once; unsealed → answers again.
func TestStoreFailsClosedWhenStale(t *testing.T) {
	vs := vaulttest.Private(t)
	const ttl, stale = 100 * time.Millisecond, 6 * time.Second
	st := newStore(t, vs, ttl, stale)
	ctx := context.Background()
	if _, err := st.Put(ctx, "miner-1", doc(compliance.Record{Suspended: true, SuspendedReason: "review"}), 0); err != nil {
		t.Fatal(err)
	}
	if r, err := st.Status(ctx, "miner-1"); err != nil || !r.Suspended {
		t.Fatalf("%v %v", r, err)
	}
	readAt := time.Now()
	vs.Seal(t)
	time.Sleep(2 * ttl)
	if time.Since(readAt) > stale/2 {
		t.Fatalf("sealing Vault took %s: too slow for this test's max_stale", time.Since(readAt))
	}
	if r, err := st.Status(ctx, "miner-1"); err != nil || !r.Suspended {
		t.Fatalf("within max_stale: %v %v (must use the cached copy)", r, err)
	}
	if _, err := st.Status(ctx, "miner-2"); !errors.Is(err, compliance.ErrUnavailable) || !errors.Is(err, orders.ErrSealed) {
		t.Fatalf("never read, Vault sealed: %v", err)
	}
	time.Sleep(stale - time.Since(readAt) + 100*time.Millisecond)
	if _, err := st.Status(ctx, "miner-1"); !errors.Is(err, compliance.ErrUnavailable) {
		t.Fatalf("after max_stale: %v, want ErrUnavailable", err)
	}
	vs.Unseal(t)
	if r, err := st.Status(ctx, "miner-1"); err != nil || !r.Suspended {
		t.Fatalf("after unseal: %v %v", r, err)
	}
}

// TestStoreSeesOtherDaemonsChange: two Stores (two daemons) on one Vault:
// a change through one reaches the other within cache_ttl.
func TestStoreSeesOtherDaemonsChange(t *testing.T) {
	vs := vaulttest.Shared(t)
	a := newStore(t, vs, 200*time.Millisecond, time.Minute)
	ctx := context.Background()
	c1 := "client-" + vaulttest.Random(4)
	// b on the same path as a: rebuild with a's config through a second checker.
	b := newStoreLike(t, vs, a)
	if _, err := a.Put(ctx, c1, doc(*good()), 0); err != nil {
		t.Fatal(err)
	}
	if r, err := b.Status(ctx, c1); err != nil || r == nil || r.Suspended {
		t.Fatalf("%v %v", r, err)
	}
	susp := *good()
	susp.Suspended, susp.SuspendedReason = true, "fraud review"
	if _, err := a.Put(ctx, c1, doc(susp), 1); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		r, err := b.Status(ctx, c1)
		if err != nil {
			t.Fatal(err)
		}
		if r.Suspended {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the other daemon never saw the suspension")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func newStoreLike(t *testing.T, vs *vaulttest.Server, like *compliance.Store) *compliance.Store {
	t.Helper()
	pub, _, _ := ed25519.GenerateKey(nil)
	cfg := orders.Config{Address: vs.Addr, TokenFile: vaulttest.TokenFile(t, vs.Token(t, "custodyd")), Timeout: duration.Duration(500 * time.Millisecond),
		Signers: []orders.Signer{{Name: "judge-a", PublicKey: base64.StdEncoding.EncodeToString(pub)}}, Quorum: 1}
	c, err := orders.NewChecker(context.Background(), cfg, orders.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	st, err := compliance.NewStore(c.KV(), like.Config(), compliance.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// BenchmarkStatusCached is what a status check adds to a decrypt when the
// copy is fresh (the common case): Store.Status from the cache plus Check,
// from 2 goroutines.
func BenchmarkStatusCached(b *testing.B) {
	vs := vaulttest.Shared(b)
	pub, _, _ := ed25519.GenerateKey(nil)
	cfg := orders.Config{Address: vs.Addr, TokenFile: vaulttest.TokenFile(b, vs.Token(b, "custodyd")), Timeout: duration.Duration(time.Second),
		Signers: []orders.Signer{{Name: "judge-a", PublicKey: base64.StdEncoding.EncodeToString(pub)}}, Quorum: 1}
	c, err := orders.NewChecker(context.Background(), cfg, orders.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	st, err := compliance.NewStore(c.KV(), compliance.Config{CacheTTL: duration.Duration(time.Hour), MaxStale: duration.Duration(2 * time.Hour)}, compliance.Options{})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	id := "miner-" + vaulttest.Random(4)
	if _, err := st.Put(ctx, id, doc(*good()), 0); err != nil {
		b.Fatal(err)
	}
	req := compliance.Requirement{KYC: true, SanctionsClear: true, Approval: []string{"CH"}}
	b.SetParallelism(1)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			r, err := st.Status(ctx, id)
			if err == nil {
				err = compliance.Check(id, r, req, now)
			}
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
}
