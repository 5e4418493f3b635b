package server_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"custody/hsm"
	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/server"
)

// failingFieldsToken fails every OpenFields after counting it: the device
// going away after the decrypt was authorized and its entry written.
type failingFieldsToken struct {
	server.Token
	calls atomic.Int32
}

func (f *failingFieldsToken) OpenFields(context.Context, hsm.OpenFieldsRequest) ([][]byte, error) {
	f.calls.Add(1)
	return nil, hsm.ErrUnavailable
}

// TestDecryptReleasesOnlyAfterItsEntry: the entry of an envelope v2 decrypt
// is written while the device opens, and the plaintext waits for it. With
// the log holding the entry the answer does not come even though the
// device finished; when the log then fails, the plaintext is dropped
// (log_unavailable).
func TestDecryptReleasesOnlyAfterItsEntry(t *testing.T) {
	h := newHarness(t)
	h.register("client-1", "miner-1")
	env := h.seal("tx-r", "client-1", "miner-1")
	// A first open: the next one caches its DEK, which shows when the
	// device work is done.
	if st, body := h.decryptAs(env, "miner-1"); st != 200 {
		t.Fatalf("first decrypt: %d %v", st, body)
	}
	hold := make(chan struct{})
	h.rec.mu.Lock()
	h.rec.hold = hold
	h.rec.mu.Unlock()
	type answer struct {
		st   int
		body map[string]any
	}
	done := make(chan answer, 1)
	go func() {
		st, body := h.decryptAs(env, "miner-1")
		done <- answer{st, body}
	}()
	// The device work is done once the DEK is cached.
	deadline := time.Now().Add(10 * time.Second)
	for h.token.DEKCacheStats().Entries == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the device never opened the envelope")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case a := <-done:
		t.Fatalf("answered before its entry was kept: %d %v", a.st, a.body)
	case <-time.After(200 * time.Millisecond):
	}
	h.rec.setFail(true)
	close(hold)
	a := <-done
	if a.st != 503 || errCode(a.body) != api.CodeLogUnavailable || a.body["confidential"] != nil {
		t.Fatalf("log failed while the device opened: %d %v, want log_unavailable and no plaintext", a.st, a.body)
	}
}

// TestDecryptDeviceFailsAfterEntry: the allowed entry was written, the
// device then failed; a second entry records the failure and says the
// allowed one was not released.
func TestDecryptDeviceFailsAfterEntry(t *testing.T) {
	tok := &failingFieldsToken{}
	h := newHarnessWith(t, func(d *server.Deps) { tok.Token = d.Token; d.Token = tok })
	h.register("client-1", "miner-1")
	env := h.seal("tx-f", "client-1", "miner-1")
	st, body := h.decryptAs(env, "miner-1")
	if errCode(body) != api.CodeHSMUnavailable || body["confidential"] != nil || tok.calls.Load() != 1 {
		t.Fatalf("device failure: %d %v (device calls %d)", st, body, tok.calls.Load())
	}
	h.rec.mu.Lock()
	entries := append([]auditlog.Entry(nil), h.rec.entries[len(h.rec.entries)-2:]...)
	h.rec.mu.Unlock()
	allowed, failed := entries[0], entries[1]
	if allowed.Operation != "decrypt" || allowed.Outcome != auditlog.Allowed || allowed.TransactionID != "tx-f" || len(allowed.Fields) != 2 {
		t.Fatalf("first entry: %+v, want the allowed decrypt written while the device opened", allowed)
	}
	if failed.Operation != "decrypt" || failed.Outcome != auditlog.Failed || failed.Code != api.CodeHSMUnavailable || !strings.Contains(failed.Detail, "not released") {
		t.Fatalf("second entry: %+v, want the failure saying the allowed entry was not released", failed)
	}
}

// TestDecryptBatchReleasesAfterEveryEntry: a batch's items hand their
// entries to the log while the device works and the batch answers only once
// all of them are kept; when the log fails, no item carries plaintext.
func TestDecryptBatchReleasesAfterEveryEntry(t *testing.T) {
	h := newHarness(t)
	h.register("client-1", "miner-1")
	var items []map[string]any
	for i := range 5 {
		items = append(items, map[string]any{"envelope": h.seal(fmt.Sprintf("tx-b%d", i), "client-1", "miner-1"), "as": "miner-1", "purpose": "settlement"})
	}
	st, body := h.call("POST", "/v1/transactions/decrypt/batch", map[string]any{"items": items})
	if st != 200 {
		t.Fatalf("batch: %d %v", st, body)
	}
	for i, r := range body["results"].([]any) {
		if r.(map[string]any)["result"] == nil {
			t.Fatalf("item %d: %v", i, r)
		}
	}
	h.rec.setFail(true)
	st, body = h.call("POST", "/v1/transactions/decrypt/batch", map[string]any{"items": items})
	if st != 200 {
		t.Fatalf("batch with the log failing: %d %v", st, body)
	}
	for i, r := range body["results"].([]any) {
		m := r.(map[string]any)
		if e, _ := m["error"].(map[string]any); m["result"] != nil || e["code"] != api.CodeLogUnavailable {
			t.Fatalf("item %d with the log failing: %v, want log_unavailable and no result", i, m)
		}
	}
}

// failingSealToken is a token whose field sealing fails.
type failingSealToken struct {
	server.Token
	calls atomic.Int32
}

func (f *failingSealToken) SealFields(context.Context, hsm.SealFieldsRequest) ([][]byte, error) {
	f.calls.Add(1)
	return nil, hsm.ErrUnavailable
}

// TestEncryptReleasesOnlyAfterItsEntry: an encrypt's allowed entry is
// written while the envelope is sealed and the envelope waits for it. An
// application (custody-t-app, through custodyctl as its own Unix user)
// that seals within its grant while the log fails gets no envelope; when
// the sealing fails after the allowed entry, a failed entry says it was
// not released.
func TestEncryptReleasesOnlyAfterItsEntry(t *testing.T) {
	h := newHarness(t)
	h.register("client-1", "miner-1")
	h.rec.setFail(true)
	req := `{"transaction_id":"tx-e1","job_id":"job-tx-e1","confidential":{"amount":"1"},"participants":["miner-1"]}`
	code, out, errOut := h.ctlAs(appUser, req, "encrypt", "-")
	if code == 0 || !strings.Contains(errOut, api.CodeLogUnavailable) || strings.Contains(out, "custody-envelope") {
		t.Fatalf("app user sealing with the log failing: exit %d, stdout %q, stderr %q; want log_unavailable and no envelope", code, out, errOut)
	}
	h.rec.setFail(false)
	if code, out, errOut := h.ctlAs(appUser, req, "encrypt", "-"); code != 0 || !strings.Contains(out, "custody-envelope") {
		t.Fatalf("app user sealing with the log back: exit %d\n%s%s", code, out, errOut)
	}

	tok := &failingSealToken{}
	h = newHarnessWith(t, func(d *server.Deps) { tok.Token = d.Token; d.Token = tok })
	h.register("client-1", "miner-1")
	st, body := h.encrypt("tx-e2", "client-1", "miner-1")
	if errCode(body) != api.CodeHSMUnavailable || body["envelope"] != nil || tok.calls.Load() != 1 {
		t.Fatalf("sealing failure: %d %v (device calls %d)", st, body, tok.calls.Load())
	}
	h.rec.mu.Lock()
	entries := append([]auditlog.Entry(nil), h.rec.entries[len(h.rec.entries)-2:]...)
	h.rec.mu.Unlock()
	allowed, failed := entries[0], entries[1]
	if allowed.Operation != "encrypt" || allowed.Outcome != auditlog.Allowed || allowed.TransactionID != "tx-e2" || allowed.SealedBy == "" {
		t.Fatalf("first entry: %+v, want the allowed encrypt written while sealing", allowed)
	}
	if failed.Operation != "encrypt" || failed.Outcome != auditlog.Failed || failed.Code != api.CodeHSMUnavailable || !strings.Contains(failed.Detail, "not released") {
		t.Fatalf("second entry: %+v, want the failure saying the allowed entry was not released", failed)
	}
}
