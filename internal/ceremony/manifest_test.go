package ceremony_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"custody/hsm"
	"custody/internal/ceremony"
)

// TestBackupNeedsOfficersPart: without M officers' SO PIN shares a backup
// does not start, whatever else is in place; the shares of a backup (KEK
// shares) are not SO PIN shares; only escrow labels are backed up.
func TestBackupNeedsOfficersPart(t *testing.T) {
	ctx := context.Background()
	a, so := openToken(t)
	offs := newOfficers(t, 3)
	signer, _ := daemonSigner(t)
	const label = "custody/escrow/v1"
	if _, err := a.GenerateKeyPair(ctx, hsm.KeySpec{Label: label, Alg: hsm.P256, Usage: hsm.UsageDerive, Backup: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := ceremony.Backup(ctx, a, label, officersPart(t, so, offs, 1), officerList(offs), 2, signer, time.Now()); !errors.Is(err, ceremony.ErrNotEnoughShares) {
		t.Fatalf("backup with 1 of 2 SO PIN shares: %v, want ErrNotEnoughShares", err)
	}
	if _, err := ceremony.Backup(ctx, a, label, nil, officerList(offs), 2, signer, time.Now()); !errors.Is(err, ceremony.ErrNoSOPIN) {
		t.Fatalf("backup without SO PIN shares: %v, want ErrNoSOPIN", err)
	}
	// Shares of the right set for another token's SO PIN: the token refuses the login.
	otherRaw, _ := ceremony.GenerateSOPIN()
	if _, err := ceremony.Backup(ctx, a, label, officersPart(t, otherRaw, offs, 2), officerList(offs), 2, signer, time.Now()); !errors.Is(err, hsm.ErrSOLogin) {
		t.Fatalf("backup with another token's SO PIN: %v, want hsm.ErrSOLogin", err)
	}
	res, err := ceremony.Backup(ctx, a, label, officersPart(t, so, offs, 2), officerList(offs), 2, signer, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// A KEK share offered where an SO PIN share is wanted.
	rec, _ := soPINShares(t, so, offs, 2)
	c := ceremony.NewCollector(rec.ShareSet())
	kekShare, err := ceremony.DecryptShare(res.ShareFiles[0], offs[0].id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Submit(offs[0].o.Name, kekShare.Text()); !errors.Is(err, ceremony.ErrWrongBackup) {
		t.Fatalf("a KEK share as SO PIN share: %v, want ErrWrongBackup", err)
	}
	// A spent collector cannot run a second backup.
	part := officersPart(t, so, offs, 2)
	if _, err := ceremony.Backup(ctx, a, label, part, officerList(offs), 2, signer, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := ceremony.Backup(ctx, a, label, part, officerList(offs), 2, signer, time.Now()); !errors.Is(err, ceremony.ErrUnknownRequest) {
		t.Fatalf("second backup on the same SO PIN shares: %v, want ErrUnknownRequest", err)
	}
	sig, err := a.GenerateKeyPair(ctx, hsm.KeySpec{Label: "custody/signing/v2", Alg: hsm.P256, Usage: hsm.UsageDerive, Backup: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ceremony.Backup(ctx, a, sig.Label, officersPart(t, so, offs, 2), officerList(offs), 2, signer, time.Now()); !errors.Is(err, ceremony.ErrNotEscrowLabel) {
		t.Fatalf("backup of a signing label: %v, want ErrNotEscrowLabel", err)
	}
	if n, _ := a.SessionObjectCount(ctx); n != 0 {
		t.Fatalf("%d session objects left", n)
	}
}

// TestOpenManifest: only a manifest signed by a pinned key opens; a changed
// one, an unsigned (v1) one and one signed by anyone else do not; a trusted
// signature does not make a participant or signing label restorable.
func TestOpenManifest(t *testing.T) {
	ctx := context.Background()
	a, so := openToken(t)
	offs := newOfficers(t, 3)
	signer, trusted := daemonSigner(t)
	const label = "custody/escrow/v1"
	if _, err := a.GenerateKeyPair(ctx, hsm.KeySpec{Label: label, Alg: hsm.P256, Usage: hsm.UsageDerive, Backup: true}); err != nil {
		t.Fatal(err)
	}
	res, err := ceremony.Backup(ctx, a, label, officersPart(t, so, offs, 2), officerList(offs), 2, signer, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if m, _, err := ceremony.OpenManifest(res.ManifestFile, trusted); err != nil || m.BackupID != res.Manifest.BackupID {
		t.Fatalf("honest manifest: %v", err)
	}
	for _, o := range offs {
		if !strings.Contains(string(res.ManifestFile), o.o.AgeRecipient) {
			t.Fatalf("manifest does not name %s's recipient", o.o.Name)
		}
	}
	// An officer's own signature (their note key), over a manifest of their own.
	forged := *res.Manifest
	forged.KeyLabel = "custody/escrow/v2"
	byOfficer, err := ceremony.SignManifest(&forged, offs[0].signer)
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		file []byte
		want error
	}{
		"signed by an officer":  {byOfficer, ceremony.ErrUntrustedManifest},
		"changed after signing": {bytes.Replace(res.ManifestFile, []byte(`"threshold": 2`), []byte(`"threshold": 3`), 1), ceremony.ErrUntrustedManifest},
		"unsigned v1 JSON":      {res.Manifest.Marshal(), ceremony.ErrUntrustedManifest},
		"garbage":               {[]byte("custody backup manifest v2\nnot json\n"), ceremony.ErrFormat},
	} {
		if _, _, err := ceremony.OpenManifest(tc.file, trusted); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	// Signed by the trusted key, but for a participant or signing key.
	for _, l := range []string{"custody/participant/client-1/v2", "custody/signing/v2", "custody/log/v1", "custody/escrow/v01"} {
		m := *res.Manifest
		m.KeyLabel = l
		f, err := ceremony.SignManifest(&m, signer)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := ceremony.OpenManifest(f, trusted); !errors.Is(err, ceremony.ErrNotEscrowLabel) {
			t.Errorf("label %s: %v, want ErrNotEscrowLabel", l, err)
		}
	}
}
