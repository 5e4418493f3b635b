// Package testutil holds what the tests of several packages share and that
// is not about the device (hsm/hsmtest is): waiting for a condition instead
// of sleeping for a guess (Poll), and a server shared by a test binary
// (Shared).
//
// A test that needs "until X" (a log line, a socket, a state, enough
// requests in a phase) polls X with Poll, and then fails with its own
// message saying what did not happen, or lets its assertions say it; a
// time.Sleep in a test means "let time pass" (a backoff, a TTL, a window,
// pacing) and says so in a comment.
package testutil

import "time"

// PollInterval is how often Poll tests its condition.
const PollInterval = 10 * time.Millisecond

// Poll tests cond at once and then every PollInterval until it returns
// true, and reports whether it did before timeout passed. cond runs on the
// caller's goroutine.
func Poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(PollInterval)
	}
}
