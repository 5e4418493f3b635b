package server_test

import (
	"encoding/json"
	"os"
	"strings"
	"testing"

	"custody/internal/api"
	"custody/internal/envelope"
)

// TestDEKCacheHitRefusesWhatColdRefuses performs, as the attackers' own
// Unix users through custodyctl, every refusal a cold open gives, twice:
// on an envelope never opened (cold) and on one whose DEK is cached on the
// token (hot, opened just before by a caller who may). Each must be refused
// with the same code both times, and the refusals that come before the
// device must not touch the cache at all (no hit).
func TestDEKCacheHitRefusesWhatColdRefuses(t *testing.T) {
	h := newHarness(t)
	h.register("client-1", "miner-1")
	cold, hot := h.seal("tx-cold", "client-1", "miner-1"), h.seal("tx-hot", "client-1", "miner-1")
	req := func(env, as, purpose string) string {
		b, _ := json.Marshal(map[string]any{"envelope": env, "as": as, "purpose": purpose})
		return string(b)
	}
	decrypt := func(user, env, as, purpose string) (int, string, string) {
		return h.ctlAs(user, req(env, as, purpose), "decrypt", "-")
	}
	for range 3 { // a first open (not cached), a cold one that caches, a hit
		if code, out, errOut := decrypt(appUser, hot, "miner-1", "settlement"); code != 0 || !strings.Contains(out, `amount: "1000"`) {
			t.Fatalf("app decrypt of the hot envelope: exit %d %s%s", code, out, errOut)
		}
	}
	if s := h.token.DEKCacheStats(); s.Hits != 1 || s.Entries != 1 {
		t.Fatalf("after warming: %+v, want 1 hit and 1 entry", s)
	}
	refuse := func(name, user, as, purpose, code string, hot2, cold2 string, deviceUsed bool) {
		t.Helper()
		for _, env := range []string{cold2, hot2} {
			before := h.token.DEKCacheStats().Hits
			c, out, errOut := decrypt(user, env, as, purpose)
			if c != 1 || !strings.Contains(errOut, code+":") || strings.Contains(out, "1000") {
				t.Errorf("%s (%s): exit %d, stdout %q, stderr %q; want %s", name, map[bool]string{true: "hot", false: "cold"}[env == hot2], c, out, errOut, code)
			}
			if after := h.token.DEKCacheStats().Hits; !deviceUsed && after != before {
				t.Errorf("%s: a refusal before the device used the cache (hits %d → %d)", name, before, after)
			}
		}
	}
	refuse("act as a participant outside the grant", appUser, "client-1", "settlement", api.CodeNotParticipant, hot, cold, false)
	refuse("a purpose outside the grant", appUser, "miner-1", "dispute", api.CodePurposeDenied, hot, cold, false)
	refuse("no principal at all", otherUser, "miner-1", "settlement", api.CodeUnknownCaller, hot, cold, false)

	// A tampered envelope: the signature covers the field ciphertexts too,
	// so this is refused in software before any key use. (A field that
	// reaches the device altered fails GCM on a cached key as on a fresh
	// one: hsm's TestDEKCacheHit.)
	sig := func(text string) string {
		env, _ := envelope.ParseText(text)
		env.Signature[5] ^= 1
		return env.Text()
	}
	refuse("a flipped signature byte", appUser, "miner-1", "settlement", api.CodeSignatureInvalid, sig(hot), sig(cold), false)

	// The grant withdrawn by a policy reload: refused on the hot envelope too.
	policyText, err := os.ReadFile(h.store.Path())
	if err != nil {
		t.Fatal(err)
	}
	narrowed := strings.Replace(string(policyText), `"act_as": [{"participants": ["miner-*"], "purposes": ["settlement"]}]`, `"act_as": [{"participants": ["client-*"], "purposes": ["settlement"]}]`, 1)
	if narrowed == string(policyText) {
		t.Fatal("test policy changed: cannot withdraw the app's grant")
	}
	if err := os.WriteFile(h.store.Path(), []byte(narrowed), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := h.store.Reload(); err != nil {
		t.Fatal(err)
	}
	refuse("after the grant was withdrawn", appUser, "miner-1", "settlement", api.CodeNotParticipant, hot, cold, false)
	if err := os.WriteFile(h.store.Path(), policyText, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := h.store.Reload(); err != nil {
		t.Fatal(err)
	}

	// The key retired: its cached DEKs are destroyed with it, and the hot
	// envelope is refused like the cold one.
	if st, body := h.call("POST", "/v1/keys/miner-1/rotate", struct{}{}); st != 200 {
		t.Fatalf("rotate: %d %v", st, body)
	}
	if st, body := h.call("POST", "/v1/keys/miner-1/retire", map[string]any{"version": 1, "confirm_rewrapped": true, "rewrapped_count": 0}); st != 200 {
		t.Fatalf("retire: %d %v", st, body)
	}
	if s := h.token.DEKCacheStats(); s.Entries != 0 || s.EvictedKey != 1 {
		t.Fatalf("after retirement: %+v, want the entry destroyed with its key", s)
	}
	refuse("after the key was retired", appUser, "miner-1", "settlement", api.CodeKeyDestroyed, hot, cold, false)
}
