package main

import (
	"context"
	"sync"
	"time"

	"custody/internal/api"
	"custody/internal/priority"
)

// pacer is rewrap --postgres's throttle (docs/store.md, "Pacing"): at most
// --rate rows/s when that is set, and, unless --live-slowdown is 0, a limit
// of its own that follows the daemon's report of its live requests
// (api.LiveLatency, on every rewrap answer). Without live requests there
// is no limit. When they appear (and the daemon has their idle p99) the
// limit starts at startPacedRate; then once per report window, with
// target = slowdown × idle p99, and at least minWindowSamples live
// requests in the window: a recent p99 past the target takes 20 % off
// the limit (× slower), one under 0.7 × target adds 25 % (× 1/slower: one
// good window undoes one bad one; not past twice the rows actually sent
// meanwhile, never lowering it), one in between keeps it. The limit
// never goes below minPacedRate, so live traffic can slow a run, never
// stop it. Pages shrink with the live limit (a quarter second of rows, at least
// minPageRows), and the first page, sent before any report, is as small
// as at startPacedRate: what slows live requests most is the burst of
// database writes of one page.
type pacer struct {
	cap      float64 // --rate; 0: none
	slowdown float64 // --live-slowdown; 0: off
	maxPage  int     // --batch
	now      func() time.Time

	mu           sync.Mutex
	limit        float64   // the live limit in rows/s; 0: none
	heard        bool      // a report came: until then pages are small
	rows         int64     // rows sent
	changed      time.Time // when the live limit last changed
	rowsAtChange int64     // rows then
	next         time.Time // when the next page may be sent
}

const (
	startPacedRate = 50.0 // rows/s: the live limit when live traffic is first seen
	minPacedRate   = 5.0  // rows/s: the live limit never goes below this
	minPageRows    = 8
	// minWindowSamples is how many live requests a window needs before
	// its p99 changes the limit.
	minWindowSamples = 20
	liveWindow       = priority.Window // the daemon's report window
	// slower is what a window over target does to the limit; a window
	// well under it divides by it. Steps that cancel keep the limit from
	// drifting down when the window p99 is as often over target as well
	// under it (session 8's 0.7 and 1.25 did: docs/store.md, "Pacing").
	slower = 0.8
)

func newPacer(cap, slowdown float64, maxPage int) *pacer {
	return &pacer{cap: cap, slowdown: slowdown, maxPage: maxPage, now: time.Now}
}

// rate is the limit in force in rows/s (0: none).
func (p *pacer) rate() float64 {
	switch {
	case p.limit == 0:
		return p.cap
	case p.cap == 0:
		return p.limit
	}
	return min(p.cap, p.limit)
}

// Rate is the limit in force in rows/s, 0 for none (for progress).
func (p *pacer) Rate() float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.rate()
}

// page is how many rows the next page should hold.
func (p *pacer) page() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.limit // pages follow the live limit only, not --rate
	if !p.heard && p.slowdown > 0 {
		r = startPacedRate // the first page, before anything is known
	}
	if r == 0 {
		return p.maxPage
	}
	return max(min(int(r/4), p.maxPage), min(minPageRows, p.maxPage))
}

// wait sleeps until a page of n rows may be sent, and counts them.
func (p *pacer) wait(ctx context.Context, n int) error {
	p.mu.Lock()
	now := p.now()
	at := p.next
	if at.Before(now) {
		at = now
	}
	if r := p.rate(); r > 0 {
		p.next = at.Add(time.Duration(float64(n) / r * float64(time.Second)))
	} else {
		p.next = at
	}
	p.rows += int64(n)
	p.mu.Unlock()
	if d := at.Sub(now); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// observe takes the daemon's report from a rewrap answer.
func (p *pacer) observe(l *api.LiveLatency) {
	if p.slowdown == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	p.heard = true
	switch {
	case l == nil || l.Samples == 0:
		p.limit = 0 // no live traffic to spare
		return
	case l.IdleP99MS == 0:
		return // no baseline to judge by: keep what is in force
	case l.Samples < minWindowSamples && p.limit > 0:
		return // too few to judge by: one slow request would decide
	case p.limit == 0:
		p.limit, p.changed, p.rowsAtChange = startPacedRate, now, p.rows
		return
	case now.Sub(p.changed) < liveWindow:
		return // the report still covers rows sent at the last limit
	}
	target := p.slowdown * l.IdleP99MS
	sent := float64(p.rows-p.rowsAtChange) / now.Sub(p.changed).Seconds()
	switch {
	case l.P99MS > target:
		p.limit = max(p.limit*slower, minPacedRate)
	case l.P99MS < 0.7*target:
		// Faster, unless the run is not even using the limit it has.
		p.limit = max(p.limit, min(p.limit/slower, 2*sent))
	default:
		return
	}
	p.changed, p.rowsAtChange = now, p.rows
}
