package fleet_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base32"
	"encoding/binary"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	"custody/internal/api"
	"custody/internal/client"
	"custody/internal/mfa"
)

// TestMFAStateFleetWide: a principal's second-factor state (last accepted
// TOTP step, failures, lock) is one record in the Vault cluster, so replay
// protection and lockout hold across daemons. Decrypts for purpose
// "dispute" need a code (testPolicy). The attacker holds a code that was
// already used, or guesses codes, and goes to another daemon:
//   - a code accepted on daemon 1 is refused as a replay on daemon 2, and
//     one accepted on daemon 2 is refused on daemon 1 (mfa_invalid);
//   - failures spread over daemons 1 and 2 (no daemon sees five) lock the
//     factor, and daemon 3 refuses a valid code never used (mfa_locked),
//     which it would accept had it its own state.
func TestMFAStateFleetWide(t *testing.T) {
	const principal = "operator"
	resetMFA(t, principal)
	ctx, cancel := callCtx()
	defer cancel()
	enrolled, err := fl.client(1).c.MFAEnroll(ctx, principal)
	if err != nil {
		t.Fatalf("enroll through daemon 1: %v", err)
	}
	id := "p-mfa-" + random()
	fl.client(1).register(t, id)
	s, code := fl.client(2).seal("tx-"+id, id)
	if code != "ok" {
		t.Fatalf("seal: %s", code)
	}
	open := func(i int, totp string) string {
		c := context.Background()
		if totp != "" {
			c = client.WithTOTP(c, totp)
		}
		_, code := fl.client(i).openFor(c, s.Envelope, id, "dispute")
		return code
	}
	if code := open(3, ""); code != api.CodeMFARequired {
		t.Fatalf("dispute decrypt without a code on daemon 3: %s, want mfa_required", code)
	}

	// Three codes are valid at once (steps now-1, now, now+1): start early
	// enough in a step that the test ends before it does.
	if r := time.Until(time.Now().Truncate(mfa.Period).Add(mfa.Period)); r < 8*time.Second {
		time.Sleep(r + 100*time.Millisecond)
	}
	now := time.Now()
	prev, cur, next := totp(t, enrolled.URI, now.Add(-mfa.Period)), totp(t, enrolled.URI, now), totp(t, enrolled.URI, now.Add(mfa.Period))
	if code := open(2, prev); code != "ok" {
		t.Fatalf("the previous step's code on daemon 2: %s", code)
	}
	if code := open(1, cur); code != "ok" {
		t.Fatalf("the current code on daemon 1: %s", code)
	}
	// Replays: each daemon refuses what the other accepted (failures 1, 2).
	if code := open(2, cur); code != api.CodeMFAInvalid {
		t.Errorf("daemon 1's code replayed on daemon 2: %s, want mfa_invalid", code)
	}
	if code := open(1, prev); code != api.CodeMFAInvalid {
		t.Errorf("daemon 2's code replayed on daemon 1: %s, want mfa_invalid", code)
	}
	// Wrong codes on 1 and 2: failures 3, 4, 5; neither daemon saw more
	// than three.
	wrong := "000000"
	for wrong == prev || wrong == cur || wrong == next {
		wrong = fmt.Sprintf("%06d", (int(wrong[0]-'0')+1)*111111%1000000)
	}
	for _, i := range []int{1, 2, 1} {
		if code := open(i, wrong); code != api.CodeMFAInvalid {
			t.Fatalf("a wrong code on daemon %d: %s, want mfa_invalid", i, code)
		}
	}
	// next is valid and was never used: daemon 3 refuses it because the
	// fleet's state says locked.
	if code := open(3, next); code != api.CodeMFALocked {
		t.Fatalf("a valid unused code on daemon 3 after five failures on daemons 1 and 2: %s, want mfa_locked", code)
	}
	if code := open(1, next); code != api.CodeMFALocked {
		t.Errorf("and on daemon 1: %s, want mfa_locked", code)
	}
	// Participant decrypts that need no factor are not affected.
	if _, code := fl.client(3).open(s.Envelope, id); code != "ok" {
		t.Errorf("settlement decrypt (no factor) on daemon 3 while the factor is locked: %s", code)
	}
}

// totp is what an authenticator app computes from the enrollment URI at
// time at (RFC 6238, SHA-1, 6 digits, 30 s).
func totp(t *testing.T, uri string, at time.Time) string {
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
	binary.BigEndian.PutUint64(msg[:], mfa.Step(at))
	m := hmac.New(sha1.New, seed)
	m.Write(msg[:])
	mac := m.Sum(nil)
	off := mac[19] & 0x0f
	return fmt.Sprintf("%06d", (binary.BigEndian.Uint32(mac[off:])&0x7fffffff)%1000000)
}

// resetMFA puts principal's factor back to "never enrolled" (a second run
// of the test on the same fleet, go test -count=2): the seed revoked
// through daemon 1, and the state's whole history deleted from Vault with
// the fleet's root token, as the fleet's Vault operator would.
func resetMFA(t *testing.T, principal string) {
	t.Helper()
	ctx, cancel := callCtx()
	defer cancel()
	// A principal never enrolled has no factor to revoke (mfa_not_enrolled).
	if err := fl.client(1).c.MFARevoke(ctx, principal); err != nil && !api.IsCode(err, api.CodeMFANotEnrolled) {
		t.Fatalf("revoke: %v", err)
	}
	if st := fl.vaultDo(t, "DELETE", "secret/metadata/custody/mfa/"+principal, nil); st != http.StatusNoContent && st != http.StatusOK {
		t.Fatalf("delete the MFA state in Vault: status %d", st)
	}
}
