package auditlog

import (
	"errors"
	"fmt"

	"golang.org/x/mod/sumdb/tlog"
)

// ErrRange: a size, index or range beyond the log, or inverted.
var ErrRange = errors.New("auditlog: out of range")

// tree holds every stored hash of the RFC 6962 tree (tlog's layout: about
// two hashes per leaf, 64 bytes per entry) in a column: a file with a
// bounded tail in memory (newFileColumn), or all in memory for the zero
// tree. Hashing is tlog's: leaf = SHA-256(0x00 || entry), node =
// SHA-256(0x01 || left || right). Not safe for concurrent use; Log guards
// it.
type tree struct {
	n      int64
	hashes column
	// frontier[l] is the last hash stored at level l: the left sibling of
	// the next node made at that level, so appends never read the column.
	frontier [64]tlog.Hash
}

// ReadHashes is tlog.HashReader.
func (t *tree) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if err := t.hashes.at(x, out[i][:]); err != nil {
			return nil, fmt.Errorf("stored hash %d: %w", x, err)
		}
	}
	return out, nil
}

// append adds one leaf (the encoded entry).
func (t *tree) append(leaf []byte) { t.appendLeafHash(tlog.RecordHash(leaf)) }

// appendLeafHash adds one leaf by its hash (tlog.RecordHash of the entry),
// storing what tlog.StoredHashesForRecordHash would.
func (t *tree) appendLeafHash(h tlog.Hash) {
	if t.hashes.size == 0 {
		t.hashes.size = tlog.HashSize
	}
	for level := 0; ; level++ {
		left := t.frontier[level]
		t.hashes.append(h[:])
		t.frontier[level] = h
		if (t.n>>level)&1 == 0 {
			break
		}
		h = tlog.NodeHash(left, h)
	}
	t.n++
}

func (t *tree) root(size int64) (tlog.Hash, error) {
	if size < 0 || size > t.n {
		return tlog.Hash{}, fmt.Errorf("%w: tree size %d, log has %d entries", ErrRange, size, t.n)
	}
	return tlog.TreeHash(size, t)
}

func (t *tree) leafHash(i int64) (tlog.Hash, error) {
	var h tlog.Hash
	err := t.hashes.at(tlog.StoredHashIndex(0, i), h[:])
	return h, err
}

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
