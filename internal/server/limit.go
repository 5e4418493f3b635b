package server

import "sync"

// callerLimiter bounds the requests in progress per caller uid, so that one
// client cannot occupy every HSM session while others wait. A request over
// the bound is refused at once (rate_limited), not queued: queuing would
// only move the starvation into the daemon.
type callerLimiter struct {
	mu  sync.Mutex
	max int
	n   map[uint32]int
}

// acquire takes a slot for uid, or reports false when uid has max in progress.
func (l *callerLimiter) acquire(uid uint32) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[uid] >= l.max {
		return false
	}
	l.n[uid]++
	return true
}

// release gives back a slot acquire took.
func (l *callerLimiter) release(uid uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[uid]--; l.n[uid] <= 0 {
		delete(l.n, uid)
	}
}
