package policy

import (
	"sync"
	"sync/atomic"
)

// Store holds the current policy of one file for concurrent readers and
// replaces it atomically on Reload. Its methods are safe for concurrent use.
type Store struct {
	path string
	mu   sync.Mutex // serializes Reload
	cur  atomic.Pointer[Policy]
}

// NewStore loads the policy at path (see Load); it fails if that fails.
func NewStore(path string) (*Store, error) {
	p, err := Load(path)
	if err != nil {
		return nil, err
	}
	s := &Store{path: path}
	s.cur.Store(p)
	return s, nil
}

// Current returns the policy in force; never nil. A request should call it
// once and use that value throughout, so a reload cannot change the rules
// half-way through a decision.
func (s *Store) Current() *Policy { return s.cur.Load() }

// Reload loads the file again and, if it is valid, makes it current. On error
// the old policy stays current and the error says why.
func (s *Store) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, err := Load(s.path)
	if err != nil {
		return err
	}
	s.cur.Store(p)
	return nil
}

// Path is the file the store loads.
func (s *Store) Path() string { return s.path }
