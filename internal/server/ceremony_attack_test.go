package server_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"custody/hsm"
	"custody/hsm/hsmtest"
	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/ceremony"
)

// TestCeremonyInsiderAttacks: what one officer, alone or with approvers who
// read what they approve, cannot do (docs/threat-model.md). Each attack
// runs as the officer's own Unix user through custodyctl and the socket.
func TestCeremonyInsiderAttacks(t *testing.T) {
	ctx := context.Background()
	kits, officersFile := newOfficerKits(t)
	o := func(i int) string { return kits[i-1].user }
	// The daemon trusts its own log key for manifests, so a refusal below is
	// about who signed, not about trust being off.
	a := newCeremonyHarness(t, kits, officersFile)
	a.request(o(1), []string{o(2), o(3)}, "genesis", "--m", "2")
	a.ctl(o(1), "ceremony", "genesis")
	d := newCeremonyHarness(t, kits, officersFile, a.logKey())
	d.request(o(1), []string{o(2), o(3)}, "genesis", "--m", "2")
	d.ctl(o(1), "ceremony", "genesis")

	t.Run("restore of a key the officer made", func(t *testing.T) {
		// Officer o1 makes an escrow key of their own on a token of their own,
		// backs it up with their own SO PIN and their own signing key, as
		// "custody/escrow/v2", with shares for every real officer: a complete,
		// consistent backup whose private key o1 knows how to use.
		forged := forgeBackup(t, kits, officersFile, "custody/escrow/v2")
		path := filepath.Join(kits[0].dir, "forged-manifest.json")
		kits[0].give(t, path, forged)
		d.ctlFails(api.CodeManifestUntrusted, o(1), "", "ceremony", "request", "restore", "--m", "2", "--manifest", path)
		// The same manifest as unsigned JSON (the old format).
		body := forgedBody(t, forged)
		kits[0].give(t, path+".v1", []byte(body))
		d.ctlFails(api.CodeManifestUntrusted, o(1), "", "ceremony", "request", "restore", "--m", "2", "--manifest", path+".v1")
		if _, err := d.token.FindKey(ctx, "custody/escrow/v2"); !errors.Is(err, hsm.ErrNotFound) {
			t.Fatalf("escrow v2 on the token: %v", err)
		}
	})

	t.Run("restore onto a participant or signing label", func(t *testing.T) {
		// Even a manifest signed by a trusted daemon (a faulty one) cannot
		// install anything but an escrow key.
		signer, _, err := auditlog.EnsureDeviceSigner(ctx, a.token, auditlog.DefaultOrigin, auditlog.DefaultSigningKeyLabel, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		for _, label := range []string{"custody/participant/client-1/v2", "custody/signing/v2", auditlog.DefaultSigningKeyLabel} {
			m := forgedManifest(t, kits, officersFile, "custody/escrow/v3")
			m.KeyLabel = label
			signed, err := ceremony.SignManifest(m, signer)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(kits[0].dir, "label-manifest.json")
			os.Remove(path)
			kits[0].give(t, path, signed)
			d.ctlFails(api.CodeNotEscrowLabel, o(1), "", "ceremony", "request", "restore", "--m", "2", "--manifest", path)
		}
	})

	t.Run("requester writes what the approvers read", func(t *testing.T) {
		d.ctlFails(api.CodeBadRequest, o(1), "", "ceremony", "request", "genesis", "--m", "2", "--param", "effect=nothing to see")
		d.ctlFails(api.CodeBadRequest, o(1), "", "ceremony", "request", "backup", "--m", "2", "--param", "key_sha256=00")
		d.ctlFails(api.CodeNotEscrowLabel, o(1), "", "ceremony", "request", "backup", "--m", "2", "--param", "key_label=custody/signing/v1")
	})

	t.Run("approvers read the key and the effect", func(t *testing.T) {
		esc, err := d.keys.Escrow()
		if err != nil {
			t.Fatal(err)
		}
		r := d.request(o(1), nil, "backup", "--m", "2", "--n", "3")
		show := d.ctl(o(2), "ceremony", "show", r.ID)
		for _, want := range []string{"param key_label custody/escrow/v1", "param key_sha256 " + esc.Fingerprint(),
			"param key_words " + ceremony.FingerprintWords(esc.Public), "param share_holders o1 o2 o3", "param n 3",
			"param effect exports escrow key custody/escrow/v1", "split 2-of-3", "param token " + d.cfg.TokenLabel, "SO PIN shares submitted: 0 of 2"} {
			if !strings.Contains(show, want) {
				t.Fatalf("backup request text lacks %q:\n%s", want, show)
			}
		}
	})

	t.Run("a request whose effect changed is not run", func(t *testing.T) {
		first := d.request(o(2), []string{o(3), o(4)}, "rotate", "--m", "2")
		second := d.request(o(3), []string{o(4), o(5)}, "rotate", "--m", "2")
		d.execute(o(2), "rotate", first.ID)
		// second was approved as "creates v2, v1 becomes decrypt-only".
		d.ctlFails(api.CodeRequestStale, o(3), "", "ceremony", "rotate", second.ID)
		if vs := d.keys.EscrowVersions(); len(vs) != 2 {
			t.Fatalf("%d escrow versions, want 2", len(vs))
		}
	})

	t.Run("quorum floors and pending requests", func(t *testing.T) {
		d.ctlFails(api.CodeBadRequest, o(1), "", "ceremony", "request", "retire", "--m", "1", "--param", "version=1", "--param", "rewrapped_count=0")
		d.ctlFails(api.CodeBadRequest, o(1), "", "ceremony", "request", "genesis", "--m", "1")
		for i := range 4 - pendingOf(t, d, "o5") {
			d.ctl(o(5), "ceremony", "request", "genesis", "--m", "2", "--window", fmt.Sprintf("%dm", 10+i))
		}
		d.ctlFails(api.CodeTooManyPending, o(5), "", "ceremony", "request", "genesis", "--m", "2")
		d.ctl(o(4), "ceremony", "request", "genesis", "--m", "2") // another officer still can
	})
}

// pendingOf counts the pending requests officer name opened on c.
func pendingOf(t *testing.T, c *ceremonyHarness, name string) int {
	out := c.ctl(c.kits[0].user, "ceremony", "status")
	return strings.Count(out, "by "+name+",")
}

// forgeBackup is what a dishonest officer can make alone: an escrow key
// labelled label on a SoftHSM token of their own, backed up with their own
// SO PIN shares and signed with their own note key, with a KEK share for
// every officer of the officers file. It returns the manifest file.
func forgeBackup(t *testing.T, kits []officerKit, officersFile, label string) []byte {
	t.Helper()
	ctx := context.Background()
	offs := parseOfficers(t, officersFile)
	raw, _ := ceremony.GenerateSOPIN()
	cfg := hsmtest.NewTokenWithSOPIN(t, ceremony.SOPINText(raw))
	tok, err := hsm.Open(ctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	if _, err := tok.GenerateKeyPair(ctx, hsm.KeySpec{Label: label, Alg: hsm.P256, Usage: hsm.UsageDerive, Backup: true}); err != nil {
		t.Fatal(err)
	}
	rec, files, err := ceremony.SplitSOPIN(raw, cfg.TokenLabel, "", offs.List, 2, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	col := ceremony.NewCollector(rec.ShareSet())
	for i := range 2 {
		sh, err := ceremony.DecryptShare(files[i], kits[i].id)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := col.Submit(sh.Officer, sh.Text()); err != nil {
			t.Fatal(err)
		}
	}
	sk, _, err := note.GenerateKey(rand.Reader, auditlog.DefaultOrigin) // the daemon's name, the officer's key
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := note.NewSigner(sk)
	res, err := ceremony.Backup(ctx, tok, label, col, offs.List, 2, signer, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return res.ManifestFile
}

// forgedManifest is the manifest of forgeBackup, parsed.
func forgedManifest(t *testing.T, kits []officerKit, officersFile, label string) *ceremony.Manifest {
	t.Helper()
	m, err := ceremony.ParseManifest([]byte(forgedBody(t, forgeBackup(t, kits, officersFile, label))))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// forgedBody is the JSON inside a signed manifest file.
func forgedBody(t *testing.T, file []byte) string {
	t.Helper()
	text, _, ok := strings.Cut(string(file), "\n\n")
	_, body, ok2 := strings.Cut(text, "\n")
	if !ok || !ok2 {
		t.Fatalf("not a signed manifest: %q", file)
	}
	return body + "\n"
}

func parseOfficers(t *testing.T, file string) *ceremony.Officers {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	offs, err := ceremony.ParseOfficers(data, nil)
	if err != nil {
		t.Fatal(err)
	}
	return offs
}
