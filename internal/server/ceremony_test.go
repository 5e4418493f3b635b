package server_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"filippo.io/age"
	"golang.org/x/mod/sumdb/note"

	"custody/hsm"
	"custody/hsm/hsmtest"
	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/ceremony"
	"custody/internal/config"
	"custody/internal/envelope"
	"custody/internal/keys"
	"custody/internal/policy"
	"custody/internal/server"
)

// officerUsers are created by TestMain: custody-o1..o5 are in the officers
// file; custody-o6 has role officer in the policy but is not in the file.
var officerUsers = []string{"custody-o1", "custody-o2", "custody-o3", "custody-o4", "custody-o5", "custody-o6"}

// ceremonyPolicy: root seals and audits (auditPolicy); the six officer
// users have role officer.
var ceremonyPolicy = strings.Replace(auditPolicy, `"principals": [`,
	`"principals": [
    {"name": "officers", "users": ["custody-o1", "custody-o2", "custody-o3", "custody-o4", "custody-o5", "custody-o6"], "roles": ["officer"]},`, 1)

// officerKit is one officer's secrets, in a directory only that officer's
// Unix user can read.
type officerKit struct {
	user     string
	name     string
	dir      string
	identity string // age identity file
	noteKey  string // note signer key file
	id       *age.X25519Identity
}

type clock struct{ ns atomic.Int64 }

func (c *clock) now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) set(t time.Time)         { c.ns.Store(t.UnixNano()) }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// ceremonyHarness is a daemon on a fresh token on which genesis has not
// run, with ceremonies configured.
type ceremonyHarness struct {
	*harness
	clock      *clock
	outDir     string
	cer        *ceremony.Service
	kits       []officerKit
	soPINFiles map[string]string // officer name → their SO PIN share file (as token init hands it over)
}

// newOfficerKits makes five officers with fresh age and note keys and
// writes the officers file.
func newOfficerKits(t *testing.T) ([]officerKit, string) {
	t.Helper()
	base, err := os.MkdirTemp("", "custody-officers-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	var entries []string
	var kits []officerKit
	for i := 1; i <= 5; i++ {
		k := officerKit{user: fmt.Sprintf("custody-o%d", i), name: fmt.Sprintf("o%d", i), dir: filepath.Join(base, fmt.Sprintf("o%d", i))}
		u := users[k.user]
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Mkdir(k.dir, 0o700); err != nil {
			t.Fatal(err)
		}
		k.id, _ = age.GenerateX25519Identity()
		sk, vk, err := note.GenerateKey(rand.Reader, k.name)
		if err != nil {
			t.Fatal(err)
		}
		k.identity, k.noteKey = filepath.Join(k.dir, "identity.txt"), filepath.Join(k.dir, "note.key")
		os.WriteFile(k.identity, []byte(k.id.String()+"\n"), 0o600)
		os.WriteFile(k.noteKey, []byte(sk+"\n"), 0o600)
		for _, p := range []string{k.dir, k.identity, k.noteKey} {
			if err := os.Chown(p, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
		entries = append(entries, fmt.Sprintf(`{"name":%q,"user":%q,"age_recipient":%q,"signer":%q}`, k.name, k.user, k.id.Recipient(), vk))
		kits = append(kits, k)
	}
	file := filepath.Join(base, "officers.json")
	if err := os.WriteFile(file, []byte(`{"version":1,"officers":[`+strings.Join(entries, ",")+"]}"), 0o644); err != nil {
		t.Fatal(err)
	}
	return kits, file
}

// newCeremonyHarness starts a daemon on a fresh token whose SO PIN was
// split 2-of-5 among the officers of kits, as custodyd token init does (the
// harness keeps no SO PIN: each officer's share file is in their own
// directory), trusting backup manifests signed by the log keys in trusted.
func newCeremonyHarness(t *testing.T, kits []officerKit, officersFile string, trusted ...string) *ceremonyHarness {
	t.Helper()
	return newCeremonyHarnessSO(t, kits, officersFile, false, trusted...)
}

// newCeremonyHarnessSO is newCeremonyHarness; with wrongSOPIN the officers'
// SO PIN shares and the record are of another PIN than the token's.
func newCeremonyHarnessSO(t *testing.T, kits []officerKit, officersFile string, wrongSOPIN bool, trusted ...string) *ceremonyHarness {
	t.Helper()
	return newCeremonyHarnessOpts(t, kits, officersFile, ceremonyOpts{wrongSOPIN: wrongSOPIN, trusted: trusted})
}

// ceremonyOpts vary newCeremonyHarnessOpts: another policy than
// ceremonyPolicy, and adjust changes the server's Deps (a second factor:
// mfa_policy_test.go).
type ceremonyOpts struct {
	wrongSOPIN bool
	trusted    []string
	policy     string
	adjust     func(*server.Deps)
}

func newCeremonyHarnessOpts(t *testing.T, kits []officerKit, officersFile string, opts ceremonyOpts) *ceremonyHarness {
	t.Helper()
	wrongSOPIN, trusted := opts.wrongSOPIN, opts.trusted
	policyText := ceremonyPolicy
	if opts.policy != "" {
		policyText = opts.policy
	}
	dir, err := os.MkdirTemp("", "custody-cer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	c := &ceremonyHarness{clock: &clock{}, outDir: filepath.Join(dir, "ceremonies"), kits: kits, soPINFiles: map[string]string{}}
	c.clock.set(time.Now().UTC().Truncate(time.Second))
	h := &harness{t: t, dir: dir, socket: filepath.Join(dir, "custodyd.sock"), rec: &recorder{}, now: c.clock.now()}
	c.harness = h
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(testLogOutput(), nil))
	data, err := os.ReadFile(officersFile)
	if err != nil {
		t.Fatal(err)
	}
	offs, err := ceremony.ParseOfficers(data, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := ceremony.GenerateSOPIN()
	if err != nil {
		t.Fatal(err)
	}
	h.cfg = hsmtest.NewTokenWithSOPIN(t, ceremony.SOPINText(raw))
	if wrongSOPIN {
		raw[0] ^= 1
	}
	rec, files, err := ceremony.SplitSOPIN(raw, h.cfg.TokenLabel, "", offs.List, 2, time.Now())
	clear(raw)
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range kits {
		p := filepath.Join(k.dir, fmt.Sprintf("so-pin-share-%s-%d.age", filepath.Base(dir), i+1))
		k.give(t, p, files[i])
		c.soPINFiles[k.name] = p
	}
	if h.token, err = hsm.Open(ctx, h.cfg, log); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.token.Close() })
	if h.keys, err = keys.Load(ctx, h.token, log); err != nil {
		t.Fatal(err)
	}
	policyPath := filepath.Join(dir, "policy.json")
	if err := os.WriteFile(policyPath, []byte(policyText), 0o644); err != nil {
		t.Fatal(err)
	}
	if h.store, err = policy.NewStore(policyPath); err != nil {
		t.Fatal(err)
	}
	var vs []note.Verifier
	for _, k := range trusted {
		v, err := note.NewVerifier(k)
		if err != nil {
			t.Fatal(err)
		}
		vs = append(vs, v)
	}
	c.cer, err = ceremony.NewService(ceremony.ServiceConfig{Officers: offs, SOPIN: rec, TrustedBackupSigners: note.VerifierList(vs...), OutputDir: c.outDir, Device: h.token,
		Keys: h.keys, LogOrigin: auditlog.DefaultOrigin, LogKeyLabel: auditlog.DefaultSigningKeyLabel, Now: c.clock.now})
	if err != nil {
		t.Fatal(err)
	}
	deps := server.Deps{Token: h.token, Keys: h.keys, Policy: h.store, Recorder: h.rec, Log: log,
		Limits: config.Default().Limits, Now: c.clock.now, Version: "test", Ceremonies: c.cer}
	if opts.adjust != nil {
		opts.adjust(&deps)
	}
	h.serve(deps)
	return c
}

// give writes data to path, a file in the officer's directory that only the
// officer's Unix user can read.
func (k officerKit) give(t *testing.T, path string, data []byte) {
	t.Helper()
	u := users[k.user]
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, uid, gid); err != nil {
		t.Fatal(err)
	}
}

// logKey is the verifier key of the daemon's access-log key: what a
// restoring daemon pins in ceremony.trusted_backup_signers.
func (c *ceremonyHarness) logKey() string {
	c.t.Helper()
	signer, _, err := auditlog.EnsureDeviceSigner(context.Background(), c.token, auditlog.DefaultOrigin, auditlog.DefaultSigningKeyLabel, time.Now())
	if err != nil {
		c.t.Fatal(err)
	}
	return signer.VerifierKey()
}

// officersPart has officers k decrypt their own SO PIN share files and
// submit them to backup request id, each as their own Unix user.
func (c *ceremonyHarness) officersPart(id string, ks ...officerKit) {
	c.t.Helper()
	for _, k := range ks {
		p := filepath.Join(k.dir, fmt.Sprintf("so-pin-%d.txt", time.Now().UnixNano()))
		c.ctl(k.user, "ceremony", "share", "decrypt", c.soPINFiles[k.name], "--identity", k.identity, "--out", p)
		c.ctl(k.user, "ceremony", "share", "submit", id, p)
	}
}

// fetch has officer k fetch output name of request id into their own
// directory, as their own Unix user, and returns its path.
func (c *ceremonyHarness) fetch(k officerKit, id, name string) string {
	c.t.Helper()
	p := filepath.Join(k.dir, fmt.Sprintf("%d-%s", time.Now().UnixNano(), name))
	c.ctl(k.user, "ceremony", "fetch", id, name, "--out", p)
	return p
}

// ctl runs custodyctl as officer user and expects success.
func (c *ceremonyHarness) ctl(user string, args ...string) string {
	c.t.Helper()
	code, out, errOut := c.ctlAs(user, "", args...)
	if code != 0 {
		c.t.Fatalf("custodyctl %s as %s: exit %d: %s%s", strings.Join(args, " "), user, code, out, errOut)
	}
	return out
}

// ctlFails runs custodyctl as user and expects exit 1 naming code.
func (c *ceremonyHarness) ctlFails(code, user, stdin string, args ...string) {
	c.t.Helper()
	exit, out, errOut := c.ctlAs(user, stdin, args...)
	if exit != 1 || !strings.Contains(errOut, code+":") {
		c.t.Fatalf("custodyctl %s as %s: exit %d, want 1 with %s: %s%s", strings.Join(args, " "), user, exit, code, out, errOut)
	}
}

type reqOut struct {
	ID, Hash, Kind string
}

// request opens a request as user and has approvers approve it.
func (c *ceremonyHarness) request(user string, approvers []string, args ...string) reqOut {
	c.t.Helper()
	var r reqOut
	out := c.ctl(user, append([]string{"--json", "ceremony", "request"}, args...)...)
	if err := json.Unmarshal([]byte(out), &r); err != nil || r.ID == "" || len(r.Hash) != 64 {
		c.t.Fatalf("request %v: %v: %s", args, err, out)
	}
	for _, a := range approvers {
		c.ctl(a, "ceremony", "approve", r.ID, "--hash", r.Hash)
	}
	return r
}

type execOut struct {
	Request      string
	BackupID     string `json:"backup_id"`
	KCV          string
	Fingerprints []struct{ Label, SHA256, Words string }
	Outputs      []struct{ Name, Path, SHA256, Holder string }
	Transcript   struct{ Path, SHA256 string }
}

func (c *ceremonyHarness) execute(user, kind string, args ...string) execOut {
	c.t.Helper()
	var e execOut
	out := c.ctl(user, append([]string{"--json", "ceremony", kind}, args...)...)
	if err := json.Unmarshal([]byte(out), &e); err != nil {
		c.t.Fatalf("%s: %v: %s", kind, err, out)
	}
	// The transcript's hash is in the access log.
	found := false
	c.rec.mu.Lock()
	for _, en := range c.rec.entries {
		if en.Operation == "ceremony.transcript" && strings.Contains(en.Detail, e.Transcript.SHA256) {
			found = true
		}
	}
	c.rec.mu.Unlock()
	if !found || !fileHashIs(c.t, e.Transcript.Path, e.Transcript.SHA256) {
		c.t.Fatalf("%s: transcript %s not in the access log or hash differs", kind, e.Transcript.Path)
	}
	return e
}

func fileHashIs(t testing.TB, path, want string) bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]) == want
}

// noEscrowOn asserts the token holds no escrow key and no session object.
func noEscrowOn(t *testing.T, tok *hsm.Token, when string) {
	t.Helper()
	ctx := context.Background()
	if _, err := tok.FindKey(ctx, "custody/escrow/v1"); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("%s: escrow key on the token: %v", when, err)
	}
	if n, err := tok.SessionObjectCount(ctx); err != nil || n != 0 {
		t.Fatalf("%s: %d session objects left (%v)", when, n, err)
	}
}

// TestCeremonyScenario: five officers as real Unix users, M=3. Genesis →
// envelopes → backup → the escrow key wiped → restore into a new token from
// shares 2, 4, 5 submitted by officers 2, 4, 5 → the old envelopes open
// through the escrow stanza; rotation; and every refusal on the way.
func TestCeremonyScenario(t *testing.T) {
	ctx := context.Background()
	kits, officersFile := newOfficerKits(t)
	o := func(i int) string { return kits[i-1].user }
	a := newCeremonyHarness(t, kits, officersFile)

	// Before genesis: audit decrypts are refused; so are non-officers.
	auditBody := map[string]string{"envelope": "x", "authorization": "order-1", "purpose": "tax"}
	if st, body := a.call("POST", "/v1/audit/decrypt", auditBody); st != http.StatusConflict || errCode(body) != api.CodeGenesisRequired {
		t.Fatalf("audit decrypt before genesis: %d %v", st, body)
	}
	a.ctlFails(api.CodeNotOfficer, "custody-o6", "", "ceremony", "status")
	a.ctlFails(api.CodePermissionDenied, appUser, "", "ceremony", "status")
	if out := a.ctl(o(1), "ceremony", "status"); !strings.Contains(out, "genesis: false") || !strings.Contains(out, "SO PIN: split 2-of-5 among o1, o2, o3, o4, o5") {
		t.Fatalf("status before genesis: %s", out)
	}

	// Genesis, approved by two others.
	g := a.request(o(1), []string{o(2), o(3)}, "genesis", "--m", "2")
	out := a.ctl(o(1), "ceremony", "genesis")
	for _, want := range []string{"custody/escrow/v1 (new)", "custody/signing/v1 (new)", auditlog.DefaultSigningKeyLabel, "words"} {
		if !strings.Contains(out, want) {
			t.Fatalf("genesis output lacks %q: %s", want, out)
		}
	}
	a.ctlFails(api.CodeUnknownRequest, o(1), "", "ceremony", "genesis", g.ID) // once only
	if st, body := a.call("POST", "/v1/audit/decrypt", auditBody); errCode(body) != api.CodeVaultUnavailable {
		t.Fatalf("audit decrypt after genesis still refused for genesis: %d %v", st, body)
	}
	esc, err := a.keys.Escrow()
	if err != nil {
		t.Fatal(err)
	}

	// Envelopes sealed to escrow v1.
	a.register("client-1", "miner-1")
	var envs []string
	for i := range 3 {
		envs = append(envs, a.seal(fmt.Sprintf("tx-%d", i+1), "client-1", "miner-1"))
	}

	// Backup: refusals first.
	b1 := a.request(o(1), []string{o(2), o(3)}, "backup", "--m", "3", "--n", "5")
	a.ctlFails(api.CodeNotApproved, o(1), "", "ceremony", "backup", b1.ID)
	a.ctlFails(api.CodeSelfApproval, o(1), "", "ceremony", "approve", b1.ID, "--hash", b1.Hash)
	a.ctlFails(api.CodeRequestMismatch, o(4), "", "ceremony", "approve", b1.ID, "--hash", g.Hash) // another request's hash
	a.ctlFails(api.CodeDuplicateApproval, o(2), "", "ceremony", "approve", b1.ID, "--hash", b1.Hash)
	a.ctl(o(4), "ceremony", "approve", b1.ID, "--hash", b1.Hash)
	// Approved, but the daemon holds no SO PIN: without the officers' part
	// (2 SO PIN shares) nothing is wrapped, and one share is not enough.
	a.ctlFails(api.CodeNotEnoughShares, o(1), "", "ceremony", "backup", b1.ID)
	a.officersPart(b1.ID, kits[4])
	a.ctlFails(api.CodeNotEnoughShares, o(1), "", "ceremony", "backup", b1.ID)
	noEscrowSessionObjects(t, a.token, "backup without the officers' part")
	a.officersPart(b1.ID, kits[3])
	bk := a.execute(o(1), "backup", b1.ID)
	if len(bk.Outputs) != 6 || bk.KCV == "" || bk.BackupID == "" {
		t.Fatalf("backup outputs: %+v", bk)
	}
	for _, f := range append(bk.Outputs, struct{ Name, Path, SHA256, Holder string }{"transcript.txt", bk.Transcript.Path, bk.Transcript.SHA256, ""}) {
		if !fileHashIs(t, f.Path, f.SHA256) {
			t.Fatalf("%s: hash differs from the answer", f.Path)
		}
		if st, err := os.Stat(f.Path); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: mode %v, want 0600", f.Path, st.Mode())
		}
		if st, err := os.Stat(filepath.Dir(f.Path)); err != nil || st.Mode().Perm() != 0o700 {
			t.Fatalf("%s: mode %v, want 0700", filepath.Dir(f.Path), st.Mode())
		}
	}
	// An officer reads no output file on disk, and fetches only their own share.
	if code, _, errOut := a.ctlAs(o(2), "", "ceremony", "share", "decrypt", bk.Outputs[2].Path, "--identity", kits[1].identity, "--out", filepath.Join(kits[1].dir, "stolen.txt")); code == 0 || !strings.Contains(errOut, "permission denied") {
		t.Fatalf("an officer read a share file in the output directory: %d %s", code, errOut)
	}
	a.ctlFails(api.CodeNotShareHolder, o(2), "", "ceremony", "fetch", b1.ID, bk.Outputs[3].Name, "--out", filepath.Join(kits[1].dir, "stolen.age"))
	manifest := a.fetch(kits[0], b1.ID, "manifest.json")
	b2 := a.request(o(2), []string{o(1), o(3), o(4)}, "backup", "--m", "3")
	a.officersPart(b2.ID, kits[0], kits[2])
	other := a.execute(o(3), "backup", b2.ID)

	// The backup transcript: three approvers co-sign, it verifies offline;
	// one byte changed, it does not.
	signer, _, err := auditlog.EnsureDeviceSigner(ctx, a.token, auditlog.DefaultOrigin, auditlog.DefaultSigningKeyLabel, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	logPub := filepath.Join(a.dir, "log.pub")
	os.WriteFile(logPub, []byte(signer.VerifierKey()+"\n"), 0o644)
	tr := filepath.Join(a.dir, "transcript.txt")
	raw, _ := os.ReadFile(bk.Transcript.Path)
	os.WriteFile(tr, raw, 0o644)
	verify := []string{"ceremony", "verify", tr, "--officers", officersFile, "--log-key", logPub}
	if code, _, errOut := a.ctlRoot("", verify...); code != 1 || !strings.Contains(errOut, "approver o2 has not co-signed") {
		t.Fatalf("verify before co-signing: %d %s", code, errOut)
	}
	for _, i := range []int{2, 3, 4} {
		if code, out, errOut := a.ctlRoot("", "ceremony", "cosign", tr, "--key", kits[i-1].noteKey); code != 0 {
			t.Fatalf("cosign o%d: %s%s", i, out, errOut)
		}
	}
	if code, out, errOut := a.ctlRoot("", verify...); code != 0 || !strings.Contains(out, "co-signed by o2, o3, o4") || !strings.Contains(out, "key check value "+bk.KCV) {
		t.Fatalf("verify: %d %s%s", code, out, errOut)
	}
	raw, _ = os.ReadFile(tr)
	raw[bytes.Index(raw, []byte("kcv "))+4] ^= 1
	os.WriteFile(tr, raw, 0o644)
	if code, _, errOut := a.ctlRoot("", verify...); code != 1 || !strings.Contains(errOut, "transcript does not verify") {
		t.Fatalf("verify of a changed transcript: %d %s", code, errOut)
	}

	// Wipe the escrow key from token A.
	if err := a.token.DestroyKeyPair(ctx, esc.Label); err != nil {
		t.Fatal(err)
	}

	// Token B, with its own daemon, trusting A's manifests.
	b := newCeremonyHarness(t, kits, officersFile, a.logKey())
	noEscrowOn(t, b.token, "fresh token")
	// An approval after its window.
	late := b.request(o(1), nil, "genesis", "--m", "2", "--window", "1m")
	b.clock.advance(2 * time.Minute)
	b.ctlFails(api.CodeRequestExpired, o(2), "", "ceremony", "approve", late.ID, "--hash", late.Hash)

	r := b.request(o(1), []string{o(2), o(3), o(4)}, "restore", "--m", "3", "--manifest", manifest)
	// What the approvers read names the key, its signer and the effect.
	show := b.ctl(o(2), "ceremony", "show", r.ID)
	for _, want := range []string{"param key_sha256 " + esc.Fingerprint(), "param key_words " + ceremony.FingerprintWords(esc.Public),
		"param manifest_signer " + auditlog.DefaultOrigin + "+", "param backup_id " + bk.BackupID, "param backup_m 3", "param backup_n 5",
		"param effect installs escrow key custody/escrow/v1", "as the active escrow key", "param token " + b.cfg.TokenLabel} {
		if !strings.Contains(show, want) {
			t.Fatalf("restore request text lacks %q:\n%s", want, show)
		}
	}
	share := func(k officerKit, file string) string { // officer k decrypts their own share file
		p := filepath.Join(k.dir, fmt.Sprintf("share-%d.txt", time.Now().UnixNano()))
		b.ctl(k.user, "ceremony", "share", "decrypt", file, "--identity", k.identity, "--out", p)
		return p
	}
	// Share i of a backup, fetched from A by its holder (officer i).
	shareFile := func(res execOut, i int) string { return a.fetch(kits[i-1], res.Request, res.Outputs[i].Name) }
	s2 := share(kits[1], shareFile(bk, 2))
	b.ctl(o(2), "ceremony", "share", "submit", r.ID, s2)
	b.ctlFails(api.CodeDuplicateShare, o(2), "", "ceremony", "share", "submit", r.ID, s2)
	b.ctl(o(4), "ceremony", "share", "submit", r.ID, share(kits[3], shareFile(bk, 4)))
	// M-1 shares.
	b.ctlFails(api.CodeNotEnoughShares, o(1), "", "ceremony", "restore", r.ID)
	noEscrowOn(t, b.token, "M-1 shares")
	// A share from another backup, a corrupted share, another officer's share.
	b.ctlFails(api.CodeWrongBackup, o(5), "", "ceremony", "share", "submit", r.ID, share(kits[4], shareFile(other, 5)))
	// An SO PIN share where a backup share is wanted.
	b.ctlFails(api.CodeWrongBackup, o(5), "", "ceremony", "share", "submit", r.ID, share(kits[4], b.soPINFiles["o5"]))
	s5 := share(kits[4], shareFile(bk, 5))
	text, err := os.ReadFile(s5)
	if err != nil {
		t.Fatal(err)
	}
	corrupt := bytes.Clone(text)
	k := bytes.Index(corrupt, []byte("value ")) + 6
	corrupt[k] = "01"[boolInt(corrupt[k] == '0')]
	b.ctlFails(api.CodeCorruptShare, o(5), string(corrupt), "ceremony", "share", "submit", r.ID, "-")
	s2text, _ := os.ReadFile(s2)
	b.ctlFails(api.CodeNotShareHolder, o(5), string(s2text), "ceremony", "share", "submit", r.ID, "-")
	noEscrowOn(t, b.token, "bad shares")
	if _, err := b.keys.Escrow(); !errors.Is(err, keys.ErrNoDaemonKeys) {
		t.Fatalf("registry of B knows an escrow key: %v", err)
	}
	// Share 5: restore.
	b.ctl(o(5), "ceremony", "share", "submit", r.ID, s5)
	rs := b.execute(o(1), "restore", r.ID)
	if rs.KCV != bk.KCV || len(rs.Fingerprints) != 1 || rs.Fingerprints[0].SHA256 != esc.Fingerprint() {
		t.Fatalf("restore answer: %+v", rs)
	}
	b.ctlFails(api.CodeUnknownRequest, o(1), "", "ceremony", "restore", r.ID)

	// The old envelopes open on B through the escrow stanza, with the key
	// version B's daemon now knows.
	v1, err := b.keys.EscrowVersion(1)
	if err != nil {
		t.Fatal(err)
	}
	for i, text := range envs {
		env, err := envelope.ParseText(text)
		if err != nil {
			t.Fatal(err)
		}
		if pt := openEscrowAll(t, b.token, env, v1.Label, v1.Public); !bytes.Contains(pt, []byte("IBAN DE00")) {
			t.Fatalf("envelope %d through the restored escrow key: %q", i, pt)
		}
	}
	if n, _ := b.token.SessionObjectCount(ctx); n != 0 {
		t.Fatalf("%d session objects left on B", n)
	}
	// B counts as past genesis: audit decrypts are no longer refused for it.
	if _, body := b.call("POST", "/v1/audit/decrypt", auditBody); errCode(body) != api.CodeVaultUnavailable {
		t.Fatalf("audit decrypt on B after restore: %v", body)
	}

	// Rotation on B: v2 active, v1 stays for decryption.
	rot := b.request(o(2), []string{o(3), o(5)}, "rotate", "--m", "2")
	b.execute(o(2), "rotate", rot.ID)
	st := b.ctl(o(4), "ceremony", "status")
	if !strings.Contains(st, "v1  decrypt-only") || !strings.Contains(st, "v2  active") || !strings.Contains(st, "genesis: true") {
		t.Fatalf("status after rotation: %s", st)
	}

	// Retiring v1 takes a request with the rewrap count, never the active
	// version, and M approvals; then v1 is gone from the token for good.
	b.ctlFails(api.CodeRetireUnconfirmed, o(1), "", "ceremony", "request", "retire", "--m", "2", "--param", "version=1")
	b.ctlFails(api.CodeKeyActive, o(1), "", "ceremony", "request", "retire", "--m", "2", "--param", "version=2", "--param", "rewrapped_count=3")
	ret := b.request(o(1), []string{o(4), o(5)}, "retire", "--m", "2", "--param", "version=1", "--param", "rewrapped_count=3")
	if e := b.execute(o(3), "retire", ret.ID); len(e.Fingerprints) != 1 || e.Fingerprints[0].Label != v1.Label {
		t.Fatalf("retire output: %+v", e)
	}
	if _, err := b.token.FindKey(ctx, v1.Label); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("escrow v1 after retirement: %v", err)
	}
	if st := b.ctl(o(4), "ceremony", "status"); !strings.Contains(st, "v1  destroyed") || !strings.Contains(st, "v2  active") {
		t.Fatalf("status after retirement: %s", st)
	}
	// A retired version is never restored again, even from a genuine backup.
	b.ctlFails(api.CodeKeyDestroyed, o(1), "", "ceremony", "request", "restore", "--m", "3", "--manifest", manifest)
}

// noEscrowSessionObjects asserts the token holds no session object (no KEK
// was left behind).
func noEscrowSessionObjects(t *testing.T, tok *hsm.Token, when string) {
	t.Helper()
	if n, err := tok.SessionObjectCount(context.Background()); err != nil || n != 0 {
		t.Fatalf("%s: %d session objects left (%v)", when, n, err)
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestOfficersReplaced: replacing the officers (SIGHUP in custodyd) with a
// file that drops o5 cancels the pending request, whose quorum was being
// gathered among the old officers, and o5 is no longer an officer; the
// same officers again change nothing.
func TestOfficersReplaced(t *testing.T) {
	kits, officersFile := newOfficerKits(t)
	o := func(i int) string { return kits[i-1].user }
	c := newCeremonyHarness(t, kits, officersFile)
	r := c.request(o(1), []string{o(2)}, "genesis", "--m", "2")

	data, err := os.ReadFile(officersFile)
	if err != nil {
		t.Fatal(err)
	}
	var f map[string]any
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	f["officers"] = f["officers"].([]any)[:4]
	fewer, _ := json.Marshal(f)
	offs, err := ceremony.ParseOfficers(fewer, nil)
	if err != nil {
		t.Fatal(err)
	}
	changed, cancelled := c.cer.ReplaceOfficers(offs)
	if !changed || len(cancelled) != 1 || cancelled[0] != r.ID {
		t.Fatalf("ReplaceOfficers = %v, %v; want the pending request %s cancelled", changed, cancelled, r.ID)
	}
	c.ctlFails(api.CodeUnknownRequest, o(3), "", "ceremony", "approve", r.ID, "--hash", r.Hash)
	c.ctlFails(api.CodeNotOfficer, o(5), "", "ceremony", "status")
	again := c.request(o(1), nil, "genesis", "--m", "2")
	same, _ := ceremony.ParseOfficers(fewer, nil)
	if changed, cancelled := c.cer.ReplaceOfficers(same); changed || cancelled != nil {
		t.Fatalf("the same officers again: %v, %v", changed, cancelled)
	}
	c.ctl(o(2), "ceremony", "approve", again.ID, "--hash", again.Hash) // still pending
}

// TestCeremonyDeviceFailures drives, through the socket, the failures the
// scenario cannot reach with honest files, and checks that each leaves
// nothing on the token: a manifest whose key check value was changed
// (kcv_mismatch), one whose canary digest was changed (canary_failed: the
// restored key is removed again), both re-signed with the trusted log key
// as a faulty backing-up daemon would; a restore request onto a token that
// already holds the escrow key (key_exists, refused before any share); and
// a backup whose SO PIN shares are another token's (so_login_refused; the
// next backup with the right shares works).
func TestCeremonyDeviceFailures(t *testing.T) {
	ctx := context.Background()
	kits, officersFile := newOfficerKits(t)
	o := func(i int) string { return kits[i-1].user }
	a := newCeremonyHarness(t, kits, officersFile)
	a.request(o(1), []string{o(2), o(3)}, "genesis", "--m", "2")
	a.ctl(o(1), "ceremony", "genesis")
	esc, err := a.keys.Escrow()
	if err != nil {
		t.Fatal(err)
	}
	br := a.request(o(1), []string{o(2), o(3)}, "backup", "--m", "2", "--n", "3")
	a.officersPart(br.ID, kits[0], kits[1])
	bk := a.execute(o(1), "backup", br.ID)
	manifest, err := os.ReadFile(bk.Outputs[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	signer, _, err := auditlog.EnsureDeviceSigner(ctx, a.token, auditlog.DefaultOrigin, auditlog.DefaultSigningKeyLabel, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// changed writes the manifest with one member replaced, signed again by
	// A's log key, into o3's directory (o3 opens the request).
	changed := func(member, value string) string {
		n, err := note.Open(manifest, note.VerifierList(mustVerifier(t, signer.VerifierKey())))
		if err != nil {
			t.Fatal(err)
		}
		header, body, _ := strings.Cut(n.Text, "\n")
		var m map[string]any
		if err := json.Unmarshal([]byte(body), &m); err != nil {
			t.Fatal(err)
		}
		m[member] = value
		data, _ := json.MarshalIndent(m, "", "  ")
		signed, err := note.Sign(&note.Note{Text: header + "\n" + string(data) + "\n"}, signer)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(kits[2].dir, "manifest-"+member+".json")
		kits[2].give(t, p, signed)
		return p
	}
	b := newCeremonyHarness(t, kits, officersFile, a.logKey())
	// restore opens a restore request on B for the manifest file, approved
	// and with shares 1 and 2 in, and executes it.
	restore := func(manifestFile string) (int, string) {
		t.Helper()
		r := b.request(o(3), []string{o(4), o(5)}, "restore", "--m", "2", "--manifest", manifestFile)
		for i := 1; i <= 2; i++ {
			p := filepath.Join(kits[i-1].dir, fmt.Sprintf("share-%d.txt", time.Now().UnixNano()))
			b.ctl(o(i), "ceremony", "share", "decrypt", a.fetch(kits[i-1], bk.Request, bk.Outputs[i].Name), "--identity", kits[i-1].identity, "--out", p)
			b.ctl(o(i), "ceremony", "share", "submit", r.ID, p)
		}
		code, out, errOut := b.ctlAs(o(3), "", "ceremony", "restore", r.ID)
		return code, out + errOut
	}
	for _, tc := range []struct {
		member, value, code string
	}{
		{"kcv", "000000", api.CodeKCVMismatch},
		{"canary_plaintext_sha256", strings.Repeat("0", 64), api.CodeCanaryFailed},
	} {
		if code, out := restore(changed(tc.member, tc.value)); code == 0 || !strings.Contains(out, tc.code) {
			t.Fatalf("restore with a changed %s: %d %s", tc.member, code, out)
		}
		noEscrowOn(t, b.token, "after "+tc.code)
	}
	honest := a.fetch(kits[2], bk.Request, "manifest.json")
	if code, out := restore(honest); code != 0 {
		t.Fatalf("restore of the honest manifest: %s", out)
	}
	b.ctlFails(api.CodeKeyExists, o(3), "", "ceremony", "request", "restore", "--m", "2", "--manifest", honest)
	if k, err := b.token.FindKey(ctx, esc.Label); err != nil || !bytes.Equal(k.Public, esc.Public) {
		t.Fatalf("the escrow key on B after key_exists: %v", err)
	}
	if n, _ := b.token.SessionObjectCount(ctx); n != 0 {
		t.Fatalf("%d session objects left on B", n)
	}

	// SO PIN shares that fit the daemon's record but are not its token's PIN
	// (the record of another token): the token refuses the SO login before
	// anything is wrapped, and nothing is left on it.
	w := newCeremonyHarnessSO(t, kits, officersFile, true)
	w.request(o(1), []string{o(2), o(3)}, "genesis", "--m", "2")
	w.ctl(o(1), "ceremony", "genesis")
	r := w.request(o(1), []string{o(2), o(3)}, "backup", "--m", "2", "--n", "3")
	w.officersPart(r.ID, kits[0], kits[1])
	w.ctlFails(api.CodeSOLogin, o(1), "", "ceremony", "backup", r.ID)
	if n, _ := w.token.SessionObjectCount(ctx); n != 0 {
		t.Fatalf("%d session objects left after so_login_refused", n)
	}
	// A's own shares keep working for a second backup.
	r = a.request(o(1), []string{o(2), o(3)}, "backup", "--m", "2", "--n", "3")
	a.officersPart(r.ID, kits[3], kits[4])
	a.execute(o(1), "backup", r.ID)
}

func mustVerifier(t *testing.T, key string) note.Verifier {
	t.Helper()
	v, err := note.NewVerifier(key)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
