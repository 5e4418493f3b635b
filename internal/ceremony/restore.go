package ceremony

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"

	"custody/internal/envelope"
)

// Restore restores the key of backup manifest m (whose signature the
// caller checked with OpenManifest) into dev from the KEK shares in shares
// (NewCollector(m.ShareSet())). It combines them (ErrNotEnoughShares below
// the threshold; the shares stay for another try), checks the KCV (ErrKCV),
// unwraps the key into dev under the manifest's label (hsm errors:
// ErrExists if the label is taken, ErrIntegrity if the wrap does not open),
// then proves that the restored private key is the manifest's public key:
// it opens the backup's canary and a canary sealed now, in software, to the
// manifest's public key (the backup's canary alone could have been made for
// another key). If either does not open, the restored key pair is destroyed
// (ErrCanary). On any failure after the threshold was reached nothing is
// left on the token, and the shares are spent. The KEK and the shares are
// cleared on return.
func Restore(ctx context.Context, dev Device, m *Manifest, shares *Collector) error {
	if set := shares.Set(); set.Kind != KEKShare || set.ID != m.BackupID {
		return fmt.Errorf("%w: the shares gathered are not this backup's", ErrWrongBackup)
	}
	kek, err := shares.combine()
	if err != nil {
		return err
	}
	defer clear(kek)
	kcv, err := KCV(kek)
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare([]byte(kcv), []byte(m.KCV)) != 1 {
		return fmt.Errorf("%w: combined KEK does not match backup %s", ErrKCV, m.BackupID)
	}
	if _, err := dev.RestoreFromBackup(ctx, m.KeyLabel, kek, m.Wrapped, m.Public); err != nil {
		return fmt.Errorf("ceremony: restore: %w", err)
	}
	err = openCanary(ctx, dev, m.KeyLabel, m.Public, m.Canary, m.CanaryHash)
	if err == nil {
		err = proveKey(ctx, dev, m.KeyLabel, m.Public, m.BackupID)
	}
	if err != nil {
		if derr := dev.DestroyKeyPair(context.WithoutCancel(ctx), m.KeyLabel); derr != nil {
			return errors.Join(err, fmt.Errorf("ceremony: restore: removing the restored key: %w", derr))
		}
		return err
	}
	return nil
}

// proveKey seals a fresh random canary to public and opens it on dev with
// the private key labelled label: it opens only if that key is public's.
func proveKey(ctx context.Context, dev Device, label string, public []byte, setID string) error {
	text, hash, err := sealCanary(ctx, setID, public)
	if err != nil {
		return err
	}
	if err := openCanary(ctx, dev, label, public, text, hash); err != nil {
		return fmt.Errorf("%w (a canary sealed now to the manifest's public key: the restored private key is another key)", err)
	}
	return nil
}

// openCanary opens the escrow stanza of the canary envelope text on dev
// with the key labelled label and checks the plaintext's SHA-256.
func openCanary(ctx context.Context, dev Device, label string, public []byte, text, hash string) error {
	env, err := envelope.ParseText(text)
	if err != nil {
		return fmt.Errorf("%w: canary does not parse: %v", ErrCanary, err)
	}
	st := env.EscrowStanza()
	if st < 0 {
		return fmt.Errorf("%w: canary has no escrow stanza", ErrCanary)
	}
	pt, err := dev.Open(ctx, env.OpenRequest(st, label, public))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCanary, err)
	}
	defer clear(pt)
	h := sha256.Sum256(pt)
	if subtle.ConstantTimeCompare([]byte(hex.EncodeToString(h[:])), []byte(hash)) != 1 {
		return fmt.Errorf("%w: canary plaintext differs", ErrCanary)
	}
	return nil
}
