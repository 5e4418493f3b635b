package envelope

import (
	"crypto/sha256"
	"sync"
)

// VerifyCache remembers envelope headers whose signature verified, so that
// opening the same envelope again costs a SHA-256 instead of an ECDSA
// verification (about 0.1 ms on a small machine, a tenth of a device open).
//
// An entry is the SHA-256 of the signed message (which names the signing
// key) and the signature bytes: a hit means exactly these bytes verified
// before under that key id, so Verify's answer cannot differ — as long as
// the key id still names the same public key, which it does for the life
// of a registry (signing keys are never replaced in place). A daemon that
// retires a signing key must call Reset. Only successes are cached. The
// cache holds at most its size in entries (32 bytes each), evicting the
// oldest first. A nil *VerifyCache verifies every time. Safe for concurrent
// use.
type VerifyCache struct {
	mu   sync.Mutex
	set  map[[32]byte]struct{}
	ring [][32]byte // insertion order, for eviction
	next int
}

// NewVerifyCache returns a cache of at most size entries.
func NewVerifyCache(size int) *VerifyCache {
	return &VerifyCache{set: make(map[[32]byte]struct{}, size), ring: make([][32]byte, size)}
}

// Verify is e.Verify(lookup), skipping the signature check when the same
// header and signature verified before.
func (c *VerifyCache) Verify(e *Envelope, lookup KeyLookup) error {
	if c == nil || len(c.ring) == 0 {
		return e.Verify(lookup)
	}
	if err := e.Validate(); err != nil {
		return err
	}
	h := sha256.New()
	h.Write(e.SignedMessage())
	h.Write(e.Signature)
	var key [32]byte
	h.Sum(key[:0])
	c.mu.Lock()
	_, hit := c.set[key]
	c.mu.Unlock()
	if hit {
		return nil
	}
	if err := e.verifySignature(lookup); err != nil { // validated above
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, dup := c.set[key]; dup {
		return nil
	}
	if old := c.ring[c.next]; old != ([32]byte{}) {
		delete(c.set, old)
	}
	c.ring[c.next] = key
	c.set[key] = struct{}{}
	c.next = (c.next + 1) % len(c.ring)
	return nil
}

// Reset forgets every entry.
func (c *VerifyCache) Reset() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.set)
	clear(c.ring)
	c.next = 0
}
