package fleet_test

import (
	"encoding/json"
	"testing"
	"time"

	"custody/internal/api"
	"custody/internal/testutil"
)

// TestParticipantStatusFleetWide: participant status is one record in the
// Vault cluster for the whole fleet. A suspension set through daemon 1 is
// enforced by daemons 2 and 3 within their cache's bound (cache_ttl, 1 s in the test fleet, 10 s
// by default); a second reviewer writing through another daemon on the
// same version is refused (check-and-set across daemons); lifting it on
// daemon 3 is seen by daemon 1.
func TestParticipantStatusFleetWide(t *testing.T) {
	id := "p-status-" + random()
	fl.client(1).register(t, id)
	s, code := fl.client(2).seal("tx-"+id, id)
	if code != "ok" {
		t.Fatalf("seal on daemon 2: %s", code)
	}
	for i := 1; i <= 3; i++ { // every daemon reads (and caches) the absent record
		if _, code := fl.client(i).open(s.Envelope, id); code != "ok" {
			t.Fatalf("open on daemon %d before any status: %s", i, code)
		}
	}
	set := func(daemon, version int, rec string) string {
		ctx, cancel := callCtx()
		defer cancel()
		_, err := fl.client(daemon).c.SetParticipantStatus(ctx, id,
			api.StatusChange{Version: version, Status: json.RawMessage(rec), Reason: "fleet test", Reference: "CASE-1"})
		return codeOf(err)
	}
	if code := set(1, 0, `{"suspended":true,"suspended_reason":"fraud review"}`); code != "ok" {
		t.Fatalf("suspend through daemon 1: %s", code)
	}
	if code := set(2, 0, `{"sanctions":"clear"}`); code != api.CodeStatusConflict {
		t.Fatalf("a second reviewer on version 0 through daemon 2: %s, want status_conflict", code)
	}
	for _, i := range []int{2, 3} {
		if !testutil.Poll(20*time.Second, func() bool {
			_, code := fl.client(i).open(s.Envelope, id)
			return code == api.CodeParticipantSuspended
		}) {
			t.Fatalf("daemon %d still opens for a participant suspended on daemon 1", i)
		}
		if _, code := fl.client(i).seal("tx2-"+id, id); code != api.CodeParticipantSuspended {
			t.Errorf("daemon %d seals for a suspended participant: %s", i, code)
		}
	}
	if code := set(3, 1, `{"sanctions":"clear"}`); code != "ok" {
		t.Fatalf("lift the suspension through daemon 3: %s", code)
	}
	if !testutil.Poll(20*time.Second, func() bool {
		_, code := fl.client(1).open(s.Envelope, id)
		return code == "ok"
	}) {
		t.Fatal("daemon 1 never saw the suspension lifted on daemon 3")
	}
}
