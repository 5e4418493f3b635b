package server_test

import (
	"encoding/json"
	"strings"
	"testing"

	"custody/internal/auditlog"
)

// TestSealForForeignParticipant is the attack of issue 13: an application
// principal (custody-t-app, whose seal grant covers miner-* only) tries,
// as its own Unix user through the socket, to seal an envelope for
// client-1 under an existing transaction id, with an amount of its
// choosing. The daemon refuses with seal_denied before any key use, signs
// nothing, and records the refusal with the caller and the participants.
func TestSealForForeignParticipant(t *testing.T) {
	h := newHarness(t)
	h.register("client-1", "miner-1")
	h.seal("tx-genuine", "client-1", "miner-1") // the real transaction, sealed by the operator
	req := func(participants ...string) string {
		b, _ := json.Marshal(map[string]any{"transaction_id": "tx-genuine", "job_id": "job-tx-genuine",
			"confidential": map[string]any{"amount": "999999", "settlement_details": "IBAN XX00 ATTACKER"},
			"participants": participants})
		return string(b)
	}
	for _, parts := range [][]string{{"client-1"}, {"miner-1", "client-1"}} {
		code, out, errOut := h.ctlAs(appUser, req(parts...), "encrypt", "-")
		if code != 1 || !strings.Contains(errOut, "seal_denied:") || strings.Contains(out, "custody-envelope") {
			t.Fatalf("app user sealed for %v: exit %d, stdout %q, stderr %q; want seal_denied", parts, code, out, errOut)
		}
		e := h.rec.last()
		if e.Operation != "encrypt" || e.Outcome != auditlog.Denied || e.Code != "seal_denied" ||
			e.Principal != "settlement-app" || e.Caller.UID != uid(appUser) || e.TransactionID != "tx-genuine" ||
			strings.Join(e.Participants, ",") != strings.Join(parts, ",") || e.SealedBy != "" || e.KeyLabel != "" {
			t.Errorf("refused seal for %v recorded as %+v", parts, e)
		}
	}
	// Within its grant the same user may seal, and the envelope says so.
	code, out, errOut := h.ctlAs(appUser, req("miner-1"), "encrypt", "-")
	if code != 0 || !strings.Contains(out, "custody-envelope") {
		t.Fatalf("app user sealing for miner-1: exit %d\n%s%s", code, out, errOut)
	}
	if e := h.rec.last(); e.Outcome != auditlog.Allowed || e.SealedBy != "settlement-app" {
		t.Errorf("allowed seal recorded as %+v", e)
	}
}
