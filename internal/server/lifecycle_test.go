package server_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"custody/internal/api"
	"custody/internal/envelope"
	"custody/internal/keys"
	"custody/internal/server"
	"custody/internal/testutil"
)

func noLeftovers(t testing.TB, h *harness) {
	t.Helper()
	n, err := h.token.SessionObjectCount(t.Context())
	if cached := h.token.DEKCacheStats().Objects; err != nil || n != cached {
		t.Fatalf("session objects left on the token: %d (%v), of which the DEK cache holds %d", n, err, cached)
	}
}

func (h *harness) decryptAs(env, as string) (int, map[string]any) {
	return h.call("POST", "/v1/transactions/decrypt", map[string]any{"envelope": env, "as": as, "purpose": "settlement"})
}

func confidential(t testing.TB, body map[string]any) string {
	t.Helper()
	b, err := json.Marshal(body["confidential"])
	if err != nil || body["confidential"] == nil {
		t.Fatalf("no confidential fields: %v", body)
	}
	return string(b)
}

func TestLifecycleRotateRewrapRetire(t *testing.T) {
	h := newHarness(t)
	h.register("client-1", "miner-1")
	a, b, c := h.seal("tx-a", "client-1", "miner-1"), h.seal("tx-b", "client-1", "miner-1"), h.seal("tx-c", "client-1", "miner-1")
	st, body := h.decryptAs(a, "miner-1")
	if st != 200 {
		t.Fatalf("decrypt: %d %v", st, body)
	}
	plainA := confidential(t, body)

	if st, body := h.call("POST", "/v1/keys/miner-1/rotate", struct{}{}); st != 200 || body["active_version"].(float64) != 2 {
		t.Fatalf("rotate: %d %v", st, body)
	}
	if st, body := h.decryptAs(a, "miner-1"); st != 200 || confidential(t, body) != plainA {
		t.Fatalf("old envelope after rotation: %d %v", st, body)
	}
	_, list := h.call("GET", "/v1/keys", nil)
	if k := list["keys"].([]any)[1].(map[string]any); k["id"] != "miner-1" || k["needs_rewrap"] != true {
		t.Fatalf("keys list: %v", list)
	}
	current := h.seal("tx-d", "client-1", "miner-1") // sealed to v2 already
	// A tampered envelope: one signature byte flipped.
	env, _ := envelope.ParseText(c)
	env.Signature[5] ^= 1
	st, body = h.call("POST", "/v1/envelopes/rewrap", map[string]any{"items": []map[string]string{
		{"envelope": a, "ref": "a"}, {"envelope": env.Text(), "ref": "bad"}, {"envelope": b}, {"envelope": current},
	}})
	if st != 200 {
		t.Fatalf("rewrap: %d %v", st, body)
	}
	res := body["results"].([]any)
	get := func(i int) map[string]any { r, _ := res[i].(map[string]any)["result"].(map[string]any); return r }
	if errCode(res[1].(map[string]any)) != api.CodeSignatureInvalid {
		t.Fatalf("tampered envelope: %v", res[1])
	}
	if get(0)["changed"] != true || get(0)["ref"] != "a" || get(2)["changed"] != true {
		t.Fatalf("rewrap results: %v", res)
	}
	if get(3)["changed"] != false || get(3)["envelope"] != current {
		t.Fatalf("a current envelope must come back unchanged: %v", res[3])
	}
	a2 := get(0)["envelope"].(string)
	old, _ := envelope.ParseText(a)
	neu, _ := envelope.ParseText(a2)
	if !bytes.Equal(old.Ciphertext, neu.Ciphertext) || !bytes.Equal(old.Nonce, neu.Nonce) {
		t.Fatal("rewrap changed the payload")
	}
	if i, _ := neu.ParticipantStanza("miner-1"); neu.Header.Stanzas[i].KeyVersion != 2 {
		t.Fatal("miner-1 stanza not on v2")
	}
	if j, _ := neu.ParticipantStanza("client-1"); !bytes.Equal(neu.Header.Stanzas[j].WrappedDEK, old.Header.Stanzas[j].WrappedDEK) {
		t.Fatal("a current stanza was rewritten")
	}
	if st, body := h.decryptAs(a2, "miner-1"); st != 200 || confidential(t, body) != plainA {
		t.Fatalf("rewrapped envelope: %d %v", st, body)
	}

	// Retirement needs the confirmation and a count; never the active version.
	if st, body := h.call("POST", "/v1/keys/miner-1/retire", map[string]any{"version": 1}); errCode(body) != api.CodeRetireUnconfirmed {
		t.Fatalf("unconfirmed retire: %d %v", st, body)
	}
	if _, body := h.call("POST", "/v1/keys/miner-1/retire", map[string]any{"version": 1, "confirm_rewrapped": true}); errCode(body) != api.CodeRetireUnconfirmed {
		t.Fatalf("retire without count: %v", body)
	}
	if _, body := h.call("POST", "/v1/keys/miner-1/retire", map[string]any{"version": 2, "confirm_rewrapped": true, "rewrapped_count": 2}); errCode(body) != api.CodeKeyActive {
		t.Fatalf("retire active: %v", body)
	}
	if st, body := h.call("POST", "/v1/keys/miner-1/retire", map[string]any{"version": 1, "confirm_rewrapped": true, "rewrapped_count": 2}); st != 200 {
		t.Fatalf("retire: %d %v", st, body)
	}
	if e := h.rec.last(); e.Operation != "key.retire" || !strings.Contains(e.Detail, "2 envelopes") {
		t.Fatalf("retire entry: %+v", e)
	}
	if st, body := h.decryptAs(c, "miner-1"); errCode(body) != api.CodeKeyDestroyed {
		t.Fatalf("un-rewrapped envelope after retirement: %d %v", st, body)
	}
	if st, body := h.decryptAs(a2, "miner-1"); st != 200 || confidential(t, body) != plainA {
		t.Fatalf("rewrapped envelope after retirement: %d %v", st, body)
	}
	// c can still be rewrapped through client-1's stanza.
	_, body = h.call("POST", "/v1/envelopes/rewrap", map[string]any{"items": []map[string]string{{"envelope": c}}})
	c2, _ := body["results"].([]any)[0].(map[string]any)["result"].(map[string]any)["envelope"].(string)
	if st, _ := h.decryptAs(c2, "miner-1"); st != 200 {
		t.Fatalf("c rewrapped through another stanza: %v", body)
	}

	// Escrow rotation: the escrow stanza moves once a newer version exists.
	if _, err := h.keys.RotateEscrow(t.Context(), h.now); err != nil {
		t.Fatal(err)
	}
	_, body = h.call("POST", "/v1/envelopes/rewrap", map[string]any{"items": []map[string]string{{"envelope": a2}}})
	r := body["results"].([]any)[0].(map[string]any)["result"].(map[string]any)
	a3, _ := envelope.ParseText(r["envelope"].(string))
	if r["changed"] != true || a3.Header.Stanzas[a3.EscrowStanza()].KeyVersion != 2 {
		t.Fatalf("escrow rewrap: %v", body)
	}

	// A restarted daemon sees the same states.
	reg, err := keys.Load(t.Context(), h.token, h.keys.Log())
	if err != nil {
		t.Fatal(err)
	}
	ks, _ := reg.Status("miner-1", h.now)
	if len(ks.Versions) != 2 || ks.Versions[0].State != keys.StateDestroyed || ks.Versions[1].State != keys.StateActive {
		t.Fatalf("reloaded view: %+v", ks)
	}
	if _, err := reg.ParticipantVersion("miner-1", 1); err == nil {
		t.Fatal("destroyed version found after reload")
	}
	noLeftovers(t, h)
}

func TestLifecycleProveAndDueRotation(t *testing.T) {
	h := newHarness(t)
	h.register("miner-7")
	code, out, errOut := h.ctlRoot("", "keys", "prove", "miner-7")
	if code != 0 || !strings.Contains(out, "proved") {
		t.Fatalf("prove: %d %s %s", code, out, errOut)
	}
	stranger := "9ZCFxmk0Gs3Y3cG2e0p4m1a0hA1Wq5C7iU1d3l4oJ0M=" // a key the token does not hold
	code, _, errOut = h.ctlRoot("", "keys", "prove", "miner-7", "--public", stranger)
	if code != 1 || !strings.Contains(errOut, "proof_failed") {
		t.Fatalf("prove against a foreign key: %d %s", code, errOut)
	}
	if _, body := h.call("POST", "/v1/keys/nobody/prove", map[string]string{"ephemeral_public": stranger, "nonce": stranger}); errCode(body) != api.CodeUnknownParticipant {
		t.Fatalf("prove unknown: %v", body)
	}
	// Due rotation: 91 days later the daemon rotates on its own and records it.
	h.now = h.now.Add(91 * 24 * time.Hour)
	sched := keys.NewScheduler(h.keys, func() time.Time { return h.now }, slog.New(slog.NewTextHandler(testLogOutput(), nil)), h.srv.RecordDaemon)
	n, err := sched.RotateDue(t.Context())
	if err != nil || n != 1 {
		t.Fatalf("RotateDue = %d, %v", n, err)
	}
	if e := h.rec.last(); e.Operation != "key.rotate" || e.Principal != "custodyd" || e.KeyVersion != 2 {
		t.Fatalf("rotation entry: %+v", e)
	}
	if n, _ := sched.RotateDue(t.Context()); n != 0 {
		t.Fatalf("second pass rotated %d", n)
	}
	code, out, _ = h.ctlRoot("", "keys", "list")
	if code != 0 || !strings.Contains(out, "miner-7") || !strings.Contains(out, "decrypt-only") {
		t.Fatalf("keys list: %d %s", code, out)
	}
	noLeftovers(t, h)
}

// ctlRoot runs custodyctl as root (this process's user).
func (h *harness) ctlRoot(stdin string, args ...string) (int, string, string) {
	h.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "custodyctl"), append([]string{"--socket", h.socket}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		h.t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

// sealMany seals n envelopes for miner-1 and writes them as JSON lines.
func (h *harness) sealMany(t testing.TB, n int, path string) {
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	for start := 0; start < n; start += 50 {
		var items []map[string]any
		for i := start; i < min(n, start+50); i++ {
			items = append(items, map[string]any{"transaction_id": fmt.Sprintf("tx-%d", i), "job_id": "job-1",
				"confidential": map[string]any{"amount": "1"}, "participants": []string{"miner-1"}})
		}
		st, out := h.call("POST", "/v1/transactions/encrypt/batch", map[string]any{"items": items})
		if st != 200 {
			t.Fatalf("sealing: %d %v", st, out)
		}
		for k, r := range out["results"].([]any) {
			env := r.(map[string]any)["result"].(map[string]any)["envelope"].(string)
			fmt.Fprintf(w, "{\"envelope\":%q,\"ref\":\"r%d\"}\n", env, start+k)
		}
	}
	w.Flush()
}

// TestRewrapStream sends 150 lines (three windows) to the streaming route
// with a blank line, a line that is not JSON and a tampered envelope among
// them: every other line comes back changed, in input order with its line
// number, and opens; the bad lines fail on their own. The new miner-1
// stanzas share ephemeral keys within a device batch only: fewer distinct
// keys than envelopes, more than one, none for more than 32 envelopes.
func TestRewrapStream(t *testing.T) {
	h := newHarness(t)
	h.register("miner-1")
	in := filepath.Join(t.TempDir(), "in.jsonl")
	h.sealMany(t, 148, in)
	if _, err := h.keys.Rotate(t.Context(), "miner-1", h.now); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(in)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(raw), "\n"), "\n")
	tampered := readEnvelopes(t, in)[70]
	env, _ := envelope.ParseText(tampered)
	env.Header.Stanzas[0].WrappedDEK[3] ^= 1
	lines[70] = fmt.Sprintf(`{"envelope":%q,"ref":"bad"}`, env.Text())
	lines = append(lines[:40], append([]string{"", "not json"}, lines[40:]...)...) // input lines 41 and 42
	st, out := h.callRaw("POST", "/v1/envelopes/rewrap/stream", strings.Join(lines, "\n")+"\n")
	if st != 200 {
		t.Fatalf("stream: %d %s", st, out)
	}
	ephemeral := map[string]int{} // envelopes per ephemeral key
	answers := strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	if len(answers) != 149 { // every non-blank input line
		t.Fatalf("%d answers for 149 non-blank lines", len(answers))
	}
	prev := 0
	for _, a := range answers {
		var l struct {
			Line     int    `json:"line"`
			Ref      string `json:"ref"`
			Envelope string `json:"envelope"`
			Changed  bool   `json:"changed"`
			Error    *struct{ Code string }
		}
		if err := json.Unmarshal([]byte(a), &l); err != nil {
			t.Fatalf("answer %q: %v", a, err)
		}
		if l.Line <= prev {
			t.Fatalf("answer for line %d after line %d", l.Line, prev)
		}
		prev = l.Line
		switch {
		case l.Line == 42:
			if l.Error == nil || l.Error.Code != api.CodeBadRequest {
				t.Fatalf("line 42 (not JSON): %s", a)
			}
		case l.Ref == "bad":
			if l.Error == nil || l.Error.Code != api.CodeSignatureInvalid {
				t.Fatalf("tampered envelope: %s", a)
			}
		default:
			if l.Error != nil || !l.Changed {
				t.Fatalf("line %d: %s", l.Line, a)
			}
			e, err := envelope.ParseText(l.Envelope)
			if err != nil {
				t.Fatal(err)
			}
			ephemeral[string(e.Header.Stanzas[0].EphemeralPublic)]++
			if l.Line%10 == 0 {
				if st, body := h.decryptAs(l.Envelope, "miner-1"); st != 200 {
					t.Fatalf("line %d does not open: %v", l.Line, body)
				}
			}
		}
	}
	if len(ephemeral) < 2 || len(ephemeral) >= 147 {
		t.Fatalf("%d distinct ephemeral keys over 147 rewrapped envelopes", len(ephemeral))
	}
	for _, n := range ephemeral {
		if n > 32 {
			t.Fatalf("one ephemeral key serves %d envelopes; a device batch holds at most 32", n)
		}
	}
	noLeftovers(t, h)
}

// TestRewrapCLIKillAndResume kills custodyctl rewrap halfway through 10,000
// envelopes and resumes: every line is in the output exactly once, and the
// finished lines were not redone.
func TestRewrapCLIKillAndResume(t *testing.T) {
	h := newHarness(t)
	h.register("miner-1")
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
	// 10,000 as the issue asks (about 30-75 s on a 2-core VM);
	// CUSTODY_REWRAP_KILL_N sets another size.
	n := 10000
	if v, err := strconv.Atoi(os.Getenv("CUSTODY_REWRAP_KILL_N")); err == nil && v > 0 {
		n = v
	}
	begin := time.Now()
	h.sealMany(t, n, in)
	if _, err := h.keys.Rotate(t.Context(), "miner-1", h.now); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, "custodyctl"), "--socket", h.socket, "rewrap", "--in", in, "--out", out)
	var cliErr bytes.Buffer
	cmd.Stderr = &cliErr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	t.Logf("sealed %d in %v", n, time.Since(begin))
	if !testutil.Poll(120*time.Second, func() bool {
		b, _ := os.ReadFile(out + ".state")
		var st struct{ Done int }
		if json.Unmarshal(b, &st) == nil && st.Done >= n/2 {
			t.Logf("killing at %d after %v", st.Done, time.Since(started))
			return true
		}
		return false
	}) {
		cmd.Process.Kill()
		t.Fatalf("rewrap made no progress: %s", cliErr.String())
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	code, stdout, stderr := h.ctlRoot("", "rewrap", "--in", in, "--out", out)
	if code != 0 || !strings.Contains(stderr, "resuming after line") {
		t.Fatalf("resume: %d %s %s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, fmt.Sprintf("%d envelopes: %d rewrapped", n, n)) {
		t.Fatalf("summary: %s", stdout)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := map[int]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l struct {
			Line     int    `json:"line"`
			Ref      string `json:"ref"`
			Envelope string `json:"envelope"`
			Changed  bool   `json:"changed"`
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("output line: %v", err)
		}
		if seen[l.Line] || l.Ref != fmt.Sprintf("r%d", l.Line-1) || !l.Changed {
			t.Fatalf("line %d: duplicate %v, ref %q, changed %v", l.Line, seen[l.Line], l.Ref, l.Changed)
		}
		seen[l.Line] = true
		if l.Line%2500 == 0 {
			if st, body := h.decryptAs(l.Envelope, "miner-1"); st != 200 {
				t.Fatalf("rewrapped line %d: %v", l.Line, body)
			}
		}
	}
	if len(seen) != n {
		t.Fatalf("%d distinct lines in the output, want %d", len(seen), n)
	}
	noLeftovers(t, h)
}

func FuzzParseRewrapLine(f *testing.F) {
	for _, s := range []string{`{"envelope":"custody-envelope","ref":"x"}`, `{"envelope":""}`, `{}`, `null`, `{"envelope":"a"}{}`, `{"envelope":"a","x":1}`, `[1]`, ``} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		env, ref, err := server.ParseRewrapLine(b)
		if err == nil && env == "" {
			t.Fatal("accepted a line without an envelope")
		}
		if err == nil {
			again, _ := json.Marshal(map[string]string{"envelope": env, "ref": ref})
			if e2, r2, err := server.ParseRewrapLine(again); err != nil || e2 != env || r2 != ref {
				t.Fatalf("re-encoded line does not parse the same: %v", err)
			}
		}
	})
}

// TestLifecycleNewNeedsDeviceCapabilities: a server without the device's
// rewrap or proof of possession is refused at construction, not at the
// first request.
func TestLifecycleNewNeedsDeviceCapabilities(t *testing.T) {
	h := newHarness(t)
	log := slog.New(slog.NewTextHandler(testLogOutput(), nil))
	full := server.Deps{Token: h.token, Rewrapper: h.token, Prover: h.token, Keys: h.keys, Policy: h.store, Recorder: h.rec, Log: log}
	if _, err := server.New(full); err != nil {
		t.Fatalf("full deps: %v", err)
	}
	noRewrap, noProve := full, full
	noRewrap.Rewrapper, noProve.Prover = nil, nil
	for name, d := range map[string]server.Deps{"no Rewrapper": noRewrap, "no Prover": noProve} {
		if _, err := server.New(d); err == nil {
			t.Errorf("%s: built", name)
		}
	}
}
