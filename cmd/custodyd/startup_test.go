package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"custody/hsm"
)

// TestStartupRetry: a start step that finds the token unavailable for a
// moment (SoftHSM while another daemon creates objects on it) is tried
// again until it succeeds; any other error ends the start at once; a token
// that stays away ends it after startupTokenWait with the step's error.
func TestStartupRetry(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	transient := fmt.Errorf("%w: rebuilding sessions: token not found", hsm.ErrUnavailable)
	calls := 0
	v, err := startupRetry(context.Background(), log, "test", func() (int, error) {
		if calls++; calls < 3 {
			return 0, transient
		}
		return 7, nil
	})
	if err != nil || v != 7 || calls != 3 {
		t.Fatalf("transient twice: %d %v after %d calls, want 7 after 3", v, err, calls)
	}
	calls = 0
	other := errors.New("key_mismatch")
	if _, err := startupRetry(context.Background(), log, "test", func() (int, error) { calls++; return 0, other }); !errors.Is(err, other) || calls != 1 {
		t.Fatalf("another error: %v after %d calls, want it after 1", err, calls)
	}
	defer func(d time.Duration) { startupTokenWait = d }(startupTokenWait)
	startupTokenWait = 500 * time.Millisecond
	start, calls := time.Now(), 0
	if _, err := startupRetry(context.Background(), log, "test", func() (int, error) { calls++; return 0, transient }); !errors.Is(err, hsm.ErrUnavailable) ||
		calls < 2 || time.Since(start) > 2*time.Second {
		t.Fatalf("token away: %v after %d calls in %v", err, calls, time.Since(start))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	calls = 0
	if _, err := startupRetry(ctx, log, "test", func() (int, error) { calls++; return 0, transient }); !errors.Is(err, hsm.ErrUnavailable) || calls != 1 {
		t.Fatalf("cancelled: %v after %d calls", err, calls)
	}
}
