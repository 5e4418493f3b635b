//go:build cgo

package hsm

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"

	"custody/internal/priority"
)

// rebuildBackoff is the minimum time between two rebuild attempts while the
// token stays unreachable.
const rebuildBackoff = 200 * time.Millisecond

// errClosed is returned by every call on a closed Token.
var errClosed = fmt.Errorf("%w: token closed", ErrUnavailable)

// session is one pooled PKCS#11 session, tagged with the pool generation that
// opened it.
type session struct {
	h   pkcs11.SessionHandle
	gen uint64
}

// pool owns the N sessions of one Token and their recovery. Invariants,
// all under mu: handles holds the sessions of generation gen; free holds
// the ones not borrowed, and never a session of another generation. A
// rebuild starts a new generation before it reconnects, so sessions still
// borrowed from the old one are dropped when they come back.
type pool struct {
	mod   *module
	label string
	n     int
	pin   []byte // user PIN for re-login; cleared by close
	log   interface {
		Warn(string, ...any)
		Info(string, ...any)
	}
	onRebuild func() // called after a successful rebuild (cache invalidation)

	rebuildSem chan struct{} // one rebuild at a time; a channel so waiting honours ctx

	// recycleAfter > 0: once that many session objects were created, the
	// pool rebuilds with C_Finalize/C_Initialize (module.recycle) to free
	// what the token keeps for destroyed session objects.
	recycleAfter uint64
	created      atomic.Uint64 // session objects created since the last recycle

	waiting atomic.Int32  // foreground borrowers blocked in borrow
	yields  atomic.Uint64 // background batches that gave their session back to one

	mu       sync.Mutex
	gen      uint64
	slot     uint
	handles  []pkcs11.SessionHandle
	toClose  []pkcs11.SessionHandle // sessions of old generations not yet closed
	out      map[uint64]int         // borrowed sessions per generation
	free     chan session
	broken   error         // non-nil after a failed rebuild, until one succeeds
	brokenCh chan struct{} // closed when broken becomes non-nil
	lastTry  time.Time
	rebuilds uint64
	recycles uint64
	closed   bool
}

func newPool(mod *module, label string, n int, pin []byte) *pool {
	return &pool{
		mod:        mod,
		label:      label,
		n:          n,
		pin:        pin,
		rebuildSem: make(chan struct{}, 1),
		free:       make(chan session, n),
		brokenCh:   make(chan struct{}),
		out:        map[uint64]int{},
	}
}

// findSlot returns the slot holding the initialized token with the given label.
func findSlot(ctx *pkcs11.Ctx, label string) (uint, error) {
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		return 0, fmt.Errorf("C_GetSlotList: %w", err)
	}
	for _, s := range slots {
		ti, err := ctx.GetTokenInfo(s)
		if err != nil {
			continue
		}
		if ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED != 0 && ti.Label == label {
			return s, nil
		}
	}
	return 0, fmt.Errorf("%w: no initialized token labelled %q", ErrNoToken, label)
}

// connect finds the slot, opens n sessions and logs in. On error it closes
// what it opened.
func (p *pool) connect() (uint, []pkcs11.SessionHandle, error) {
	slot, err := findSlot(p.mod.ctx, p.label)
	if err != nil {
		return 0, nil, err
	}
	hs := make([]pkcs11.SessionHandle, 0, p.n)
	fail := func(err error) (uint, []pkcs11.SessionHandle, error) {
		for _, h := range hs {
			_ = p.mod.ctx.CloseSession(h)
		}
		return 0, nil, err
	}
	for range p.n {
		h, err := p.mod.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return fail(fmt.Errorf("C_OpenSession: %w", err))
		}
		hs = append(hs, h)
	}
	// Login state is per application and token: one login covers all sessions.
	pin := string(p.pin) // miekg/pkcs11 takes a string; this copy cannot be cleared
	err = p.mod.ctx.Login(hs[0], pkcs11.CKU_USER, pin)
	if err != nil && !isCode(err, pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
		if isCode(err, pkcs11.CKR_PIN_INCORRECT) || isCode(err, pkcs11.CKR_PIN_LOCKED) ||
			isCode(err, pkcs11.CKR_PIN_INVALID) || isCode(err, pkcs11.CKR_PIN_LEN_RANGE) {
			return fail(fmt.Errorf("%w: user login to token %q refused: %w", ErrLogin, p.label, err))
		}
		return fail(fmt.Errorf("C_Login: %w", err))
	}
	return slot, hs, nil
}

// start opens the first generation of sessions.
func (p *pool) start() error {
	slot, hs, err := p.connect()
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.slot, p.handles = slot, hs
	for _, h := range hs {
		p.free <- session{h: h, gen: p.gen}
	}
	return nil
}

// borrow takes a session, waiting for one if all are in use. While the pool
// is broken it triggers a rebuild (rate-limited) instead of waiting. A
// borrower with a background context (priority.Background) lets every waiting
// foreground borrower go first, for up to backgroundMaxWait.
func (p *pool) borrow(ctx context.Context) (session, error) {
	foreground := !priority.IsBackground(ctx)
	deferring := !foreground // background, and not yet for backgroundMaxWait
	var deferUntil time.Time
	if deferring {
		deferUntil = time.Now().Add(backgroundMaxWait)
	}
	waiting := false
	defer func() {
		if waiting {
			p.waiting.Add(-1)
		}
	}()
	for {
		p.mu.Lock()
		closed, broken, bch, gen := p.closed, p.broken, p.brokenCh, p.gen
		p.mu.Unlock()
		if closed {
			return session{}, errClosed
		}
		if broken != nil {
			if err := p.rebuild(ctx, gen, false); err != nil {
				return session{}, err
			}
			continue
		}
		if deferring && time.Now().After(deferUntil) {
			deferring = false // waited long enough: in line like the others
		}
		if deferring && p.contended() {
			select {
			case <-time.After(backgroundPoll):
				continue
			case <-ctx.Done():
				return session{}, ctx.Err()
			}
		}
		select {
		case s := <-p.free:
			if p.take(s) {
				return s, nil
			}
			continue
		default:
		}
		if foreground && !waiting {
			waiting = true
			p.waiting.Add(1)
		}
		select {
		case s := <-p.free:
			if !p.take(s) {
				continue
			}
			if deferring && p.contended() {
				// A foreground call started waiting while this one was:
				// it goes first.
				p.release(s, true)
				continue
			}
			return s, nil
		case <-bch:
		case <-ctx.Done():
			return session{}, ctx.Err()
		}
	}
}

// A background borrower looks again every backgroundPoll while foreground
// borrowers wait; after backgroundMaxWait it queues like any other, so that
// bulk work still moves under a saturating load.
const (
	backgroundPoll    = 200 * time.Microsecond
	backgroundMaxWait = 50 * time.Millisecond
)

// contended reports whether a foreground borrower is waiting for a session.
func (p *pool) contended() bool { return p.waiting.Load() > 0 }

// take marks s borrowed if it is of the current generation; a session taken
// from free just before a rebuild drained it is dropped (false).
func (p *pool) take(s session) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	current := s.gen == p.gen && !p.closed
	if current {
		p.out[s.gen]++
	}
	return current
}

// release gives a borrowed session back. It returns to free only if it is
// healthy, of the current generation, and the pool is open; otherwise the
// rebuild that replaces its generation closes it.
func (p *pool) release(s session, healthy bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.out[s.gen]--; p.out[s.gen] <= 0 {
		delete(p.out, s.gen)
	}
	if healthy && !p.closed && s.gen == p.gen && p.broken == nil {
		p.free <- s
	}
}

// staleOutLocked counts borrowed sessions of generations before gen.
func (p *pool) staleOutLocked(gen uint64) int {
	n := 0
	for g, c := range p.out {
		if g < gen {
			n += c
		}
	}
	return n
}

// rebuild replaces all sessions after a caller saw a lost-session error on a
// session of generation seen. Only one rebuild runs at a time; a caller whose
// generation is already outdated returns at once and retries on the new
// sessions. Failed attempts are retried at most once per rebuildBackoff.
//
// With finalize, the module is also finalized and initialized again between
// closing the old sessions and opening the new ones, when this pool is its
// only user in the process (module.recycle); see noteSessionObjects.
func (p *pool) rebuild(ctx context.Context, seen uint64, finalize bool) error {
	select {
	case p.rebuildSem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-p.rebuildSem }()

	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return errClosed
	}
	if p.gen != seen {
		p.mu.Unlock()
		return nil
	}
	if p.broken != nil && time.Since(p.lastTry) < rebuildBackoff {
		err := p.broken
		p.mu.Unlock()
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	p.lastTry = time.Now()
	// A new generation starts now: every outstanding session is stale, and
	// release drops it instead of returning it to free.
	p.gen++
	gen := p.gen
	p.toClose = append(p.toClose, p.handles...)
	p.handles = nil
	p.drainLocked()
	p.mu.Unlock()

	// SoftHSM reuses session handle numbers. Before old sessions are closed
	// and new ones opened, every borrower of an old session must have given
	// it back, or it could keep working on a handle that now names another
	// borrower's new session. Operations are short; poll.
	for {
		p.mu.Lock()
		n := p.staleOutLocked(gen)
		p.mu.Unlock()
		if n == 0 {
			break
		}
		select {
		case <-ctx.Done():
			// Leave the pool broken so the next borrower rebuilds (and
			// closes toClose) instead of waiting for sessions that will
			// not come.
			p.mu.Lock()
			if p.broken == nil {
				close(p.brokenCh)
			}
			p.broken = ctx.Err()
			p.mu.Unlock()
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	p.mu.Lock()
	old := p.toClose
	p.toClose = nil
	p.mu.Unlock()
	for _, h := range old {
		_ = p.mod.ctx.CloseSession(h)
	}
	recycled := false
	if finalize {
		var rerr error
		if recycled, rerr = p.mod.recycle(); rerr != nil {
			p.log.Warn("hsm: module recycle failed", "token", p.label, "err", rerr)
		}
	}
	slot, hs, err := p.connect()
	if isCode(err, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED) {
		if ierr := p.mod.reinitialize(); ierr == nil {
			slot, hs, err = p.connect()
		}
	}
	if errors.Is(err, ErrNoToken) && !recycled {
		// A token that went away and came back is seen again only after
		// C_Initialize (SoftHSM scans its token directory there).
		if ok, rerr := p.mod.recycle(); ok {
			recycled = true
			slot, hs, err = p.connect()
		} else if rerr != nil {
			p.log.Warn("hsm: module re-initialization failed", "token", p.label, "err", rerr)
		}
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		if p.broken == nil {
			close(p.brokenCh)
		}
		p.broken = err
		p.log.Warn("hsm: session pool rebuild failed", "token", p.label, "err", err)
		return fmt.Errorf("%w: rebuilding sessions: %w", ErrUnavailable, err)
	}
	if p.closed || p.gen != gen { // Close ran while we were connecting
		for _, h := range hs {
			_ = p.mod.ctx.CloseSession(h)
		}
		return errClosed
	}
	p.rebuilds++
	if recycled {
		p.recycles++
	}
	p.slot, p.handles = slot, hs
	if p.broken != nil {
		p.broken = nil
		p.brokenCh = make(chan struct{})
	}
	for _, h := range hs {
		p.free <- session{h: h, gen: gen}
	}
	if p.onRebuild != nil {
		p.onRebuild()
	}
	p.log.Info("hsm: session pool rebuilt", "token", p.label, "generation", p.gen, "rebuilds", p.rebuilds, "module_recycled", recycled)
	return nil
}

// noteSessionObjects records that an operation created (and destroyed) n
// session objects. When recycling is on and the count passes recycleAfter,
// it rebuilds the pool with a module recycle, in the caller's goroutine; the
// caller must hold no session. Failures are logged: the pool carries on.
func (p *pool) noteSessionObjects(ctx context.Context, n uint64) {
	if p.recycleAfter == 0 {
		return
	}
	v := p.created.Add(n)
	if v < p.recycleAfter || !p.created.CompareAndSwap(v, 0) {
		return
	}
	p.mu.Lock()
	gen := p.gen
	p.mu.Unlock()
	if err := p.rebuild(ctx, gen, true); err != nil {
		p.log.Warn("hsm: recycle rebuild failed", "token", p.label, "err", err)
	}
}

func (p *pool) drainLocked() {
	for {
		select {
		case <-p.free:
		default:
			return
		}
	}
}

// close logs out, closes every session and clears the PIN. Borrowers blocked
// in borrow are woken and get errClosed.
func (p *pool) close() error {
	p.rebuildSem <- struct{}{} // wait for a running rebuild
	defer func() { <-p.rebuildSem }()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	if p.broken == nil {
		close(p.brokenCh)
		p.broken = errClosed
	}
	p.drainLocked()
	var err error
	if len(p.handles) > 0 {
		if lerr := p.mod.ctx.Logout(p.handles[0]); lerr != nil &&
			!isCode(lerr, pkcs11.CKR_USER_NOT_LOGGED_IN) && !isLost(lerr) {
			err = fmt.Errorf("C_Logout: %w", lerr)
		}
	}
	for _, h := range append(p.handles, p.toClose...) {
		_ = p.mod.ctx.CloseSession(h)
	}
	p.handles, p.toClose = nil, nil
	clear(p.pin)
	p.pin = nil
	return err
}

// withSession runs fn on a pooled session. If fn fails because the session,
// login or token was lost, the pool is rebuilt and fn runs once more on a
// fresh session. A second loss, or a failed rebuild, is ErrUnavailable.
func (p *pool) withSession(ctx context.Context, fn func(h pkcs11.SessionHandle) error) error {
	return p.withSessionOf(ctx, func(s session) error { return fn(s.h) })
}

// withSessionOf is withSession for callers that need to know the session's
// generation (the DEK cache: objects live only as long as their session).
func (p *pool) withSessionOf(ctx context.Context, fn func(s session) error) error {
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		s, err := p.borrow(ctx)
		if err != nil {
			return err
		}
		err = p.diagnose(s.h, fn(s))
		lost := isLost(err)
		p.release(s, !lost)
		if !lost {
			return err
		}
		if attempt > 0 {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		p.log.Warn("hsm: session lost, rebuilding", "token", p.label, "err", err)
		if rerr := p.rebuild(ctx, s.gen, false); rerr != nil {
			return rerr
		}
	}
}

// diagnose returns err, or a loss (isLost) when err came while session h or
// the token went away: a failure then says nothing about the data.
func (p *pool) diagnose(h pkcs11.SessionHandle, err error) error {
	if err != nil && !isLost(err) && p.ambiguous(err) && p.sessionLost(h) {
		// The session was closed under the call: a loss, not bad data.
		err = fmt.Errorf("%w (session lost during the call)", pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID))
	}
	if err != nil && !isLost(err) && (errors.Is(err, ErrNotFound) || p.ambiguous(err)) && p.tokenGone() {
		// The token itself went away (SoftHSM: its directory was
		// removed; its objects vanish and C_GetTokenInfo fails).
		err = fmt.Errorf("%w (token gone during the call: %w)", pkcs11.Error(pkcs11.CKR_TOKEN_NOT_PRESENT), err)
	}
	return err
}

// generation returns the current session generation.
func (p *pool) generation() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gen
}

func (p *pool) stats() (n, inUse int, rebuilds, recycles uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.out {
		inUse += c
	}
	return p.n, inUse, p.rebuilds, p.recycles
}

// ambiguous reports whether err came from the token at all. Under a
// session loss SoftHSM answers an operation in flight with whatever its
// half-torn state gives (CKR_GENERAL_ERROR, CKR_TEMPLATE_INCONSISTENT,
// CKR_KEY_FUNCTION_NOT_PERMITTED were all observed), so every token error is
// checked against the session's liveness before it is believed.
func (p *pool) ambiguous(err error) bool {
	var e pkcs11.Error
	return errors.As(err, &e)
}

// stillPresent is the last step of a listing: a token that went away under
// it (SoftHSM: its directory removed) lists fewer objects, or none, without
// an error, so a listing is believed only if the token still answers
// afterwards; otherwise it is a loss (the pool rebuilds, callers get
// ErrUnavailable), never a shorter list.
func (p *pool) stillPresent() error {
	if p.tokenGone() {
		return fmt.Errorf("%w (token gone during a listing)", pkcs11.Error(pkcs11.CKR_TOKEN_NOT_PRESENT))
	}
	return nil
}

// tokenGone reports whether the token no longer answers C_GetTokenInfo on
// its slot: removed, or (SoftHSM) its directory taken away.
func (p *pool) tokenGone() bool {
	p.mu.Lock()
	slot := p.slot
	p.mu.Unlock()
	_, err := p.mod.ctx.GetTokenInfo(slot)
	return err != nil
}

// sessionLost asks the token whether session h is still open and logged in.
func (p *pool) sessionLost(h pkcs11.SessionHandle) bool {
	si, err := p.mod.ctx.GetSessionInfo(h)
	if err != nil {
		return isLost(err)
	}
	return si.State != pkcs11.CKS_RW_USER_FUNCTIONS && si.State != pkcs11.CKS_RO_USER_FUNCTIONS
}
