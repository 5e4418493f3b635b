package metrics

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"custody/internal/orders"
)

// OrderChecker is what the daemon asks before an audit decrypt
// (*orders.Checker; server.OrderChecker).
type OrderChecker interface {
	Authorize(ctx context.Context, auditor, orderID, purpose, txID, jobID string, createdAt time.Time) (orders.Grant, error)
}

// Orders meters court-order checks against Vault: latency and outcome.
type Orders struct {
	inner OrderChecker
	hist  *prometheus.HistogramVec
}

// MeterOrders wraps c and registers custody_vault_check_duration_seconds.
func (m *Metrics) MeterOrders(c OrderChecker) *Orders {
	o := &Orders{inner: c, hist: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "custody_vault_check_duration_seconds",
		Help:    "Court-order checks against Vault before an audit decrypt, by outcome: allowed, denied (the order refuses), or the Vault failure (unavailable, sealed, permission_denied, timeout, conflict, error).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5 ms … 4 s
	}, []string{"outcome"})}
	m.Registry.MustRegister(o.hist)
	return o
}

// Authorize is the inner checker's Authorize, timed.
func (o *Orders) Authorize(ctx context.Context, auditor, orderID, purpose, txID, jobID string, createdAt time.Time) (orders.Grant, error) {
	start := time.Now()
	g, err := o.inner.Authorize(ctx, auditor, orderID, purpose, txID, jobID, createdAt)
	o.hist.WithLabelValues(orderOutcome(err)).Observe(time.Since(start).Seconds())
	return g, err
}

func orderOutcome(err error) string {
	switch {
	case err == nil:
		return "allowed"
	case errors.Is(err, orders.ErrDenied):
		return "denied"
	case errors.Is(err, orders.ErrUnavailable):
		return "unavailable"
	case errors.Is(err, orders.ErrSealed):
		return "sealed"
	case errors.Is(err, orders.ErrVaultDenied):
		return "permission_denied"
	case errors.Is(err, orders.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, orders.ErrConflict):
		return "conflict"
	}
	return "error"
}
