package keys

// Several daemons on one token (docs/fleet.md).
//
// Every daemon of a fleet keeps its own in-memory view of the shared token.
// Two things keep the views right:
//
//   - Refresh rereads the token. A lookup that misses (an unknown
//     participant, key version or signing key: another daemon may have just
//     created it) triggers one, bounded: at most one rescan per
//     missInterval for the whole registry, shared by every lookup that
//     missed in the meantime, and a miss waits at most missInterval plus one
//     rescan. An unknown id asked for in a loop therefore costs the token one
//     rescan per interval, never one per request. Watch refreshes every
//     interval as well, so that a rotation or an escrow version made
//     elsewhere becomes active here without any miss.
//   - Rotation is claimed. The token offers no atomic create-if-absent
//     across processes (two daemons can both find "v2" free and both create
//     it), so with a Coordinator set, Rotate and RotateIfDue first take a
//     lease (Vault KV check-and-set: orders.Checker.Claim), then reread the
//     token under it, and only then create version n+1. A daemon that
//     cannot take the lease does not rotate (ErrRotationBusy), and one that
//     cannot reach the coordinator does not either: no rotation is better
//     than two version n+1.

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Coordinator grants leases to one daemon of a fleet at a time.
type Coordinator interface {
	// Claim takes the lease name for ttl. It returns ErrLeaseHeld (wrapped)
	// if another holder's lease is still running, another error if the
	// coordinator cannot be asked. release ends the lease early; it is
	// best effort (the lease also ends after ttl).
	Claim(ctx context.Context, name string, ttl time.Duration) (release func(context.Context), err error)
}

// ErrRotationBusy: another daemon of the fleet holds the rotation lease of
// that key; retry later.
var ErrRotationBusy = errors.New("keys: another daemon is rotating this key")

// ErrLeaseHeld is what a Coordinator wraps when the lease is taken.
var ErrLeaseHeld = errors.New("lease held by another daemon")

// rotationLeaseTTL bounds how long a crashed holder blocks a rotation; a
// rotation under the lease takes one token rescan and one key generation.
const rotationLeaseTTL = 30 * time.Second

// DefaultMissInterval is the least time between two rescans that lookups
// misses trigger.
const DefaultMissInterval = 250 * time.Millisecond

// refreshTimeout bounds a rescan a lookup triggered (lookups take no ctx).
const refreshTimeout = 10 * time.Second

// SetCoordinator makes rotations claim a lease from c first (nil: no
// coordination, a single daemon).
func (r *Registry) SetCoordinator(c Coordinator) {
	r.mu.Lock()
	r.coord = c
	r.mu.Unlock()
}

// SetMissInterval sets the least time between two rescans triggered by
// lookup misses (d <= 0: DefaultMissInterval).
func (r *Registry) SetMissInterval(d time.Duration) {
	if d <= 0 {
		d = DefaultMissInterval
	}
	r.scanMu.Lock()
	r.missInterval = d
	r.scanMu.Unlock()
}

// Rescans reports how many times the registry has reread the token since
// Load (for tests and metrics).
func (r *Registry) Rescans() uint64 { return r.rescans.Load() }

// Refresh rereads the token's keys and tombstones and replaces the view, so
// that versions created or retired by another daemon on the same token are
// seen. On error the view is left as it was, and so it is when the listing
// holds none of the signing and escrow keys the view had (ErrTokenListing:
// the token went away under the scan).
func (r *Registry) Refresh(ctx context.Context) error {
	r.create.Lock()
	defer r.create.Unlock()
	r.scanMu.Lock()
	defer r.scanMu.Unlock()
	return r.refreshLocked(ctx)
}

// refreshLocked is Refresh; callers hold create (so that no key this daemon
// is creating is lost from the view) and scanMu.
func (r *Registry) refreshLocked(ctx context.Context) error {
	start := time.Now()
	r.rescans.Add(1)
	fresh, err := Load(ctx, r.dev, r.log)
	r.lastScan = start
	if err != nil {
		return err
	}
	r.mu.RLock()
	hadDaemonKeys := len(r.signing) > 0 || len(r.escrow) > 0
	r.mu.RUnlock()
	if hadDaemonKeys && len(fresh.signing) == 0 && len(fresh.escrow) == 0 {
		// Signing and escrow keys are never removed, only added to: a
		// listing without any is a token that went away under the scan
		// (SoftHSM answers an empty listing when its directory is gone),
		// not a view to believe.
		return fmt.Errorf("%w: the token lists none of the daemon's signing and escrow keys; keeping the view", ErrTokenListing)
	}
	r.mu.Lock()
	r.participants, r.escrow, r.signing, r.signingPub = fresh.participants, fresh.escrow, fresh.signing, fresh.signingPub
	r.mu.Unlock()
	return nil
}

// refreshAfterMiss rereads the token for a lookup that missed at missAt,
// unless a rescan started since then (its view includes whatever existed
// at missAt). Rescans are at least missInterval apart: a miss soon after
// one waits for the interval, without holding any lock. It reports whether
// the view may have changed (the caller looks again).
func (r *Registry) refreshAfterMiss(missAt time.Time) bool {
	for {
		r.create.Lock()
		r.scanMu.Lock()
		if r.lastScan.After(missAt) {
			r.scanMu.Unlock()
			r.create.Unlock()
			return true
		}
		wait := time.Until(r.lastScan.Add(r.missInterval))
		if wait <= 0 {
			ctx, cancel := context.WithTimeout(context.Background(), refreshTimeout)
			err := r.refreshLocked(ctx)
			cancel()
			r.scanMu.Unlock()
			r.create.Unlock()
			if err != nil {
				r.log.Warn("rereading the token after a lookup miss failed", "err", err)
				return false
			}
			return true
		}
		r.scanMu.Unlock()
		r.create.Unlock()
		time.Sleep(wait)
	}
}

// refreshUnderCreate rereads the token for a caller that holds create.
func (r *Registry) refreshUnderCreate(ctx context.Context) error {
	r.scanMu.Lock()
	defer r.scanMu.Unlock()
	return r.refreshLocked(ctx)
}

// Watch refreshes the view every interval until ctx ends (interval <= 0:
// never). A failed refresh is logged and retried at the next tick.
func (r *Registry) Watch(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := r.Refresh(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("periodic reread of the token failed", "err", err)
		}
	}
}

// claimRotation takes the rotation lease of key name when a coordinator is
// set; release is a no-op without one.
func (r *Registry) claimRotation(ctx context.Context, name string) (func(context.Context), error) {
	r.mu.RLock()
	c := r.coord
	r.mu.RUnlock()
	if c == nil {
		return func(context.Context) {}, nil
	}
	release, err := c.Claim(ctx, "rotate/"+name, rotationLeaseTTL)
	if errors.Is(err, ErrLeaseHeld) {
		return nil, fmt.Errorf("%w: %s: %w", ErrRotationBusy, name, err)
	}
	if err != nil {
		return nil, fmt.Errorf("keys: taking the rotation lease of %s: %w", name, err)
	}
	return release, nil
}

// coordinated reports whether a coordinator is set.
func (r *Registry) coordinated() bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.coord != nil
}
