package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"custody/internal/envelope"
)

// benchConfidential is a settlement record with five top-level fields, of
// which the settlement purpose sees two (amount, pricing).
const benchConfidential = `{"amount":"1250000.00","counterparty":{"name":"ACME Compute GmbH","lei":"5299000J2N45DDNE4Y28"},` +
	`"notes":"GPU cluster fra-2, job batch 2026-11, net 30 days","pricing":{"currency":"EUR","gpu_hour":"2.50","hours":500000},` +
	`"settlement_details":{"iban":"DE89370400440532013000","bic":"COBADEFFXXX","reference":"INV-2026-11-0042","due":"2026-12-31"}}`

// BenchmarkDecryptV2vsV1 decrypts, through the socket as miner-1 for
// settlement (2 of 5 fields visible), a version-2 envelope and a version-1
// envelope of the same content, alternating the two in the same run at 2
// clients. Reported: both rates and v2/v1 (goal ≥ 0.9); and the bare
// device legs (v1 Open of the whole payload, v2 OpenFields of the two
// fields) for reference. With the DEK handle cache on (the default) every
// v2 open after the first is a hit (the same envelope again), which v1
// opens never are; dek-cache=off is the like-for-like device work.
func BenchmarkDecryptV2vsV1(b *testing.B) {
	b.Run("dek-cache=off", func(b *testing.B) { benchDecryptV2vsV1(b, newHarnessNoCache(b)) })
	b.Run("dek-cache=on", func(b *testing.B) { benchDecryptV2vsV1(b, newHarness(b)) })
}

func benchDecryptV2vsV1(b *testing.B, h *harness) {
	h.register("client-1", "miner-1")
	canon, err := envelope.CanonicalJSON([]byte(benchConfidential))
	if err != nil {
		b.Fatal(err)
	}
	v1 := h.sealV1With("tx-bench", canon, "client-1", "miner-1")
	st, out := h.call("POST", "/v1/transactions/encrypt", map[string]any{"transaction_id": "tx-bench", "job_id": "job-tx-bench",
		"public_data": map[string]any{"job_id": "job-tx-bench", "status": "completed"}, "confidential": json.RawMessage(benchConfidential),
		"participants": []string{"client-1", "miner-1"}})
	if st != 200 {
		b.Fatalf("encrypt: %d %v", st, out)
	}
	v2 := out["envelope"].(string)
	body := func(env string) string {
		return fmt.Sprintf(`{"envelope":%q,"as":"miner-1","purpose":"settlement"}`, env)
	}
	b1, b2 := body(v1), body(v2)
	decrypt := func(body string) func() error {
		return func() error {
			if st, out := h.callRaw("POST", "/v1/transactions/decrypt", body); st != 200 {
				return fmt.Errorf("decrypt: %d %s", st, out)
			}
			return nil
		}
	}
	e1, _ := envelope.ParseText(v1)
	e2, _ := envelope.ParseText(v2)
	i1, _ := e1.ParticipantStanza("miner-1")
	i2, _ := e2.ParticipantStanza("miner-1")
	key, _ := h.keys.ParticipantVersion("miner-1", 1)
	req1 := e1.OpenRequest(i1, key.Label, key.Public)
	req2, err := e2.OpenFieldsRequest(i2, key.Label, key.Public, []int{e2.FieldIndex("amount"), e2.FieldIndex("pricing")})
	if err != nil {
		b.Fatal(err)
	}
	raw1 := func() error { _, err := h.token.Open(context.Background(), req1); return err }
	raw2 := func() error { _, err := h.token.OpenFields(context.Background(), req2); return err }
	n := max(b.N, 20)
	var t1, t2, r1, r2 time.Duration
	for range 4 {
		t1 += runConcurrently(b, n/4, 2, decrypt(b1))
		t2 += runConcurrently(b, n/4, 2, decrypt(b2))
		r1 += runConcurrently(b, n/4, 2, raw1)
		r2 += runConcurrently(b, n/4, 2, raw2)
	}
	rate := func(d time.Duration) float64 { return float64(n/4*4) / d.Seconds() }
	b.ReportMetric(rate(t1), "v1-decrypts/s")
	b.ReportMetric(rate(t2), "v2-decrypts/s")
	b.ReportMetric(rate(t2)/rate(t1), "ratio-v2/v1")
	b.ReportMetric(rate(r1), "v1-device-opens/s")
	b.ReportMetric(rate(r2), "v2-device-opens/s")
}

// BenchmarkEncryptV2vsV1 compares sealing the same five-field record for
// two participants and the escrow key as version 1 (envelope.Seal: DEK and
// payload in software, header signed in the HSM) and as version 2
// (envelope.SealV2: the same, but each field encrypted under a key derived
// on the device), in-process with the daemon's own signer and token,
// alternating in the same run at 2 clients. The daemon no longer seals v1
// through its API, so the socket leg is v2 only; "est-socket-ratio" is the
// socket v2 rate over the rate a v1 encrypt would have through the same
// socket, estimated as the v2 socket time minus the seal-time difference.
// Goal for the end-to-end ratio: ≥ 0.9 — not met on SoftHSM: every field
// costs a derived session object on the device (docs/envelope.md). The
// "software-keys" leg shows what deriving the field keys in software would
// cost instead.
func BenchmarkEncryptV2vsV1(b *testing.B) {
	h := newHarness(b)
	ids := []string{"client-1", "miner-1"}
	h.register(ids...)
	var recips []envelope.Recipient
	for _, id := range ids {
		v, _ := h.keys.Active(id)
		recips = append(recips, envelope.Recipient{ID: id, KeyVersion: v.Number, Alg: v.Alg, Public: v.Public})
	}
	esc, _ := h.keys.Escrow()
	signer, _ := h.keys.Signer()
	canon, _ := envelope.CanonicalJSON([]byte(benchConfidential))
	fields, err := envelope.SplitFields(canon)
	if err != nil {
		b.Fatal(err)
	}
	base := envelope.SealInput{TransactionID: "tx-bench", JobID: "job-1", PublicFields: []byte(`{"job_id":"job-1"}`),
		Participants: recips, Escrow: envelope.Recipient{KeyVersion: esc.Number, Alg: esc.Alg, Public: esc.Public}, CreatedAt: time.Now()}
	in1, in2 := base, base
	in1.Plaintext = canon
	in2.Fields, in2.SealedBy = fields, "operator"
	seal1 := func() error { _, err := envelope.Seal(context.Background(), in1, signer); return err }
	seal2 := func() error { _, err := envelope.SealV2(context.Background(), in2, signer, h.token); return err }
	// For comparison only: the field keys derived in software (the DEK is
	// in host memory at seal time anyway); the daemon does not do this.
	seal2soft := func() error {
		_, err := envelope.SealV2(context.Background(), in2, signer, envelope.SoftwareFields{})
		return err
	}
	body := `{"transaction_id":"tx-bench","job_id":"job-1","public_data":{"job_id":"job-1"},"confidential":` + benchConfidential +
		`,"participants":["client-1","miner-1"]}`
	socket := func() error {
		if st, out := h.callRaw("POST", "/v1/transactions/encrypt", body); st != 200 {
			return fmt.Errorf("encrypt: %d %s", st, out)
		}
		return nil
	}
	n := max(b.N, 20)
	var s1, s2, s2soft, sock time.Duration
	for range 4 {
		s1 += runConcurrently(b, n/4, 2, seal1)
		s2 += runConcurrently(b, n/4, 2, seal2)
		s2soft += runConcurrently(b, n/4, 2, seal2soft)
		sock += runConcurrently(b, n/4, 2, socket)
	}
	m := float64(n / 4 * 4)
	rate := func(d time.Duration) float64 { return m / d.Seconds() }
	b.ReportMetric(rate(s1), "v1-seals/s")
	b.ReportMetric(rate(s2), "v2-seals/s")
	b.ReportMetric(rate(s2)/rate(s1), "ratio-seal-v2/v1")
	b.ReportMetric(rate(s2soft)/rate(s1), "ratio-seal-v2-software-keys/v1")
	b.ReportMetric(rate(sock), "v2-socket-encrypts/s")
	est1 := sock - (s2 - s1) // what the socket run would have taken with v1 seals
	if est1 > 0 {
		b.ReportMetric(est1.Seconds()/sock.Seconds(), "est-socket-ratio-v2/v1")
	}
}
