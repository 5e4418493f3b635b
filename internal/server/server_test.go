package server_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"custody/hsm/hsmtest"
	"custody/internal/auditlog"
	"custody/internal/envelope"
	"custody/internal/server"
)

func TestEncryptDecryptRoundTrip(t *testing.T) {
	h := newHarness(t)
	h.register("client-456", "miner-789")
	st, body := h.call("POST", "/v1/transactions/encrypt", map[string]any{
		"transaction_id": "tx-1", "job_id": "job-1",
		"public_data":  map[string]any{"job_id": "job-1"},
		"confidential": map[string]any{"amount": "1000", "pricing": map[string]any{"gpu_hour": "2.50"}, "settlement_details": "IBAN"},
		"participants": []string{"client-456", "miner-789"},
	})
	if st != 200 {
		t.Fatalf("encrypt: %d %v", st, body)
	}
	if body["algorithm"] != "AES-256-GCM+X25519" || body["escrow_key_version"] != 1.0 || len(body["recipients"].([]any)) != 2 {
		t.Fatalf("encrypt response: %v", body)
	}
	env := body["envelope"].(string)
	if e := h.rec.last(); e.Operation != "encrypt" || e.Outcome != auditlog.Allowed || e.TransactionID != "tx-1" {
		t.Errorf("encrypt not recorded: %+v", e)
	}

	// settlement sees amount and pricing only.
	st, body = h.call("POST", "/v1/transactions/decrypt", map[string]any{"envelope": env, "as": "miner-789", "purpose": "settlement"})
	if st != 200 {
		t.Fatalf("decrypt: %d %v", st, body)
	}
	conf := body["confidential"].(map[string]any)
	if len(conf) != 2 || conf["amount"] != "1000" || conf["pricing"].(map[string]any)["gpu_hour"] != "2.50" {
		t.Errorf("settlement disclosure: %v", conf)
	}
	if body["transaction_id"] != "tx-1" || body["job_id"] != "job-1" {
		t.Errorf("decrypt ids: %v", body)
	}
	e := h.rec.last()
	if e.Operation != "decrypt" || e.Outcome != auditlog.Allowed || e.Participant != "miner-789" || e.Purpose != "settlement" ||
		strings.Join(e.Fields, ",") != "amount,pricing" || e.KeyLabel != "custody/participant/miner-789/v1" || e.KeyVersion != 1 ||
		e.Principal != "operator" || e.Caller.UID != 0 || e.Caller.PID != int32(os.Getpid()) || e.EndUser.IP != "192.0.2.7" {
		t.Errorf("decrypt entry: %+v", e)
	}
	// Entries never carry values (the test binary's path, which may hold
	// any digits, left out).
	var kept []auditlog.Entry
	for _, e := range h.rec.entries {
		e.Caller.Executable = ""
		kept = append(kept, e)
	}
	raw, _ := json.Marshal(kept)
	if bytes.Contains(raw, []byte("1000")) || bytes.Contains(raw, []byte("IBAN")) {
		t.Errorf("plaintext in the access entries: %s", raw)
	}

	// dispute sees everything; fields narrows.
	_, body = h.call("POST", "/v1/transactions/decrypt", map[string]any{"envelope": env, "as": "client-456", "purpose": "dispute"})
	if conf := body["confidential"].(map[string]any); len(conf) != 3 || conf["settlement_details"] != "IBAN" {
		t.Errorf("dispute disclosure: %v", body)
	}
	_, body = h.call("POST", "/v1/transactions/decrypt", map[string]any{"envelope": env, "as": "client-456", "purpose": "dispute", "fields": []string{"amount"}})
	if conf := body["confidential"].(map[string]any); len(conf) != 1 || conf["amount"] != "1000" {
		t.Errorf("fields=[amount]: %v", body)
	}
	// The transaction id check accepts the right one.
	if st, body := h.call("POST", "/v1/transactions/decrypt", map[string]any{"envelope": env, "as": "client-456", "purpose": "dispute", "transaction_id": "tx-1"}); st != 200 {
		t.Errorf("transaction_id tx-1: %d %v", st, body)
	}
}

func TestParticipants(t *testing.T) {
	h := newHarness(t)
	st, body := h.call("POST", "/v1/participants", map[string]string{"id": "client-1"})
	if st != 200 || body["key_version"] != 1.0 || body["algorithm"] != "X25519" {
		t.Fatalf("register: %d %v", st, body)
	}
	pub, err := base64.StdEncoding.DecodeString(body["public_key"].(string))
	if err != nil || len(pub) != 32 {
		t.Fatalf("public key %q: %v", body["public_key"], err)
	}
	// Registering again is an error, and the key is unchanged.
	if st, body := h.call("POST", "/v1/participants", map[string]string{"id": "client-1"}); st != 409 || errCode(body) != "participant_exists" {
		t.Errorf("second register: %d %v", st, body)
	}
	st, body = h.call("GET", "/v1/participants/client-1", nil)
	if st != 200 || body["active_version"] != 1.0 {
		t.Fatalf("show: %d %v", st, body)
	}
	if v := body["versions"].([]any)[0].(map[string]any); v["public_key"] != base64.StdEncoding.EncodeToString(pub) {
		t.Errorf("public key changed after the refused re-registration: %v", v)
	}
	for _, tc := range []struct {
		method, path string
		body         any
		status       int
		code         string
	}{
		{"GET", "/v1/participants/nobody", nil, 404, "unknown_participant"},
		{"POST", "/v1/participants", map[string]string{"id": "bad/id"}, 400, "invalid_id"},
		{"POST", "/v1/participants", map[string]string{"id": strings.Repeat("a", 200)}, 400, "invalid_id"},
		{"POST", "/v1/participants", map[string]string{"id": ""}, 400, "invalid_id"},
		{"POST", "/v1/participants", `{"id":"x","extra":1}`, 400, "bad_request"},
		{"POST", "/v1/participants", `{"id":`, 400, "bad_request"},
		{"POST", "/v1/participants", `{"id":"a"} {"id":"b"}`, 400, "bad_request"},
		{"DELETE", "/v1/participants", nil, 405, "method_not_allowed"},
		{"GET", "/v1/nothing", nil, 404, "not_found"},
	} {
		st, body := h.call(tc.method, tc.path, tc.body)
		if st != tc.status || errCode(body) != tc.code {
			t.Errorf("%s %s %v: got %d %v, want %d %s", tc.method, tc.path, tc.body, st, body, tc.status, tc.code)
		}
	}
}

// TestRealUsers calls the daemon through custodyctl as real Unix users.
func TestRealUsers(t *testing.T) {
	h := newHarness(t)
	h.register("client-456", "miner-789")
	env := h.seal("tx-u", "client-456", "miner-789")
	req := func(as, purpose string) string {
		b, _ := json.Marshal(map[string]any{"envelope": env, "as": as, "purpose": purpose})
		return string(b)
	}

	code, out, errOut := h.ctlAs(appUser, req("miner-789", "settlement"), "decrypt", "-")
	if code != 0 || !strings.Contains(out, `amount: "1000"`) || strings.Contains(out, "settlement_details") {
		t.Fatalf("app user decrypt: exit %d\n%s%s", code, out, errOut)
	}
	if e := h.rec.last(); e.Principal != "settlement-app" || e.Caller.UID != uid(appUser) || !strings.HasSuffix(e.Caller.Executable, "/custodyctl") {
		t.Errorf("entry for the app user: %+v", e)
	}
	for _, tc := range []struct {
		user, as, purpose, code string
	}{
		{appUser, "client-456", "settlement", "not_participant"},
		{appUser, "miner-789", "dispute", "purpose_denied"},
		{otherUser, "miner-789", "settlement", "unknown_caller"},
	} {
		code, out, errOut := h.ctlAs(tc.user, req(tc.as, tc.purpose), "decrypt", "-")
		if code != 1 || !strings.Contains(errOut, tc.code+":") || strings.Contains(out, "1000") {
			t.Errorf("%s as %s for %s: exit %d, stdout %q, stderr %q; want code %s", tc.user, tc.as, tc.purpose, code, out, errOut, tc.code)
		}
		if e := h.rec.last(); e.Outcome != auditlog.Denied || e.Code != tc.code || e.Caller.UID != uid(tc.user) {
			t.Errorf("denial not recorded as such: %+v", e)
		}
	}
	// The app user is not an admin, the other user is nobody.
	if code, _, errOut := h.ctlAs(appUser, "", "participants", "register", "miner-x"); code != 1 || !strings.Contains(errOut, "permission_denied") {
		t.Errorf("app user register: exit %d %s", code, errOut)
	}
	if code, _, errOut := h.ctlAs(otherUser, "", "health"); code != 1 || !strings.Contains(errOut, "unknown_caller") {
		t.Errorf("other user health: exit %d %s", code, errOut)
	}
	if code, out, errOut := h.ctlAs(appUser, "", "health"); code != 0 || !strings.Contains(out, "you are:      settlement-app") {
		t.Errorf("app user health: exit %d %s %s", code, out, errOut)
	}
}

func uid(name string) uint32 {
	var n uint32
	fmt.Sscan(users[name].Uid, &n)
	return n
}

func TestPolicyDenials(t *testing.T) {
	h := newHarness(t)
	h.register("client-1", "miner-1", "other-1")
	env := h.seal("tx-p", "client-1", "miner-1")
	envOther := h.seal("tx-o", "other-1")
	for _, tc := range []struct {
		name string
		req  map[string]any
		code string
	}{
		{"unknown purpose", map[string]any{"as": "miner-1", "purpose": "marketing"}, "purpose_denied"},
		{"participant not granted", map[string]any{"as": "other-1", "purpose": "settlement", "envelope": envOther}, "not_participant"},
		{"field not visible", map[string]any{"as": "miner-1", "purpose": "settlement", "fields": []string{"settlement_details"}}, "field_denied"},
		{"outside window", map[string]any{"as": "client-1", "purpose": "night-audit"}, "outside_window"},
		{"not a recipient", map[string]any{"as": "miner-2", "purpose": "settlement"}, "not_recipient"},
		{"transaction mismatch", map[string]any{"as": "miner-1", "purpose": "settlement", "transaction_id": "tx-other"}, "transaction_mismatch"},
		{"invalid as", map[string]any{"as": "../x", "purpose": "settlement"}, "invalid_id"},
		{"missing purpose", map[string]any{"as": "miner-1"}, "bad_request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, ok := tc.req["envelope"]; !ok {
				tc.req["envelope"] = env
			}
			st, body := h.call("POST", "/v1/transactions/decrypt", tc.req)
			if st == 200 || errCode(body) != tc.code {
				t.Fatalf("got %d %v, want %s", st, body, tc.code)
			}
			if _, leaked := body["confidential"]; leaked {
				t.Fatalf("denied request released data: %v", body)
			}
		})
	}
	// Inside the window the same grant works: Sunday 02:30 UTC.
	h.now = time.Date(2026, 11, 29, 2, 30, 0, 0, time.UTC)
	if st, body := h.call("POST", "/v1/transactions/decrypt", map[string]any{"envelope": env, "as": "client-1", "purpose": "night-audit"}); st != 200 {
		t.Errorf("inside the window: %d %v", st, body)
	}
}

// TestTamperedEnvelopes: every alteration is refused with its own code and
// the daemon keeps serving.
func TestTamperedEnvelopes(t *testing.T) {
	h := newHarness(t)
	h.register("client-1", "miner-1", "miner-2")
	// Envelope v1 (the tampering of v2 fields is in v2_test.go).
	text := h.sealV1("tx-a", "client-1", "miner-1")
	orig, err := envelope.ParseText(text)
	if err != nil {
		t.Fatal(err)
	}
	raw := orig.Marshal()
	other, _ := envelope.ParseText(h.sealV1("tx-b", "client-1", "miner-1"))

	flipAt := func(needle []byte, off int) string {
		i := bytes.Index(raw, needle)
		if i < 0 {
			t.Fatal("needle not found")
		}
		b := bytes.Clone(raw)
		b[i+off] ^= 0x01
		return base64.RawURLEncoding.EncodeToString(b)
	}
	reencode := func(mut func(e *envelope.Envelope)) string {
		e, _ := envelope.Parse(raw)
		mut(e)
		return e.Text()
	}
	stanza, _ := orig.ParticipantStanza("miner-1")
	cases := []struct {
		name, envelope, code string
	}{
		{"ciphertext byte", flipAt(orig.Ciphertext, 3), "integrity_failure"},
		{"tag byte", flipAt(orig.Ciphertext, len(orig.Ciphertext)-1), "integrity_failure"},
		{"signature byte", flipAt(orig.Signature, 10), "signature_invalid"},
		{"header byte (transaction id)", flipAt([]byte("tx-a"), 0), "signature_invalid"},
		{"stanza wrapped DEK byte", flipAt(orig.Header.Stanzas[stanza].WrappedDEK, 5), "signature_invalid"},
		{"stanza ephemeral key byte", flipAt(orig.Header.Stanzas[stanza].EphemeralPublic, 0), "signature_invalid"},
		{"escrow stanza removed", reencode(func(e *envelope.Envelope) {
			e.Header.Stanzas = e.Header.Stanzas[:len(e.Header.Stanzas)-1]
		}), "malformed_envelope"},
		{"escrow stanza turned participant", reencode(func(e *envelope.Envelope) {
			s := &e.Header.Stanzas[len(e.Header.Stanzas)-1]
			s.Kind, s.ParticipantID = envelope.StanzaParticipant, "miner-2"
			e.Header.Participants = append(e.Header.Participants, "miner-2")
		}), "malformed_envelope"},
		{"recipient removed", reencode(func(e *envelope.Envelope) {
			e.Header.Participants = e.Header.Participants[1:]
			e.Header.Stanzas = e.Header.Stanzas[1:]
		}), "signature_invalid"},
		{"recipient added", reencode(func(e *envelope.Envelope) {
			s := e.Header.Stanzas[stanza]
			s.ParticipantID = "miner-2"
			e.Header.Participants = append([]string{"miner-2"}, e.Header.Participants...)
			e.Header.Stanzas = append([]envelope.Stanza{s}, e.Header.Stanzas...)
		}), "signature_invalid"},
		{"public fields changed", reencode(func(e *envelope.Envelope) {
			e.Header.PublicFields = []byte(`{"job_id":"job-tx-a","status":"refunded"}`)
		}), "signature_invalid"},
		{"payload of another transaction", reencode(func(e *envelope.Envelope) {
			e.Nonce, e.Ciphertext = other.Nonce, other.Ciphertext
		}), "integrity_failure"},
		{"truncated", base64.RawURLEncoding.EncodeToString(raw[:len(raw)/2]), "malformed_envelope"},
		{"empty", "", "bad_request"},
		{"not base64", "!!!!", "malformed_envelope"},
		{"unknown version", flipVersion(raw), "unsupported_version"},
		{"oversized", base64.RawURLEncoding.EncodeToString(append(bytes.Clone(raw), make([]byte, envelope.MaxEnvelopeSize)...)), "envelope_too_large"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, body := h.call("POST", "/v1/transactions/decrypt", map[string]any{"envelope": tc.envelope, "as": "miner-1", "purpose": "settlement"})
			if st == 200 || errCode(body) != tc.code {
				t.Fatalf("got %d %v, want %s", st, body, tc.code)
			}
			if e := h.rec.last(); e.Operation != "decrypt" || e.Outcome != auditlog.Failed || e.Code != tc.code {
				t.Errorf("failure not recorded: %+v", e)
			}
		})
	}
	// Still serving, and the original still opens.
	if st, body := h.call("POST", "/v1/transactions/decrypt", map[string]any{"envelope": text, "as": "miner-1", "purpose": "settlement"}); st != 200 {
		t.Fatalf("original after tampering: %d %v", st, body)
	}
	if n, err := h.token.SessionObjectCount(t.Context()); err != nil || n != 0 {
		t.Errorf("session objects left on the token: %d, %v", n, err)
	}
}

// flipVersion changes the format version byte, which follows the 12-byte
// magic (docs/envelope.md).
func flipVersion(raw []byte) string {
	b := bytes.Clone(raw)
	if b[12] != envelope.Version1 && b[12] != envelope.Version2 {
		panic("the version byte moved: update flipVersion")
	}
	b[12] = 0x7f
	return base64.RawURLEncoding.EncodeToString(b)
}

func TestEncryptValidation(t *testing.T) {
	h := newHarness(t)
	h.register("client-1")
	base := func() map[string]any {
		return map[string]any{"transaction_id": "tx-1", "job_id": "job-1", "confidential": map[string]any{"amount": "1"}, "participants": []string{"client-1"}}
	}
	for _, tc := range []struct {
		name string
		mut  func(m map[string]any)
		code string
	}{
		{"unknown participant", func(m map[string]any) { m["participants"] = []string{"client-1", "ghost"} }, "unknown_participant"},
		{"no participants", func(m map[string]any) { m["participants"] = []string{} }, "bad_request"},
		{"duplicate participant", func(m map[string]any) { m["participants"] = []string{"client-1", "client-1"} }, "bad_request"},
		{"bad transaction id", func(m map[string]any) { m["transaction_id"] = "tx 1" }, "invalid_id"},
		{"missing job id", func(m map[string]any) { delete(m, "job_id") }, "invalid_id"},
		{"confidential not an object", func(m map[string]any) { m["confidential"] = []int{1} }, "bad_request"},
		{"confidential missing", func(m map[string]any) { delete(m, "confidential") }, "bad_request"},
		{"public data not an object", func(m map[string]any) { m["public_data"] = "x" }, "bad_request"},
		{"unknown field", func(m map[string]any) { m["confidental"] = 1 }, "bad_request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := base()
			tc.mut(m)
			st, body := h.call("POST", "/v1/transactions/encrypt", m)
			if st == 200 || errCode(body) != tc.code {
				t.Fatalf("got %d %v, want %s", st, body, tc.code)
			}
		})
	}
	// Oversized body.
	big := fmt.Sprintf(`{"transaction_id":"tx","job_id":"j","participants":["client-1"],"confidential":{"x":%q}}`, strings.Repeat("a", 5<<20))
	if st, body := h.call("POST", "/v1/transactions/encrypt", big); st != 413 || errCode(body) != "body_too_large" {
		t.Errorf("oversized body: %d %v", st, body)
	}
}

func TestBatch(t *testing.T) {
	h := newHarness(t)
	h.register("client-1", "miner-1")
	items := []map[string]any{}
	for i := range 6 {
		items = append(items, map[string]any{"transaction_id": fmt.Sprintf("tx-%d", i), "job_id": "job", "confidential": map[string]any{"amount": i}, "participants": []string{"client-1", "miner-1"}})
	}
	items[2]["participants"] = []string{"ghost"}
	st, body := h.call("POST", "/v1/transactions/encrypt/batch", map[string]any{"items": items})
	if st != 200 {
		t.Fatalf("encrypt batch: %d %v", st, body)
	}
	results := body["results"].([]any)
	var decItems []map[string]any
	for i, r := range results {
		r := r.(map[string]any)
		if i == 2 {
			if errCode(r) != "unknown_participant" {
				t.Errorf("item 2: %v", r)
			}
			continue
		}
		res := r["result"].(map[string]any)
		if res["transaction_id"] != fmt.Sprintf("tx-%d", i) {
			t.Errorf("item %d out of order: %v", i, res)
		}
		decItems = append(decItems, map[string]any{"envelope": res["envelope"], "as": "miner-1", "purpose": "settlement", "transaction_id": res["transaction_id"]})
	}
	decItems = append(decItems, map[string]any{"envelope": "garbage", "as": "miner-1", "purpose": "settlement"})
	st, body = h.call("POST", "/v1/transactions/decrypt/batch", map[string]any{"items": decItems})
	if st != 200 {
		t.Fatalf("decrypt batch: %d %v", st, body)
	}
	results = body["results"].([]any)
	for i, r := range results[:len(results)-1] {
		res := r.(map[string]any)["result"].(map[string]any)
		if res["transaction_id"] != decItems[i]["transaction_id"] || res["confidential"].(map[string]any)["amount"] == nil {
			t.Errorf("decrypt item %d: %v", i, res)
		}
	}
	if errCode(results[len(results)-1].(map[string]any)) != "malformed_envelope" {
		t.Errorf("bad item: %v", results[len(results)-1])
	}
	many := make([]map[string]any, 51)
	if st, body := h.call("POST", "/v1/transactions/decrypt/batch", map[string]any{"items": many}); st != 413 || errCode(body) != "batch_too_large" {
		t.Errorf("too many items: %d %v", st, body)
	}
	if st, body := h.call("POST", "/v1/transactions/decrypt/batch", map[string]any{"items": []any{}}); st != 400 || errCode(body) != "bad_request" {
		t.Errorf("empty batch: %d %v", st, body)
	}
}

// TestLogUnavailable: when the decision cannot be recorded, nothing is released.
func TestLogUnavailable(t *testing.T) {
	h := newHarness(t)
	h.register("client-1")
	env := h.seal("tx-1", "client-1")
	h.rec.setFail(true)
	st, body := h.call("POST", "/v1/transactions/decrypt", map[string]any{"envelope": env, "as": "client-1", "purpose": "dispute"})
	if st != 503 || errCode(body) != "log_unavailable" || body["confidential"] != nil {
		t.Fatalf("got %d %v", st, body)
	}
	if st, body := h.call("POST", "/v1/participants", map[string]string{"id": "client-2"}); st != 503 || errCode(body) != "log_unavailable" {
		t.Errorf("register with the log down: %d %v", st, body)
	}
	h.rec.setFail(false)
	if st, _ := h.call("POST", "/v1/transactions/decrypt", map[string]any{"envelope": env, "as": "client-1", "purpose": "dispute"}); st != 200 {
		t.Errorf("after the log came back: %d", st)
	}
}

// TestSessionsLost closes every session of the token from another PKCS#11
// handle in this process, as an HSM failover would; the next requests succeed.
func TestSessionsLost(t *testing.T) {
	h := newHarness(t)
	h.register("client-1")
	env := h.seal("tx-1", "client-1")
	decrypt := func() (int, map[string]any) {
		return h.call("POST", "/v1/transactions/decrypt", map[string]any{"envelope": env, "as": "client-1", "purpose": "dispute"})
	}
	if st, _ := decrypt(); st != 200 {
		t.Fatal("before the loss")
	}
	before := h.token.Info().Rebuilds
	closeAllSessions(t, h.cfg.TokenLabel)
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if st, body := decrypt(); st != 200 {
				errs <- fmt.Sprint(st, body)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("request after the loss: %s", e)
	}
	if got := h.token.Info().Rebuilds; got != before+1 {
		t.Errorf("rebuilds %d → %d, want exactly one", before, got)
	}
	if st, body := h.call("GET", "/v1/health", nil); st != 200 || body["status"] != "ok" {
		t.Errorf("health after recovery: %v", body)
	}
}

func closeAllSessions(t *testing.T, label string) {
	t.Helper()
	p := pkcs11.New(hsmtest.ModulePath())
	if p == nil {
		t.Fatal("cannot load the PKCS#11 module")
	}
	if err := p.Initialize(); err != nil && err != pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		t.Fatal(err)
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err == nil && strings.TrimRight(ti.Label, " ") == label {
			if err := p.CloseAllSessions(s); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("token %q not found", label)
}

func TestHealth(t *testing.T) {
	h := newHarness(t)
	st, body := h.call("GET", "/v1/health", nil)
	if st != 200 || body["status"] != "ok" || body["you"] != "operator" {
		t.Fatalf("health: %d %v", st, body)
	}
	caps := body["capabilities"].(map[string]any)
	if caps["X25519"] != "softhsm-edwards-oid" || caps["HKDF"] != false {
		t.Errorf("SoftHSM 2.6 capabilities: %v", caps)
	}
	if !strings.HasPrefix(body["escrow_key"].(string), "custody/escrow/v1 sha256:") || body["signing_key"] != "custody/signing/v1" {
		t.Errorf("daemon keys: %v", body)
	}
}

func TestStaleSocket(t *testing.T) {
	h := newHarness(t)
	// A live daemon is not displaced.
	if _, err := server.Listen(h.socket, 0o640); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Errorf("listening over a live socket: %v", err)
	}
	// A regular file is never removed.
	path := h.dir + "/not-a-socket"
	os.WriteFile(path, []byte("x"), 0o600)
	if _, err := server.Listen(path, 0o640); err == nil {
		t.Error("listened over a regular file")
	}
	// A dead socket is replaced, and the mode is exact.
	dead := h.dir + "/dead.sock"
	l, err := net.Listen("unix", dead)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	ln, err := server.Listen(dead, 0o640)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	defer ln.Close()
	fi, _ := os.Stat(dead)
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("socket mode %v, want 0640", fi.Mode().Perm())
	}
}
