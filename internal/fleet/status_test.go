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
	s, st, code := fl.client(2).seal("tx-"+id, id)
	if st != 200 {
		t.Fatalf("seal on daemon 2: %d %s", st, code)
	}
	for i := 1; i <= 3; i++ { // every daemon reads (and caches) the absent record
		if _, st, code := fl.client(i).open(s.Envelope, id); st != 200 {
			t.Fatalf("open on daemon %d before any status: %d %s", i, st, code)
		}
	}
	set := func(daemon, version int, rec string) (int, string) {
		return fl.client(daemon).call("PUT", "/v1/participants/"+id+"/status",
			api.StatusChange{Version: version, Status: json.RawMessage(rec), Reason: "fleet test", Reference: "CASE-1"}, nil)
	}
	if st, code := set(1, 0, `{"suspended":true,"suspended_reason":"fraud review"}`); st != 200 {
		t.Fatalf("suspend through daemon 1: %d %s", st, code)
	}
	if st, code := set(2, 0, `{"sanctions":"clear"}`); st != 409 || code != api.CodeStatusConflict {
		t.Fatalf("a second reviewer on version 0 through daemon 2: %d %s, want status_conflict", st, code)
	}
	for _, i := range []int{2, 3} {
		if !testutil.Poll(20*time.Second, func() bool {
			_, st, code := fl.client(i).open(s.Envelope, id)
			return st == 403 && code == api.CodeParticipantSuspended
		}) {
			t.Fatalf("daemon %d still opens for a participant suspended on daemon 1", i)
		}
		if _, st, code := fl.client(i).seal("tx2-"+id, id); st != 403 || code != api.CodeParticipantSuspended {
			t.Errorf("daemon %d seals for a suspended participant: %d %s", i, st, code)
		}
	}
	if st, code := set(3, 1, `{"sanctions":"clear"}`); st != 200 {
		t.Fatalf("lift the suspension through daemon 3: %d %s", st, code)
	}
	if !testutil.Poll(20*time.Second, func() bool {
		_, st, _ := fl.client(1).open(s.Envelope, id)
		return st == 200
	}) {
		t.Fatal("daemon 1 never saw the suspension lifted on daemon 3")
	}
}
