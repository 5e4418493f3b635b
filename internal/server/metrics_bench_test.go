package server_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"custody/hsm"
	"custody/internal/metrics"
	"custody/internal/server"
)

// switchable routes the server's token and observer through package
// metrics or around it, so one daemon can be measured both ways in one run.
type switchable struct {
	on      atomic.Bool
	raw     server.Token
	metered server.Token
	m       *metrics.Metrics
}

func (s *switchable) tok() server.Token {
	if s.on.Load() {
		return s.metered
	}
	return s.raw
}
func (s *switchable) Open(ctx context.Context, r hsm.OpenRequest) ([]byte, error) {
	return s.tok().Open(ctx, r)
}
func (s *switchable) OpenFields(ctx context.Context, r hsm.OpenFieldsRequest) ([][]byte, error) {
	return s.tok().OpenFields(ctx, r)
}
func (s *switchable) SealFields(ctx context.Context, r hsm.SealFieldsRequest) ([][]byte, error) {
	return s.tok().SealFields(ctx, r)
}
func (s *switchable) Ping(ctx context.Context) error { return s.tok().Ping(ctx) }
func (s *switchable) Info() hsm.TokenInfo            { return s.raw.Info() }
func (s *switchable) Capabilities() hsm.Capabilities { return s.raw.Capabilities() }
func (s *switchable) ObserveRequest(route, code string, d time.Duration) {
	if s.on.Load() {
		s.m.ObserveRequest(route, code, d)
	}
}

// BenchmarkMetricsCost measures decrypt throughput with metrics on (every
// request observed, every HSM open timed) and off, alternating in the same
// run, 2 clients. Reported: both rates and on/off (goal ≥ 0.97).
func BenchmarkMetricsCost(b *testing.B) {
	sw := &switchable{m: metrics.New()}
	h := newHarnessWith(b, func(d *server.Deps) {
		sw.raw = d.Token
		sw.metered = sw.m.Meter(d.Token.(*hsm.Token))
		d.Token = sw
		d.Observer = sw
	})
	sw.m.WatchToken(h.token)
	h.register("client-1")
	body := fmt.Sprintf(`{"envelope":%q,"as":"client-1","purpose":"dispute"}`, h.seal("tx-m", "client-1"))
	op := func() error {
		if st, out := h.callRaw("POST", "/v1/transactions/decrypt", body); st != 200 {
			return fmt.Errorf("decrypt: %d %s", st, out)
		}
		return nil
	}
	n := max(b.N, 8)
	var on, off time.Duration
	for range 4 {
		sw.on.Store(true)
		on += runConcurrently(b, n/8, 2, op)
		sw.on.Store(false)
		off += runConcurrently(b, n/8, 2, op)
	}
	rate := func(d time.Duration) float64 { return float64(n/2) / d.Seconds() }
	b.ReportMetric(rate(on), "decrypts/s-metrics-on")
	b.ReportMetric(rate(off), "decrypts/s-metrics-off")
	b.ReportMetric(rate(on)/rate(off), "ratio-on/off")
}
