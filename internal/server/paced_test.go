package server_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"custody/internal/priority"
)

// TestRewrapReportsLiveLatency: the batch rewrap's answer says how the
// daemon's live requests fared (custodyctl rewrap --postgres paces itself
// by it): the live samples of the last window, their p99, and, with
// enough of them run with no bulk work near, their idle p99. Neither a
// batch decrypt nor a refusal is a live sample.
func TestRewrapReportsLiveLatency(t *testing.T) {
	h := newHarness(t)
	h.register("client-1", "miner-1")
	env := h.seal("tx-live", "client-1", "miner-1")
	rewrap := func() map[string]any {
		t.Helper()
		st, body := h.call("POST", "/v1/envelopes/rewrap", map[string]any{"items": []map[string]string{{"envelope": env}}})
		if st != 200 {
			t.Fatalf("rewrap: %d %v", st, body)
		}
		live, _ := body["live"].(map[string]any)
		return live
	}
	// The seal and the decrypts ran with no bulk work before them: idle.
	for range priority.MinIdleSamples {
		if st, body := h.decryptAs(env, "miner-1"); st != 200 {
			t.Fatalf("decrypt: %d %v", st, body)
		}
	}
	n := 1 + priority.MinIdleSamples
	live := rewrap()
	if live == nil || live["samples"].(float64) != float64(n) || live["p99_ms"].(float64) <= 0 || live["idle_p99_ms"].(float64) <= 0 {
		t.Fatalf("after an encrypt and %d decrypts: live %v, want %d samples, a p99 and a baseline", priority.MinIdleSamples, live, n)
	}
	st, _ := h.call("POST", "/v1/transactions/decrypt/batch", map[string]any{"items": []map[string]any{{"envelope": env, "as": "miner-1", "purpose": "settlement"}}})
	if st != 200 {
		t.Fatalf("batch decrypt: %d", st)
	}
	if st, body := h.decryptAs(env, "miner-1"); st != 200 {
		t.Fatalf("decrypt: %d %v", st, body)
	}
	// A refusal is not a live request's latency.
	if st, body := h.call("POST", "/v1/transactions/decrypt", map[string]any{"envelope": env, "as": "miner-1", "purpose": "marketing"}); st == 200 {
		t.Fatalf("decrypt for a purpose the policy refuses: %d %v", st, body)
	}
	if live = rewrap(); live == nil || live["samples"].(float64) != float64(n+1) {
		t.Fatalf("after a batch decrypt, a decrypt and a refused one: live %v, want %d samples (neither a batch nor a refusal is one)", live, n+1)
	}
}

// TestRefusedRewrapIsNotBulkWork: a Unix user no principal covers calls
// the rewrap, as itself through custodyctl, to keep the daemon's idle
// baseline from forming (without one the store rewrap does not pace
// itself: threat model S6). The call is refused at the door and marks no
// bulk work: the live decrypts right after it are idle samples.
func TestRefusedRewrapIsNotBulkWork(t *testing.T) {
	h := newHarness(t)
	h.register("client-1", "miner-1")
	env := h.seal("tx-live", "client-1", "miner-1")
	dir, err := os.MkdirTemp("", "custody-paced-") // t.TempDir's parent is the test user's only
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(dir, "in.jsonl")
	if err := os.WriteFile(in, []byte(`{"envelope":"`+env+`"}`+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := h.ctlAs(otherUser, "", "rewrap", "--in", in, "--out", filepath.Join(dir, "out.jsonl"))
	if code == 0 || !strings.Contains(errOut, "unknown_caller") {
		t.Fatalf("rewrap as %s: exit %d, %s; want unknown_caller", otherUser, code, errOut)
	}
	for range priority.MinIdleSamples {
		if st, body := h.decryptAs(env, "miner-1"); st != 200 {
			t.Fatalf("decrypt: %d %v", st, body)
		}
	}
	st, body := h.call("POST", "/v1/envelopes/rewrap", map[string]any{"items": []map[string]string{{"envelope": env}}})
	live, _ := body["live"].(map[string]any)
	if st != 200 || live == nil || live["idle_p99_ms"].(float64) <= 0 {
		t.Fatalf("rewrap after a refused one and %d decrypts: %d %v, want an idle baseline", priority.MinIdleSamples, st, body)
	}
}
