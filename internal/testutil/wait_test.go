package testutil_test

import (
	"testing"
	"time"

	"custody/internal/testutil"
)

func TestPoll(t *testing.T) {
	calls := 0
	if !testutil.Poll(10*time.Second, func() bool { calls++; return calls == 5 }) || calls != 5 {
		t.Fatalf("Poll gave up on a condition that became true, after %d calls", calls)
	}
	start := time.Now()
	if testutil.Poll(50*time.Millisecond, func() bool { return false }) {
		t.Fatal("Poll reported a condition that never held")
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Fatalf("Poll gave up after %v, before its timeout", d)
	}
	calls = 0
	if !testutil.Poll(0, func() bool { calls++; return true }) || calls != 1 {
		t.Fatalf("a condition already true: %d calls", calls)
	}
}
