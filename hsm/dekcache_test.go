//go:build cgo

package hsm_test

import (
	"bytes"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"custody/hsm"
	"custody/hsm/hsmtest"
)

// openCached opens a fresh token with the DEK handle cache on.
// Recheck is 0 (every hit checks its key) unless recheck says otherwise.
func openCached(t *testing.T, entries int, maxAge time.Duration, recheck ...time.Duration) (*hsm.Token, hsm.Config) {
	t.Helper()
	cfg := hsmtest.NewToken(t)
	cfg.DEKCache = hsm.DEKCacheConfig{Entries: entries, MaxAge: maxAge}
	if len(recheck) > 0 {
		cfg.DEKCache.Recheck = recheck[0]
	}
	return openConfig(t, cfg), cfg
}

func wantStats(t *testing.T, tok *hsm.Token, hits, misses uint64) hsm.DEKCacheStats {
	t.Helper()
	s := tok.DEKCacheStats()
	if !s.Enabled || s.Hits != hits || s.Misses != misses {
		t.Fatalf("DEKCacheStats = %+v, want enabled with %d hits, %d misses", s, hits, misses)
	}
	return s
}

// prime opens req once: a stanza's first open is never cached (the
// admission filter), so the next open of it caches its DEK.
func prime(t *testing.T, tok *hsm.Token, req hsm.OpenFieldsRequest) {
	t.Helper()
	before := tok.DEKCacheStats().FirstOpens
	if _, err := tok.OpenFields(testCtx(t), req); err != nil {
		t.Fatalf("first open: %v", err)
	}
	if got := tok.DEKCacheStats().FirstOpens; got != before+1 {
		t.Fatalf("FirstOpens %d → %d: the first open was not a first open", before, got)
	}
}

func wantObjects(t *testing.T, tok *hsm.Token, n int) {
	t.Helper()
	if got, err := tok.SessionObjectCount(testCtx(t)); err != nil || got != n {
		t.Fatalf("SessionObjectCount = %d, %v; want %d", got, err, n)
	}
}

func TestDEKCacheHit(t *testing.T) {
	t.Parallel()
	tok, _ := openCached(t, 8, time.Minute)
	ctx := testCtx(t)
	key := genKey(t, tok, "cache", hsm.X25519, hsm.UsageDerive)
	req := fieldsRequest(t, seal(t, key, []byte("unused"), nil), `"1000"`, `{"iban":"DE00"}`)
	one := req
	one.Fields = req.Fields[:1]

	// A first open keeps nothing (the admission filter): everything is
	// destroyed, as with the cache off.
	if pts, err := tok.OpenFields(ctx, one); err != nil || string(pts[0]) != `"1000"` {
		t.Fatalf("first OpenFields = %q, %v", pts, err)
	}
	wantStats(t, tok, 0, 1)
	wantObjects(t, tok, 0)
	// The second, cold again: only the first field; the cache keeps the DEK
	// and one field key.
	if pts, err := tok.OpenFields(ctx, one); err != nil || string(pts[0]) != `"1000"` {
		t.Fatalf("second OpenFields = %q, %v", pts, err)
	}
	wantStats(t, tok, 0, 2)
	wantObjects(t, tok, 2)
	// Hit with both fields: the second field key is derived from the cached DEK.
	if pts, err := tok.OpenFields(ctx, req); err != nil || string(pts[0]) != `"1000"` || string(pts[1]) != `{"iban":"DE00"}` {
		t.Fatalf("hit OpenFields = %q, %v", pts, err)
	}
	wantStats(t, tok, 1, 2)
	wantObjects(t, tok, 3)
	// A hit still authenticates every field: a tampered one is refused, and
	// the entry (whose DEK is fine) stays.
	bad := req
	bad.Fields = append([]hsm.FieldOpen(nil), req.Fields...)
	bad.Fields[1].Ciphertext = append([]byte(nil), req.Fields[1].Ciphertext...)
	bad.Fields[1].Ciphertext[0] ^= 1
	if pts, err := tok.OpenFields(ctx, bad); !errors.Is(err, hsm.ErrIntegrity) || pts != nil {
		t.Fatalf("tampered field on a hit = %q, %v; want ErrIntegrity", pts, err)
	}
	// A field under another field's key (swapped contexts) on a hit: refused.
	swapped := req
	swapped.Fields = []hsm.FieldOpen{req.Fields[0]}
	swapped.Fields[0].Context = req.Fields[1].Context
	if _, err := tok.OpenFields(ctx, swapped); !errors.Is(err, hsm.ErrIntegrity) {
		t.Fatalf("swapped field key on a hit: %v, want ErrIntegrity", err)
	}
	// Another stanza (another wrapped DEK) is a miss, never the cached DEK.
	other := fieldsRequest(t, seal(t, key, []byte("unused"), nil), `"7"`)
	prime(t, tok, other)
	if pts, err := tok.OpenFields(ctx, other); err != nil || string(pts[0]) != `"7"` {
		t.Fatalf("other stanza = %q, %v", pts, err)
	}
	s := wantStats(t, tok, 3, 4)
	if s.Entries != 2 {
		t.Fatalf("Entries = %d, want 2", s.Entries)
	}
	// A damaged wrapped DEK is a miss and refused as a cold open refuses it;
	// nothing of it is cached.
	dam := req
	dam.WrappedDEK = append([]byte(nil), req.WrappedDEK...)
	dam.WrappedDEK[3] ^= 1
	for range 2 { // a first open, then one the filter admits
		if _, err := tok.OpenFields(ctx, dam); !errors.Is(err, hsm.ErrIntegrity) {
			t.Fatalf("damaged wrap: %v, want ErrIntegrity", err)
		}
	}
	if s := tok.DEKCacheStats(); s.Entries != 2 {
		t.Fatalf("a failed open was cached: %+v", s)
	}
	wantObjects(t, tok, 3+2)
}

// TestDEKCacheKeyDestroyed: a retired (destroyed) key's cached DEKs go with
// it, here and in another process's view (a second Token, whose handles are
// its own: the hit checks that the private key still exists).
func TestDEKCacheKeyDestroyed(t *testing.T) {
	t.Parallel()
	tok, cfg := openCached(t, 8, time.Minute)
	ctx := testCtx(t)
	key := genKey(t, tok, "retire", hsm.X25519, hsm.UsageDerive)
	req := fieldsRequest(t, seal(t, key, []byte("unused"), nil), `"1"`)
	prime(t, tok, req)
	if _, err := tok.OpenFields(ctx, req); err != nil {
		t.Fatal(err)
	}
	if err := tok.DestroyKeyPair(ctx, key.Label); err != nil {
		t.Fatal(err)
	}
	if s := tok.DEKCacheStats(); s.Entries != 0 || s.EvictedKey != 1 {
		t.Fatalf("after DestroyKeyPair: %+v, want the entry evicted for its key", s)
	}
	wantObjects(t, tok, 0)
	if _, err := tok.OpenFields(ctx, req); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("open after destroy: %v, want ErrNotFound", err)
	}

	// The key destroyed through another Token: the cached entry here stays
	// until it ages out, but a hit refuses like the cold open would.
	key2 := genKey(t, tok, "retire-2", hsm.X25519, hsm.UsageDerive)
	req2 := fieldsRequest(t, seal(t, key2, []byte("unused"), nil), `"2"`)
	prime(t, tok, req2)
	if _, err := tok.OpenFields(ctx, req2); err != nil {
		t.Fatal(err)
	}
	other, err := hsm.Open(ctx, hsm.Config{ModulePath: cfg.ModulePath, TokenLabel: cfg.TokenLabel, PINFile: cfg.PINFile}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := other.DestroyKeyPair(ctx, key2.Label); err != nil {
		t.Fatal(err)
	}
	// Closing other logs the process out (login state is per process): log
	// back in through tok's recovery by keeping other open until the end.
	t.Cleanup(func() { other.Close() })
	if _, err := tok.OpenFields(ctx, req2); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("hit after another Token destroyed the key: %v, want ErrNotFound", err)
	}
	if s := tok.DEKCacheStats(); s.Entries != 0 || s.EvictedKey != 2 {
		t.Fatalf("after the key was found gone: %+v, want its entry evicted", s)
	}
}

// TestDEKCacheRecheck: with Recheck, a key destroyed by another process is
// noticed by the first hit after Recheck (before, the hit opens: the
// documented window); a key destroyed through this Token, at once.
func TestDEKCacheRecheck(t *testing.T) {
	t.Parallel()
	const recheck = 300 * time.Millisecond
	tok, cfg := openCached(t, 8, time.Minute, recheck)
	ctx := testCtx(t)
	key := genKey(t, tok, "recheck", hsm.X25519, hsm.UsageDerive)
	req := fieldsRequest(t, seal(t, key, []byte("unused"), nil), `"1"`)
	prime(t, tok, req)
	if _, err := tok.OpenFields(ctx, req); err != nil {
		t.Fatal(err)
	}
	other, err := hsm.Open(ctx, hsm.Config{ModulePath: cfg.ModulePath, TokenLabel: cfg.TokenLabel, PINFile: cfg.PINFile}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })
	destroyed := time.Now()
	if err := other.DestroyKeyPair(ctx, key.Label); err != nil {
		t.Fatal(err)
	}
	if _, err := tok.OpenFields(ctx, req); time.Since(destroyed) < recheck/2 && err != nil {
		t.Fatalf("hit within Recheck of the cold open: %v, want it to open (the documented window)", err)
	}
	time.Sleep(recheck)
	if _, err := tok.OpenFields(ctx, req); !errors.Is(err, hsm.ErrNotFound) {
		t.Fatalf("hit after Recheck: %v, want ErrNotFound", err)
	}
}

func TestDEKCacheBounds(t *testing.T) {
	t.Parallel()
	tok, _ := openCached(t, 2, 300*time.Millisecond)
	ctx := testCtx(t)
	key := genKey(t, tok, "bounds", hsm.X25519, hsm.UsageDerive)
	var reqs []hsm.OpenFieldsRequest
	for range 3 {
		reqs = append(reqs, fieldsRequest(t, seal(t, key, []byte("unused"), nil), `"x"`))
	}
	for _, r := range reqs {
		prime(t, tok, r)
		if _, err := tok.OpenFields(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	s := tok.DEKCacheStats()
	if s.Entries != 2 || s.EvictedCapacity != 1 {
		t.Fatalf("after 3 stanzas in a cache of 2: %+v", s)
	}
	wantObjects(t, tok, 2*2)
	// The least recently used (the first) was evicted: a miss.
	if _, err := tok.OpenFields(ctx, reqs[0]); err != nil {
		t.Fatal(err)
	}
	wantStats(t, tok, 0, 7)
	// Age: the janitor destroys every entry within MaxAge plus its period.
	deadline := time.Now().Add(5 * time.Second)
	for tok.DEKCacheStats().Entries != 0 || mustCount(t, tok) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("entries not destroyed after MaxAge: %+v, %d objects", tok.DEKCacheStats(), mustCount(t, tok))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if s := tok.DEKCacheStats(); s.EvictedAge != 2 {
		t.Fatalf("EvictedAge = %d, want 2 (%+v)", s.EvictedAge, s)
	}
}

func mustCount(t *testing.T, tok *hsm.Token) int {
	t.Helper()
	n, err := tok.SessionObjectCount(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestDEKCacheSessionLoss: the cached objects go with their sessions; after
// the rebuild the next open is a cold one and succeeds.
func TestDEKCacheSessionLoss(t *testing.T) {
	t.Parallel()
	tok, cfg := openCached(t, 8, time.Minute)
	ctx := testCtx(t)
	key := genKey(t, tok, "loss", hsm.X25519, hsm.UsageDerive)
	req := fieldsRequest(t, seal(t, key, []byte("unused"), nil), `"1"`)
	prime(t, tok, req)
	if _, err := tok.OpenFields(ctx, req); err != nil {
		t.Fatal(err)
	}
	closeAllSessions(t, cfg)
	if pts, err := tok.OpenFields(ctx, req); err != nil || string(pts[0]) != `"1"` {
		t.Fatalf("open after session loss = %q, %v", pts, err)
	}
	// The entry went with the sessions; the open after the rebuild was cold
	// (and, the stanza's admission spent, a first open again).
	s := tok.DEKCacheStats()
	if s.EvictedRebuild != 1 || s.Entries != 0 || tok.Info().Rebuilds != 1 {
		t.Fatalf("after loss: %+v, rebuilds %d", s, tok.Info().Rebuilds)
	}
	wantObjects(t, tok, 0)
	if _, err := tok.OpenFields(ctx, req); err != nil {
		t.Fatal(err)
	}
	if s := tok.DEKCacheStats(); s.Entries != 1 {
		t.Fatalf("cached again after the rebuild: %+v", s)
	}
	wantObjects(t, tok, 2)
}

func TestDEKCacheConfig(t *testing.T) {
	t.Parallel()
	cfg := hsmtest.NewToken(t)
	cfg.DEKCache = hsm.DEKCacheConfig{Entries: 4}
	if _, err := hsm.Open(testCtx(t), cfg, nil); !errors.Is(err, hsm.ErrInvalidRequest) {
		t.Fatalf("cache without MaxAge: %v, want ErrInvalidRequest", err)
	}
	tok, _ := openToken(t)
	if s := tok.DEKCacheStats(); s.Enabled {
		t.Fatalf("cache on without configuration: %+v", s)
	}
}

// TestDEKCacheAdmission: a stanza is cached on its second open only, and
// the filter remembers the last 4 × Entries stanzas opened once.
func TestDEKCacheAdmission(t *testing.T) {
	t.Parallel()
	tok, _ := openCached(t, 2, time.Minute)
	ctx := testCtx(t)
	key := genKey(t, tok, "admission", hsm.X25519, hsm.UsageDerive)
	var reqs []hsm.OpenFieldsRequest
	for range 9 {
		reqs = append(reqs, fieldsRequest(t, seal(t, key, []byte("unused"), nil), `"x"`))
	}
	for _, r := range reqs {
		prime(t, tok, r) // nine first opens: nothing cached
	}
	wantObjects(t, tok, 0)
	// The first was pushed out of the filter (it holds 8): a first open again.
	prime(t, tok, reqs[0])
	// The last is remembered: its second open caches it.
	if _, err := tok.OpenFields(ctx, reqs[8]); err != nil {
		t.Fatal(err)
	}
	if s := tok.DEKCacheStats(); s.Entries != 1 || s.FirstOpens != 10 {
		t.Fatalf("%+v, want 1 entry and 10 first opens", s)
	}
}

// TestDEKCacheObjectsLocked: the DEK and the field keys a cache entry
// keeps on the token (made by the one-call chains of gcmfields.go) are
// sensitive and never extractable; the DEK can only derive, a field key
// can only decrypt.
func TestDEKCacheObjectsLocked(t *testing.T) {
	t.Parallel()
	tok, cfg := openCached(t, 8, time.Minute)
	ctx := testCtx(t)
	key := genKey(t, tok, "cache-locked", hsm.X25519, hsm.UsageDerive)
	req := fieldsRequest(t, seal(t, key, []byte("unused"), nil), `"1000"`, `{"iban":"DE00"}`)
	for range 3 { // first open, second (cached), a hit
		if _, err := tok.OpenFields(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	wantObjects(t, tok, 3)
	r := newRaw(t, cfg)
	objs := r.findAll(t, 16, pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY), pkcs11.NewAttribute(pkcs11.CKA_TOKEN, false))
	if len(objs) != 3 {
		t.Fatalf("found %d session secret keys; want 3", len(objs))
	}
	yes, no := []byte{1}, []byte{0}
	derive, decrypt := 0, 0
	for _, o := range objs {
		for typ, want := range map[uint][]byte{pkcs11.CKA_SENSITIVE: yes, pkcs11.CKA_EXTRACTABLE: no,
			pkcs11.CKA_ENCRYPT: no, pkcs11.CKA_WRAP: no, pkcs11.CKA_UNWRAP: no} {
			if v := r.attr(t, o, typ); !bytes.Equal(v, want) {
				t.Errorf("object %d: attribute %#x = %v, want %v", o, typ, v, want)
			}
		}
		d, x := bytes.Equal(r.attr(t, o, pkcs11.CKA_DERIVE), yes), bytes.Equal(r.attr(t, o, pkcs11.CKA_DECRYPT), yes)
		switch {
		case d && !x:
			derive++
		case x && !d:
			decrypt++
		default:
			t.Errorf("object %d: derive %v, decrypt %v", o, d, x)
		}
	}
	if derive != 1 || decrypt != 2 {
		t.Errorf("%d derive-only keys (the DEK) and %d decrypt-only keys (field keys); want 1 and 2", derive, decrypt)
	}
}
