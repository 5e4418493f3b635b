// Package metrics owns custodyd's Prometheus metrics: one registry of its
// own (never the global one), the collectors, and the thin wrappers that
// feed them from the other packages without those packages knowing about
// Prometheus. The server reports each request through the Observer
// interface it defines; the HSM is metered by wrapping *hsm.Token (Token);
// gauges about the token are read on each scrape.
//
// Names follow Prometheus conventions (custody_ prefix, base units,
// _total for counters). Label values are bounded sets: route patterns, error
// codes, operation names. No label ever carries an id, a principal or
// anything a caller chose.
package metrics

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"custody/hsm"
	"custody/internal/auditlog"
	"custody/internal/keys"
)

// Metrics is the registry and its collectors. Safe for concurrent use.
type Metrics struct {
	Registry *prometheus.Registry

	requests      *prometheus.CounterVec
	latency       *prometheus.HistogramVec
	hsmOps        *prometheus.HistogramVec
	policyReloads *prometheus.CounterVec
}

// New registers every collector on a fresh registry, with the Go runtime
// and process collectors.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custody_requests_total",
			Help: "API requests by route and result code (\"ok\" or the error code).",
		}, []string{"route", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "custody_request_duration_seconds",
			Help:    "API request latency by route and outcome (ok, error).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5 ms … 4 s
		}, []string{"route", "outcome"}),
		hsmOps: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "custody_hsm_operation_duration_seconds",
			Help:    "HSM operation latency by operation (open: ECDH1_DERIVE+AES_ECB_ENCRYPT_DATA+AES_KEY_WRAP_PAD+AES_GCM; sign: ECDSA; generate: key-pair generation) and result.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16), // 0.1 ms … 3.3 s
		}, []string{"op", "result"}),
		policyReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "custody_policy_reloads_total",
			Help: "Policy reloads (SIGHUP) by result (ok, error).",
		}, []string{"result"}),
	}
	m.Registry.MustRegister(m.requests, m.latency, m.hsmOps, m.policyReloads,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

// ObserveRequest records one API request; code is "ok" or its error code.
// It implements server.Observer.
func (m *Metrics) ObserveRequest(route, code string, d time.Duration) {
	outcome := "ok"
	if code != "ok" {
		outcome = "error"
	}
	m.requests.WithLabelValues(route, code).Inc()
	m.latency.WithLabelValues(route, outcome).Observe(d.Seconds())
}

// PolicyReload records a reload attempt.
func (m *Metrics) PolicyReload(err error) {
	m.policyReloads.WithLabelValues(result(err)).Inc()
}

func result(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

// TokenSource is what the token gauges read on each scrape.
type TokenSource interface {
	Info() hsm.TokenInfo
	Ping(ctx context.Context) error
	DEKCacheStats() hsm.DEKCacheStats
}

// WatchToken registers gauges read from t at scrape time: pool size,
// sessions in use, rebuilds, module recycles, the DEK handle cache's
// entries, hits, misses and evictions by reason, and whether the token
// answers a ping (within one second) right now.
func (m *Metrics) WatchToken(t TokenSource) {
	info := func(f func(hsm.TokenInfo) float64) func() float64 {
		return func() float64 { return f(t.Info()) }
	}
	cache := func(f func(hsm.DEKCacheStats) uint64) func() float64 {
		return func() float64 { return float64(f(t.DEKCacheStats())) }
	}
	for reason, f := range map[string]func(hsm.DEKCacheStats) uint64{
		"capacity": func(s hsm.DEKCacheStats) uint64 { return s.EvictedCapacity },
		"age":      func(s hsm.DEKCacheStats) uint64 { return s.EvictedAge },
		"key":      func(s hsm.DEKCacheStats) uint64 { return s.EvictedKey },
		"rebuild":  func(s hsm.DEKCacheStats) uint64 { return s.EvictedRebuild },
		"shutdown": func(s hsm.DEKCacheStats) uint64 { return s.EvictedShutdown },
	} {
		m.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "custody_hsm_dek_cache_evictions_total",
			Help:        "Cached DEKs destroyed, by reason: capacity (least recently used), age (max_age), key (its key destroyed), rebuild (session pool rebuilt), shutdown.",
			ConstLabels: prometheus.Labels{"reason": reason}}, cache(f)))
	}
	m.Registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "custody_hsm_dek_cache_entries", Help: "Envelope stanzas whose DEK is cached on the token now (0 when the cache is off)."},
			cache(func(s hsm.DEKCacheStats) uint64 { return uint64(s.Entries) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "custody_hsm_dek_cache_hits_total", Help: "Envelope v2 opens that used a cached DEK (no ECDH, KEK derive or unwrap)."},
			cache(func(s hsm.DEKCacheStats) uint64 { return s.Hits })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "custody_hsm_dek_cache_misses_total", Help: "Envelope v2 opens that ran the whole key chain on the token."},
			cache(func(s hsm.DEKCacheStats) uint64 { return s.Misses })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "custody_hsm_dek_cache_first_opens_total", Help: "Misses that kept nothing: the stanza's first open (only a second open is cached)."},
			cache(func(s hsm.DEKCacheStats) uint64 { return s.FirstOpens })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "custody_hsm_sessions", Help: "Size of the HSM session pool."},
			info(func(i hsm.TokenInfo) float64 { return float64(i.Sessions) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "custody_hsm_sessions_in_use", Help: "HSM sessions borrowed right now."},
			info(func(i hsm.TokenInfo) float64 { return float64(i.InUse) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "custody_hsm_pool_rebuilds_total", Help: "Session-pool rebuilds after a lost session, login or token, planned recycles included."},
			info(func(i hsm.TokenInfo) float64 { return float64(i.Rebuilds) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "custody_hsm_module_recycles_total", Help: "PKCS#11 module re-initializations that freed retained session objects (SoftHSM)."},
			info(func(i hsm.TokenInfo) float64 { return float64(i.Recycles) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "custody_hsm_background_yields_total", Help: "Times a background rewrap batch gave its HSM session to a waiting request."},
			info(func(i hsm.TokenInfo) float64 { return float64(i.Yields) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "custody_hsm_token_up", Help: "1 if the token answered a ping at scrape time, else 0."},
			func() float64 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				if t.Ping(ctx) != nil {
					return 0
				}
				return 1
			}),
	)
}

// LogSource is what the access-log metrics read: *auditlog.Log.
type LogSource interface {
	Status() auditlog.Status
	OnSync(func(time.Duration))
}

// WatchLog registers the access log's metrics: durable entries, entries
// covered by the latest signed checkpoint, appends waiting for the next
// group commit, whether the log can write, and the fdatasync latency of
// each group commit.
func (m *Metrics) WatchLog(l LogSource) {
	status := func(f func(auditlog.Status) float64) func() float64 {
		return func() float64 { return f(l.Status()) }
	}
	fsync := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "custody_log_fsync_duration_seconds",
		Help:    "Latency of the fdatasync that makes a group commit of access-log entries durable.",
		Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16), // 50 µs … 1.6 s
	})
	m.Registry.MustRegister(fsync,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "custody_log_entries", Help: "Durable entries in the access log."},
			status(func(s auditlog.Status) float64 { return float64(s.Entries) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "custody_log_checkpoint_size", Help: "Entries covered by the latest signed checkpoint."},
			status(func(s auditlog.Status) float64 { return float64(s.CheckpointSize) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "custody_log_pending_appends", Help: "Access-log appends queued for the next group commit."},
			status(func(s auditlog.Status) float64 { return float64(s.Pending) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "custody_log_writable", Help: "1 if the access log can write; 0 means every operation is refused (log_unavailable)."},
			status(func(s auditlog.Status) float64 {
				if s.Writable {
					return 1
				}
				return 0
			})),
	)
	l.OnSync(func(d time.Duration) { fsync.Observe(d.Seconds()) })
}

// KeySource is what the key metrics read: *keys.Registry.
type KeySource interface {
	Ages(now time.Time, rotateAfter time.Duration) map[string]keys.Age
}

// keyAges is a collector over the key registry: it is read at scrape time.
type keyAges struct {
	src                KeySource
	rotateAfter        time.Duration
	count, oldest, due *prometheus.Desc
}

func (k *keyAges) Describe(ch chan<- *prometheus.Desc) { ch <- k.count; ch <- k.oldest; ch <- k.due }

func (k *keyAges) Collect(ch chan<- prometheus.Metric) {
	for kind, a := range k.src.Ages(time.Now(), k.rotateAfter) {
		ch <- prometheus.MustNewConstMetric(k.count, prometheus.GaugeValue, float64(a.Count), kind)
		ch <- prometheus.MustNewConstMetric(k.oldest, prometheus.GaugeValue, a.Oldest.Seconds(), kind)
		ch <- prometheus.MustNewConstMetric(k.due, prometheus.GaugeValue, float64(a.Due), kind)
	}
}

// WatchKeys registers the key metrics by kind (participant, escrow,
// signing): active keys, the age of the oldest, and how many are older than
// rotateAfter.
func (m *Metrics) WatchKeys(src KeySource, rotateAfter time.Duration) {
	m.Registry.MustRegister(&keyAges{
		src: src, rotateAfter: rotateAfter,
		count:  prometheus.NewDesc("custody_keys", "Active keys by kind.", []string{"kind"}, nil),
		oldest: prometheus.NewDesc("custody_key_oldest_age_seconds", "Age of the oldest active key by kind (creation is known to the day).", []string{"kind"}, nil),
		due:    prometheus.NewDesc("custody_keys_due_for_rotation", "Active keys older than the rotation period, by kind.", []string{"kind"}, nil),
	})
}

// Token meters the HSM operations of an *hsm.Token; everything else passes
// through. It satisfies server.Token and keys.Device.
type Token struct {
	*hsm.Token
	m *Metrics
}

// Meter wraps t.
func (m *Metrics) Meter(t *hsm.Token) *Token { return &Token{Token: t, m: m} }

func (t *Token) observe(op string, start time.Time, err error) {
	t.m.hsmOps.WithLabelValues(op, result(err)).Observe(time.Since(start).Seconds())
}

// Open is hsm.Token.Open, timed as op "open".
func (t *Token) Open(ctx context.Context, req hsm.OpenRequest) ([]byte, error) {
	start := time.Now()
	pt, err := t.Token.Open(ctx, req)
	t.observe("open", start, err)
	return pt, err
}

// OpenFields is hsm.Token.OpenFields, timed as op "open_fields".
func (t *Token) OpenFields(ctx context.Context, req hsm.OpenFieldsRequest) ([][]byte, error) {
	start := time.Now()
	pts, err := t.Token.OpenFields(ctx, req)
	t.observe("open_fields", start, err)
	return pts, err
}

// SealFields is hsm.Token.SealFields, timed as op "seal_fields".
func (t *Token) SealFields(ctx context.Context, req hsm.SealFieldsRequest) ([][]byte, error) {
	start := time.Now()
	cts, err := t.Token.SealFields(ctx, req)
	t.observe("seal_fields", start, err)
	return cts, err
}

// Sign is hsm.Token.Sign, timed as op "sign".
func (t *Token) Sign(ctx context.Context, label string, digest []byte) ([]byte, error) {
	start := time.Now()
	sig, err := t.Token.Sign(ctx, label, digest)
	t.observe("sign", start, err)
	return sig, err
}

// RewrapBatch is hsm.Token.RewrapBatch, one observation per batch as op
// "rewrap_batch": result "ok" when every request succeeded, else "error".
func (t *Token) RewrapBatch(ctx context.Context, reqs []hsm.RewrapRequest) []hsm.RewrapResult {
	start := time.Now()
	res := t.Token.RewrapBatch(ctx, reqs)
	var err error
	for _, r := range res {
		if r.Err != nil {
			err = r.Err
			break
		}
	}
	t.observe("rewrap_batch", start, err)
	return res
}

// GenerateKeyPair is hsm.Token.GenerateKeyPair, timed as op "generate".
func (t *Token) GenerateKeyPair(ctx context.Context, spec hsm.KeySpec) (hsm.KeyInfo, error) {
	start := time.Now()
	info, err := t.Token.GenerateKeyPair(ctx, spec)
	t.observe("generate", start, err)
	return info, err
}
