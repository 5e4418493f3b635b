package compliance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"custody/internal/config/duration"
	"custody/internal/orders"
)

// Config is the daemon's "participant_status" section. It takes effect
// only with a "vault" section; without one, status checks are off.
//
//	"participant_status": {"path": "custody/participants", "cache_ttl": "10s", "max_stale": "2m"}
type Config struct {
	// Enabled false turns the checks off although Vault is configured
	// (health says so); default true.
	Enabled *bool `json:"enabled,omitempty"`
	// Path is the records' folder in the vault.kv_mount mount.
	Path string `json:"path"`
	// CacheTTL: a copy younger than this is used without asking Vault.
	// It bounds how long a change made through another daemon takes to
	// reach this one.
	CacheTTL duration.Duration `json:"cache_ttl"`
	// MaxStale: when Vault does not answer, a copy younger than this is
	// still used; an older one, or none, refuses (status_unavailable).
	MaxStale duration.Duration `json:"max_stale"`
	// MaxEntries bounds the cache (participants held at once).
	MaxEntries int `json:"max_entries"`
}

// Defaults for what Validate fills in.
const (
	DefaultPath       = "custody/participants"
	DefaultCacheTTL   = 10 * time.Second
	DefaultMaxStale   = 2 * time.Minute
	DefaultMaxEntries = 100000
)

// On reports Enabled with its default (true).
func (c Config) On() bool { return c.Enabled == nil || *c.Enabled }

// Validate fills in defaults and checks the ranges; errors name the field
// with its "participant_status." prefix.
func (c *Config) Validate() error {
	if c.Path == "" {
		c.Path = DefaultPath
	}
	if !validPath(c.Path) {
		return fmt.Errorf("participant_status.path: %q: segments of [A-Za-z0-9._-] separated by single slashes", c.Path)
	}
	if c.CacheTTL == 0 {
		c.CacheTTL = duration.Duration(DefaultCacheTTL)
	}
	if c.MaxStale == 0 {
		c.MaxStale = duration.Duration(DefaultMaxStale)
	}
	if c.MaxEntries == 0 {
		c.MaxEntries = DefaultMaxEntries
	}
	switch {
	case c.CacheTTL.Std() < 10*time.Millisecond || c.CacheTTL.Std() > time.Hour:
		return fmt.Errorf("participant_status.cache_ttl: %s, want 10ms..1h", c.CacheTTL)
	case c.MaxStale.Std() < c.CacheTTL.Std() || c.MaxStale.Std() > 24*time.Hour:
		return fmt.Errorf("participant_status.max_stale: %s, want cache_ttl (%s)..24h", c.MaxStale, c.CacheTTL)
	case c.MaxEntries < 1 || c.MaxEntries > 10_000_000:
		return fmt.Errorf("participant_status.max_entries: %d, want 1..10000000", c.MaxEntries)
	}
	return nil
}

func validPath(p string) bool {
	if p == "" {
		return false
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
		for i := 0; i < len(seg); i++ {
			c := seg[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
				return false
			}
		}
	}
	return true
}

// KV is the Vault KV version 2 store the Store uses (orders.KV in the
// daemon): Read returns an entry's JSON and version ((nil, 0, nil) when it
// never existed; (nil, n, nil) when its version n was deleted); Write
// stores with check-and-set (cas 0 creates) and returns the new version or
// an error matching orders.ErrCASConflict.
type KV interface {
	Read(ctx context.Context, path string) ([]byte, int, error)
	Write(ctx context.Context, path string, data any, cas int) (int, error)
}

// Options are a Store's optional collaborators.
type Options struct {
	Log *slog.Logger // nil = slog.Default()
	// Clock measures the cache's ages; nil = time.Now (monotonic). The
	// expiry dates inside records are judged by the caller's clock (Check's now).
	Clock func() time.Time
}

// Store reads and writes participant status in Vault and caches it (see
// the package doc). Build it with NewStore.
type Store struct {
	kv    KV
	cfg   Config
	log   *slog.Logger
	clock func() time.Time

	mu    sync.Mutex
	cache map[string]*entry
}

// entry is one participant's cached status.
type entry struct {
	rec     *Record // nil: no record
	version int
	bad     error         // the current version is deleted or does not parse: refused until it changes
	fetched time.Time     // when it was read (zero: never)
	wait    chan struct{} // non-nil while a read from Vault is in flight
}

// NewStore returns a Store on kv with cfg (validated: Validate).
func NewStore(kv KV, cfg Config, opt Options) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Store{kv: kv, cfg: cfg, log: opt.Log, clock: opt.Clock, cache: map[string]*entry{}}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.clock == nil {
		s.clock = time.Now
	}
	return s, nil
}

// Config is the Store's configuration, defaults filled in.
func (s *Store) Config() Config { return s.cfg }

// Describe is the Store's configuration in one line, for health.
func (s *Store) Describe() string {
	return fmt.Sprintf("on: Vault %s, cache_ttl %s, max_stale %s", s.cfg.Path, s.cfg.CacheTTL, s.cfg.MaxStale)
}

func (s *Store) path(id string) string { return s.cfg.Path + "/" + id }

// Status returns participant id's record for a check (nil: none),
// from the cache when it is younger than cache_ttl, else from Vault; when
// Vault fails, from a cached copy younger than max_stale. Otherwise, and
// for a record whose current version is deleted or malformed, it returns
// an error matching ErrUnavailable (the detail, for the daemon's log, says
// why).
func (s *Store) Status(ctx context.Context, id string) (*Record, error) {
	return s.status(ctx, id, true)
}

func (s *Store) status(ctx context.Context, id string, refresh bool) (*Record, error) {
	ttl, stale := s.cfg.CacheTTL.Std(), s.cfg.MaxStale.Std()
	s.mu.Lock()
	e := s.cache[id]
	now := s.clock()
	if e != nil && !e.fetched.IsZero() {
		age := now.Sub(e.fetched)
		if age < ttl || (e.wait != nil && age < stale) {
			defer s.mu.Unlock()
			return e.result(id)
		}
	}
	if !refresh {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: participant %q: Vault did not answer and no copy is younger than max_stale", ErrUnavailable, id)
	}
	if e != nil && e.wait != nil {
		// Another request is reading it: wait for that read, not a second one.
		w := e.wait
		s.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: participant %q: %v", ErrUnavailable, id, ctx.Err())
		}
		return s.status(ctx, id, false)
	}
	if e == nil {
		e = &entry{}
		s.insert(id, e, now)
	}
	e.wait = make(chan struct{})
	s.mu.Unlock()

	st, version, err := s.read(ctx, id)

	s.mu.Lock()
	defer s.mu.Unlock()
	close(e.wait)
	e.wait = nil
	if err == nil || errors.Is(err, ErrInvalid) {
		if version >= e.version { // a Put may have landed a newer version meanwhile
			e.set(st, version, err, s.clock())
		}
		if err != nil {
			s.log.Error("participant status record refused: checks for this participant fail closed until it is rewritten", "participant", id, "version", version, "err", err)
		}
		return e.result(id)
	}
	if !e.fetched.IsZero() && s.clock().Sub(e.fetched) < stale {
		s.log.Warn("participant status: Vault did not answer; using the cached copy", "participant", id, "age", s.clock().Sub(e.fetched).Round(time.Millisecond), "err", err)
		return e.result(id)
	}
	return nil, fmt.Errorf("%w: participant %q: %w", ErrUnavailable, id, err)
}

// insert adds e, making room first when the cache is full: the copies too
// old to be used go, then any one not being read.
func (s *Store) insert(id string, e *entry, now time.Time) {
	if len(s.cache) >= s.cfg.MaxEntries {
		for k, o := range s.cache {
			if o.wait == nil && (o.fetched.IsZero() || now.Sub(o.fetched) >= s.cfg.MaxStale.Std()) {
				delete(s.cache, k)
			}
		}
		for k, o := range s.cache {
			if len(s.cache) < s.cfg.MaxEntries {
				break
			}
			if o.wait == nil {
				delete(s.cache, k)
			}
		}
	}
	s.cache[id] = e
}

func (e *entry) set(st *Stored, version int, bad error, now time.Time) {
	e.rec, e.version, e.bad, e.fetched = nil, version, bad, now
	if st != nil {
		r := st.Status
		e.rec = &r
	}
}

func (e *entry) result(id string) (*Record, error) {
	if e.bad != nil {
		return nil, fmt.Errorf("%w: participant %q: %w", ErrUnavailable, id, e.bad)
	}
	return e.rec, nil
}

// read reads the current document from Vault: (nil, 0, nil) when there is
// none; an ErrInvalid error when its current version is deleted or does
// not parse.
func (s *Store) read(ctx context.Context, id string) (*Stored, int, error) {
	data, version, err := s.kv.Read(ctx, s.path(id))
	if err != nil {
		return nil, 0, err
	}
	if data == nil {
		if version > 0 {
			return nil, version, fmt.Errorf("%w: version %d was deleted in Vault", ErrInvalid, version)
		}
		return nil, 0, nil
	}
	st, err := ParseStored(data, id)
	if err != nil {
		return nil, version, fmt.Errorf("version %d: %w", version, err)
	}
	return &st, version, nil
}

// Get reads participant id's document from Vault (never from the cache)
// and refreshes the cache with it. No record is (nil, 0, nil). A Vault
// failure is orders' sentinel; a deleted or malformed current version is
// an ErrInvalid error with its version.
func (s *Store) Get(ctx context.Context, id string) (*Stored, int, error) {
	st, version, err := s.read(ctx, id)
	if err != nil && !errors.Is(err, ErrInvalid) {
		return nil, 0, err
	}
	s.remember(id, st, version, err)
	return st, version, err
}

// Put writes doc as participant id's document if its current version is
// cas (0: there is none yet), and returns the new version; ErrConflict when
// another version is current; a Vault failure as orders' sentinel. The
// cache holds the new record at once (other daemons see it within
// their cache_ttl).
func (s *Store) Put(ctx context.Context, id string, doc Stored, cas int) (int, error) {
	doc.Format, doc.Participant = FormatVersion, id
	if err := doc.Status.Validate(); err != nil {
		return 0, err
	}
	if err := ValidateChange(doc.Reason, doc.Reference); err != nil {
		return 0, err
	}
	if cas < 0 {
		return 0, fmt.Errorf("%w: version %d", ErrInvalid, cas)
	}
	version, err := s.kv.Write(ctx, s.path(id), doc, cas)
	if errors.Is(err, orders.ErrCASConflict) {
		return 0, fmt.Errorf("%w: participant %q is not at version %d any more; read it again", ErrConflict, id, cas)
	}
	if err != nil {
		return 0, err
	}
	s.remember(id, &doc, version, nil)
	return version, nil
}

func (s *Store) remember(id string, st *Stored, version int, bad error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock()
	e := s.cache[id]
	if e == nil {
		e = &entry{}
		s.insert(id, e, now)
	}
	e.set(st, version, bad, now)
}
