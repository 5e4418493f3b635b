package server_test

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"custody/hsm"
	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/compliance"
	"custody/internal/config/duration"
	"custody/internal/mfa"
	"custody/internal/orders"
	"custody/internal/orders/vaulttest"
	"custody/internal/policy"
	"custody/internal/server"
)

// complianceUser is the compliance team's Unix user (role compliance).
const complianceUser = "custody-t-compl"

// statusPolicy: sealing needs a clear sanctions screening; settlement
// needs KYC verified and sanctions clear; dispute needs a Swiss regulatory
// approval. root seals, decrypts and audits; the app user decrypts as
// miner-* for settlement; the compliance user sets status and nothing else.
const statusPolicy = `{
  "version": 1,
  "purposes": [
    {"name": "settlement", "fields": ["amount", "pricing"]},
    {"name": "dispute", "fields": ["*"]}
  ],
  "participant_status": {
    "seal": {"sanctions": "clear"},
    "purposes": [
      {"purpose": "settlement", "kyc": "verified", "sanctions": "clear"},
      {"purpose": "dispute", "regulatory_approval": ["CH"]}
    ]
  },
  "principals": [
    {"name": "operator", "users": ["root"], "roles": ["admin", "application", "auditor"],
     "act_as": [{"participants": ["client-*", "miner-*"], "purposes": ["settlement", "dispute"]}],
     "seal_for": [{"participants": ["*"]}]},
    {"name": "settlement-app", "users": ["custody-t-app"], "roles": ["application"],
     "act_as": [{"participants": ["miner-*"], "purposes": ["settlement"]}]},
    {"name": "compliance-team", "users": ["custody-t-compl"], "roles": ["compliance"]}
  ]
}`

// statusHarness is a daemon with participant status and court orders on a
// real Vault, and a token that counts device opens.
type statusHarness struct {
	*harness
	vault   *vaulttest.Server
	tok     *countingToken
	store   *compliance.Store
	ocfg    orders.Config
	signers []ed25519.PrivateKey
	intake  *orders.Intake
	miner   string // a participant id of this test's own (the shared Vault outlives it)
	exe     string // the test binary, for rawAs
}

func newStatusHarness(t *testing.T, vs *vaulttest.Server, ttl, stale time.Duration) *statusHarness {
	t.Helper()
	return newStatusHarnessDeps(t, vs, ttl, stale, nil)
}

// newStatusHarnessDeps is newStatusHarness that also copies the server's
// Deps into deps when not nil (the benchmark builds a second server).
func newStatusHarnessDeps(t testing.TB, vs *vaulttest.Server, ttl, stale time.Duration, deps *server.Deps) *statusHarness {
	t.Helper()
	return newStatusHarnessPolicy(t, vs, ttl, stale, statusPolicy, deps)
}

// newStatusHarnessPolicy is newStatusHarnessDeps with another policy, and
// a second-factor service on the harness's token and Vault (mfa_test.go).
func newStatusHarnessPolicy(t testing.TB, vs *vaulttest.Server, ttl, stale time.Duration, policyText string, deps *server.Deps) *statusHarness {
	t.Helper()
	sh := &statusHarness{vault: vs, miner: "miner-" + vaulttest.Random(4), exe: filepath.Join(binDir, "server.test")}
	sh.ocfg = orders.Config{Address: vs.Addr, Timeout: duration.Duration(500 * time.Millisecond), Quorum: 1}
	pub, k, _ := ed25519.GenerateKey(nil)
	sh.signers = append(sh.signers, k)
	sh.ocfg.Signers = []orders.Signer{{Name: "judge-a", PublicKey: base64.StdEncoding.EncodeToString(pub)}}
	sh.ocfg.TokenFile = vaulttest.TokenFile(t, vs.Token(t, "custodyd"))
	checker, err := orders.NewChecker(context.Background(), sh.ocfg, orders.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { checker.Close() })
	sh.store, err = compliance.NewStore(checker.KV(), compliance.Config{CacheTTL: duration.Duration(ttl), MaxStale: duration.Duration(stale)}, compliance.Options{})
	if err != nil {
		t.Fatal(err)
	}
	sh.intake = orders.NewIntake(vs.Client(t, vs.Token(t, "legal-intake")), orders.DefaultPaths)
	policyPath := filepath.Join(t.TempDir(), "status-policy.json")
	if err := os.WriteFile(policyPath, []byte(policyText), 0o644); err != nil {
		t.Fatal(err)
	}
	store, err := policy.NewStore(policyPath)
	if err != nil {
		t.Fatal(err)
	}
	sh.harness = newHarnessWith(t, func(d *server.Deps) {
		sh.tok = &countingToken{Token: d.Token, opens: map[string]int{}}
		raw := d.Token.(*hsm.Token)
		d.MFA = &mfa.Service{Keys: raw, Issuer: "custody", Verifier: mfa.Verifier{Device: raw, KV: checker.KV(), Path: "custody/mfa/" + vaulttest.Random(6), // each harness its own replay and lockout state: the clock is fixed
			IsConflict: func(err error) bool { return errors.Is(err, orders.ErrCASConflict) },
			NotFound:   func(err error) bool { return errors.Is(err, hsm.ErrNotFound) },
			IsExists:   func(err error) bool { return errors.Is(err, hsm.ErrExists) }}}
		d.Token, d.Policy, d.Orders, d.Status = sh.tok, store, checker, sh.store
		if deps != nil {
			*deps = *d // the device collaborators are filled in by the caller
		}
	})
	sh.register(sh.miner)
	return sh
}

// setStatus runs custodyctl participants status as the compliance user and
// returns its exit code and the error code it printed ("" on success).
func (sh *statusHarness) setStatus(id string, args ...string) (int, string) {
	sh.t.Helper()
	code, out, errOut := sh.ctlAs(complianceUser, "", append([]string{"participants", "status", id, "--reason", "periodic review", "--reference", "CASE-42"}, args...)...)
	if code == 0 && !strings.Contains(out, "status version") {
		sh.t.Fatalf("participants status %v: %q", args, out)
	}
	return code, cliCode(errOut)
}

// cliCode is the error code custodyctl printed ("custodyctl: CODE: …").
func cliCode(stderr string) string {
	rest, ok := strings.CutPrefix(stderr, "custodyctl: ")
	if !ok {
		return ""
	}
	code, _, _ := strings.Cut(rest, ":")
	return code
}

// decryptAs decrypts env as participant for purpose, as the Unix user
// name, through the socket; it returns the HTTP status and error code.
func (sh *statusHarness) decryptAs(name, env, as, purpose string) (int, string) {
	sh.t.Helper()
	body := fmt.Sprintf(`{"envelope":%q,"as":%q,"purpose":%q}`, env, as, purpose)
	return sh.rawAs(sh.t.(*testing.T), name, sh.exe, rawRequest{Method: "POST", Path: "/v1/transactions/decrypt", Body: body})
}

// sealFor encrypts for participants as root; "" or the error code.
func (sh *statusHarness) sealFor(txid string, participants ...string) (string, string) {
	sh.t.Helper()
	st, body := sh.call("POST", "/v1/transactions/encrypt", map[string]any{
		"transaction_id": txid, "job_id": "job-" + txid,
		"confidential": map[string]any{"amount": "1000", "pricing": "p", "iban": "DE00"},
		"participants": participants,
	})
	if st != 200 {
		return "", errCode(body)
	}
	return body["envelope"].(string), ""
}

// lastEntry is the last access-log entry of operation op.
func (sh *statusHarness) lastEntry(op string) auditlog.Entry {
	sh.rec.mu.Lock()
	defer sh.rec.mu.Unlock()
	for i := len(sh.rec.entries) - 1; i >= 0; i-- {
		if sh.rec.entries[i].Operation == op {
			return sh.rec.entries[i]
		}
	}
	return auditlog.Entry{}
}

// wantRefusal asserts the last decrypt or encrypt entry is a denial with code.
func (sh *statusHarness) wantEntry(op, participant, code string) {
	sh.t.Helper()
	e := sh.lastEntry(op)
	if e.Code != code || (code != "" && e.Outcome != auditlog.Denied) || (code == "" && e.Outcome != auditlog.Allowed) {
		sh.t.Fatalf("last %s entry: outcome %s code %q, want code %q: %+v", op, e.Outcome, e.Code, code, e)
	}
	if op == "decrypt" && e.Participant != participant {
		sh.t.Fatalf("last %s entry names %q, want %q", op, e.Participant, participant)
	}
}

// TestParticipantStatusTransitions walks one participant through every
// status transition and refusal code, with the compliance team's change
// through custodyctl as its own Unix user and the application's decrypts
// as its own Unix user over the socket. Each refusal is an access-log
// entry with its code, and the device is never asked for a refused open.
func TestParticipantStatusTransitions(t *testing.T) {
	sh := newStatusHarness(t, vaulttest.Shared(t), 50*time.Millisecond, time.Minute)
	m := sh.miner
	label := func() string {
		v, err := sh.keys.Active(m)
		if err != nil {
			t.Fatal(err)
		}
		return v.Label
	}()

	// No record: nothing met, not suspended. Sealing needs sanctions clear.
	if code, out, _ := sh.ctlAs(complianceUser, "", "participants", "status", m); code != 0 || !strings.Contains(out, "no status record (version 0)") {
		t.Fatalf("status of a new participant: %d %q", code, out)
	}
	if _, code := sh.sealFor("tx-s0", m); code != api.CodeSanctionsHit {
		t.Fatalf("seal without a screening: %q, want sanctions_hit", code)
	}
	sh.wantEntry("encrypt", "", api.CodeSanctionsHit)

	// Screened clear: sealing works; settlement still needs KYC.
	if code, ec := sh.setStatus(m, "--set", "sanctions=clear"); code != 0 {
		t.Fatalf("set sanctions: %d %s", code, ec)
	}
	e := sh.lastEntry("participant.status.set")
	if e.Outcome != auditlog.Allowed || e.Participant != m || e.Principal != "compliance-team" ||
		e.Detail != `version 0 -> 1; reason "periodic review"; reference "CASE-42"` {
		t.Fatalf("status change entry %+v", e)
	}
	env, code := sh.sealFor("tx-s1", m)
	if code != "" {
		t.Fatalf("seal after screening: %s", code)
	}
	sh.wantEntry("encrypt", "", "")
	opens := sh.tok.count(label)
	if st, code := sh.decryptAs(appUser, env, m, "settlement"); st != 403 || code != api.CodeKYCRequired {
		t.Fatalf("settlement without KYC: %d %s", st, code)
	}
	sh.wantEntry("decrypt", m, api.CodeKYCRequired)

	// KYC verified: settlement opens. Then the KYC expires (the daemon's
	// clock is 2026-11-25): refused again.
	sh.setStatus(m, "--set", "kyc=verified:2027-06-30")
	if st, code := sh.decryptAs(appUser, env, m, "settlement"); st != 200 {
		t.Fatalf("settlement with KYC: %d %s", st, code)
	}
	sh.wantEntry("decrypt", m, "")
	if sh.tok.count(label) != opens+1 {
		t.Fatalf("device opens %d, want %d", sh.tok.count(label), opens+1)
	}
	sh.setStatus(m, "--set", "kyc=verified:2026-11-01")
	if st, code := sh.decryptAs(appUser, env, m, "settlement"); st != 403 || code != api.CodeKYCRequired {
		t.Fatalf("settlement with an expired KYC: %d %s", st, code)
	}
	sh.setStatus(m, "--set", "kyc=pending")
	if st, code := sh.decryptAs(appUser, env, m, "settlement"); st != 403 || code != api.CodeKYCRequired {
		t.Fatalf("settlement with a pending KYC: %d %s", st, code)
	}
	sh.setStatus(m, "--set", "kyc=verified:2027-06-30")

	// A sanctions hit: neither settlement nor sealing.
	sh.setStatus(m, "--set", "sanctions=hit")
	if st, code := sh.decryptAs(appUser, env, m, "settlement"); st != 403 || code != api.CodeSanctionsHit {
		t.Fatalf("settlement with a hit: %d %s", st, code)
	}
	sh.wantEntry("decrypt", m, api.CodeSanctionsHit)
	if _, code := sh.sealFor("tx-s2", m); code != api.CodeSanctionsHit {
		t.Fatalf("seal with a hit: %q", code)
	}
	sh.setStatus(m, "--set", "sanctions=clear")

	// Dispute needs a Swiss approval: none, expired, another jurisdiction, valid.
	dispute := func() string {
		st, body := sh.call("POST", "/v1/transactions/decrypt", map[string]any{"envelope": env, "as": m, "purpose": "dispute"})
		if st == 200 {
			return ""
		}
		return errCode(body)
	}
	if c := dispute(); c != api.CodeApprovalExpired {
		t.Fatalf("dispute without an approval: %q", c)
	}
	sh.wantEntry("decrypt", m, api.CodeApprovalExpired)
	sh.setStatus(m, "--set", "approval=CH:FINMA-2026-114:2026-06-30")
	if c := dispute(); c != api.CodeApprovalExpired {
		t.Fatalf("dispute with an expired approval: %q", c)
	}
	sh.setStatus(m, "--set", "approval=DE:BaFin-7:2027-12-31")
	if c := dispute(); c != api.CodeApprovalExpired {
		t.Fatalf("dispute with a German approval: %q", c)
	}
	sh.setStatus(m, "--set", "approval=CH:FINMA-2026-114:2027-12-31")
	if c := dispute(); c != "" {
		t.Fatalf("dispute with a valid approval: %q", c)
	}

	// Suspended: refused for every purpose, for sealing too; the device is
	// not asked. An audit decrypt under a valid court order still opens.
	sh.setStatus(m, "--suspend", "fraud review pending")
	opens = sh.tok.count(label)
	if st, code := sh.decryptAs(appUser, env, m, "settlement"); st != 403 || code != api.CodeParticipantSuspended {
		t.Fatalf("settlement while suspended: %d %s", st, code)
	}
	sh.wantEntry("decrypt", m, api.CodeParticipantSuspended)
	if c := dispute(); c != api.CodeParticipantSuspended {
		t.Fatalf("dispute while suspended: %q", c)
	}
	if _, code := sh.sealFor("tx-s3", m); code != api.CodeParticipantSuspended {
		t.Fatalf("seal while suspended: %q", code)
	}
	if sh.tok.count(label) != opens {
		t.Fatal("the device opened a suspended participant's key")
	}
	o := sh.order("tx-s1")
	if st, body := sh.call("POST", "/v1/audit/decrypt", map[string]any{"envelope": env, "authorization": o.ID, "purpose": o.Purpose}); st != 200 {
		t.Fatalf("audit decrypt of a suspended participant's transaction under a valid order: %d %v", st, body)
	}
	// The application cannot lift the suspension, nor can an unknown user.
	put := rawRequest{Method: "PUT", Path: "/v1/participants/" + m + "/status", Body: `{"version":9,"status":{},"reason":"lift","reference":"x"}`}
	if st, code := sh.rawAs(t, appUser, sh.exe, put); st != 403 || code != api.CodePermissionDenied {
		t.Fatalf("application sets status: %d %s", st, code)
	}
	if st, code := sh.rawAs(t, otherUser, sh.exe, put); st != 403 || code != api.CodeUnknownCaller {
		t.Fatalf("unknown user sets status: %d %s", st, code)
	}
	// The compliance team cannot read transactions.
	if st, code := sh.rawAs(t, complianceUser, sh.exe, rawRequest{Method: "POST", Path: "/v1/transactions/decrypt",
		Body: fmt.Sprintf(`{"envelope":%q,"as":%q,"purpose":"settlement"}`, env, m)}); st != 403 || code != api.CodePermissionDenied {
		t.Fatalf("compliance decrypts: %d %s", st, code)
	}

	// Lifted: settlement opens again.
	sh.setStatus(m, "--lift-suspension")
	if st, code := sh.decryptAs(appUser, env, m, "settlement"); st != 200 {
		t.Fatalf("settlement after the suspension was lifted: %d %s", st, code)
	}
	// The record the compliance team reads back.
	rc, out, _ := sh.ctlAs(complianceUser, "", "--json", "participants", "status", m)
	if rc != 0 || !strings.Contains(out, `"by": "compliance-team"`) || !strings.Contains(out, `"version": 12`) {
		t.Fatalf("status read back: %d %s", rc, out)
	}
}

// order issues a court order for txid naming root's principal, signed by
// the one pinned signer.
func (sh *statusHarness) order(txid string) *orders.Order {
	sh.t.Helper()
	return sh.orderFor(txid, "operator")
}

// orderFor is order naming another auditor principal.
func (sh *statusHarness) orderFor(txid, auditor string) *orders.Order {
	sh.t.Helper()
	id := "order-" + vaulttest.Random(6)
	wall := time.Now().UTC().Truncate(time.Second)
	o := &orders.Order{Version: orders.FormatVersion, ID: id, Auditor: auditor, Scope: orders.Scope{Transactions: []string{txid}},
		Purpose: "tax-investigation", DocumentSHA256: fmt.Sprintf("%x", sha256.Sum256([]byte(id))), Authority: "District Court Example",
		NotBefore: wall.Add(-time.Hour), NotAfter: wall.Add(time.Hour), MaxUses: 5}
	ctx := context.Background()
	if _, err := sh.intake.Create(ctx, o); err != nil {
		sh.t.Fatal(err)
	}
	if _, err := sh.intake.Sign(ctx, o.ID, "judge-a", sh.signers[0], o.BodySHA256()); err != nil {
		sh.t.Fatal(err)
	}
	return o
}

// TestStatusTwoReviewers: two compliance reviewers read version 1; the
// first change wins, the second names version 1 and gets status_conflict
// (through the socket, as the compliance user), and nothing it sent lands.
// custodyctl --version refuses on its own when the version moved.
func TestStatusTwoReviewers(t *testing.T) {
	sh := newStatusHarness(t, vaulttest.Shared(t), 50*time.Millisecond, time.Minute)
	m := sh.miner
	sh.setStatus(m, "--set", "sanctions=clear")
	sh.setStatus(m, "--set", "kyc=verified:2027-06-30")
	put := func(status string) (int, string) {
		return sh.rawAs(t, complianceUser, sh.exe, rawRequest{Method: "PUT", Path: "/v1/participants/" + m + "/status",
			Body: `{"version":2,"status":` + status + `,"reason":"second look","reference":"CASE-43"}`})
	}
	if st, code := put(`{"sanctions":"hit"}`); st != 200 {
		t.Fatalf("first reviewer: %d %s", st, code)
	}
	if st, code := put(`{"sanctions":"clear","suspended":true,"suspended_reason":"x"}`); st != 409 || code != api.CodeStatusConflict {
		t.Fatalf("second reviewer on the same version: %d %s", st, code)
	}
	e := sh.lastEntry("participant.status.set")
	if e.Outcome != auditlog.Failed || e.Code != api.CodeStatusConflict || !strings.HasPrefix(e.Detail, "version 2 -> ?") {
		t.Fatalf("conflict entry %+v", e)
	}
	doc, v, err := sh.store.Get(context.Background(), m)
	if err != nil || v != 3 || doc.Status.Sanctions != compliance.SanctionsHit || doc.Status.Suspended {
		t.Fatalf("after the conflict: v%d %+v %v", v, doc, err)
	}
	if code, ec := sh.setStatus(m, "--version", "2", "--set", "sanctions=clear"); code != 1 || ec != api.CodeStatusConflict {
		t.Fatalf("custodyctl --version 2 at version 3: %d %q", code, ec)
	}
	// Bad records lose nothing.
	if st, code := put(`{"sanctions":"maybe"}`); st != 400 || code != api.CodeBadRequest {
		t.Fatalf("bad record: %d %s", st, code)
	}
	if _, v, _ := sh.store.Get(context.Background(), m); v != 3 {
		t.Fatalf("a refused change wrote version %d", v)
	}
}

// TestStatusFailsClosedWhenVaultDown: Vault sealed, then stopped. Within
// participant_status.max_stale the daemon decides on its cached copy
// (a suspension stays a suspension); after it, every decrypt and seal for
// the participant is refused with status_unavailable (an entry, no device
// open), a participant never read is refused at once, and once Vault is
// back the checks answer again without a restart.
func TestStatusFailsClosedWhenVaultDown(t *testing.T) {
	vs := vaulttest.Private(t)
	const stale = 4 * time.Second
	sh := newStatusHarness(t, vs, 100*time.Millisecond, stale)
	m := sh.miner
	sh.setStatus(m, "--set", "sanctions=clear", "--set", "kyc=verified:2027-06-30")
	env, code := sh.sealFor("tx-v1", m)
	if code != "" {
		t.Fatal(code)
	}
	other := "miner-" + vaulttest.Random(4)
	sh.register(other)
	if st, code := sh.decryptAs(appUser, env, m, "settlement"); st != 200 {
		t.Fatalf("before: %d %s", st, code)
	}
	readAt := time.Now()
	vs.Seal(t)
	if st, code := sh.decryptAs(appUser, env, m, "settlement"); st != 200 {
		t.Fatalf("Vault sealed, copy %s old (max_stale %s): %d %s", time.Since(readAt), stale, st, code)
	}
	if time.Since(readAt) > stale/2 {
		t.Fatalf("too slow for max_stale %s: %s", stale, time.Since(readAt))
	}
	if _, code := sh.sealFor("tx-v2", other); code != api.CodeStatusUnavailable {
		t.Fatalf("sealing for a participant never read, Vault sealed: %q", code)
	}
	time.Sleep(stale - time.Since(readAt) + 200*time.Millisecond)
	label, _ := sh.keys.Active(m)
	opens := sh.tok.count(label.Label)
	if st, code := sh.decryptAs(appUser, env, m, "settlement"); st != 503 || code != api.CodeStatusUnavailable {
		t.Fatalf("after max_stale with Vault sealed: %d %s", st, code)
	}
	sh.wantEntry("decrypt", m, api.CodeStatusUnavailable)
	if sh.tok.count(label.Label) != opens {
		t.Fatal("the device was asked while the status was unknown")
	}
	if _, code := sh.sealFor("tx-v3", m); code != api.CodeStatusUnavailable {
		t.Fatalf("seal after max_stale: %q", code)
	}
	vs.Unseal(t)
	if st, code := sh.decryptAs(appUser, env, m, "settlement"); st != 200 {
		t.Fatalf("after unseal: %d %s", st, code)
	}
	// Stopped outright (connection refused): the same.
	vs.Stop()
	time.Sleep(stale + 200*time.Millisecond)
	if st, code := sh.decryptAs(appUser, env, m, "settlement"); st != 503 || code != api.CodeStatusUnavailable {
		t.Fatalf("after max_stale with Vault stopped: %d %s", st, code)
	}
}

// TestStatusDeletedInVault: someone with Vault access (not custodyd's
// policy, which cannot delete) deletes the current version to lift a
// suspension unseen: the daemon refuses with status_unavailable until the
// compliance team writes a new version.
func TestStatusDeletedInVault(t *testing.T) {
	vs := vaulttest.Shared(t)
	sh := newStatusHarness(t, vs, 20*time.Millisecond, time.Minute)
	m := sh.miner
	sh.setStatus(m, "--set", "sanctions=clear", "--set", "kyc=verified:2027-06-30")
	env, scode := sh.sealFor("tx-d1", m)
	if env == "" {
		t.Fatalf("seal: %s", scode)
	}
	sh.setStatus(m, "--suspend", "fraud review")
	// custodyd's own token cannot delete.
	if _, err := vs.Client(t, vs.Token(t, "custodyd")).Logical().Delete("secret/data/custody/participants/" + m); err == nil {
		t.Fatal("custodyd's Vault policy allows deleting a status record")
	}
	if _, err := vs.Root(t).Logical().Delete("secret/data/custody/participants/" + m); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if st, code := sh.decryptAs(appUser, env, m, "settlement"); st != 503 || code != api.CodeStatusUnavailable {
		t.Fatalf("after the current version was deleted: %d %s (the suspension must not lapse)", st, code)
	}
	code, out, _ := sh.ctlAs(complianceUser, "", "participants", "status", m)
	if code != 0 || !strings.Contains(out, "REFUSED") {
		t.Fatalf("status of a deleted record: %d %q", code, out)
	}
	sh.setStatus(m, "--set", "sanctions=clear", "--set", "kyc=verified:2027-06-30")
	if st, code := sh.decryptAs(appUser, env, m, "settlement"); st != 200 {
		t.Fatalf("after a new version: %d %s", st, code)
	}
}

// TestStatusOff: without a StatusStore (no vault section), health says the
// checks are off and the status routes answer status_unavailable; with one,
// health says on.
func TestStatusOff(t *testing.T) {
	h := newHarness(t)
	st, body := h.call("GET", "/v1/health", nil)
	if st != 200 || !strings.HasPrefix(body["participant_status"].(string), "off:") {
		t.Fatalf("health: %d %v", st, body)
	}
	sh := newStatusHarness(t, vaulttest.Shared(t), time.Second, time.Minute)
	_, body = sh.call("GET", "/v1/health", nil)
	if s, _ := body["participant_status"].(string); !strings.HasPrefix(s, "on:") {
		t.Fatalf("health with status: %v", body["participant_status"])
	}
	code, _, errOut := sh.ctlAs(complianceUser, "", "participants", "status", "miner-1")
	if code != 0 {
		t.Fatalf("status read: %s", errOut)
	}
	// testPolicy's root is admin, which may read status: refused because it is off.
	if st, body := h.call("GET", "/v1/participants/miner-1/status", nil); st != 503 || errCode(body) != api.CodeStatusUnavailable {
		t.Fatalf("status off: %d %v", st, body)
	}
}
