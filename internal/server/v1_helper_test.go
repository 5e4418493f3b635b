package server_test

import (
	"context"
	"testing"

	"custody/hsm"
	"custody/internal/envelope"
)

// sealV1 seals the same standard transaction as h.seal, but as an envelope
// version 1 (as daemons before envelope v2 did), with the daemon's own keys:
// v1 envelopes must keep opening, rewrapping and audit-decrypting.
func (h *harness) sealV1(txid string, participants ...string) string {
	h.t.Helper()
	return h.sealV1With(txid, []byte(`{"amount":"1000","pricing":{"per_hour":2.5},"settlement_details":"IBAN DE00"}`), participants...)
}

// sealV1With is sealV1 with the given confidential plaintext (canonical JSON).
func (h *harness) sealV1With(txid string, plaintext []byte, participants ...string) string {
	h.t.Helper()
	var rs []envelope.Recipient
	for _, id := range participants {
		v, err := h.keys.Active(id)
		if err != nil {
			h.t.Fatal(err)
		}
		rs = append(rs, envelope.Recipient{ID: id, KeyVersion: v.Number, Alg: v.Alg, Public: v.Public})
	}
	esc, err := h.keys.Escrow()
	if err != nil {
		h.t.Fatal(err)
	}
	signer, err := h.keys.Signer()
	if err != nil {
		h.t.Fatal(err)
	}
	env, err := envelope.Seal(context.Background(), envelope.SealInput{
		TransactionID: txid, JobID: "job-" + txid,
		PublicFields: []byte(`{"job_id":"job-` + txid + `","status":"completed"}`),
		Plaintext:    plaintext,
		Participants: rs,
		Escrow:       envelope.Recipient{KeyVersion: esc.Number, Alg: esc.Alg, Public: esc.Public},
		CreatedAt:    h.now,
	}, signer)
	if err != nil {
		h.t.Fatal(err)
	}
	return env.Text()
}

// openEscrowAll opens every field of env (either version) through its
// escrow stanza directly on tok, and returns the v1 plaintext or the v2
// field values joined.
func openEscrowAll(t testing.TB, tok *hsm.Token, env *envelope.Envelope, label string, public []byte) []byte {
	t.Helper()
	ctx := context.Background()
	if env.Header.Version == envelope.Version1 {
		pt, err := tok.Open(ctx, env.OpenRequest(env.EscrowStanza(), label, public))
		if err != nil {
			t.Fatal(err)
		}
		return pt
	}
	idx := make([]int, len(env.Fields))
	for i := range idx {
		idx[i] = i
	}
	req, err := env.OpenFieldsRequest(env.EscrowStanza(), label, public, idx)
	if err != nil {
		t.Fatal(err)
	}
	pts, err := tok.OpenFields(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	for _, p := range pts {
		out = append(out, p...)
	}
	return out
}
