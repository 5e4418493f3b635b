package keys

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"custody/hsm/hsmtest"
	"custody/internal/device"
)

// TestMissRereadsTheTokenBounded: two registries over one token (two
// daemons of a fleet). What one registers, the other finds on its next
// lookup; a flood of lookups for unknown ids rereads the token at most
// once per miss interval, shared by every lookup that missed meanwhile.
func TestMissRereadsTheTokenBounded(t *testing.T) {
	ctx := context.Background()
	tok, a := openRegistry(t, hsmtest.NewToken(t))
	b, err := Load(ctx, tok, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	b.SetMissInterval(100 * time.Millisecond)
	if _, err := a.Register(ctx, "p-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	if v, err := b.Active("p-1"); err != nil || v.Number != 1 {
		t.Fatalf("b after a registered: %v %v", v, err)
	}
	if _, err := a.Rotate(ctx, "p-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	if v, err := b.ParticipantVersion("p-1", 2); err != nil || v.Number != 2 {
		t.Fatalf("b, version 2 made by a: %v %v", v, err)
	}

	before := b.Rescans()
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	lookups := 0
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Since(start) < 500*time.Millisecond; i++ {
				if _, err := b.Participant("p-unknown"); !errors.Is(err, ErrUnknownParticipant) {
					t.Errorf("unknown id: %v", err)
					return
				}
				mu.Lock()
				lookups++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	rescans := b.Rescans() - before
	limit := uint64(time.Since(start)/(100*time.Millisecond)) + 2
	t.Logf("%d lookups of an unknown id, %d rescans (limit %d)", lookups, rescans, limit)
	if rescans > limit {
		t.Errorf("%d rescans for %d misses in %v: not bounded", rescans, lookups, time.Since(start))
	}
	if lookups < 16 {
		t.Errorf("only %d lookups", lookups)
	}
}

// heldCoordinator grants no lease.
type heldCoordinator struct{}

func (heldCoordinator) Claim(context.Context, string, time.Duration) (func(context.Context), error) {
	return nil, ErrLeaseHeld
}

// TestRotationNeedsTheLease: with a coordinator that says another daemon
// holds the lease, nothing is created (ErrRotationBusy), and the scheduled
// pass skips the key without counting it.
func TestRotationNeedsTheLease(t *testing.T) {
	ctx := context.Background()
	_, r := openRegistry(t, hsmtest.NewToken(t))
	if _, err := r.Register(ctx, "p-1", time.Now().Add(-100*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	r.SetCoordinator(heldCoordinator{})
	if _, err := r.Rotate(ctx, "p-1", time.Now()); !errors.Is(err, ErrRotationBusy) {
		t.Fatalf("rotate with the lease held elsewhere: %v", err)
	}
	n, err := NewScheduler(r, nil, slog.New(slog.DiscardHandler), nil).RotateDue(ctx)
	if n != 0 || err != nil {
		t.Fatalf("pass with the lease held elsewhere: %d %v", n, err)
	}
	if v, _ := r.Active("p-1"); v.Number != 1 {
		t.Fatalf("active version %d", v.Number)
	}
}

// TestRefreshKeepsTheViewWhenTheTokenGoes: the token's directory taken away
// (a network HSM partition gone) makes SoftHSM list no objects; a reread then
// must not replace the view with an empty one (every participant would be
// unknown_participant instead of hsm_unavailable), and lookups keep working
// from the view.
func TestRefreshKeepsTheViewWhenTheTokenGoes(t *testing.T) {
	ctx := context.Background()
	cfg := hsmtest.NewToken(t)
	_, r := openRegistry(t, cfg)
	if _, err := r.Genesis(ctx, time.Now(), "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Register(ctx, "p-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	// Away, outside the token directory (SoftHSM would find it again there
	// on its next C_Initialize).
	dir := hsmtest.TokenDir(t, cfg.TokenLabel)
	away := filepath.Join(filepath.Dir(filepath.Dir(dir)), "away-"+filepath.Base(dir))
	if err := os.Rename(dir, away); err != nil {
		t.Fatal(err)
	}
	err := r.Refresh(ctx)
	if rerr := os.Rename(away, dir); rerr != nil {
		t.Fatal(rerr)
	}
	if err == nil {
		t.Fatal("Refresh with the token away: nil error")
	}
	if !errors.Is(err, device.ErrUnavailable) {
		t.Errorf("Refresh with the token away: %v, want it taken as unavailable", err)
	}
	if v, err := r.Active("p-1"); err != nil || v.Number != 1 {
		t.Fatalf("p-1 after the failed reread: %v %v", v, err)
	}
	if _, err := r.Signer(); err != nil {
		t.Fatalf("signer after the failed reread: %v", err)
	}
}
