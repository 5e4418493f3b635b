package priority

import (
	"testing"
	"time"
)

// fakeClock is a settable now.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestWatchIdleAndBusy(t *testing.T) {
	c := &fakeClock{t: time.Unix(1e9, 0)}
	w := NewWatch()
	w.now = c.now
	if r := w.Report(); r != (LiveReport{}) {
		t.Fatalf("empty watch reports %+v", r)
	}
	// 99 fast idle requests and one slow: the baseline exists.
	for i := range MinIdleSamples * 2 {
		d := time.Millisecond
		if i == 0 {
			d = 50 * time.Millisecond
		}
		c.t = c.t.Add(10 * time.Millisecond)
		w.Live(d)
	}
	r := w.Report()
	if r.IdleP99 != time.Millisecond || r.Samples != MinIdleSamples*2 {
		t.Fatalf("after idle samples: %+v, want idle p99 1ms and %d samples", r, MinIdleSamples*2)
	}
	// Bulk work runs: slow live requests are recent, not idle.
	end := w.Bulk()
	c.t = c.t.Add(Window + time.Second) // the idle ones fall out of the window
	for range 10 {
		c.t = c.t.Add(10 * time.Millisecond)
		w.Live(9 * time.Millisecond)
	}
	end()
	r = w.Report()
	if r.Samples != 10 || r.P99 != 9*time.Millisecond || r.IdleP99 != time.Millisecond {
		t.Fatalf("during bulk work: %+v, want 10 samples at 9ms, idle p99 still 1ms", r)
	}
	// Within Quiet of the bulk call's end a sample is still not idle.
	c.t = c.t.Add(Quiet / 2)
	for range MinIdleSamples * 2 {
		w.Live(9 * time.Millisecond)
	}
	if r = w.Report(); r.IdleP99 != time.Millisecond {
		t.Fatalf("samples within Quiet of bulk work changed the baseline: %+v", r)
	}
	// After Quiet they are idle again.
	c.t = c.t.Add(Quiet)
	for range idleKept {
		w.Live(3 * time.Millisecond)
	}
	if r = w.Report(); r.IdleP99 != 3*time.Millisecond {
		t.Fatalf("baseline after quiet: %+v, want 3ms", r)
	}
}

func TestWatchNoBaselineBelowMinimum(t *testing.T) {
	w := NewWatch()
	for range MinIdleSamples - 1 {
		w.Live(time.Millisecond)
	}
	if r := w.Report(); r.IdleP99 != 0 || r.Samples != MinIdleSamples-1 {
		t.Fatalf("report %+v: want no baseline below %d idle samples", r, MinIdleSamples)
	}
}

// BenchmarkWatchLive is what timing a live request costs it.
func BenchmarkWatchLive(b *testing.B) {
	w := NewWatch()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			w.Live(time.Millisecond)
		}
	})
}

// BenchmarkWatchReport is what a rewrap answer's report costs with full
// rings.
func BenchmarkWatchReport(b *testing.B) {
	w := NewWatch()
	for range recentKept {
		w.Live(time.Millisecond)
	}
	for b.Loop() {
		w.Report()
	}
}
