package priority

import (
	"slices"
	"sync"
	"time"
)

// Watch keeps how long live requests take with and without bulk work
// running, so that a bulk client can be told when it slows them down
// (custodyctl rewrap --postgres paces itself by it; docs/store.md,
// "Pacing"). It holds durations only, no request content.
//
// Every live request is a sample; one that ends with no bulk call in
// progress and none ended within Quiet is also an idle sample. Report gives the p99 of every sample of the last Window
// and that of the last idleKept idle samples (the baseline).
type Watch struct {
	mu       sync.Mutex
	bulk     int       // bulk calls in progress
	bulkLast time.Time // when the last bulk call ended
	idle     ring      // idle samples
	recent   ring      // every sample
	now      func() time.Time
}

const (
	// Quiet is how long after a bulk call a live request still counts as
	// slowed by bulk work: a bulk client writes what the daemon answered
	// (a store's page) between its calls.
	Quiet = 5 * time.Second
	// Window is how far back Report's p99 looks (at most the last
	// recentKept requests: at over ~1,000 live requests/s, less far).
	Window = 4 * time.Second
	// MinIdleSamples is how many idle samples a baseline needs.
	MinIdleSamples = 50
	idleKept       = 1024
	recentKept     = 4096
)

// NewWatch returns an empty Watch.
func NewWatch() *Watch {
	return &Watch{now: time.Now, idle: newRing(idleKept), recent: newRing(recentKept)}
}

// Bulk marks the start of a bulk call; the returned func marks its end.
func (w *Watch) Bulk() (end func()) {
	w.mu.Lock()
	w.bulk++
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		w.bulk--
		w.bulkLast = w.now()
		w.mu.Unlock()
	}
}

// Live records a live request that took d.
func (w *Watch) Live(d time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.now()
	if w.bulk == 0 && now.Sub(w.bulkLast) >= Quiet {
		w.idle.add(now, d)
	}
	w.recent.add(now, d)
}

// LiveReport is Watch.Report's answer.
type LiveReport struct {
	Samples int           // live requests that ended in the last Window
	P99     time.Duration // their p99 (0 without samples)
	IdleP99 time.Duration // the idle samples' p99; 0 with fewer than MinIdleSamples
}

// Report says how live requests fared lately. It copies the samples
// under the lock and sorts them outside it, so that live requests
// recording theirs do not wait for the sort.
func (w *Watch) Report() LiveReport {
	w.mu.Lock()
	recent := w.recent.since(w.now().Add(-Window))
	idle := w.idle.since(time.Time{})
	w.mu.Unlock()
	r := LiveReport{Samples: len(recent), P99: p99(recent)}
	if len(idle) >= MinIdleSamples {
		r.IdleP99 = p99(idle)
	}
	return r
}

// p99 sorts ds and returns its 99th percentile, nearest rank (0 when
// empty): of 100 samples the second largest.
func p99(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[(len(ds)*99+99)/100-1]
}

// ring keeps the last len(at) samples.
type ring struct {
	at []time.Time
	d  []time.Duration
	n  int // samples ever added
}

func newRing(size int) ring {
	return ring{at: make([]time.Time, size), d: make([]time.Duration, size)}
}

func (r *ring) add(at time.Time, d time.Duration) {
	r.at[r.n%len(r.at)], r.d[r.n%len(r.at)] = at, d
	r.n++
}

// since returns a copy of the kept samples taken after t.
func (r *ring) since(t time.Time) []time.Duration {
	var out []time.Duration
	for i := range min(r.n, len(r.at)) {
		if r.at[i].After(t) {
			out = append(out, r.d[i])
		}
	}
	return out
}
