package server_test

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"custody/hsm"
	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/config/duration"
	"custody/internal/mfa"
	"custody/internal/orders"
	"custody/internal/orders/vaulttest"
	"custody/internal/server"
)

// The Unix users of the second-factor tests (created by TestMain): a
// second admin, and an auditor whose every request needs a factor.
const (
	mfaAdminUser = "custody-t-adm2"
	auditorUser  = "custody-t-aud"
)

// mfaRoutePolicy asks for a second factor per operation for every
// principal (key rotations), per principal and purpose (settlement-app's
// settlement decrypts) and per principal for everything it does
// (auditor). root (operator) seals, decrypts, audits and administers;
// mfa-admin is a second admin.
const mfaRoutePolicy = `{
  "version": 1,
  "purposes": [
    {"name": "settlement", "fields": ["amount", "pricing"]},
    {"name": "dispute", "fields": ["*"]}
  ],
  "second_factor": {
    "operations": ["key.rotate"],
    "principals": [
      {"principal": "settlement-app", "decrypt_purposes": ["settlement"]},
      {"principal": "auditor", "operations": ["*"]}
    ]
  },
  "principals": [
    {"name": "operator", "users": ["root"], "roles": ["admin", "application", "auditor"],
     "act_as": [{"participants": ["client-*", "miner-*"], "purposes": ["settlement", "dispute"]}],
     "seal_for": [{"participants": ["*"]}]},
    {"name": "settlement-app", "users": ["custody-t-app"], "roles": ["application"],
     "act_as": [{"participants": ["miner-*"], "purposes": ["settlement"]}]},
    {"name": "compliance-team", "users": ["custody-t-compl"], "roles": ["compliance"]},
    {"name": "mfa-admin", "users": ["custody-t-adm2"], "roles": ["admin"]},
    {"name": "auditor", "users": ["custody-t-aud"], "roles": ["auditor"]}
  ]
}`

// total is every device open counted.
func (c *countingToken) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.opens {
		n += v
	}
	return n
}

// enrollRoot enrolls principal as root (operator, admin) and returns the URI.
func (sh *statusHarness) enrollRoot(principal string) string {
	sh.t.Helper()
	st, body := sh.call("POST", "/v1/mfa/principals", map[string]any{"principal": principal})
	if st != 200 {
		sh.t.Fatalf("enroll %s: %d %v", principal, st, body)
	}
	return body["uri"].(string)
}

// envFile writes env where the test users can read it.
func (sh *statusHarness) envFile(env string) string {
	sh.t.Helper()
	p := filepath.Join(sh.dir, fmt.Sprintf("env-%d.txt", time.Now().UnixNano()))
	if err := os.WriteFile(p, []byte(env), 0o644); err != nil {
		sh.t.Fatal(err)
	}
	return p
}

// activeVersion is participant id's active key version.
func (sh *statusHarness) activeVersion(id string) uint32 {
	sh.t.Helper()
	st, err := sh.keys.Status(id, sh.now)
	if err != nil {
		sh.t.Fatal(err)
	}
	return st.Active
}

func totpHeader(code string) map[string]string { return map[string]string{api.HeaderTOTP: code} }

// TestSecondFactorPerPrincipalAndRoute: the policy's requirements per
// principal, per purpose and per operation, each performed through the
// socket as the principal's own Unix user.
//
//   - settlement-app's settlement decrypt without a code: mfa_required,
//     the device not asked; root's same decrypt needs none (the
//     requirement is settlement-app's); with the code (custodyctl
//     --totp-stdin as custody-t-app) it opens.
//   - key.rotate needs a factor for every principal, root included: no
//     code is mfa_required and no version is made; with root's code it
//     rotates.
//   - auditor needs a factor for every operation ("*"): its audit decrypt
//     without one is mfa_required before the court order (no escrow
//     open); health and its own self-enrollment need none; the pending
//     self-enrollment's code satisfies nothing (mfa_required) until
//     another admin confirms it; then the code opens.
func TestSecondFactorPerPrincipalAndRoute(t *testing.T) {
	sh := newStatusHarnessPolicy(t, vaulttest.Shared(t), 50*time.Millisecond, time.Minute, mfaRoutePolicy, nil)
	m := sh.miner
	env, code := sh.sealFor("tx-r1", m)
	if code != "" {
		t.Fatal(code)
	}

	// Per principal and purpose.
	if st, c := sh.decryptAs(appUser, env, m, "settlement"); st != http.StatusForbidden || c != api.CodeMFARequired {
		t.Fatalf("app decrypt without a code: %d %s", st, c)
	}
	sh.wantEntry("decrypt", m, api.CodeMFARequired)
	if n := sh.tok.total(); n != 0 {
		t.Fatalf("%d device opens for a refused factor", n)
	}
	if st, body := sh.call("POST", "/v1/transactions/decrypt", map[string]any{"envelope": env, "as": m, "purpose": "settlement"}); st != 200 {
		t.Fatalf("root's settlement decrypt needs no factor: %d %v", st, body)
	}
	appURI := sh.enrollRoot("settlement-app")
	f := sh.envFile(env)
	if exit, out, errOut := sh.ctlAs(appUser, softTOTP(t, appURI, sh.now)+"\n", "--totp-stdin", "decrypt", "--envelope-file", f, "--as", m, "--purpose", "settlement"); exit != 0 || !strings.Contains(out, "1000") {
		t.Fatalf("app decrypt with its code: exit %d %s %s", exit, out, errOut)
	}

	// Per operation, every principal.
	if st, body := sh.call("POST", "/v1/keys/"+m+"/rotate", nil); st != http.StatusForbidden || errCode(body) != api.CodeMFARequired {
		t.Fatalf("rotate without a code: %d %v", st, body)
	}
	if e := sh.lastEntry("key.rotate"); e.Outcome != auditlog.Denied || e.Code != api.CodeMFARequired {
		t.Fatalf("rotate entry %+v", e)
	}
	if v := sh.activeVersion(m); v != 1 {
		t.Fatalf("a refused rotation made version %d", v)
	}
	rootURI := sh.enrollRoot("operator")
	if st, body := sh.callRawHeaders(rawRequest{Method: "POST", Path: "/v1/keys/" + m + "/rotate", Headers: totpHeader(softTOTP(t, rootURI, sh.now))}); st != 200 {
		t.Fatalf("rotate with root's code: %d %v", st, body)
	}
	if v := sh.activeVersion(m); v != 2 {
		t.Fatalf("active version %d after rotation", v)
	}

	// Every operation of one principal ("*").
	esc, _ := sh.keys.Escrow()
	o := sh.orderFor("tx-r1", "auditor")
	auditBody := fmt.Sprintf(`{"envelope":%q,"authorization":%q,"purpose":%q}`, env, o.ID, o.Purpose)
	if st, c := sh.rawAs(t, auditorUser, sh.exe, rawRequest{Method: "POST", Path: "/v1/audit/decrypt", Body: auditBody}); st != http.StatusForbidden || c != api.CodeMFARequired {
		t.Fatalf("auditor without a code: %d %s", st, c)
	}
	if e := sh.lastEntry("audit-decrypt"); e.Outcome != auditlog.Denied || e.Code != api.CodeMFARequired || e.Principal != "auditor" {
		t.Fatalf("audit entry %+v", e)
	}
	if st, c := sh.rawAs(t, auditorUser, sh.exe, rawRequest{Method: "GET", Path: "/v1/health"}); st != 200 {
		t.Fatalf("health needs no factor: %d %s", st, c)
	}
	exit, out, errOut := sh.ctlAs(auditorUser, "", "--json", "mfa", "enroll", "--self")
	var self api.MFAEnrolled
	if exit != 0 || json.Unmarshal([]byte(out), &self) != nil || !self.Pending || self.Enrollment == "" || self.Principal != "auditor" {
		t.Fatalf("auditor self-enrollment (needs no factor): exit %d %s %s", exit, out, errOut)
	}
	if e := sh.lastEntry("mfa.self-enroll"); e.Outcome != auditlog.Allowed || strings.Contains(e.Detail, "otpauth") || !strings.Contains(e.Detail, self.Enrollment) {
		t.Fatalf("self-enroll entry %+v", e)
	}
	audit := func(code string) (int, string) {
		return sh.rawAs(t, auditorUser, sh.exe, rawRequest{Method: "POST", Path: "/v1/audit/decrypt", Body: auditBody, Headers: totpHeader(code)})
	}
	if st, c := audit(softTOTP(t, self.URI, sh.now)); st != http.StatusForbidden || c != api.CodeMFARequired {
		t.Fatalf("the pending factor's code: %d %s, want mfa_required", st, c)
	}
	if n := sh.tok.count(esc.Label); n != 0 {
		t.Fatalf("%d escrow opens before a factor was accepted", n)
	}
	if exit, out, errOut := sh.ctlAs(mfaAdminUser, "", "mfa", "confirm", "auditor", "--enrollment", self.Enrollment); exit != 0 || !strings.Contains(out, "confirmed by mfa-admin") {
		t.Fatalf("confirm by mfa-admin: exit %d %s %s", exit, out, errOut)
	}
	if st, c := audit(softTOTP(t, self.URI, sh.now)); st != 200 {
		t.Fatalf("the confirmed factor's code: %d %s", st, c)
	}
	if n := sh.tok.count(esc.Label); n != 1 {
		t.Fatalf("%d escrow opens, want 1", n)
	}
}

// TestSecondFactorSelfEnrollConfirm: mfa-admin (an admin) enrolls itself
// through custodyctl as its own Unix user and gets the URI, a QR code of
// it and an enrollment id. The attacks, each as the attacker's own user:
// it confirms its own enrollment (mfa_self_confirm, still pending); an
// application confirms it (permission_denied); someone with its account
// starts another self-enrollment to replace the pending one
// (mfa_enrolled); its pending factor's code on a rotation the policy
// guards (mfa_required, no new version); root confirms another id
// (mfa_not_enrolled). Root confirming the right id makes the same code
// work.
func TestSecondFactorSelfEnrollConfirm(t *testing.T) {
	sh := newStatusHarnessPolicy(t, vaulttest.Shared(t), 50*time.Millisecond, time.Minute, mfaRoutePolicy, nil)
	m := sh.miner
	exit, out, errOut := sh.ctlAs(mfaAdminUser, "", "mfa", "enroll", "--self")
	if exit != 0 {
		t.Fatalf("self-enroll: exit %d %s", exit, errOut)
	}
	uri := regexp.MustCompile(`(?m)^  (otpauth://\S+)$`).FindStringSubmatch(out)
	id := regexp.MustCompile(`Enrollment id: ([A-Z2-7]{4}-[A-Z2-7]{4})`).FindStringSubmatch(out)
	if uri == nil || id == nil || !strings.HasPrefix(uri[1], "otpauth://totp/custody:mfa-admin?") {
		t.Fatalf("self-enroll output: %s", out)
	}
	if got := decodeTerminalQR(t, out); got != uri[1] {
		t.Fatalf("the QR code reads %q, want the URI %q", got, uri[1])
	}
	wantList := func(want string) {
		t.Helper()
		st, raw := sh.callRaw("GET", "/v1/mfa/principals", nil)
		if st != 200 || strings.Contains(string(raw), "secret") || strings.Contains(string(raw), "otpauth") {
			t.Fatalf("list: %d %s", st, raw)
		}
		var l api.MFAList
		json.Unmarshal(raw, &l)
		got := []string{}
		for _, e := range l.Enrollments {
			got = append(got, e.Principal+":"+e.State+":"+e.Enrollment)
		}
		if strings.Join(got, " ") != want {
			t.Fatalf("list %q, want %q", got, want)
		}
	}
	wantList("mfa-admin:pending:" + id[1])

	if exit, _, errOut := sh.ctlAs(mfaAdminUser, "", "mfa", "confirm", "mfa-admin", "--enrollment", id[1]); exit != 1 || cliCode(errOut) != api.CodeMFASelfConfirm {
		t.Fatalf("self-confirm: exit %d %s", exit, errOut)
	}
	if e := sh.lastEntry("mfa.confirm"); e.Outcome != auditlog.Denied || e.Code != api.CodeMFASelfConfirm || e.Principal != "mfa-admin" {
		t.Fatalf("self-confirm entry %+v", e)
	}
	confirm := fmt.Sprintf(`{"enrollment":%q}`, id[1])
	if st, c := sh.rawAs(t, appUser, sh.exe, rawRequest{Method: "POST", Path: "/v1/mfa/principals/mfa-admin/confirm", Body: confirm}); st != http.StatusForbidden || c != api.CodePermissionDenied {
		t.Fatalf("application confirms: %d %s", st, c)
	}
	if exit, _, errOut := sh.ctlAs(mfaAdminUser, "", "mfa", "enroll", "--self"); exit != 1 || cliCode(errOut) != api.CodeMFAEnrolled {
		t.Fatalf("second self-enrollment over a pending one: exit %d %s", exit, errOut)
	}
	wantList("mfa-admin:pending:" + id[1])
	rotate := func(code string) (int, string) {
		return sh.rawAs(t, mfaAdminUser, sh.exe, rawRequest{Method: "POST", Path: "/v1/keys/" + m + "/rotate", Headers: totpHeader(code)})
	}
	if st, c := rotate(softTOTP(t, uri[1], sh.now)); st != http.StatusForbidden || c != api.CodeMFARequired {
		t.Fatalf("rotate with the pending factor's code: %d %s", st, c)
	}
	if v := sh.activeVersion(m); v != 1 {
		t.Fatalf("version %d after a refused rotation", v)
	}
	other := "AAAA-AAAA"
	if id[1] == other {
		other = "BBBB-BBBB"
	}
	if st, body := sh.call("POST", "/v1/mfa/principals/mfa-admin/confirm", map[string]string{"enrollment": other}); st != http.StatusNotFound || errCode(body) != api.CodeMFANotEnrolled {
		t.Fatalf("confirm another id: %d %v", st, body)
	}
	if st, body := sh.call("POST", "/v1/mfa/principals/mfa-admin/confirm", map[string]string{"enrollment": id[1]}); st != 200 || body["confirmed_by"] != "operator" {
		t.Fatalf("confirm by root: %d %v", st, body)
	}
	wantList("mfa-admin:active:")
	if st, c := rotate(softTOTP(t, uri[1], sh.now)); st != 200 {
		t.Fatalf("rotate with the confirmed factor's code: %d %s", st, c)
	}
	if v := sh.activeVersion(m); v != 2 {
		t.Fatalf("version %d after rotation", v)
	}
}

// TestSecondFactorListRevokeReenroll: mfa list (custodyctl as the second
// admin) names who is enrolled and never a seed; an application cannot
// list; revoke stops the principal's codes at once (mfa_required);
// re-enrolling gives a new seed, the old seed's codes are mfa_invalid and
// the new one's open.
func TestSecondFactorListRevokeReenroll(t *testing.T) {
	sh := newStatusHarnessPolicy(t, vaulttest.Shared(t), 50*time.Millisecond, time.Minute, mfaRoutePolicy, nil)
	m := sh.miner
	env, code := sh.sealFor("tx-l1", m)
	if code != "" {
		t.Fatal(code)
	}
	uri1 := sh.enrollRoot("settlement-app")
	list := func() string {
		t.Helper()
		exit, out, errOut := sh.ctlAs(mfaAdminUser, "", "mfa", "list")
		if exit != 0 || strings.Contains(out, "secret") || strings.Contains(out, "otpauth") {
			t.Fatalf("mfa list: exit %d %s %s", exit, out, errOut)
		}
		return out
	}
	if out := list(); !regexp.MustCompile(`(?m)^settlement-app +active$`).MatchString(out) {
		t.Fatalf("mfa list: %s", out)
	}
	if st, c := sh.rawAs(t, appUser, sh.exe, rawRequest{Method: "GET", Path: "/v1/mfa/principals"}); st != http.StatusForbidden || c != api.CodePermissionDenied {
		t.Fatalf("application lists: %d %s", st, c)
	}
	decrypt := func(code string) (int, string) {
		body := fmt.Sprintf(`{"envelope":%q,"as":%q,"purpose":"settlement"}`, env, m)
		return sh.rawAs(t, appUser, sh.exe, rawRequest{Method: "POST", Path: "/v1/transactions/decrypt", Body: body, Headers: totpHeader(code)})
	}
	if st, c := decrypt(softTOTP(t, uri1, sh.now.Add(-30*time.Second))); st != 200 {
		t.Fatalf("decrypt with the first seed: %d %s", st, c)
	}
	if exit, _, errOut := sh.ctlAs(mfaAdminUser, "", "mfa", "revoke", "settlement-app"); exit != 0 {
		t.Fatalf("revoke: %s", errOut)
	}
	if e := sh.lastEntry("mfa.revoke"); e.Outcome != auditlog.Allowed || e.Principal != "mfa-admin" || e.Detail != "principal settlement-app" {
		t.Fatalf("revoke entry %+v", e)
	}
	if st, c := decrypt(softTOTP(t, uri1, sh.now)); st != http.StatusForbidden || c != api.CodeMFARequired {
		t.Fatalf("after revoke: %d %s", st, c)
	}
	if exit, _, errOut := sh.ctlAs(mfaAdminUser, "", "mfa", "revoke", "settlement-app"); exit != 1 || cliCode(errOut) != api.CodeMFANotEnrolled {
		t.Fatalf("revoke twice: exit %d %s", exit, errOut)
	}
	if out := list(); strings.Contains(out, "settlement-app") {
		t.Fatalf("list after revoke: %s", out)
	}
	uri2 := sh.enrollRoot("settlement-app")
	if secret(t, uri1) == secret(t, uri2) {
		t.Fatal("re-enrollment kept the seed")
	}
	old, fresh := softTOTP(t, uri1, sh.now), softTOTP(t, uri2, sh.now)
	if old != fresh { // one in a million they coincide
		if st, c := decrypt(old); st != http.StatusForbidden || c != api.CodeMFAInvalid {
			t.Fatalf("the old seed's code after re-enrollment: %d %s", st, c)
		}
	}
	if st, c := decrypt(fresh); st != 200 {
		t.Fatalf("the new seed's code: %d %s", st, c)
	}
}

func secret(t *testing.T, uri string) string {
	t.Helper()
	m := regexp.MustCompile(`[?&]secret=([A-Z2-7]+)`).FindStringSubmatch(uri)
	if m == nil {
		t.Fatalf("no secret in %s", uri)
	}
	return m[1]
}

// TestSecondFactorCeremonyApproval: with second_factor operations
// ["ceremony.approve"], officers (each their own principal and Unix user)
// approve a genesis request only with their own current code. The
// attacks: an approval without a code (mfa_required, no approval
// recorded), with another officer's code while not enrolled
// (mfa_required), with another officer's code once enrolled
// (mfa_invalid), and the same code replayed on the next request
// (mfa_invalid). With the codes the request is approved and executes. An
// officer whose every request needs a factor approves with one code
// (custodyctl's two requests share its connection), and that code is a
// replay on any other connection.
func TestSecondFactorCeremonyApproval(t *testing.T) {
	kits, officersFile := newOfficerKits(t)
	var pr []string
	for i := 1; i <= 6; i++ {
		pr = append(pr, fmt.Sprintf(`{"name": "officer-%d", "users": ["custody-o%d"], "roles": ["officer"]}`, i, i))
	}
	pol := strings.Replace(auditPolicy, `"principals": [`, `"second_factor": {"operations": ["ceremony.approve"], "principals": [{"principal": "officer-4", "operations": ["*"]}]},
  "principals": [`+strings.Join(pr, ",\n")+",", 1)
	vs := vaulttest.Shared(t)
	ocfg := orders.Config{Address: vs.Addr, Timeout: duration.Duration(500 * time.Millisecond), Quorum: 1,
		TokenFile: vaulttest.TokenFile(t, vs.Token(t, "custodyd"))}
	pub, _, _ := ed25519.GenerateKey(nil) // pinned but unused: no audit decrypt here
	ocfg.Signers = []orders.Signer{{Name: "judge-a", PublicKey: base64.StdEncoding.EncodeToString(pub)}}
	checker, err := orders.NewChecker(context.Background(), ocfg, orders.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { checker.Close() })
	a := newCeremonyHarnessOpts(t, kits, officersFile, ceremonyOpts{policy: pol, adjust: func(d *server.Deps) {
		tok := d.Token.(*hsm.Token)
		d.MFA = &mfa.Service{Keys: tok, Issuer: "custody", Verifier: mfa.Verifier{Device: tok, KV: checker.KV(), Path: "custody/mfa/" + vaulttest.Random(6),
			IsConflict: func(err error) bool { return errors.Is(err, orders.ErrCASConflict) },
			NotFound:   func(err error) bool { return errors.Is(err, hsm.ErrNotFound) },
			IsExists:   func(err error) bool { return errors.Is(err, hsm.ErrExists) }}}
	}})
	o := func(i int) string { return kits[i-1].user }
	now := a.clock.now()
	enroll := func(principal string) string {
		st, body := a.call("POST", "/v1/mfa/principals", map[string]any{"principal": principal})
		if st != 200 {
			t.Fatalf("enroll %s: %d %v", principal, st, body)
		}
		return body["uri"].(string)
	}
	approvals := func(id string) int {
		p, err := a.cer.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		return len(p.Approvals)
	}
	g := a.request(o(1), nil, "genesis", "--m", "2")
	approve := func(user, code string, r reqOut) (int, string) {
		stdin, args := "", []string{"ceremony", "approve", r.ID, "--hash", r.Hash}
		if code != "" {
			stdin, args = code+"\n", append([]string{"--totp-stdin"}, args...)
		}
		exit, _, errOut := a.ctlAs(user, stdin, args...)
		return exit, cliCode(errOut)
	}
	if exit, c := approve(o(2), "", g); exit != 1 || c != api.CodeMFARequired {
		t.Fatalf("approve without a code: exit %d %s", exit, c)
	}
	if e := a.rec.last(); e.Operation != "ceremony.approve" || e.Outcome != auditlog.Denied || e.Code != api.CodeMFARequired {
		t.Fatalf("entry %+v", e)
	}
	uri2 := enroll("officer-2")
	if exit, c := approve(o(3), softTOTP(t, uri2, now), g); exit != 1 || c != api.CodeMFARequired {
		t.Fatalf("officer 3, not enrolled, with officer 2's code: exit %d %s", exit, c)
	}
	if n := approvals(g.ID); n != 0 {
		t.Fatalf("%d approvals recorded without a factor", n)
	}
	uri3 := enroll("officer-3")
	if exit, c := approve(o(3), softTOTP(t, uri2, now), g); exit != 1 || (c != api.CodeMFAInvalid && softTOTP(t, uri2, now) != softTOTP(t, uri3, now)) {
		t.Fatalf("officer 3 with officer 2's code: exit %d %s", exit, c)
	}
	code2 := softTOTP(t, uri2, now)
	if exit, c := approve(o(2), code2, g); exit != 0 {
		t.Fatalf("officer 2 with its code: exit %d %s", exit, c)
	}
	if exit, c := approve(o(3), softTOTP(t, uri3, now), g); exit != 0 {
		t.Fatalf("officer 3 with its code: exit %d %s", exit, c)
	}
	if n := approvals(g.ID); n != 2 {
		t.Fatalf("%d approvals, want 2", n)
	}
	a.ctl(o(1), "ceremony", "genesis") // executing needs no factor here
	r := a.request(o(1), nil, "rotate", "--m", "2")
	if exit, c := approve(o(2), code2, r); exit != 1 || c != api.CodeMFAInvalid {
		t.Fatalf("officer 2's code replayed on the next request: exit %d %s", exit, c)
	}
	if n := approvals(r.ID); n != 0 {
		t.Fatalf("%d approvals after a replayed code", n)
	}
	// officer-4 needs a factor for everything ("*"): custodyctl ceremony
	// approve reads the request, then approves it, two guarded requests on
	// one connection with the one code typed. The same code on another
	// connection (another custodyctl) is a replay.
	uri4 := enroll("officer-4")
	if exit, c := approve(o(4), "", r); exit != 1 || c != api.CodeMFARequired {
		t.Fatalf("officer 4 without a code: exit %d %s", exit, c)
	}
	code4 := softTOTP(t, uri4, now)
	if exit, c := approve(o(4), code4, r); exit != 0 {
		t.Fatalf("officer 4 with its code (show, then approve): exit %d %s", exit, c)
	}
	if n := approvals(r.ID); n != 1 {
		t.Fatalf("%d approvals, want 1", n)
	}
	if exit, _, errOut := a.ctlAs(o(4), code4+"\n", "--totp-stdin", "ceremony", "status"); exit != 1 || cliCode(errOut) != api.CodeMFAInvalid {
		t.Fatalf("officer 4's code on another connection: exit %d %s", exit, errOut)
	}
}

// decodeTerminalQR reads the QR code custodyctl drew in out (half blocks:
// '█' two light modules, '▀' light above dark, '▄' dark above light, ' '
// two dark), renders it as a PNG of 8-pixel modules and has zbarimg (the
// ZBar bar code reader, installed by scripts/deps.sh test) decode it.
func decodeTerminalQR(t *testing.T, out string) string {
	t.Helper()
	zbar, err := exec.LookPath("zbarimg")
	if err != nil {
		t.Fatal("zbarimg is not installed: run make deps-test (scripts/deps.sh test installs zbar-tools)")
	}
	var rows [][]bool // true: light
	for _, line := range strings.Split(out, "\n") {
		if line == "" || strings.Trim(line, "█▀▄ ") != "" || !strings.ContainsAny(line, "█▀▄") {
			continue
		}
		var top, bottom []bool
		for _, r := range line {
			top = append(top, r == '█' || r == '▀')
			bottom = append(bottom, r == '█' || r == '▄')
		}
		rows = append(rows, top, bottom)
	}
	if len(rows) < 21 {
		t.Fatalf("no QR code in the output:\n%s", out)
	}
	const px = 8
	img := image.NewGray(image.Rect(0, 0, len(rows[0])*px, len(rows)*px))
	for y, row := range rows {
		for x, light := range row {
			c := color.Gray{Y: 0}
			if light {
				c.Y = 255
			}
			for dy := range px {
				for dx := range px {
					img.SetGray(x*px+dx, y*px+dy, c)
				}
			}
		}
	}
	p := filepath.Join(t.TempDir(), "qr.png")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := png.Encode(f, img); err != nil {
		t.Fatal(err)
	}
	f.Close()
	b, err := exec.Command(zbar, "--quiet", "--raw", "-Sdisable", "-Sqrcode.enable", p).Output()
	if err != nil {
		t.Fatalf("zbarimg found no QR code: %v", err)
	}
	return strings.TrimRight(string(b), "\n")
}
