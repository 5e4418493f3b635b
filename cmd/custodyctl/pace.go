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
// (api.LiveLatency, on every rewrap answer, asked with live_over =
// slowdown: how many were slower than slowdown × their idle p99). Without
// live requests there is no limit. When they appear (and the daemon has
// their idle p99) the limit starts at startPacedRate. The aim is the run's
// live p99 within slowdown × idle: at most slowFraction of all live
// requests over that. So once per report window (disjoint windows, each
// with at least minWindowSamples live requests) the pacer adds the
// window's counts to the run's, and: when the run so far is over its
// budget (more than slowFraction slow) or the window is past twice it, the
// limit loses 25 %; when the window is within half the fraction and the
// run within budget, it gains 25 % (not past twice the rows actually sent
// meanwhile, never lowering it); otherwise it holds. One slow window
// therefore does not undo a run's good record, and noise in a window's
// few slow requests does not steer it (a window of 400 requests at the
// aim has 4). The limit never goes below minPacedRate, so live traffic
// can slow a run, never stop it. Pages shrink with the live limit (a quarter second of rows, at least
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
	judged       time.Time // when a report last counted
	samples      int       // live requests in the counted reports
	slow         int       // of them, slower than slowdown × idle p99
	next         time.Time // when the next page may be sent
}

const (
	startPacedRate = 50.0 // rows/s: the live limit when live traffic is first seen
	minPacedRate   = 5.0  // rows/s: the live limit never goes below this
	minPageRows    = 8
	// minWindowSamples is how many live requests a window needs before
	// it counts.
	minWindowSamples = 20
	// slowFraction is the share of live requests allowed over slowdown ×
	// idle p99: a p99.
	slowFraction = 0.01
	liveWindow   = priority.Window // the daemon's report window
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
		p.limit, p.changed, p.rowsAtChange, p.judged = startPacedRate, now, p.rows, now
		return
	case now.Sub(p.judged) < liveWindow:
		return // the report's window overlaps the one counted last
	}
	p.judged = now
	p.samples += l.Samples
	p.slow += l.Over
	window := float64(l.Over) / float64(l.Samples)
	overBudget := float64(p.slow) > slowFraction*float64(p.samples)
	sent := float64(p.rows-p.rowsAtChange) / now.Sub(p.changed).Seconds()
	switch {
	case overBudget || window > 2*slowFraction:
		p.limit = max(p.limit*0.75, minPacedRate)
	case window <= slowFraction/2:
		// Faster, unless the run is not even using the limit it has.
		p.limit = max(p.limit, min(p.limit*1.25, 2*sent))
	default:
		return
	}
	p.changed, p.rowsAtChange = now, p.rows
}

// liveOver is what the pacer asks the daemon's report to count (0: no
// pacing, nothing to count).
func (p *pacer) liveOver() float64 { return p.slowdown }
