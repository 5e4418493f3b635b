package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"testing"

	"custody/hsm"
	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/envelope"
	"custody/internal/orders/vaulttest"
	"custody/internal/server"
)

// fieldSpy records what the device is asked to open.
type fieldSpy struct {
	server.Token
	mu     sync.Mutex
	fields [][][32]byte // per OpenFields call: the field-key contexts
	opens  int          // version-1 opens
}

func (s *fieldSpy) Open(ctx context.Context, req hsm.OpenRequest) ([]byte, error) {
	s.mu.Lock()
	s.opens++
	s.mu.Unlock()
	return s.Token.Open(ctx, req)
}

func (s *fieldSpy) OpenFields(ctx context.Context, req hsm.OpenFieldsRequest) ([][]byte, error) {
	var cs [][32]byte
	for _, f := range req.Fields {
		cs = append(cs, f.Context)
	}
	s.mu.Lock()
	s.fields = append(s.fields, cs)
	s.mu.Unlock()
	return s.Token.OpenFields(ctx, req)
}

// TestDecryptV2OpensOnlyVisibleFields: a purpose that may see amount and
// pricing causes exactly those two field keys to be derived on the device;
// settlement_details is never decrypted. The answers and the access log
// carry sealed_by.
func TestDecryptV2OpensOnlyVisibleFields(t *testing.T) {
	spy := &fieldSpy{}
	h := newHarnessWith(t, func(d *server.Deps) { spy.Token = d.Token; d.Token = spy })
	h.register("client-1", "miner-1")
	st, body := h.call("POST", "/v1/transactions/encrypt", map[string]any{
		"transaction_id": "tx-v2", "job_id": "job-v2",
		"confidential": map[string]any{"amount": "1000", "pricing": map[string]any{"per_hour": 2.5}, "settlement_details": "IBAN DE00",
			"counterparty": "ACME", "notes": "n"},
		"participants": []string{"client-1", "miner-1"},
	})
	if st != 200 || body["sealed_by"] != "operator" {
		t.Fatalf("encrypt: %d %v", st, body)
	}
	if e := h.rec.last(); e.Operation != "encrypt" || e.SealedBy != "operator" {
		t.Errorf("encrypt entry %+v", e)
	}
	text := body["envelope"].(string)
	env, err := envelope.ParseText(text)
	if err != nil {
		t.Fatal(err)
	}
	if env.Header.Version != envelope.Version2 || env.Header.SealedBy != "operator" ||
		strings.Join(env.Header.FieldNames, ",") != "amount,counterparty,notes,pricing,settlement_details" {
		t.Fatalf("header %+v", env.Header)
	}
	st, body = h.decryptAs(text, "miner-1")
	if st != 200 || body["sealed_by"] != "operator" {
		t.Fatalf("decrypt: %d %v", st, body)
	}
	if got := confidential(t, body); got != `{"amount":"1000","pricing":{"per_hour":2.5}}` {
		t.Fatalf("confidential %s", got)
	}
	spy.mu.Lock()
	calls, opens := spy.fields, spy.opens
	spy.mu.Unlock()
	want := [][32]byte{env.FieldKeyContext("amount"), env.FieldKeyContext("pricing")}
	if len(calls) != 1 || !slices.Equal(calls[0], want) || opens != 0 {
		t.Fatalf("device asked for %d field sets (%v) and %d v1 opens; want exactly amount and pricing", len(calls), calls, opens)
	}
	if e := h.rec.last(); e.SealedBy != "operator" || strings.Join(e.Fields, ",") != "amount,pricing" {
		t.Errorf("decrypt entry %+v", e)
	}
	// Asking for one field derives one key.
	st, body = h.call("POST", "/v1/transactions/decrypt", map[string]any{"envelope": text, "as": "miner-1", "purpose": "settlement", "fields": []string{"pricing"}})
	if st != 200 || confidential(t, body) != `{"pricing":{"per_hour":2.5}}` {
		t.Fatalf("one field: %d %v", st, body)
	}
	spy.mu.Lock()
	last := spy.fields[len(spy.fields)-1]
	spy.mu.Unlock()
	if !slices.Equal(last, [][32]byte{env.FieldKeyContext("pricing")}) {
		t.Fatalf("one field: device asked for %v", last)
	}
}

// tamperV2 seals a standard v2 transaction as root, changes it with mut, and
// has the application user custody-t-app (who may decrypt as miner-1 for
// settlement) present it through custodyctl. It asserts that the decrypt
// fails with code, that nothing confidential is printed, and that the
// failure is recorded.
func tamperV2(t *testing.T, code string, mut func(h *harness, e *envelope.Envelope)) {
	h := newHarness(t)
	h.register("client-1", "miner-1")
	e, err := envelope.ParseText(h.seal("tx-v2", "client-1", "miner-1"))
	if err != nil {
		t.Fatal(err)
	}
	mut(h, e)
	req, _ := json.Marshal(map[string]any{"envelope": e.Text(), // Text does not validate: malformed changes reach the daemon as they are
		"as": "miner-1", "purpose": "settlement"})
	exit, out, errOut := h.ctlAs(appUser, string(req), "decrypt", "-")
	if exit != 1 || !strings.Contains(errOut, code+":") || strings.Contains(out, "1000") {
		t.Fatalf("tampered envelope: exit %d, stdout %q, stderr %q; want %s", exit, out, errOut, code)
	}
	if en := h.rec.last(); en.Operation != "decrypt" || en.Outcome != auditlog.Failed || en.Code != code || en.Caller.UID != uid(appUser) {
		t.Errorf("failure recorded as %+v", en)
	}
	if n, err := h.token.SessionObjectCount(t.Context()); err != nil || n != 0 {
		t.Errorf("session objects left on the token: %d, %v", n, err)
	}
}

func TestDecryptV2SwapFields(t *testing.T) {
	tamperV2(t, api.CodeSignatureInvalid, func(_ *harness, e *envelope.Envelope) {
		a, b := e.FieldIndex("amount"), e.FieldIndex("settlement_details")
		e.Fields[a], e.Fields[b] = e.Fields[b], e.Fields[a]
	})
}

func TestDecryptV2FieldFromOtherEnvelope(t *testing.T) {
	tamperV2(t, api.CodeSignatureInvalid, func(h *harness, e *envelope.Envelope) {
		other, err := envelope.ParseText(h.seal("tx-v2", "client-1", "miner-1")) // the same transaction, sealed again
		if err != nil {
			t.Fatal(err)
		}
		a := e.FieldIndex("amount")
		e.Fields[a] = other.Fields[a]
	})
}

func TestDecryptV2DropField(t *testing.T) {
	tamperV2(t, api.CodeSignatureInvalid, func(_ *harness, e *envelope.Envelope) {
		d := e.FieldIndex("settlement_details")
		e.Header.FieldNames = slices.Delete(e.Header.FieldNames, d, d+1)
		e.Fields = slices.Delete(e.Fields, d, d+1)
	})
}

func TestDecryptV2ReorderFields(t *testing.T) {
	tamperV2(t, api.CodeMalformedEnvelope, func(_ *harness, e *envelope.Envelope) {
		n := e.Header.FieldNames
		n[0], n[1] = n[1], n[0]
		e.Fields[0], e.Fields[1] = e.Fields[1], e.Fields[0]
	})
}

func TestDecryptV2ReorderCiphertexts(t *testing.T) {
	tamperV2(t, api.CodeSignatureInvalid, func(_ *harness, e *envelope.Envelope) {
		e.Fields = append(e.Fields[1:], e.Fields[0])
	})
}

func TestDecryptV2ChangedSealedBy(t *testing.T) {
	tamperV2(t, api.CodeSignatureInvalid, func(_ *harness, e *envelope.Envelope) {
		e.Header.SealedBy = "settlement-app"
	})
}

func TestEncryptV2BadInput(t *testing.T) {
	h := newHarness(t)
	h.register("client-1")
	many := map[string]any{}
	for i := range envelope.MaxFields + 1 {
		many[strings.Repeat("f", i+1)] = 1
	}
	for _, tc := range []struct {
		name, confidential, code string
	}{
		{"empty object", `{}`, api.CodeBadRequest},
		{"duplicate field", `{"amount":"1","amount":"2"}`, api.CodeBadRequest},
		{"name too long", `{"` + strings.Repeat("n", envelope.MaxFieldName+1) + `":1}`, api.CodeBadRequest},
		{"name with a control character", `{"am\u001bount":1}`, api.CodeBadRequest},
		{"too many fields", mustJSON(t, many), api.CodeEnvelopeTooLarge},
	} {
		body := `{"transaction_id":"tx-1","job_id":"job-1","participants":["client-1"],"confidential":` + tc.confidential + `}`
		st, out := h.callRaw("POST", "/v1/transactions/encrypt", body)
		var res map[string]any
		_ = json.Unmarshal(out, &res)
		if st == 200 || errCode(res) != tc.code {
			t.Errorf("%s: %d %s, want %s", tc.name, st, out, tc.code)
		}
	}
	// A name that is not UTF-8 is not JSON the daemon accepts.
	st, out := h.callRaw("POST", "/v1/transactions/encrypt", []byte("{\"transaction_id\":\"tx-1\",\"job_id\":\"job-1\",\"participants\":[\"client-1\"],\"confidential\":{\"a\xff\":1}}"))
	if st != 400 {
		t.Errorf("name not UTF-8: %d %s", st, out)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestV1StillServed: a version-1 envelope (sealed before v2) still opens,
// and a rewrap keeps it version 1 with its payload byte-identical. A
// version-2 rewrap leaves every field's nonce and ciphertext identical.
func TestV1StillServed(t *testing.T) {
	h := newHarness(t)
	h.register("client-1", "miner-1")
	v1 := h.sealV1("tx-1", "client-1", "miner-1")
	v2 := h.seal("tx-2", "client-1", "miner-1")
	st, body := h.decryptAs(v1, "miner-1")
	if st != 200 || confidential(t, body) != `{"amount":"1000","pricing":{"per_hour":2.5}}` {
		t.Fatalf("v1 decrypt: %d %v", st, body)
	}
	if _, ok := body["sealed_by"]; ok {
		t.Errorf("v1 decrypt names a sealer: %v", body)
	}
	if st, body := h.call("POST", "/v1/keys/miner-1/rotate", struct{}{}); st != 200 {
		t.Fatalf("rotate: %d %v", st, body)
	}
	st, body = h.call("POST", "/v1/envelopes/rewrap", map[string]any{"items": []map[string]string{{"envelope": v1}, {"envelope": v2}}})
	if st != 200 {
		t.Fatalf("rewrap: %d %v", st, body)
	}
	res := body["results"].([]any)
	get := func(i int) *envelope.Envelope {
		r, _ := res[i].(map[string]any)["result"].(map[string]any)
		if r == nil || r["changed"] != true {
			t.Fatalf("rewrap result %d: %v", i, res[i])
		}
		e, err := envelope.ParseText(r["envelope"].(string))
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	old1, _ := envelope.ParseText(v1)
	new1 := get(0)
	if new1.Header.Version != envelope.Version1 || !bytes.Equal(old1.Nonce, new1.Nonce) || !bytes.Equal(old1.Ciphertext, new1.Ciphertext) {
		t.Fatal("v1 rewrap changed the version or the payload")
	}
	old2, _ := envelope.ParseText(v2)
	new2 := get(1)
	if new2.Header.Version != envelope.Version2 || new2.Header.SealedBy != "operator" || len(new2.Fields) != len(old2.Fields) {
		t.Fatalf("v2 rewrap header %+v", new2.Header)
	}
	for i := range old2.Fields {
		if !bytes.Equal(old2.Fields[i].Nonce, new2.Fields[i].Nonce) || !bytes.Equal(old2.Fields[i].Ciphertext, new2.Fields[i].Ciphertext) {
			t.Fatalf("v2 rewrap changed field %s", old2.Header.FieldNames[i])
		}
	}
	if i, _ := new2.ParticipantStanza("miner-1"); new2.Header.Stanzas[i].KeyVersion != 2 {
		t.Fatal("miner-1 stanza not moved")
	}
	for _, e := range []*envelope.Envelope{new1, new2} {
		if st, body := h.decryptAs(e.Text(), "miner-1"); st != 200 || confidential(t, body) != `{"amount":"1000","pricing":{"per_hour":2.5}}` {
			t.Fatalf("rewrapped v%d: %d %v", e.Header.Version, st, body)
		}
	}
}

// TestAuditDecryptV1AndV2: under a court order both versions open through
// the escrow stanza with every field; v2 answers and records sealed_by.
func TestAuditDecryptV1AndV2(t *testing.T) {
	a := newAuditHarness(t, vaulttest.Shared(t))
	o := a.order()
	a.issue(o, 2)
	for _, tc := range []struct {
		env, sealedBy string
	}{
		{a.sealV1("tx-1", "client-1", "miner-1"), ""},
		{a.seal("tx-1", "client-1", "miner-1"), "operator"},
	} {
		st, body := a.audit(tc.env, o.ID, "tax-investigation")
		if st != 200 {
			t.Fatalf("%d %v", st, body)
		}
		conf := body["confidential"].(map[string]any)
		if conf["amount"] != "1000" || conf["settlement_details"] != "IBAN DE00" || conf["pricing"] == nil {
			t.Fatalf("confidential %v: want every field", conf)
		}
		if got, _ := body["sealed_by"].(string); got != tc.sealedBy {
			t.Errorf("sealed_by %q, want %q", got, tc.sealedBy)
		}
		if e := a.rec.last(); e.Operation != "audit-decrypt" || e.Outcome != auditlog.Allowed || e.SealedBy != tc.sealedBy {
			t.Errorf("entry %+v", e)
		}
	}
}

// TestEncryptV2Compress: with "compress": true a large field is stored
// compressed (inspect shows the smaller sealed size) and decrypts to the
// same value; without it the same field is stored as it is.
func TestEncryptV2Compress(t *testing.T) {
	h := newHarness(t)
	h.register("client-1")
	var lines []string
	for i := range 60 {
		lines = append(lines, `{"node":"fra-2-n0`+strings.Repeat("1", i%3+1)+`","qty":400,"sku":"gpu-h100-hour","unit_price":"2.50"}`)
	}
	doc := `{"iban":"DE89370400440532013000","lines":[` + strings.Join(lines, ",") + `]}`
	size := func(compress bool) float64 {
		st, out := h.call("POST", "/v1/transactions/encrypt", map[string]any{"transaction_id": "tx-z", "job_id": "job-z",
			"confidential": map[string]any{"amount": "1", "settlement_details": json.RawMessage(doc)}, "participants": []string{"client-1"}, "compress": compress})
		if st != 200 {
			t.Fatalf("encrypt: %d %v", st, out)
		}
		env := out["envelope"].(string)
		st, body := h.call("POST", "/v1/transactions/decrypt", map[string]any{"envelope": env, "as": "client-1", "purpose": "dispute"})
		if st != 200 {
			t.Fatalf("decrypt: %d %v", st, body)
		}
		got, _ := json.Marshal(body["confidential"].(map[string]any)["settlement_details"])
		want, _ := envelope.CanonicalJSON([]byte(doc))
		if !bytes.Equal(got, want) {
			t.Fatalf("compress=%v: decrypted %s", compress, got)
		}
		_, ins := h.call("POST", "/v1/envelopes/inspect", map[string]string{"envelope": env})
		return ins["fields"].([]any)[1].(map[string]any)["size"].(float64)
	}
	plain, packed := size(false), size(true)
	if packed >= plain/2 {
		t.Fatalf("sealed sizes: %v uncompressed, %v compressed", plain, packed)
	}
}
