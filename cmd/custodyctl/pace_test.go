package main

import (
	"context"
	"math"
	"testing"
	"time"

	"custody/internal/api"
)

// pacerAt is a pacer on a settable clock.
func pacerAt(cap, slowdown float64, maxPage int) (*pacer, *time.Time) {
	t := time.Unix(1e9, 0)
	p := newPacer(cap, slowdown, maxPage)
	p.now = func() time.Time { return t }
	return p, &t
}

func TestPacerFollowsLiveLatency(t *testing.T) {
	p, now := pacerAt(0, 2, 500)
	step := func(d time.Duration, rows int, l *api.LiveLatency) {
		*now = now.Add(d)
		p.rows += int64(rows)
		p.observe(l)
	}
	if p.page() != 12 {
		t.Fatalf("first page before any report: %d rows, want 12", p.page())
	}
	// No live traffic: no limit, full pages.
	step(time.Second, 500, nil)
	if p.Rate() != 0 || p.page() != 500 {
		t.Fatalf("without live traffic: rate %v page %d, want none and 500", p.Rate(), p.page())
	}
	// Live traffic but no baseline yet: still no limit.
	step(time.Second, 500, &api.LiveLatency{Samples: 100, P99MS: 50})
	if p.Rate() != 0 {
		t.Fatalf("without a baseline: rate %v, want none", p.Rate())
	}
	// Live traffic with a baseline: start gently.
	step(time.Second, 500, &api.LiveLatency{Samples: 100, P99MS: 2, IdleP99MS: 2})
	if p.Rate() != startPacedRate || p.page() != 12 {
		t.Fatalf("live traffic seen: rate %v page %d, want %v and %d", p.Rate(), p.page(), startPacedRate, 12)
	}
	// Too slow within one window: nothing changes yet.
	step(time.Second, 50, &api.LiveLatency{Samples: 100, P99MS: 9, IdleP99MS: 2})
	if p.Rate() != startPacedRate {
		t.Fatalf("within the window: rate %v, want unchanged", p.Rate())
	}
	// After a window, past slowdown × idle: slower.
	step(liveWindow, 200, &api.LiveLatency{Samples: 400, P99MS: 5, IdleP99MS: 2})
	if want := startPacedRate * slower; p.Rate() != want {
		t.Fatalf("p99 5ms over a 2ms baseline: rate %v, want %v", p.Rate(), want)
	}
	// Between 0.7 × target and target: hold.
	step(liveWindow, 140, &api.LiveLatency{Samples: 400, P99MS: 3.5, IdleP99MS: 2})
	if want := startPacedRate * slower; p.Rate() != want {
		t.Fatalf("p99 within the band: rate %v, want %v held", p.Rate(), want)
	}
	// Well under the target: faster, by as much as one window over it
	// took off, but never past twice what was sent.
	step(liveWindow, 140, &api.LiveLatency{Samples: 400, P99MS: 1, IdleP99MS: 2})
	if want := startPacedRate; math.Abs(p.Rate()-want) > 1e-9 {
		t.Fatalf("p99 under the band: rate %v, want %v", p.Rate(), want)
	}
	before := p.Rate()
	step(liveWindow, 4, &api.LiveLatency{Samples: 400, P99MS: 1, IdleP99MS: 2})
	if p.Rate() != before {
		t.Fatalf("sent 1 row/s under a good window: rate %v, want %v kept (no faster, never slower)", p.Rate(), before)
	}
	// A window of too few live requests changes nothing, however slow.
	step(liveWindow, 4, &api.LiveLatency{Samples: minWindowSamples - 1, P99MS: 100, IdleP99MS: 2})
	if p.Rate() != before {
		t.Fatalf("a slow window of %d samples: rate %v, want %v kept", minWindowSamples-1, p.Rate(), before)
	}
	// Never under the floor.
	for range 20 {
		step(liveWindow, 10, &api.LiveLatency{Samples: 400, P99MS: 100, IdleP99MS: 2})
	}
	if p.Rate() != minPacedRate || p.page() != minPageRows {
		t.Fatalf("after many cuts: rate %v page %d, want %v and %d", p.Rate(), p.page(), minPacedRate, minPageRows)
	}
	// Live traffic gone: no limit.
	step(time.Second, 10, &api.LiveLatency{})
	if p.Rate() != 0 {
		t.Fatalf("live traffic gone: rate %v, want none", p.Rate())
	}
}

func TestPacerCapAndOff(t *testing.T) {
	p, _ := pacerAt(100, 0, 500)
	p.observe(&api.LiveLatency{Samples: 100, P99MS: 50, IdleP99MS: 1})
	if p.Rate() != 100 || p.page() != 500 {
		t.Fatalf("--rate 100 --live-slowdown 0: rate %v page %d, want 100 and --batch's 500", p.Rate(), p.page())
	}
	p, _ = pacerAt(20, 2, 500)
	p.observe(&api.LiveLatency{Samples: 100, P99MS: 1, IdleP99MS: 1})
	if p.Rate() != 20 {
		t.Fatalf("--rate 20 under a live limit of %v: rate %v, want 20", startPacedRate, p.Rate())
	}
}

func TestPacerWaitKeepsTheRate(t *testing.T) {
	p := newPacer(1000, 0, 100) // 100 rows take 100ms
	ctx := context.Background()
	start := time.Now()
	for range 4 {
		if err := p.wait(ctx, 100); err != nil {
			t.Fatal(err)
		}
	}
	// The first page goes at once; three more wait 100ms each.
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Fatalf("4 pages of 100 rows at 1000 rows/s in %v, want at least 300ms", el)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	p.wait(cctx, 100) // books the next 100ms
	if err := p.wait(cctx, 100); err == nil {
		t.Fatal("wait with an ended context and time to wait: want its error")
	}
}
