package orders_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"custody/internal/keys"
	"custody/internal/orders"
	"custody/internal/orders/vaulttest"
)

// TestClaimLease: a fleet lease through the daemon's own token and policy.
// A lease another daemon holds is keys.ErrLeaseHeld; an expired one is
// taken over; a released one can be taken again at once.
func TestClaimLease(t *testing.T) {
	vs := vaulttest.Shared(t)
	e := newEnv(t, vs)
	ctx := context.Background()
	name := "rotate/participant/p-" + vaulttest.Random(6)
	path := "secret/data/" + orders.LeasesPath + "/" + name
	release, err := e.checker.Claim(ctx, name, time.Minute)
	if err != nil {
		t.Fatalf("first claim: %v", err)
	}
	release(ctx)
	if release, err = e.checker.Claim(ctx, name, time.Minute); err != nil {
		t.Fatalf("claim after release: %v", err)
	}
	_ = release
	// Another daemon's running lease (written as it would write it).
	other := func(until time.Time) {
		t.Helper()
		if _, err := vs.Root(t).Logical().Write(path, map[string]any{"data": map[string]any{
			"v": 1, "holder": "other-host/1/abc", "until": until.UTC().Format(time.RFC3339)}}); err != nil {
			t.Fatal(err)
		}
	}
	other(time.Now().Add(time.Hour))
	if _, err := e.checker.Claim(ctx, name, time.Minute); !errors.Is(err, keys.ErrLeaseHeld) {
		t.Fatalf("claim of a lease held elsewhere: %v, want ErrLeaseHeld", err)
	}
	other(time.Now().Add(-time.Second))
	if _, err := e.checker.Claim(ctx, name, time.Minute); err != nil {
		t.Fatalf("claim of an expired lease: %v", err)
	}
	if _, err := e.checker.Claim(ctx, "../uses/x", time.Minute); err == nil {
		t.Fatal("a lease name with .. was accepted")
	}
}
