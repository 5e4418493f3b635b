package auditlog

import (
	"errors"
	"fmt"

	"golang.org/x/mod/sumdb/tlog"
)

// ErrRange: a size, index or range beyond the log, or inverted.
var ErrRange = errors.New("auditlog: out of range")

// tree holds every stored hash of the RFC 6962 tree (tlog's layout: about
// two hashes per leaf, 64 bytes per entry in memory). Hashing is tlog's:
// leaf = SHA-256(0x00 || entry), node = SHA-256(0x01 || left || right).
// Not safe for concurrent use; Log guards it.
type tree struct {
	n      int64
	hashes []tlog.Hash
}

func (t *tree) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if x < 0 || x >= int64(len(t.hashes)) {
			return nil, fmt.Errorf("%w: stored hash %d of %d", ErrRange, x, len(t.hashes))
		}
		out[i] = t.hashes[x]
	}
	return out, nil
}

// append adds one leaf (the encoded entry).
func (t *tree) append(leaf []byte) error {
	hs, err := tlog.StoredHashes(t.n, leaf, t)
	if err != nil {
		return err
	}
	t.hashes = append(t.hashes, hs...)
	t.n++
	return nil
}

// appendLeafHash adds one leaf by its hash (tlog.RecordHash of the entry):
// tlog.StoredHashesForRecordHash without its allocations, reading the
// left siblings straight from t.hashes.
func (t *tree) appendLeafHash(h tlog.Hash) {
	n := t.n
	t.hashes = append(t.hashes, h)
	for l := 0; (n>>l)&1 == 1; l++ {
		h = tlog.NodeHash(t.hashes[tlog.StoredHashIndex(l, n>>l-1)], h)
		t.hashes = append(t.hashes, h)
	}
	t.n++
}

// truncate forgets leaves from n on.
func (t *tree) truncate(n int64) {
	if n < t.n {
		t.hashes = t.hashes[:tlog.StoredHashCount(n)]
		t.n = n
	}
}

func (t *tree) root(size int64) (tlog.Hash, error) {
	if size < 0 || size > t.n {
		return tlog.Hash{}, fmt.Errorf("%w: tree size %d, log has %d entries", ErrRange, size, t.n)
	}
	return tlog.TreeHash(size, t)
}

func (t *tree) leafHash(i int64) tlog.Hash { return t.hashes[tlog.StoredHashIndex(0, i)] }

func (t *tree) inclusion(index, size int64) (tlog.RecordProof, error) {
	if size < 1 || size > t.n || index < 0 || index >= size {
		return nil, fmt.Errorf("%w: index %d in a tree of %d (log has %d entries)", ErrRange, index, size, t.n)
	}
	return tlog.ProveRecord(size, index, t)
}

func (t *tree) consistency(old, size int64) (tlog.TreeProof, error) {
	if old < 0 || old > size || size > t.n {
		return nil, fmt.Errorf("%w: sizes %d → %d (log has %d entries)", ErrRange, old, size, t.n)
	}
	if old == 0 {
		return tlog.TreeProof{}, nil
	}
	return tlog.ProveTree(size, old, t)
}
