package keys

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"custody/hsm/hsmtest"
	"custody/internal/auditlog"
)

// TestSchedulerRotatesDueAndStopsOnRefusal: the pass rotates the keys due
// and records each; when the access log refuses an entry it stops, so
// no rotation goes unrecorded past the refusal.
func TestSchedulerRotatesDueAndStopsOnRefusal(t *testing.T) {
	ctx := t.Context()
	_, r := openRegistry(t, hsmtest.NewToken(t))
	log := slog.New(slog.DiscardHandler)
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	for _, id := range []string{"miner-1", "miner-2"} {
		if _, err := r.Register(ctx, id, now); err != nil {
			t.Fatal(err)
		}
	}
	now = now.Add(DefaultRotateAfter + time.Hour)
	clock := func() time.Time { return now }

	refused := errors.New("log refused")
	var got []auditlog.Entry
	s := NewScheduler(r, clock, log, func(_ context.Context, e auditlog.Entry, err error) error {
		got = append(got, e)
		return refused
	})
	n, err := s.RotateDue(ctx)
	if n != 1 || !errors.Is(err, refused) || len(got) != 1 {
		t.Fatalf("refused pass: rotated %d, %v, %d entries", n, err, len(got))
	}
	if e := got[0]; e.Operation != "key.rotate" || e.Detail != "due for rotation" || e.KeyVersion != 2 {
		t.Fatalf("entry: %+v", e)
	}

	got = nil
	s = NewScheduler(r, clock, log, func(_ context.Context, e auditlog.Entry, err error) error {
		if err != nil {
			t.Errorf("rotation of %s failed: %v", e.Participant, err)
		}
		got = append(got, e)
		return nil
	})
	if n, err := s.RotateDue(ctx); n != 1 || err != nil || len(got) != 1 || got[0].Participant == "" {
		t.Fatalf("second pass: rotated %d, %v, %+v", n, err, got)
	}
	if n, err := s.RotateDue(ctx); n != 0 || err != nil {
		t.Fatalf("third pass: rotated %d, %v", n, err)
	}
}
