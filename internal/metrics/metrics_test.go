package metrics_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"custody/hsm"
	"custody/hsm/hsmtest"
	"custody/internal/auditlog"
	"custody/internal/keys"
	"custody/internal/metrics"
	"custody/internal/orders"
)

func TestMain(m *testing.M) { hsmtest.Main(m) }

// scrape fetches the metrics page and parses it as Prometheus does.
func scrape(t *testing.T, m *metrics.Metrics) map[string]*dto.MetricFamily {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("metrics page: %d", rec.Code)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("the metrics page does not parse: %v", err)
	}
	return fams
}

// value returns the value of the sample of family name whose labels
// include want (counter, gauge, or histogram count).
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("no metric %s", name)
	}
next:
	for _, m := range f.Metric {
		for k, v := range want {
			found := false
			for _, l := range m.Label {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		case m.Untyped != nil:
			return m.Untyped.GetValue()
		}
	}
	t.Fatalf("no %s sample with labels %v", name, want)
	return 0
}

func TestMetricsAfterWorkload(t *testing.T) {
	ctx := context.Background()
	tok, err := hsm.Open(ctx, hsmtest.NewToken(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	m := metrics.New()
	m.WatchToken(tok)
	mt := m.Meter(tok)

	if _, err := mt.GenerateKeyPair(ctx, hsm.KeySpec{Label: "sig", Alg: hsm.P256, Usage: hsm.UsageSign}); err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("x"))
	for range 3 {
		if _, err := mt.Sign(ctx, "sig", digest[:]); err != nil {
			t.Fatal(err)
		}
	}
	mt.Sign(ctx, "missing", digest[:])
	mt.Open(ctx, hsm.OpenRequest{KeyLabel: "missing"})
	mt.RewrapBatch(ctx, []hsm.RewrapRequest{{KeyLabel: "missing"}})
	for range 5 {
		m.ObserveRequest("POST /v1/transactions/decrypt", "ok", 3*time.Millisecond)
	}
	m.ObserveRequest("POST /v1/transactions/decrypt", "purpose_denied", time.Millisecond)
	m.PolicyReload(nil)
	m.PolicyReload(fmt.Errorf("bad"))

	fams := scrape(t, m)
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"custody_hsm_operation_duration_seconds", map[string]string{"op": "generate", "result": "ok"}, 1},
		{"custody_hsm_operation_duration_seconds", map[string]string{"op": "sign", "result": "ok"}, 3},
		{"custody_hsm_operation_duration_seconds", map[string]string{"op": "sign", "result": "error"}, 1},
		{"custody_hsm_operation_duration_seconds", map[string]string{"op": "open", "result": "error"}, 1},
		{"custody_hsm_operation_duration_seconds", map[string]string{"op": "rewrap_batch", "result": "error"}, 1},
		{"custody_requests_total", map[string]string{"route": "POST /v1/transactions/decrypt", "code": "ok"}, 5},
		{"custody_requests_total", map[string]string{"route": "POST /v1/transactions/decrypt", "code": "purpose_denied"}, 1},
		{"custody_request_duration_seconds", map[string]string{"route": "POST /v1/transactions/decrypt", "outcome": "error"}, 1},
		{"custody_policy_reloads_total", map[string]string{"result": "ok"}, 1},
		{"custody_policy_reloads_total", map[string]string{"result": "error"}, 1},
		{"custody_hsm_token_up", nil, 1},
		{"custody_hsm_sessions", nil, float64(tok.Info().Sessions)},
		{"custody_hsm_sessions_in_use", nil, 0},
		{"custody_hsm_pool_rebuilds_total", nil, 0},
		{"custody_hsm_background_yields_total", nil, 0},
	} {
		if got := value(t, fams, tc.name, tc.labels); got != tc.want {
			t.Errorf("%s %v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
	if _, ok := fams["go_goroutines"]; !ok {
		t.Error("no Go runtime metrics")
	}

	// The token gauge follows the token.
	tok.Close()
	if got := value(t, scrape(t, m), "custody_hsm_token_up", nil); got != 0 {
		t.Errorf("token_up after close = %v", got)
	}
}

// TestDashboardUsesRealMetrics: every metric the Grafana dashboard queries
// is one this package exports.
func TestDashboardUsesRealMetrics(t *testing.T) {
	data, err := os.ReadFile("../../scripts/grafana/custodyd-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	tok, err := hsm.Open(context.Background(), hsmtest.NewToken(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	m := metrics.New()
	m.WatchToken(tok)
	m.WatchKeys(fakeKeys{}, keys.DefaultRotateAfter)
	m.WatchLog(fakeLog{})
	m.ObserveRequest("GET /v1/health", "ok", time.Millisecond)
	m.PolicyReload(nil)
	m.Meter(tok).Sign(context.Background(), "none", make([]byte, 32))
	fams := scrape(t, m)
	name := regexp.MustCompile(`\b(custody_[a-z0-9_]+|process_[a-z0-9_]+|go_[a-z0-9_]+)`)
	n := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, metric := range name.FindAllString(tg.Expr, -1) {
				n++
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(metric, "_bucket"), "_count"), "_sum")
				if _, ok := fams[base]; !ok {
					t.Errorf("panel %q queries %s, which is not exported", p.Title, metric)
				}
			}
		}
	}
	if n < 10 {
		t.Errorf("only %d metric references found in the dashboard", n)
	}
}

type fakeKeys struct{}

func (fakeKeys) Ages(time.Time, time.Duration) map[string]keys.Age {
	return map[string]keys.Age{"escrow": {Count: 1, Oldest: time.Hour}}
}

type fakeLog struct{}

func (fakeLog) Status() auditlog.Status      { return auditlog.Status{Entries: 3, Writable: true} }
func (fakeLog) OnSync(f func(time.Duration)) { f(time.Millisecond) }

type fakeOrders struct{ err *error }

func (f fakeOrders) Authorize(context.Context, string, string, string, string, string, time.Time) (orders.Grant, error) {
	return orders.Grant{}, *f.err
}

func TestVaultCheckMetrics(t *testing.T) {
	m := metrics.New()
	var next error
	o := m.MeterOrders(fakeOrders{&next})
	for _, err := range []error{nil, nil, orders.ErrRevoked, orders.ErrSealed, orders.ErrTimeout, fmt.Errorf("x: %w", orders.ErrUnavailable), orders.ErrVaultDenied} {
		next = err
		o.Authorize(context.Background(), "a", "o", "p", "t", "j", time.Now())
	}
	fams := scrape(t, m)
	for outcome, want := range map[string]float64{"allowed": 2, "denied": 1, "sealed": 1, "timeout": 1, "unavailable": 1, "permission_denied": 1} {
		if got := value(t, fams, "custody_vault_check_duration_seconds", map[string]string{"outcome": outcome}); got != want {
			t.Errorf("outcome %s: %v, want %v", outcome, got, want)
		}
	}
}

// cacheSource is a TokenSource with fixed DEK cache counters.
type cacheSource struct{ s hsm.DEKCacheStats }

func (cacheSource) Info() hsm.TokenInfo                { return hsm.TokenInfo{} }
func (cacheSource) Ping(context.Context) error         { return nil }
func (c cacheSource) DEKCacheStats() hsm.DEKCacheStats { return c.s }

func TestDEKCacheMetrics(t *testing.T) {
	m := metrics.New()
	m.WatchToken(cacheSource{hsm.DEKCacheStats{Enabled: true, Entries: 7, Hits: 11, Misses: 3, FirstOpens: 9,
		EvictedCapacity: 1, EvictedAge: 2, EvictedKey: 4, EvictedRebuild: 5, EvictedShutdown: 6}})
	fams := scrape(t, m)
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"custody_hsm_dek_cache_entries", nil, 7},
		{"custody_hsm_dek_cache_hits_total", nil, 11},
		{"custody_hsm_dek_cache_misses_total", nil, 3},
		{"custody_hsm_dek_cache_first_opens_total", nil, 9},
		{"custody_hsm_dek_cache_evictions_total", map[string]string{"reason": "capacity"}, 1},
		{"custody_hsm_dek_cache_evictions_total", map[string]string{"reason": "age"}, 2},
		{"custody_hsm_dek_cache_evictions_total", map[string]string{"reason": "key"}, 4},
		{"custody_hsm_dek_cache_evictions_total", map[string]string{"reason": "rebuild"}, 5},
		{"custody_hsm_dek_cache_evictions_total", map[string]string{"reason": "shutdown"}, 6},
	} {
		if got := value(t, fams, tc.name, tc.labels); got != tc.want {
			t.Errorf("%s %v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
}
