package server_test

import (
	"slices"
	"testing"
	"time"

	"custody/internal/orders/vaulttest"
)

// BenchmarkAuditDecryptVsParticipant alternates, on one daemon and one
// token, an audit decrypt under a court order (socket → envelope verify →
// Vault: order, revocation, use counter read and check-and-set write, on
// loopback → access entry → escrow unwrap) with a participant decrypt of
// the same envelope, and reports each one's p50 and p99 latency and the
// ratio audit/participant of the p50s. One client, sequential: latency,
// not throughput.
func BenchmarkAuditDecryptVsParticipant(b *testing.B) {
	a := newAuditHarness(b, vaulttest.Shared(b))
	env := a.seal("tx-1", "client-1", "miner-1")
	o := a.order()
	o.MaxUses = 1_000_000
	a.issue(o, 2)
	auditBody := map[string]any{"envelope": env, "authorization": o.ID, "purpose": "tax-investigation"}
	partBody := map[string]any{"envelope": env, "as": "miner-1", "purpose": "settlement"}
	var audit, part []time.Duration
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		if st, body := a.callRaw("POST", "/v1/audit/decrypt", auditBody); st != 200 {
			b.Fatalf("audit: %d %s", st, body)
		}
		audit = append(audit, time.Since(start))
		start = time.Now()
		if st, body := a.callRaw("POST", "/v1/transactions/decrypt", partBody); st != 200 {
			b.Fatalf("participant: %d %s", st, body)
		}
		part = append(part, time.Since(start))
	}
	b.StopTimer()
	pct := func(d []time.Duration, p float64) float64 {
		s := slices.Clone(d)
		slices.Sort(s)
		return float64(s[min(len(s)-1, int(float64(len(s))*p))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(audit, 0.50), "audit-p50-ms")
	b.ReportMetric(pct(audit, 0.99), "audit-p99-ms")
	b.ReportMetric(pct(part, 0.50), "participant-p50-ms")
	b.ReportMetric(pct(part, 0.99), "participant-p99-ms")
	b.ReportMetric(pct(audit, 0.50)/pct(part, 0.50), "p50-ratio")
	b.ReportMetric(pct(audit, 0.99)/pct(part, 0.99), "p99-ratio")
}
