package server_test

import (
	"encoding/json"
	"strings"
	"testing"

	"custody/internal/api"
	"custody/internal/envelope"
	"custody/internal/server"
)

// TestInspect: inspect describes an envelope's header — both versions —
// for any known principal, with no key use on the device and nothing
// decrypted; a bad signature is reported, not hidden; malformed input is
// refused as by decrypt; an unknown caller is refused.
func TestInspect(t *testing.T) {
	spy := &fieldSpy{}
	h := newHarnessWith(t, func(d *server.Deps) { spy.Token = d.Token; d.Token = spy })
	h.register("client-1", "miner-1")
	v2 := h.seal("tx-i", "client-1", "miner-1")
	v1 := h.sealV1("tx-i1", "miner-1")

	st, body := h.call("POST", "/v1/envelopes/inspect", map[string]string{"envelope": v2})
	if st != 200 {
		t.Fatalf("inspect: %d %v", st, body)
	}
	b, _ := json.Marshal(body)
	want := []string{`"version":2`, `"transaction_id":"tx-i"`, `"job_id":"job-tx-i"`, `"sealed_by":"operator"`, `"signature_valid":true`,
		`"participants":[{"algorithm":"X25519","id":"client-1","key_version":1},{"algorithm":"X25519","id":"miner-1","key_version":1}]`,
		`"escrow_key_version":1`, `"fields":[{"name":"amount","size":6},{"name":"pricing","size":16},{"name":"settlement_details","size":11}]`,
		`"public_data":{"job_id":"job-tx-i","status":"completed"}`}
	for _, w := range want {
		if !strings.Contains(string(b), w) {
			t.Errorf("inspect answer lacks %s: %s", w, b)
		}
	}
	if strings.Contains(string(b), "1000") || strings.Contains(string(b), "IBAN") {
		t.Fatalf("inspect shows plaintext: %s", b)
	}
	// v1: no sealer, no field names, the payload size.
	st, body = h.call("POST", "/v1/envelopes/inspect", map[string]string{"envelope": v1})
	if st != 200 || body["version"] != float64(1) || body["sealed_by"] != nil || body["fields"] != nil || body["payload_size"] == nil || body["signature_valid"] != true {
		t.Fatalf("inspect v1: %d %v", st, body)
	}
	// A changed sealed_by: shown, and the signature said not to verify.
	e, _ := envelope.ParseText(v2)
	e.Header.SealedBy = "settlement-app"
	st, body = h.call("POST", "/v1/envelopes/inspect", map[string]string{"envelope": e.Text()})
	if st != 200 || body["signature_valid"] != false || body["signature_error"] != api.CodeSignatureInvalid || body["sealed_by"] != "settlement-app" {
		t.Fatalf("inspect of a forged sealed_by: %d %v", st, body)
	}
	for _, tc := range []struct{ env, code string }{
		{"", api.CodeBadRequest}, {"custody-envelopeAg", api.CodeMalformedEnvelope}, {"!!", api.CodeMalformedEnvelope},
	} {
		if st, body := h.call("POST", "/v1/envelopes/inspect", map[string]string{"envelope": tc.env}); st == 200 || errCode(body) != tc.code {
			t.Errorf("inspect %q: %d %v, want %s", tc.env, st, body, tc.code)
		}
	}
	// Any principal, through the CLI as its own user; nobody else.
	code, out, errOut := h.ctlAs(appUser, v2, "envelope", "inspect", "-")
	if code != 0 || !strings.Contains(out, "sealed by:     operator") || !strings.Contains(out, "  settlement_details: 11 bytes") ||
		!strings.Contains(out, "signature valid") || strings.Contains(out, "IBAN") {
		t.Fatalf("custodyctl envelope inspect as %s: exit %d\n%s%s", appUser, code, out, errOut)
	}
	if code, _, errOut := h.ctlAs(otherUser, v2, "envelope", "inspect", "-"); code != 1 || !strings.Contains(errOut, "unknown_caller:") {
		t.Fatalf("unknown caller: exit %d %s", code, errOut)
	}
	// No key was used: the device was asked for nothing.
	spy.mu.Lock()
	defer spy.mu.Unlock()
	if spy.opens != 0 || len(spy.fields) != 0 {
		t.Fatalf("inspect used the device: %d opens, %d field opens", spy.opens, len(spy.fields))
	}
}
