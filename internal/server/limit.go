package server

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"sync"
	"time"

	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/policy"
)

// What one Unix user may cost the daemon (docs/api.md, "Limits"):
//
//   - connections: at most limits.max_connections_per_caller open at once
//     (connLimiter); one more is answered too_many_connections and closed;
//   - requests in progress: at most limits.max_in_flight_per_caller
//     (callerLimiter), refused ones included, and every batch worker past
//     the first takes one of them too;
//   - refusals: a token bucket of limits.refusal_burst refilled at
//     limits.refusal_rate per second (refusalLimiter); while it is empty,
//     requests are refused at the door with too_many_refusals;
//   - access-log entries for refusals at the door: identical ones (uid,
//     route, code) are coalesced per limits.refusal_window (coalescer).
//
// The caller is its uid: several processes of one user share its limits.
// A connection without peer credentials counts as noUID.

// noUID stands for a peer whose credentials could not be read: (uid_t)-1,
// which no process runs as.
const noUID = math.MaxUint32

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

// acquireExtra takes a slot for one more worker of a batch uid already
// holds a slot for, only while uid holds fewer than half its max: extra
// workers never take more than about half a caller's slots, so the caller
// can always have at least max/2 requests in progress whatever its
// batches do.
func (l *callerLimiter) acquireExtra(uid uint32) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[uid] >= l.max/2 {
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

// refusalLimiter is a token bucket of refusals per uid: each refusal takes
// a token, tokens come back at rate per second up to burst. Buckets that
// are full again are forgotten, so the map holds only recent refusers.
type refusalLimiter struct {
	mu      sync.Mutex
	rate    float64
	burst   float64
	buckets map[uint32]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newRefusalLimiter(rate, burst int) *refusalLimiter {
	return &refusalLimiter{rate: float64(max(rate, 1)), burst: float64(max(burst, 1)), buckets: map[uint32]*bucket{}}
}

// refill brings b up to now; the caller holds mu.
func (l *refusalLimiter) refill(b *bucket, now time.Time) {
	b.tokens = min(l.burst, b.tokens+now.Sub(b.at).Seconds()*l.rate)
	b.at = now
}

// exhausted reports whether uid has no refusal left.
func (l *refusalLimiter) exhausted(uid uint32) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[uid]
	if b == nil {
		return false
	}
	now := time.Now()
	l.refill(b, now)
	if b.tokens >= l.burst {
		delete(l.buckets, uid)
		return false
	}
	return b.tokens < 1
}

// charge takes one refusal from uid's bucket (never below zero).
func (l *refusalLimiter) charge(uid uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	b := l.buckets[uid]
	if b == nil {
		if len(l.buckets) >= 1<<16 {
			l.pruneLocked(now)
		}
		b = &bucket{tokens: l.burst, at: now}
		l.buckets[uid] = b
	}
	l.refill(b, now)
	b.tokens = max(0, b.tokens-1)
}

func (l *refusalLimiter) pruneLocked(now time.Time) {
	for uid, b := range l.buckets {
		if l.refill(b, now); b.tokens >= l.burst {
			delete(l.buckets, uid)
		}
	}
}

// refusalKey says which refusals are identical for coalescing.
type refusalKey struct {
	uid   uint32
	route string // the route pattern, or "connect"
	code  string
}

// coalescer records refusals at the door without letting a flood of them
// fill the log: per refusalKey, the first refusal of a window is recorded
// in full (and fails closed like any entry), the identical ones after it
// within the window are only counted, and when the window closes (or at
// flush, on shutdown) one summary entry says how many there were
// (docs/auditlog.md, "Coalesced refusals"). The counts of open windows are
// in memory: a crash loses at most one window's counts, never a first
// entry.
type coalescer struct {
	rec    auditlog.Recorder
	log    *slog.Logger
	now    func() time.Time // entry times
	window time.Duration

	mu   sync.Mutex
	open map[refusalKey]*refusalWindow
	done bool // flushed: later refusals are recorded in full
}

// refusalWindow is one open window: the summary entry to write (a copy of
// the first refusal's entry) and the refusals counted since.
type refusalWindow struct {
	summary     auditlog.Entry
	n           int
	first, last time.Time
	timer       *time.Timer
}

// record records e, a refusal at the door, or counts it. A non-nil error
// means the entry could not be recorded (the log refused it).
func (c *coalescer) record(ctx context.Context, k refusalKey, e auditlog.Entry) error {
	c.mu.Lock()
	if w := c.open[k]; w != nil {
		if w.n == 0 {
			w.first = e.Time
		}
		w.n++
		w.last = e.Time
		c.mu.Unlock()
		return nil
	}
	var w *refusalWindow
	if !c.done {
		w = &refusalWindow{summary: e}
		w.summary.Caller = auditlog.Caller{UID: e.Caller.UID, GID: e.Caller.GID}
		w.summary.EndUser = auditlog.EndUser{}
		c.open[k] = w
	}
	c.mu.Unlock()
	err := c.rec.Record(ctx, e)
	if w == nil {
		return err
	}
	if err != nil {
		// The next refusal tries again in full; those counted meanwhile
		// are summarized now (or, if the log still refuses, in the daemon log).
		c.close(k, w)
		return err
	}
	c.mu.Lock()
	if c.open[k] == w {
		w.timer = time.AfterFunc(c.window, func() { c.close(k, w) })
	}
	c.mu.Unlock()
	return nil
}

// close ends w's window and writes its summary entry, if it counted any.
func (c *coalescer) close(k refusalKey, w *refusalWindow) {
	c.mu.Lock()
	if c.open[k] != w {
		c.mu.Unlock()
		return
	}
	delete(c.open, k)
	c.mu.Unlock()
	c.summarize(context.Background(), k, w)
}

func (c *coalescer) summarize(ctx context.Context, k refusalKey, w *refusalWindow) {
	if w.n == 0 {
		return
	}
	e := w.summary
	e.Time = c.now().UTC()
	e.Detail = coalescedDetail(w.n, k, w.first, w.last)
	if err := c.rec.Record(ctx, e); err != nil {
		// Nothing is released by a refusal; the daemon log keeps the count.
		c.log.Error("access log refused a coalesced-refusals entry", "uid", k.uid, "route", k.route, "code", k.code, "count", w.n, "err", err)
	}
}

// coalescedDetail is the detail of a summary entry; docs/auditlog.md
// documents its form, and log readers may parse it.
func coalescedDetail(n int, k refusalKey, first, last time.Time) string {
	return fmt.Sprintf("%d more identical refusals from uid %d for route %s code %s between %s and %s",
		n, k.uid, k.route, k.code, first.UTC().Format(time.RFC3339Nano), last.UTC().Format(time.RFC3339Nano))
}

// flush closes every open window now (shutdown); refusals after it are
// recorded in full.
func (c *coalescer) flush(ctx context.Context) {
	c.mu.Lock()
	c.done = true
	open := c.open
	c.open = map[refusalKey]*refusalWindow{}
	c.mu.Unlock()
	for k, w := range open {
		if w.timer != nil {
			w.timer.Stop()
		}
		c.summarize(ctx, k, w)
	}
}

// connLimiter wraps the socket's listener: it reads each connection's peer
// credentials once, at accept, and refuses a connection of a uid that
// already has max open. A refused connection gets a 429
// too_many_connections answer (and a coalesced access-log entry) and is
// closed; Accept goes on with the next one.
type connLimiter struct {
	net.Listener
	s        *Server
	max      int
	refusing chan struct{} // semaphore of maxRefusing

	mu sync.Mutex
	n  map[uint32]int
}

func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		p := peerOf(c)
		uid := p.UID
		if !p.ok {
			uid = noUID
		}
		l.mu.Lock()
		ok := l.n[uid] < l.max
		if ok {
			l.n[uid]++
		}
		l.mu.Unlock()
		if ok {
			return &peerConn{Conn: c, peer: p, release: func() { l.release(uid) }}, nil
		}
		select {
		case l.refusing <- struct{}{}:
			go func() {
				defer func() { <-l.refusing }()
				l.refuse(c, p, true)
			}()
		default: // already answering maxRefusing refused connections: record and close
			l.refuse(c, p, false)
		}
	}
}

// maxRefusing bounds the refused connections being answered at once; each
// takes at most about two seconds (a second to send its request head, a
// second to take the answer).
const maxRefusing = 64

func (l *connLimiter) release(uid uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[uid]--; l.n[uid] <= 0 {
		delete(l.n, uid)
	}
}

// refuse records the refusal of c and, if answer, reads the head of its
// first request (a second at most) and answers it with a 429 before
// closing it, so that a client sees why.
func (l *connLimiter) refuse(c net.Conn, p peer, answer bool) {
	defer c.Close()
	s := l.s
	ae := errorf(http.StatusTooManyRequests, api.CodeTooManyConnections, "uid %d has %d connections open (limits.max_connections_per_caller); close some or reuse them", p.UID, l.max)
	rq := &request{peer: p}
	if p.ok {
		if pr, err := s.d.Policy.Current().Identify(policy.Caller{UID: p.UID, GID: p.GID, PID: p.PID}); err == nil {
			rq.principal = pr
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.d.Limits.RequestTimeout.Std())
	defer cancel()
	if err := s.recordRefusal(ctx, rq, "connect", "connect", ae); err != nil {
		ae = classify(err)
	}
	if !answer {
		return
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	http.ReadRequest(bufio.NewReader(io.LimitReader(c, 64<<10))) // the body, if any, is not read
	c.SetWriteDeadline(time.Now().Add(time.Second))
	body := fmt.Sprintf(`{"error":{"code":%q,"message":%q}}`+"\n", ae.Code, ae.Message)
	fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s",
		ae.Status, http.StatusText(ae.Status), len(body), body)
}

// peerConn is an accepted connection with the peer credentials read at
// accept; Close gives its connLimiter slot back, once.
type peerConn struct {
	net.Conn
	peer    peer
	once    sync.Once
	release func()
}

func (c *peerConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
