//go:build cgo

package hsm

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"time"

	"github.com/miekg/pkcs11"

	"custody/internal/priority"
)

// The DEK handle cache keeps the DEK of a recently opened envelope v2 on the
// device, as the derive-only session object the unwrap made, together with
// the decrypt-only field keys derived from it, so that opening the same
// stanza again skips the ECDH derive, the KEK derive and the unwrap (and the
// field-key derivations already done). Nothing of it is in host memory but
// object handles and a SHA-256 of the stanza; see "DEK handle cache" in
// doc.go for what that changes and what it does not.
//
// Invariants, under mu: entries maps a stanza's cache key to its live entry;
// lru orders the live entries, most recently used first; an entry is either
// live (in entries and lru) or dead (in neither). A dead entry's objects are
// destroyed by whoever drops its last reference (refs), on a session of the
// entry's generation; when the pool has moved to another generation the
// objects went with their session and are not touched (object handles may
// be reused after a module recycle).
type dekCache struct {
	cfg DEKCacheConfig

	mu      sync.Mutex
	entries map[[32]byte]*dekEntry
	lru     *list.List // of *dekEntry
	grave   []*dekEntry
	checked map[string]time.Time // label → when a hit last found its private key on the token
	seen    map[[32]byte]*list.Element
	seenLRU *list.List // of [32]byte: stanzas opened once and not cached, most recent first
	stats   DEKCacheStats
}

// seenFactor sizes the admission filter: it remembers the last
// seenFactor × Entries stanzas opened once.
const seenFactor = 4

// dekEntry is one cached stanza: its DEK and the field keys derived so far.
type dekEntry struct {
	key     [32]byte
	label   string
	gen     uint64 // pool generation of the session that created the objects
	created time.Time
	dek     pkcs11.ObjectHandle
	elem    *list.Element
	refs    int  // borrowers using the objects; under dekCache.mu
	dead    bool // evicted; under dekCache.mu
	reason  evictReason

	fmu    sync.Mutex
	fields map[[32]byte]pkcs11.ObjectHandle // field-key context → decrypt-only key
}

type evictReason int

const (
	evictCapacity evictReason = iota
	evictAge
	evictKey      // its private key was destroyed (retirement)
	evictRebuild  // the pool was rebuilt: the objects went with their sessions
	evictShutdown // Token.Close
)

func newDEKCache(cfg DEKCacheConfig) *dekCache {
	return &dekCache{cfg: cfg, entries: map[[32]byte]*dekEntry{}, lru: list.New(), checked: map[string]time.Time{},
		seen: map[[32]byte]*list.Element{}, seenLRU: list.New()}
}

// dekCacheKey names the DEK a stanza unwraps to: everything the cold open
// feeds the device before the field keys. Two requests with the same key
// would unwrap the same DEK under the same private key.
func dekCacheKey(req *OpenFieldsRequest) [32]byte {
	h := sha256.New()
	h.Write([]byte("custody hsm dek cache v1\x00"))
	var n [8]byte
	for _, b := range [][]byte{[]byte(req.KeyLabel), {byte(req.Alg), byte(req.KDF)}, req.PeerPublic, req.Context[:], req.WrappedDEK} {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}

// acquire returns the live entry for key created on a session of
// generation gen and not older than MaxAge, with a reference taken, or nil
// (a miss). An entry of another generation or too old is evicted on the way.
func (c *dekCache) acquire(key [32]byte, gen uint64, now time.Time) *dekEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[key]
	switch {
	case e == nil:
	case e.gen != gen:
		c.evictLocked(e, evictRebuild)
		e = nil
	case now.Sub(e.created) > c.cfg.MaxAge:
		c.evictLocked(e, evictAge)
		e = nil
	}
	if e == nil {
		c.stats.Misses++
		return nil
	}
	c.stats.Hits++
	e.refs++
	c.lru.MoveToFront(e.elem)
	return e
}

// admit decides, on a miss, whether the cold open keeps its DEK: only for
// a stanza opened before, within the last seenFactor × Entries stanzas
// opened once. An envelope opened once is then never cached, and its open
// costs what it costs with the cache off (keeping every first open's
// objects and destroying them at eviction instead made a workload of
// distinct envelopes ~15–20 % slower on SoftHSM: docs/performance.md).
func (c *dekCache) admit(key [32]byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.seen[key]; ok {
		c.seenLRU.Remove(el)
		delete(c.seen, key)
		return true
	}
	c.stats.FirstOpens++
	c.seen[key] = c.seenLRU.PushFront(key)
	if c.seenLRU.Len() > seenFactor*c.cfg.Entries {
		old := c.seenLRU.Back()
		delete(c.seen, old.Value.([32]byte))
		c.seenLRU.Remove(old)
	}
	return false
}

// insert makes e (just created by a cold open, refs 0) live, unless an
// entry for its key appeared meanwhile: then e is returned to be destroyed
// by the caller (false). The least recently used entries beyond Entries are
// evicted.
func (c *dekCache) insert(e *dekEntry) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[e.key]; ok {
		return false
	}
	c.entries[e.key] = e
	e.elem = c.lru.PushFront(e)
	for c.lru.Len() > c.cfg.Entries {
		c.evictLocked(c.lru.Back().Value.(*dekEntry), evictCapacity)
	}
	return true
}

// needsCheck reports whether a hit on label must check that its private key
// still exists (the last check is older than Recheck).
func (c *dekCache) needsCheck(label string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	at, ok := c.checked[label]
	return !ok || now.Sub(at) >= c.cfg.Recheck
}

// checkedAt records that label's private key was found on the token at t.
func (c *dekCache) checkedAt(label string, t time.Time) {
	c.mu.Lock()
	c.checked[label] = t
	c.mu.Unlock()
}

// release drops the reference acquire took.
func (c *dekCache) release(e *dekEntry) {
	c.mu.Lock()
	e.refs--
	c.mu.Unlock()
}

// evictLocked makes e dead and queues it for destruction.
func (c *dekCache) evictLocked(e *dekEntry, why evictReason) {
	if e.dead {
		return
	}
	e.dead, e.reason = true, why
	delete(c.entries, e.key)
	if why == evictKey || why == evictRebuild {
		delete(c.checked, e.label)
	}
	c.lru.Remove(e.elem)
	c.grave = append(c.grave, e)
	switch why {
	case evictCapacity:
		c.stats.EvictedCapacity++
	case evictAge:
		c.stats.EvictedAge++
	case evictKey:
		c.stats.EvictedKey++
	case evictRebuild:
		c.stats.EvictedRebuild++
	case evictShutdown:
		c.stats.EvictedShutdown++
	}
}

// evictWhere evicts every live entry for which match is true.
func (c *dekCache) evictWhere(why evictReason, match func(*dekEntry) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for el := c.lru.Front(); el != nil; {
		next := el.Next()
		if e := el.Value.(*dekEntry); match(e) {
			c.evictLocked(e, why)
		}
		el = next
	}
}

// reap destroys, on session h of generation gen, the objects of every dead
// entry no one uses any more; dead entries of another generation are
// dropped without a call (their session, and so their objects, are gone).
func (c *dekCache) reap(ctx *pkcs11.Ctx, h pkcs11.SessionHandle, gen uint64) {
	c.mu.Lock()
	var doomed []*dekEntry
	kept := c.grave[:0]
	for _, e := range c.grave {
		switch {
		case e.refs > 0, e.gen > gen: // in use, or made on a session newer than h
			kept = append(kept, e)
		case e.gen == gen:
			doomed = append(doomed, e)
		}
	}
	clear(c.grave[len(kept):])
	c.grave = kept
	c.mu.Unlock()
	for _, e := range doomed {
		e.destroy(ctx, h)
	}
}

// reapable reports whether dead entries wait for destruction.
func (c *dekCache) reapable() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.grave {
		if e.refs == 0 {
			return true
		}
	}
	return false
}

func (c *dekCache) snapshot() DEKCacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Entries = c.lru.Len()
	s.Capacity = c.cfg.Entries
	count := func(e *dekEntry) {
		e.fmu.Lock()
		s.Objects += 1 + len(e.fields)
		e.fmu.Unlock()
	}
	for el := c.lru.Front(); el != nil; el = el.Next() {
		count(el.Value.(*dekEntry))
	}
	for _, e := range c.grave {
		count(e)
	}
	return s
}

// fieldKey returns the cached field key for context, or 0.
func (e *dekEntry) fieldKey(context [32]byte) pkcs11.ObjectHandle {
	e.fmu.Lock()
	defer e.fmu.Unlock()
	return e.fields[context]
}

// addFieldKey records k as the field key for context and returns the key
// to use: k, or the one another borrower recorded first (then k is
// destroyed on h).
func (e *dekEntry) addFieldKey(ctx *pkcs11.Ctx, h pkcs11.SessionHandle, context [32]byte, k pkcs11.ObjectHandle) pkcs11.ObjectHandle {
	e.fmu.Lock()
	if had, ok := e.fields[context]; ok {
		e.fmu.Unlock()
		_ = ctx.DestroyObject(h, k)
		return had
	}
	if e.fields == nil {
		e.fields = map[[32]byte]pkcs11.ObjectHandle{}
	}
	e.fields[context] = k
	e.fmu.Unlock()
	return k
}

// destroy destroys the entry's objects on h (the entry is dead and unused).
func (e *dekEntry) destroy(ctx *pkcs11.Ctx, h pkcs11.SessionHandle) {
	e.fmu.Lock()
	defer e.fmu.Unlock()
	for c, k := range e.fields {
		_ = ctx.DestroyObject(h, k)
		delete(e.fields, c)
	}
	_ = ctx.DestroyObject(h, e.dek)
}

// janitor evicts entries older than MaxAge and destroys dead ones, every
// quarter of MaxAge (at most every 5 s), until stop is closed.
func (t *Token) janitor(stop <-chan struct{}) {
	every := min(t.deks.cfg.MaxAge/4, 5*time.Second)
	tick := time.NewTicker(max(every, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		now := time.Now()
		gen := t.pool.generation()
		t.deks.evictWhere(evictAge, func(e *dekEntry) bool { return now.Sub(e.created) > t.deks.cfg.MaxAge })
		t.deks.evictWhere(evictRebuild, func(e *dekEntry) bool { return e.gen != gen })
		if t.deks.reapable() {
			ctx, cancel := context.WithTimeout(priority.Background(context.Background()), 5*time.Second)
			_ = t.pool.withSessionOf(ctx, func(s session) error {
				t.deks.reap(t.mod.ctx, s.h, s.gen)
				return nil
			})
			cancel()
		}
	}
}

// DEKCacheStats returns the cache's counters; Enabled is false (and the
// rest zero) when the cache is off.
func (t *Token) DEKCacheStats() DEKCacheStats {
	if t.deks == nil {
		return DEKCacheStats{}
	}
	s := t.deks.snapshot()
	s.Enabled = true
	return s
}
