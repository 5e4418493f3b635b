package ceremony

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"

	"custody/internal/envelope"
	"custody/internal/shamir"
)

// Restore gathers shares for one backup manifest and, once Threshold are
// in, restores the key. Safe for concurrent use. Submitted share values are
// held in memory until Finish or Abort, which clear them (best effort).
type Restore struct {
	m *Manifest

	mu     sync.Mutex
	shares map[int]Share // by index
	by     map[string]int
	done   bool
}

// NewRestore starts a restore of m.
func NewRestore(m *Manifest) *Restore {
	return &Restore{m: m, shares: map[int]Share{}, by: map[string]int{}}
}

// Manifest returns the manifest being restored.
func (r *Restore) Manifest() *Manifest { return r.m }

// Submit checks a decrypted share submitted by officer and keeps it. Each
// failure names the share: ErrFormat, ErrWrongBackup (another backup id),
// ErrDuplicateShare (index already in, or the officer already submitted),
// ErrCorruptShare (its value does not match the manifest's commitment for
// its index). It returns how many shares are in.
func (r *Restore) Submit(officer string, text []byte) (int, error) {
	s, err := ParseShare(text)
	if err != nil {
		return 0, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		clear(s.Value)
		return len(r.shares), fmt.Errorf("%w: restore already finished", ErrUnknownRequest)
	}
	fail := func(err error) (int, error) { clear(s.Value); return len(r.shares), err }
	if s.BackupID != r.m.BackupID {
		return fail(fmt.Errorf("%w: share %d is from backup %s, this restore is backup %s", ErrWrongBackup, s.Index, s.BackupID, r.m.BackupID))
	}
	if s.Index > len(r.m.Shares) || s.Threshold != r.m.Threshold || s.Total != r.m.Total {
		return fail(fmt.Errorf("%w: share %d does not fit %d-of-%d", ErrCorruptShare, s.Index, r.m.Threshold, r.m.Total))
	}
	if _, dup := r.shares[s.Index]; dup {
		return fail(fmt.Errorf("%w: share %d was already submitted", ErrDuplicateShare, s.Index))
	}
	if i, dup := r.by[officer]; dup {
		return fail(fmt.Errorf("%w: officer %s already submitted share %d", ErrDuplicateShare, officer, i))
	}
	rec := r.m.Shares[s.Index-1]
	if subtle.ConstantTimeCompare([]byte(s.Commitment()), []byte(rec.Commitment)) != 1 || s.Officer != rec.Officer {
		return fail(fmt.Errorf("%w: share %d (held by %s)", ErrCorruptShare, s.Index, rec.Officer))
	}
	r.shares[s.Index] = s
	r.by[officer] = s.Index
	return len(r.shares), nil
}

// Abort forgets every submitted share.
func (r *Restore) Abort() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.clearLocked()
	r.done = true
}

func (r *Restore) clearLocked() {
	for _, s := range r.shares {
		clear(s.Value)
	}
	clear(r.shares)
}

// Finish combines the shares (ErrNotEnoughShares below the threshold; the
// shares stay for another try), checks the KCV (ErrKCV), unwraps the key
// into dev under the manifest's label (hsm errors: ErrExists if the label is
// taken, ErrIntegrity if the wrap does not open), and opens the canary
// through the escrow stanza with it; if the canary does not open, the
// restored key pair is destroyed (ErrCanary). On any failure after the
// threshold was reached nothing is left on the token. The KEK and the
// shares are cleared on return once the threshold was reached.
func (r *Restore) Finish(ctx context.Context, dev Device) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done {
		return fmt.Errorf("%w: restore already finished", ErrUnknownRequest)
	}
	if len(r.shares) < r.m.Threshold {
		return fmt.Errorf("%w: %d of %d", ErrNotEnoughShares, len(r.shares), r.m.Threshold)
	}
	r.done = true
	defer r.clearLocked()
	parts := make([][]byte, 0, len(r.shares))
	for _, s := range r.shares {
		parts = append(parts, append([]byte{byte(s.Index)}, s.Value...))
	}
	defer func() {
		for _, p := range parts {
			clear(p)
		}
	}()
	kek, err := shamir.Combine(parts)
	if err != nil {
		return fmt.Errorf("ceremony: restore: %w", err)
	}
	defer clear(kek)
	kcv, err := KCV(kek)
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare([]byte(kcv), []byte(r.m.KCV)) != 1 {
		return fmt.Errorf("%w: combined KEK does not match backup %s", ErrKCV, r.m.BackupID)
	}
	if _, err := dev.RestoreFromBackup(ctx, r.m.KeyLabel, kek, r.m.Wrapped, r.m.Public); err != nil {
		return fmt.Errorf("ceremony: restore: %w", err)
	}
	if err := openCanary(ctx, dev, r.m); err != nil {
		if derr := dev.DestroyKeyPair(context.WithoutCancel(ctx), r.m.KeyLabel); derr != nil {
			return errors.Join(err, fmt.Errorf("ceremony: restore: removing the restored key: %w", derr))
		}
		return err
	}
	return nil
}

func openCanary(ctx context.Context, dev Device, m *Manifest) error {
	env, err := envelope.ParseText(m.Canary)
	if err != nil {
		return fmt.Errorf("%w: canary does not parse: %v", ErrCanary, err)
	}
	st := env.EscrowStanza()
	if st < 0 {
		return fmt.Errorf("%w: canary has no escrow stanza", ErrCanary)
	}
	pt, err := dev.Open(ctx, env.OpenRequest(st, m.KeyLabel, m.Public))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCanary, err)
	}
	h := sha256.Sum256(pt)
	if hex.EncodeToString(h[:]) != m.CanaryHash {
		return fmt.Errorf("%w: canary plaintext differs", ErrCanary)
	}
	return nil
}
