package ceremony_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"filippo.io/age"
	"golang.org/x/mod/sumdb/note"

	"custody/hsm"
	"custody/hsm/hsmtest"
	"custody/internal/ceremony"
	"custody/internal/envelope"
)

func TestMain(m *testing.M) { hsmtest.Main(m) }

// openToken opens a fresh token and returns its SO PIN, in raw form (as
// custodyd token init makes it; the token has SOPINText(raw)).
func openToken(t *testing.T) (*hsm.Token, []byte) {
	t.Helper()
	raw, err := ceremony.GenerateSOPIN()
	if err != nil {
		t.Fatal(err)
	}
	cfg := hsmtest.NewTokenWithSOPIN(t, ceremony.SOPINText(raw))
	tok, err := hsm.Open(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tok.Close() })
	return tok, raw
}

// soPINShares splits raw among offs, M-of-len(offs), as custodyd token
// init does, and returns the record and each officer's decrypted share.
func soPINShares(t *testing.T, raw []byte, offs []officerKeys, m int) (*ceremony.SOPINRecord, [][]byte) {
	t.Helper()
	rec, files, err := ceremony.SplitSOPIN(raw, "tok", "1", officerList(offs), m, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var texts [][]byte
	for i, f := range files {
		s, err := ceremony.DecryptShare(f, offs[i].id)
		if err != nil {
			t.Fatal(err)
		}
		texts = append(texts, s.Text())
	}
	return rec, texts
}

// officersPart is the officers' part of a backup: a collector holding the
// SO PIN shares of officers 1..m (2-of-len(offs) split of raw).
func officersPart(t *testing.T, raw []byte, offs []officerKeys, m int) *ceremony.Collector {
	t.Helper()
	rec, texts := soPINShares(t, raw, offs, 2)
	c := ceremony.NewCollector(rec.ShareSet())
	for i := range m {
		if _, err := c.Submit(offs[i].o.Name, texts[i]); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func officerList(offs []officerKeys) []ceremony.Officer {
	var list []ceremony.Officer
	for _, o := range offs {
		list = append(list, o.o)
	}
	return list
}

// daemonSigner is a software stand-in for the daemon's access-log key,
// which signs manifests (the server tests use the key on the device).
func daemonSigner(t *testing.T) (note.Signer, note.Verifiers) {
	t.Helper()
	sk, vk, err := note.GenerateKey(rand.Reader, "custody.test/log")
	if err != nil {
		t.Fatal(err)
	}
	s, _ := note.NewSigner(sk)
	v, _ := note.NewVerifier(vk)
	return s, note.VerifierList(v)
}

type officerKeys struct {
	o      ceremony.Officer
	id     *age.X25519Identity
	signer note.Signer
}

// newOfficers makes n officers with fresh age and note keys, through the
// officers-file parser (uids are fake: no socket here).
func newOfficers(t *testing.T, n int) []officerKeys {
	t.Helper()
	_, out := newOfficerSet(t, n)
	return out
}

// newOfficerSet returns n officers o1…on (users custody-o1…, uids 60001…)
// as a parsed officers file and with their keys.
func newOfficerSet(t *testing.T, n int) (*ceremony.Officers, []officerKeys) {
	t.Helper()
	var js bytes.Buffer
	js.WriteString(`{"version":1,"officers":[`)
	ids := make([]*age.X25519Identity, n)
	skeys := make([]string, n)
	for i := range n {
		ids[i], _ = age.GenerateX25519Identity()
		name := fmt.Sprintf("o%d", i+1)
		sk, vk, err := note.GenerateKey(rand.Reader, name)
		if err != nil {
			t.Fatal(err)
		}
		skeys[i] = sk
		if i > 0 {
			js.WriteString(",")
		}
		fmt.Fprintf(&js, `{"name":%q,"user":"custody-o%d","age_recipient":%q,"signer":%q}`, name, i+1, ids[i].Recipient(), vk)
	}
	js.WriteString("]}")
	offs, err := ceremony.ParseOfficers(js.Bytes(), func(u string) (uint32, error) {
		var k uint32
		_, err := fmt.Sscanf(u, "custody-o%d", &k)
		return 60000 + k, err
	})
	if err != nil {
		t.Fatal(err)
	}
	out := make([]officerKeys, n)
	for i := range n {
		s, err := note.NewSigner(skeys[i])
		if err != nil {
			t.Fatal(err)
		}
		out[i] = officerKeys{o: offs.List[i], id: ids[i], signer: s}
	}
	return offs, out
}

// TestBackupRestoreScenario: N=5, M=3. Escrow key on token A, envelopes
// sealed to it, backup, token A wiped, restore into token B from shares
// 2, 4, 5, envelopes open through the escrow stanza. Failures first: each
// leaves no escrow object on B.
func TestBackupRestoreScenario(t *testing.T) {
	ctx := context.Background()
	a, so := openToken(t)
	b, _ := openToken(t)
	offs := newOfficers(t, 5)
	signer, trusted := daemonSigner(t)
	const label = "custody/escrow/v1"
	esc, err := a.GenerateKeyPair(ctx, hsm.KeySpec{Label: label, Alg: hsm.P256, Usage: hsm.UsageDerive, Backup: true})
	if err != nil {
		t.Fatal(err)
	}
	envs := sealSome(t, esc.Public, 3)

	list := officerList(offs)
	res, err := ceremony.Backup(ctx, a, label, officersPart(t, so, offs, 2), list, 3, signer, time.Now())
	if err != nil {
		t.Fatalf("Backup: %v", err)
	}
	other, err := ceremony.Backup(ctx, a, label, officersPart(t, so, offs, 2), list, 3, signer, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// Wipe: the escrow key is gone from A.
	if err := a.DestroyKeyPair(ctx, label); err != nil {
		t.Fatal(err)
	}
	m, who, err := ceremony.OpenManifest(res.ManifestFile, trusted)
	if err != nil || who != fmt.Sprintf("custody.test/log+%08x", signer.KeyHash()) {
		t.Fatalf("OpenManifest: %q, %v", who, err)
	}
	decrypt := func(i int, files [][]byte) []byte { // officer i+1 decrypts their own share
		s, err := ceremony.DecryptShare(files[i], offs[i].id)
		if err != nil {
			t.Fatalf("officer %d decrypt: %v", i+1, err)
		}
		return s.Text()
	}
	noEscrow := func(when string) {
		t.Helper()
		if _, err := b.FindKey(ctx, label); !errors.Is(err, hsm.ErrNotFound) {
			t.Fatalf("%s: escrow key on token B: %v", when, err)
		}
	}
	// An officer cannot decrypt another's share.
	if _, err := ceremony.DecryptShare(res.ShareFiles[0], offs[1].id); !errors.Is(err, ceremony.ErrFormat) {
		t.Fatalf("foreign share decrypt: %v", err)
	}

	// M-1 shares.
	r := ceremony.NewCollector(m.ShareSet())
	for _, i := range []int{1, 3} {
		if _, err := r.Submit(offs[i].o.Name, decrypt(i, res.ShareFiles)); err != nil {
			t.Fatal(err)
		}
	}
	if err := ceremony.Restore(ctx, b, m, r); !errors.Is(err, ceremony.ErrNotEnoughShares) {
		t.Fatalf("M-1 shares: %v", err)
	}
	noEscrow("M-1")
	// A duplicated share, by another officer or the same one.
	if _, err := r.Submit(offs[4].o.Name, decrypt(1, res.ShareFiles)); !errors.Is(err, ceremony.ErrDuplicateShare) {
		t.Fatalf("duplicate share: %v", err)
	}
	// A share from another backup.
	if _, err := r.Submit(offs[4].o.Name, decrypt(4, other.ShareFiles)); !errors.Is(err, ceremony.ErrWrongBackup) {
		t.Fatalf("other backup: %v", err)
	}
	// A corrupted share: one byte of the value changed.
	txt := decrypt(4, res.ShareFiles)
	k := bytes.Index(txt, []byte("value ")) + 6
	txt[k] ^= 1
	if txt[k] > 'f' || (txt[k] > '9' && txt[k] < 'a') {
		txt[k] = '0' + (txt[k] & 7)
	}
	_, err = r.Submit(offs[4].o.Name, txt)
	if !errors.Is(err, ceremony.ErrCorruptShare) && !errors.Is(err, ceremony.ErrFormat) {
		t.Fatalf("corrupted share: %v", err)
	}
	t.Logf("corrupted share: %v", err)
	noEscrow("bad shares")

	// Shares 2, 4, 5.
	if _, err := r.Submit(offs[4].o.Name, decrypt(4, res.ShareFiles)); err != nil {
		t.Fatal(err)
	}
	if err := ceremony.Restore(ctx, b, m, r); err != nil {
		t.Fatalf("Finish: %v", err)
	}
	for i, e := range envs {
		got, err := b.Open(ctx, e.env.OpenRequest(e.env.EscrowStanza(), label, esc.Public))
		if err != nil || !bytes.Equal(got, e.pt) {
			t.Fatalf("envelope %d through the restored escrow key: %v", i, err)
		}
	}
	if n, _ := b.SessionObjectCount(ctx); n != 0 {
		t.Fatalf("%d session objects left", n)
	}
	// Restoring again: refused, the existing key untouched.
	r2 := ceremony.NewCollector(m.ShareSet())
	for _, i := range []int{0, 1, 2} {
		r2.Submit(offs[i].o.Name, decrypt(i, res.ShareFiles))
	}
	if err := ceremony.Restore(ctx, b, m, r2); !errors.Is(err, hsm.ErrExists) {
		t.Fatalf("second restore: %v", err)
	}
}

// TestRestoreKCVAndCanary: a manifest whose KCV or wrapped key was altered
// fails, and nothing is left on the token.
func TestRestoreKCVAndCanary(t *testing.T) {
	ctx := context.Background()
	a, so := openToken(t)
	b, _ := openToken(t)
	offs := newOfficers(t, 3)
	signer, _ := daemonSigner(t)
	const label = "custody/escrow/v1"
	if _, err := a.GenerateKeyPair(ctx, hsm.KeySpec{Label: label, Alg: hsm.P256, Usage: hsm.UsageDerive, Backup: true}); err != nil {
		t.Fatal(err)
	}
	res, err := ceremony.Backup(ctx, a, label, officersPart(t, so, offs, 2), officerList(offs), 2, signer, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	run := func(m *ceremony.Manifest) error {
		r := ceremony.NewCollector(m.ShareSet())
		for i := range 2 {
			s, _ := ceremony.DecryptShare(res.ShareFiles[i], offs[i].id)
			if _, err := r.Submit(offs[i].o.Name, s.Text()); err != nil {
				t.Fatal(err)
			}
		}
		return ceremony.Restore(ctx, b, m, r)
	}
	m := *res.Manifest
	m.KCV = "000000"
	if err := run(&m); !errors.Is(err, ceremony.ErrKCV) {
		t.Fatalf("bad KCV: %v", err)
	}
	m = *res.Manifest
	m.Wrapped = bytes.Clone(m.Wrapped)
	m.Wrapped[5] ^= 1
	if err := run(&m); !errors.Is(err, hsm.ErrIntegrity) {
		t.Fatalf("tampered wrap: %v", err)
	}
	m = *res.Manifest
	m.CanaryHash = string("10"[boolInt(m.CanaryHash[0] == '1')]) + m.CanaryHash[1:] // always another digest
	if err := run(&m); !errors.Is(err, ceremony.ErrCanary) {
		t.Fatalf("bad canary: %v", err)
	}
	// The manifest names another public key than the wrapped private key's:
	// the restored pair is not installed.
	m = *res.Manifest
	otherKey, err := a.GenerateKeyPair(ctx, hsm.KeySpec{Label: "custody/escrow/v9", Alg: hsm.P256, Usage: hsm.UsageDerive, Backup: true})
	if err != nil {
		t.Fatal(err)
	}
	m.Public = otherKey.Public
	if err := run(&m); !errors.Is(err, ceremony.ErrCanary) {
		t.Fatalf("public key of another key: %v", err)
	}
	if _, err := b.FindKey(ctx, label); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("escrow key left after failures: %v", err)
	}
}

type sealedEnv struct {
	env *envelope.Envelope
	pt  []byte
}

func sealSome(t *testing.T, escrowPublic []byte, n int) []sealedEnv {
	t.Helper()
	var out []sealedEnv
	for i := range n {
		pt := []byte(fmt.Sprintf("confidential %d", i))
		env, err := envelope.Seal(context.Background(), envelope.SealInput{
			TransactionID: fmt.Sprintf("tx-%d", i), JobID: "job",
			Plaintext:    pt,
			Participants: []envelope.Recipient{{ID: "client-a", KeyVersion: 1, Alg: hsm.X25519, Public: x25519Pub(t)}},
			Escrow:       envelope.Recipient{KeyVersion: 1, Alg: hsm.P256, Public: escrowPublic},
		}, ceremony.NewTestSigner(t))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, sealedEnv{env, pt})
	}
	return out
}

func x25519Pub(t *testing.T) []byte {
	k, err := ecdhX25519()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
