package ceremony

import (
	"crypto/subtle"
	"fmt"
	"slices"
	"sync"

	"custody/internal/shamir"
)

// ShareSet is the public record a set of shares is checked against: the
// shares of a backup manifest (Manifest.ShareSet) or of a token's SO PIN
// record (SOPINRecord.ShareSet).
type ShareSet struct {
	Kind      ShareKind
	ID        string // backup id or SO PIN set id
	Threshold int
	Total     int
	Records   []ShareRecord // Records[i] is share i+1
}

// Collector gathers the decrypted shares officers submit for one set, each
// as their own Unix user, until Threshold are in. Safe for concurrent use.
// Submitted share values stay in memory until the secret is combined or
// Abort is called; both clear them (best effort).
type Collector struct {
	set ShareSet

	mu     sync.Mutex
	shares map[int]Share // by index
	by     map[string]int
	done   bool
}

// NewCollector starts gathering shares of set.
func NewCollector(set ShareSet) *Collector {
	return &Collector{set: set, shares: map[int]Share{}, by: map[string]int{}}
}

// Set returns the set being gathered.
func (c *Collector) Set() ShareSet { return c.set }

// Submit checks a decrypted share submitted by officer and keeps it. Each
// failure names the share: ErrFormat, ErrWrongBackup (another set or
// another kind of share), ErrDuplicateShare (index already in, or the
// officer already submitted), ErrCorruptShare (its value does not match
// the set's commitment for its index, or it is not the officer's). It
// returns how many shares are in.
func (c *Collector) Submit(officer string, text []byte) (int, error) {
	s, err := ParseShare(text)
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	fail := func(err error) (int, error) { clear(s.Value); return len(c.shares), err }
	if c.done {
		return fail(fmt.Errorf("%w: the shares were already used", ErrUnknownRequest))
	}
	if s.Kind != c.set.Kind {
		return fail(fmt.Errorf("%w: this is a %s; the request needs a %s", ErrWrongBackup, s.Kind, c.set.Kind))
	}
	if s.BackupID != c.set.ID {
		return fail(fmt.Errorf("%w: share %d is from set %s, this request needs set %s", ErrWrongBackup, s.Index, s.BackupID, c.set.ID))
	}
	if s.Index > len(c.set.Records) || s.Threshold != c.set.Threshold || s.Total != c.set.Total {
		return fail(fmt.Errorf("%w: share %d does not fit %d-of-%d", ErrCorruptShare, s.Index, c.set.Threshold, c.set.Total))
	}
	if _, dup := c.shares[s.Index]; dup {
		return fail(fmt.Errorf("%w: share %d was already submitted", ErrDuplicateShare, s.Index))
	}
	if i, dup := c.by[officer]; dup {
		return fail(fmt.Errorf("%w: officer %s already submitted share %d", ErrDuplicateShare, officer, i))
	}
	rec := c.set.Records[s.Index-1]
	if subtle.ConstantTimeCompare([]byte(s.Commitment()), []byte(rec.Commitment)) != 1 || s.Officer != rec.Officer {
		return fail(fmt.Errorf("%w: share %d (held by %s)", ErrCorruptShare, s.Index, rec.Officer))
	}
	c.shares[s.Index] = s
	c.by[officer] = s.Index
	return len(c.shares), nil
}

// Count is the number of shares in.
func (c *Collector) Count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.shares)
}

// Submitters lists the officers whose shares are in, by share index.
func (c *Collector) Submitters() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	idx := make([]int, 0, len(c.shares))
	for i := range c.shares {
		idx = append(idx, i)
	}
	slices.Sort(idx)
	out := make([]string, 0, len(idx))
	for _, i := range idx {
		out = append(out, c.shares[i].Officer)
	}
	return out
}

// Abort forgets every submitted share; later submissions are refused.
func (c *Collector) Abort() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clearLocked()
	c.done = true
}

func (c *Collector) clearLocked() {
	for _, s := range c.shares {
		clear(s.Value)
	}
	clear(c.shares)
}

// combine returns the secret from the shares in (ErrNotEnoughShares below
// the threshold: the shares stay for another try). Once the threshold is
// reached the collector is spent, whatever happens next: its shares are
// cleared and later calls fail. The caller clears the secret.
func (c *Collector) combine() ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return nil, fmt.Errorf("%w: the shares were already used", ErrUnknownRequest)
	}
	if len(c.shares) < c.set.Threshold {
		return nil, fmt.Errorf("%w: %d of %d %ss", ErrNotEnoughShares, len(c.shares), c.set.Threshold, c.set.Kind)
	}
	c.done = true
	defer c.clearLocked()
	parts := make([][]byte, 0, len(c.shares))
	for _, s := range c.shares {
		parts = append(parts, append([]byte{byte(s.Index)}, s.Value...))
	}
	defer func() {
		for _, p := range parts {
			clear(p)
		}
	}()
	secret, err := shamir.Combine(parts)
	if err != nil {
		return nil, fmt.Errorf("ceremony: combining %ss: %w", c.set.Kind, err)
	}
	return secret, nil
}
