package testutil

import (
	"sync"
	"testing"
)

// Shared is a test server one test binary starts on first use and stops
// once, from its TestMain (vaulttest's dev Vault, pgtest's PostgreSQL).
// The zero value is ready; Start is given to Get.
type Shared[T interface{ Stop() }] struct {
	once    sync.Once
	v       T
	err     error
	started bool
}

// Get returns the server, calling start on the first call only; a start
// that failed fails every caller's tb with its error.
func (s *Shared[T]) Get(tb testing.TB, start func() (T, error)) T {
	tb.Helper()
	s.once.Do(func() {
		s.v, s.err = start()
		s.started = s.err == nil
	})
	if s.err != nil {
		tb.Fatal(s.err)
	}
	return s.v
}

// Stop stops the server if Get started one.
func (s *Shared[T]) Stop() {
	if s.started {
		s.v.Stop()
	}
}
