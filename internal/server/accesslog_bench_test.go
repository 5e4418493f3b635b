package server_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"custody/hsm"
	"custody/internal/auditlog"
	"custody/internal/server"
)

// switchRecorder sends entries to the durable access log when on, and
// drops them when off, so one daemon is measured both ways in one run. It
// sums the time Record takes and the log's fdatasyncs while on.
type switchRecorder struct {
	on                atomic.Bool
	alog              *auditlog.Log
	records, recordNs atomic.Int64
	syncs, syncNs     atomic.Int64
}

func (r *switchRecorder) Record(ctx context.Context, e auditlog.Entry) error {
	if !r.on.Load() {
		return nil
	}
	start := time.Now()
	err := r.alog.Record(ctx, e)
	r.recordNs.Add(int64(time.Since(start)))
	r.records.Add(1)
	return err
}

// report reports the mean Record and fdatasync times and entries per
// fdatasync since the last report.
func (r *switchRecorder) report(b *testing.B) {
	n, s := float64(r.records.Swap(0)), float64(r.syncs.Swap(0))
	b.ReportMetric(float64(r.recordNs.Swap(0))/n/1e3, "record-µs")
	b.ReportMetric(float64(r.syncNs.Swap(0))/s/1e3, "fsync-µs")
	b.ReportMetric(n/s, "entries/fsync")
}

// durableLog opens the durable access log, as custodyd does, in a
// temporary directory with its checkpoint key on d's token; closed at
// cleanup.
func durableLog(b *testing.B, d *server.Deps) *auditlog.Log {
	ctx := context.Background()
	cfg := auditlog.DefaultConfig()
	cfg.Dir = b.TempDir()
	s, _, err := auditlog.EnsureDeviceSigner(ctx, d.Token.(*hsm.Token), cfg.Origin, cfg.SigningKeyLabel, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	l, err := auditlog.Open(ctx, cfg, s, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	return l
}

// BenchmarkDecryptAccessLog measures decrypt throughput with every decision
// made durable in the access log (group-committed fdatasync on this
// machine's disk, checkpoints signed in the HSM) against no log at all,
// alternating in the same run, at 2 and 16 clients. Reported: both rates
// and on/off (goal ≥ 0.8), and what the log costs a request: the mean
// Record time, the mean fdatasync and the entries each fdatasync carried.
func BenchmarkDecryptAccessLog(b *testing.B) {
	rec := &switchRecorder{}
	h := newHarnessWith(b, func(d *server.Deps) {
		rec.alog = durableLog(b, d)
		rec.alog.OnSync(func(d time.Duration) { rec.syncNs.Add(int64(d)); rec.syncs.Add(1) })
		d.Recorder = rec
	})
	h.register("client-1")
	body := fmt.Sprintf(`{"envelope":%q,"as":"client-1","purpose":"dispute"}`, h.seal("tx-l", "client-1"))
	op := func() error {
		if st, out := h.callRaw("POST", "/v1/transactions/decrypt", body); st != 200 {
			return fmt.Errorf("decrypt: %d %s", st, out)
		}
		return nil
	}
	for _, clients := range []int{2, 16} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			n := max(b.N, 8*clients)
			var on, off time.Duration
			for range 4 {
				rec.on.Store(true)
				on += runConcurrently(b, n/8, clients, op)
				rec.on.Store(false)
				off += runConcurrently(b, n/8, clients, op)
			}
			rate := func(d time.Duration) float64 { return float64(n/2) / d.Seconds() }
			b.ReportMetric(rate(on), "decrypts/s-log-on")
			b.ReportMetric(rate(off), "decrypts/s-log-off")
			b.ReportMetric(rate(on)/rate(off), "ratio-on/off")
			rec.report(b)
		})
	}
}
