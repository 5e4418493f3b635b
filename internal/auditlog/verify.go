package auditlog

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Offline verification: everything here reads a (copied) log directory
// and needs only the log's public key. Nothing writes.

// VerifyOptions are the inputs of Verify besides the directory.
type VerifyOptions struct {
	// Verifier is the log's key (ParseVerifierKey of log.pub, or of a copy
	// the reviewer kept: trusting the directory's own log.pub proves nothing
	// against whoever could rewrite the directory).
	Verifier note.Verifier
	// Since is a signed checkpoint saved earlier, or nil. The log must
	// contain it as a prefix.
	Since []byte
	// AllowUnsignedTail accepts entries after the latest checkpoint (a copy
	// of a running log) instead of reporting them.
	AllowUnsignedTail bool
}

// Problem is one finding of Verify.
type Problem struct {
	Index  int64  `json:"index"` // the first entry the finding puts in doubt
	Kind   string `json:"kind"`  // malformed, out_of_order, checkpoint_mismatch, truncated, since_mismatch, unsigned_tail, torn_tail, bad_checkpoint
	Detail string `json:"detail"`
}

// VerifyResult is Verify's report. OK means no problem: every entry is
// covered by a signed checkpoint the recomputed tree matches.
type VerifyResult struct {
	Entries     int64      `json:"entries"`     // complete entries in the file
	Checkpoints int        `json:"checkpoints"` // valid signed checkpoints found
	Latest      Checkpoint `json:"-"`
	LatestSize  int64      `json:"latest_checkpoint_size"`
	Root        tlog.Hash  `json:"root"` // recomputed root of all entries
	// TrustedUpTo: entries [0, TrustedUpTo) are proven unaltered; the log
	// stops being trustworthy at this index (== Entries when OK).
	TrustedUpTo int64     `json:"trusted_up_to"`
	Problems    []Problem `json:"problems"`
	OK          bool      `json:"ok"`
}

// Verify recomputes the Merkle tree of dir's entries, checks every signed
// checkpoint (the checkpoints file and the checkpoint file) with
// opts.Verifier and against the recomputed roots, parses every entry
// strictly (its index must be its position), and checks opts.Since. It
// returns an error only when dir cannot be read; tampering is reported in
// the result. A content change is located to the range between the last
// matching checkpoint and the first that fails; a removed, reordered or
// inserted entry to its exact index (its "i" member no longer matches).
func Verify(dir string, opts VerifyOptions) (*VerifyResult, error) {
	if opts.Verifier == nil {
		return nil, errors.New("auditlog: verify: no verifier key")
	}
	res := &VerifyResult{}
	add := func(i int64, kind, format string, args ...any) {
		res.Problems = append(res.Problems, Problem{Index: i, Kind: kind, Detail: fmt.Sprintf(format, args...)})
	}
	cps, err := readCheckpoints(dir, opts.Verifier, add)
	if err != nil {
		return nil, err
	}
	t, torn, err := scanTree(dir, func(i int64, l *leaf) {
		switch {
		case l.err != nil:
			add(i, "malformed", "entry %d is not a valid entry (modified?): %v", i, l.err)
		case l.idx != i:
			add(i, "out_of_order", "the entry at position %d claims index %d: entries removed, reordered or inserted", i, l.idx)
		}
	})
	if err != nil {
		return nil, err
	}
	defer t.hashes.close()
	n := t.n
	res.Entries = n
	res.Root, _ = t.root(n)
	if torn > 0 {
		add(n, "torn_tail", "%d bytes after entry %d are an incomplete entry (a write cut by a crash; the daemon truncates it at start)", torn, n-1)
	}
	// Checkpoints against the recomputed tree.
	var lastGood int64
	for _, cp := range cps {
		if cp.Size > n {
			add(n, "truncated", "a signed checkpoint covers %d entries, the log has %d: entries from %d on were removed", cp.Size, n, n)
			break
		}
		root, _ := t.root(cp.Size)
		if root != cp.Root {
			add(lastGood, "checkpoint_mismatch", "the entries do not match the checkpoint signed for size %d: some entry in [%d, %d) was modified, removed, inserted or reordered", cp.Size, lastGood, cp.Size)
			break
		}
		lastGood = cp.Size
	}
	res.Checkpoints = len(cps)
	if len(cps) > 0 {
		res.Latest = cps[len(cps)-1]
		res.LatestSize = res.Latest.Size
	} else {
		add(0, "bad_checkpoint", "no valid signed checkpoint: nothing in the log is proven")
	}
	if opts.Since != nil {
		old, err := OpenCheckpoint(opts.Since, opts.Verifier)
		switch {
		case err != nil:
			add(0, "since_mismatch", "the saved checkpoint does not verify with this key: %v", err)
		case old.Size > n:
			add(n, "truncated", "your saved checkpoint covers %d entries, the log has %d: entries from %d on were removed", old.Size, n, n)
		default:
			root, _ := t.root(old.Size)
			if root != old.Root {
				from := int64(0)
				for _, cp := range cps {
					if cp.Size <= old.Size {
						if r, _ := t.root(cp.Size); r == cp.Root {
							from = cp.Size
						}
					}
				}
				add(from, "since_mismatch", "the log is not consistent with your saved checkpoint of size %d: an entry in [%d, %d) was rewritten", old.Size, from, old.Size)
			} else if len(cps) > 0 && res.Latest.Size >= old.Size {
				// Belt and braces: the RFC 6962 consistency proof between the
				// saved and the latest checkpoint checks too.
				if p, err := proveConsistency(t, old.Size, res.Latest.Size); err != nil || p.Check() != nil || p.NewRoot != res.Latest.Root {
					add(old.Size, "since_mismatch", "no consistency proof from size %d to %d", old.Size, res.Latest.Size)
				}
			}
		}
	}
	if len(cps) > 0 && n > res.Latest.Size && !opts.AllowUnsignedTail {
		add(res.Latest.Size, "unsigned_tail", "entries [%d, %d) are not covered by any signed checkpoint (appended after it, or inserted)", res.Latest.Size, n)
	}
	res.TrustedUpTo = n
	for _, p := range res.Problems {
		if p.Kind == "torn_tail" {
			continue
		}
		res.TrustedUpTo = min(res.TrustedUpTo, p.Index)
	}
	if len(cps) > 0 && !opts.AllowUnsignedTail {
		res.TrustedUpTo = min(res.TrustedUpTo, res.Latest.Size)
	}
	sort.SliceStable(res.Problems, func(i, j int) bool { return res.Problems[i].Index < res.Problems[j].Index })
	res.OK = true
	for _, p := range res.Problems {
		if p.Kind != "torn_tail" || !opts.AllowUnsignedTail {
			res.OK = false
		}
	}
	return res, nil
}

// readCheckpoints reads the checkpoints file and the checkpoint file.
func readCheckpoints(dir string, v note.Verifier, add func(int64, string, string, ...any)) ([]Checkpoint, error) {
	data, err := os.ReadFile(filepath.Join(dir, CheckpointsFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	cps, _, ferr := parseCheckpointFrames(data, v)
	if ferr != nil {
		add(0, "bad_checkpoint", "%s: %v; %d checkpoints before it are used", CheckpointsFile, ferr, len(cps))
	}
	latest, err := os.ReadFile(filepath.Join(dir, CheckpointFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		cp, err := OpenCheckpoint(latest, v)
		if err != nil {
			add(0, "bad_checkpoint", "%s: %v", CheckpointFile, err)
		} else if len(cps) == 0 || cp.Size > cps[len(cps)-1].Size {
			cps = append(cps, cp)
		} else if cp.Size == cps[len(cps)-1].Size && cp.Root != cps[len(cps)-1].Root {
			add(0, "bad_checkpoint", "%s and %s sign different roots for size %d", CheckpointFile, CheckpointsFile, cp.Size)
		}
	}
	return cps, nil
}

// scanTree hashes every complete line of dir's entries file into a tree,
// calling each(i, l) for every entry (parsed strictly: l.err, l.idx);
// torn is the length of an incomplete last line. The tree keeps its hashes
// in an unlinked temporary file (memory stays bounded for any log size);
// the caller closes it (t.hashes.close).
func scanTree(dir string, each func(i int64, l *leaf)) (*tree, int64, error) {
	f, err := os.Open(filepath.Join(dir, EntriesFile))
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	hashes, err := newFileColumn(os.TempDir(), tlog.HashSize)
	if err != nil {
		return nil, 0, err
	}
	t := &tree{hashes: hashes}
	sum, err := scanLeaves(f, scanOptions{}, func(i int64, l *leaf) error {
		if each != nil {
			each(i, l)
		}
		t.appendLeafHash(l.hash)
		return nil
	})
	if err != nil {
		t.hashes.close()
		return nil, 0, err
	}
	return t, sum.torn, nil
}

// ReadEntries calls fn for every entry of dir's entries file in order,
// parsed strictly; it stops at the first malformed entry (ErrMalformed) or
// an incomplete last line (ignored: a torn tail). Run Verify first: this
// proves nothing by itself.
func ReadEntries(dir string, fn func(index int64, e Entry) error) error {
	f, err := os.Open(filepath.Join(dir, EntriesFile))
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = scanLeaves(f, scanOptions{entries: true}, func(i int64, l *leaf) error {
		if l.err != nil || l.idx != i {
			err := l.err // a line longer than MaxEntryBytes: l.line is its head
			if len(l.line) <= MaxEntryBytes {
				_, _, err = ParseEntry(l.line, i) // the error ParseEntry gives at this index
			}
			return fmt.Errorf("entry %d: %w", i, err)
		}
		return fn(i, l.e)
	})
	return err
}

// ProofBundle is everything a third party needs to check that one entry
// is in the log: the entry, its inclusion proof, and the signed checkpoint
// the proof leads to. CheckBundle checks it with the log's public key.
type ProofBundle struct {
	Format     string         `json:"format"` // "custody-log-inclusion/v1"
	Entry      string         `json:"entry"`  // the exact leaf bytes (a JSON string, so no re-indenting changes them)
	Inclusion  InclusionProof `json:"inclusion"`
	Checkpoint string         `json:"checkpoint"` // signed note
}

// BundleFormat names ProofBundle's version.
const BundleFormat = "custody-log-inclusion/v1"

// Prove builds the ProofBundle of entry index against dir's latest signed
// checkpoint (which must verify with v and match the entries).
func Prove(dir string, v note.Verifier, index int64) (*ProofBundle, error) {
	cps, err := readCheckpoints(dir, v, func(int64, string, string, ...any) {})
	if err != nil {
		return nil, err
	}
	if len(cps) == 0 {
		return nil, fmt.Errorf("%w: no valid signed checkpoint in %s", ErrCheckpoint, dir)
	}
	cp := cps[len(cps)-1]
	var entry []byte
	t, _, err := scanTree(dir, func(i int64, l *leaf) {
		if i == index {
			entry = append([]byte(nil), l.line...)
		}
	})
	if err != nil {
		return nil, err
	}
	defer t.hashes.close()
	if index < 0 || index >= cp.Size {
		return nil, fmt.Errorf("%w: entry %d is not covered by the latest checkpoint (size %d)", ErrRange, index, cp.Size)
	}
	if cp.Size > t.n {
		return nil, fmt.Errorf("%w: the checkpoint covers %d entries, the log has %d", ErrCorrupt, cp.Size, t.n)
	}
	p, err := proveInclusion(t, index, cp.Size)
	if err != nil {
		return nil, err
	}
	if p.Root != cp.Root {
		return nil, fmt.Errorf("%w: the entries do not match the signed checkpoint; run verify", ErrCorrupt)
	}
	b := &ProofBundle{Format: BundleFormat, Entry: string(entry), Inclusion: p, Checkpoint: string(cp.Note)}
	return b, CheckBundle(b, v)
}

// CheckBundle checks a ProofBundle with the log's key: the checkpoint's
// signature, that the proof leads to its root at its size, and that the
// leaf hash is the entry's.
func CheckBundle(b *ProofBundle, v note.Verifier) error {
	if b.Format != BundleFormat {
		return fmt.Errorf("%w: bundle format %q", ErrMalformed, b.Format)
	}
	cp, err := OpenCheckpoint([]byte(b.Checkpoint), v)
	if err != nil {
		return err
	}
	if cp.Size != b.Inclusion.Size || cp.Root != b.Inclusion.Root {
		return fmt.Errorf("%w: the proof is for another tree than the checkpoint", ErrCheckpoint)
	}
	if _, _, err := ParseEntry([]byte(b.Entry), b.Inclusion.Index); err != nil {
		return err
	}
	if tlog.RecordHash([]byte(b.Entry)) != b.Inclusion.LeafHash {
		return fmt.Errorf("%w: leaf hash is not the entry's", ErrMalformed)
	}
	if err := b.Inclusion.Check(); err != nil {
		return fmt.Errorf("auditlog: inclusion proof: %w", err)
	}
	return nil
}

var _ = io.EOF
