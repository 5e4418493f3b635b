package server_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base32"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/orders/vaulttest"
	"custody/internal/policy"
	"custody/internal/server"
)

// mfaPolicy is statusPolicy with a second factor for every audit decrypt.
var mfaPolicy = strings.Replace(statusPolicy, `"principals": [`, `"second_factor": {"audit_decrypt": true},
  "principals": [`, 1)

// softTOTP is what an authenticator app computes from the enrollment URI.
func softTOTP(t *testing.T, uri string, at time.Time) string {
	t.Helper()
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	seed, err := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(u.Query().Get("secret"))
	if err != nil {
		t.Fatal(err)
	}
	var msg [8]byte
	binary.BigEndian.PutUint64(msg[:], uint64(at.Unix())/30)
	m := hmac.New(sha1.New, seed)
	m.Write(msg[:])
	mac := m.Sum(nil)
	off := mac[19] & 0x0f
	return fmt.Sprintf("%06d", (binary.BigEndian.Uint32(mac[off:])&0x7fffffff)%1000000)
}

// TestSecondFactorAuditDecrypt: with the policy's second_factor on audit
// decrypts, an admin enrolls the auditor (the application cannot); an
// audit decrypt without a code is mfa_required, a wrong one mfa_invalid,
// the authenticator's code (given to custodyctl on stdin) opens, the same
// code again is refused (replay), five failures lock the factor
// (mfa_locked, the next valid code included), revoke leaves mfa_required.
// No refusal spends an order use or reaches the escrow key.
func TestSecondFactorAuditDecrypt(t *testing.T) {
	sh := newStatusHarnessPolicy(t, vaulttest.Shared(t), 50*time.Millisecond, time.Minute, mfaPolicy, nil)
	m := sh.miner
	sh.setStatus(m, "--set", "sanctions=clear")
	env, code := sh.sealFor("tx-f1", m)
	if code != "" {
		t.Fatal(code)
	}
	o := sh.order("tx-f1")
	esc, _ := sh.keys.Escrow()

	if st, code := sh.rawAs(t, appUser, sh.exe, rawRequest{Method: "POST", Path: "/v1/mfa/principals", Body: `{"principal":"settlement-app"}`}); st != 403 || code != api.CodePermissionDenied {
		t.Fatalf("application enrolls: %d %s", st, code)
	}
	st, body := sh.call("POST", "/v1/mfa/principals", map[string]any{"principal": "operator"})
	if st != 200 {
		t.Fatalf("enroll: %d %v", st, body)
	}
	uri := body["uri"].(string)
	if !strings.HasPrefix(uri, "otpauth://totp/custody:operator?") {
		t.Fatalf("uri %s", uri)
	}
	if e := sh.lastEntry("mfa.enroll"); e.Outcome != auditlog.Allowed || strings.Contains(e.Detail, "secret") || e.Detail != "principal operator" {
		t.Fatalf("enroll entry %+v", e)
	}
	if st, body := sh.call("POST", "/v1/mfa/principals", map[string]any{"principal": "operator"}); st == 200 {
		t.Fatalf("second enroll without revoke: %v", body)
	}

	audit := func(totp string) string {
		hdr := map[string]string{}
		if totp != "" {
			hdr[api.HeaderTOTP] = totp
		}
		b := fmt.Sprintf(`{"envelope":%q,"authorization":%q,"purpose":%q}`, env, o.ID, o.Purpose)
		req := rawRequest{Method: "POST", Path: "/v1/audit/decrypt", Headers: hdr, Body: b}
		// as root, through the socket
		st, raw := sh.callRawHeaders(req)
		if st == 200 {
			return ""
		}
		return errCode(raw)
	}
	if c := audit(""); c != api.CodeMFARequired {
		t.Fatalf("no code: %q", c)
	}
	if e := sh.lastEntry("audit-decrypt"); e.Outcome != auditlog.Denied || e.Code != api.CodeMFARequired {
		t.Fatalf("entry %+v", e)
	}
	right := softTOTP(t, uri, sh.now)
	wrong := "000000"
	if wrong == right {
		wrong = "111111"
	}
	if c := audit(wrong); c != api.CodeMFAInvalid {
		t.Fatalf("wrong code: %q", c)
	}
	if n := sh.tok.count(esc.Label); n != 0 {
		t.Fatalf("%d escrow opens before a factor was accepted", n)
	}
	// The right code, through custodyctl reading it from stdin.
	envFile := filepath.Join(sh.dir, "env.txt")
	os.WriteFile(envFile, []byte(env), 0o644)
	cmd := exec.Command(filepath.Join(binDir, "custodyctl"), "--socket", sh.socket, "--totp-stdin", "audit", "decrypt",
		"--envelope-file", envFile, "--order", o.ID, "--purpose", o.Purpose)
	cmd.Stdin = strings.NewReader(right + "\n")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("custodyctl --totp-stdin audit decrypt: %v\n%s", err, errb.String())
	}
	if n := sh.tok.count(esc.Label); n != 1 {
		t.Fatalf("%d escrow opens, want 1", n)
	}
	if c := audit(right); c != api.CodeMFAInvalid {
		t.Fatalf("the same code again (replay): %q", c)
	}
	for range 4 {
		audit(wrong)
	}
	next := softTOTP(t, uri, sh.now.Add(30*time.Second)) // within skew, never used
	if c := audit(next); c != api.CodeMFALocked {
		t.Fatalf("valid code after five failures: %q, want mfa_locked", c)
	}
	if n := sh.tok.count(esc.Label); n != 1 {
		t.Fatalf("%d escrow opens, want still 1", n)
	}
	if st, body := sh.call("DELETE", "/v1/mfa/principals/operator", nil); st != 200 {
		t.Fatalf("revoke: %d %v", st, body)
	}
	if c := audit(next); c != api.CodeMFARequired && c != api.CodeMFALocked {
		t.Fatalf("after revoke: %q", c)
	}
}

// TestFactorOperationsAreRoutes: the operations a policy may require a
// second factor for are exactly the route table's, less health and
// self-enrollment; a route added without its name there could not be
// protected (and one removed would leave a name that protects nothing).
func TestFactorOperationsAreRoutes(t *testing.T) {
	routes := map[string]bool{}
	for _, op := range server.RouteOps() {
		if op != "health" && op != "mfa.self-enroll" {
			routes[op] = true
		}
	}
	known := map[string]bool{}
	for _, op := range policy.FactorOperations {
		known[op] = true
		if !routes[op] {
			t.Errorf("policy.FactorOperations has %q, which no route has", op)
		}
	}
	for op := range routes {
		if !known[op] {
			t.Errorf("route operation %q is missing from policy.FactorOperations", op)
		}
	}
}

// callRawHeaders sends rr as root through the socket with its headers.
func (sh *statusHarness) callRawHeaders(rr rawRequest) (int, map[string]any) {
	sh.t.Helper()
	req, err := http.NewRequest(rr.Method, "http://custody"+rr.Path, strings.NewReader(rr.Body))
	if err != nil {
		sh.t.Fatal(err)
	}
	for k, v := range rr.Headers {
		req.Header.Set(k, v)
	}
	resp, err := sh.client.Do(req)
	if err != nil {
		sh.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}
