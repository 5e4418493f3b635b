package auditlog

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
	"golang.org/x/sys/unix"

	"custody/internal/durable"
	"custody/internal/priority"
)

// File names in the log directory.
const (
	EntriesFile     = "entries"     // one canonical entry per line, append-only
	CheckpointsFile = "checkpoints" // every signed checkpoint, framed, append-only
	CheckpointFile  = "checkpoint"  // the latest signed checkpoint (replaced atomically)
	PublicKeyFile   = "log.pub"     // the note verifier key of the checkpoint key
	LockFile        = "LOCK"        // flock'ed by the one writer
)

// Sentinel errors.
var (
	// ErrUnavailable: the log cannot be written (disk full, read-only file
	// system, directory removed, I/O error). Nothing was acknowledged; the
	// caller must refuse the operation. The next Record tries again.
	ErrUnavailable = errors.New("auditlog: access log unavailable")
	// ErrInvalidEntry: the entry cannot be encoded (no time, no operation,
	// unknown outcome; larger than MaxEntryBytes only if not normalized,
	// which Append always does). Nothing was written.
	ErrInvalidEntry = errors.New("auditlog: invalid entry")
	// ErrClosed: Record after Close.
	ErrClosed = errors.New("auditlog: log closed")
	// ErrLocked: another process holds the log's lock.
	ErrLocked = errors.New("auditlog: log is locked by another writer")
	// ErrCorrupt: Open found damage a crash cannot explain (invalid entries
	// followed by valid ones, a signed checkpoint the entries do not match,
	// fewer entries than a checkpoint signs). Run `custodyctl log verify`.
	ErrCorrupt = errors.New("auditlog: log is corrupt")
	// ErrKeyMismatch: log.pub names another key than the signer's.
	ErrKeyMismatch = errors.New("auditlog: signing key differs from the log's public key")
)

// Signer signs checkpoints: a note.Signer that knows its verifier key
// string. DeviceSigner (HSM) and SoftwareSigner implement it.
type Signer interface {
	note.Signer
	VerifierKey() string
}

// maxBatch bounds one group commit; maxBackgroundBatch bounds the entries
// of bulk work (priority.Background) in one, so that a live request's
// entry never waits behind a large write of them.
const (
	maxBatch           = 4096
	maxBackgroundBatch = 64
)

type request struct {
	e     Entry
	index int64 // set by the writer before done
	done  chan error
}

// Log is the durable, tamper-evident access log. It implements Recorder.
// All methods are safe for concurrent use.
type Log struct {
	cfg    Config
	signer Signer
	verif  note.Verifier
	log    *slog.Logger

	dir  string
	lock *os.File
	f    *os.File // entries
	cpf  *os.File // checkpoints

	closeMu sync.RWMutex // Record holds it shared while enqueuing; Close exclusively
	closed  bool
	reqs    chan *request // live requests' entries
	bg      chan *request // bulk work's entries (priority.Background)
	wdone   chan struct{}
	ckNudge chan struct{}
	ckStop  chan struct{}
	ckDone  chan struct{}

	// Written by the writer goroutine only.
	size  int64 // committed bytes of entries
	fault error // last write failure; nil when healthy

	ckMu     sync.Mutex   // one checkpoint at a time
	mu       sync.RWMutex // guards tree, starts, size (writes), latest, faultPub, ckErr
	tree     tree
	starts   column // record i: the byte offset of entry i, 8 bytes big-endian
	latest   Checkpoint
	pubFault error
	ckErr    error

	onSync atomic.Pointer[func(time.Duration)] // see OnSync
}

// OnSync registers f to be told how long each group commit's fdatasync
// took (for metrics). It replaces an earlier f; nil removes it.
func (l *Log) OnSync(f func(time.Duration)) {
	if f == nil {
		l.onSync.Store(nil)
		return
	}
	l.onSync.Store(&f)
}

// Open opens (or creates) the log in cfg.Dir and takes its lock. It reads
// the whole log: every entry is parsed and hashed, every checkpoint
// verified against the recomputed tree. A torn tail (an entry cut short or
// garbled after the last valid one, with nothing valid after it: an
// unacknowledged write interrupted by a crash) is truncated and reported
// in a Warn log line. Damage a crash cannot explain is ErrCorrupt. signer's
// name must be cfg.Origin; log.pub is written on first open and must match
// afterwards (ErrKeyMismatch). A checkpoint is signed at once if the last
// one does not cover every entry.
func Open(ctx context.Context, cfg Config, signer Signer, log *slog.Logger) (*Log, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if signer.Name() != cfg.Origin {
		return nil, fmt.Errorf("%w: signer name %q is not the origin %q", ErrConfig, signer.Name(), cfg.Origin)
	}
	verif, err := note.NewVerifier(signer.VerifierKey())
	if err != nil {
		return nil, fmt.Errorf("auditlog: signer's verifier key: %w", err)
	}
	l := &Log{cfg: cfg, signer: signer, verif: verif, log: log, dir: cfg.Dir,
		reqs: make(chan *request, maxBatch), bg: make(chan *request, maxBatch), wdone: make(chan struct{}),
		ckNudge: make(chan struct{}, 1), ckStop: make(chan struct{}), ckDone: make(chan struct{})}
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	ok := false
	defer func() {
		if !ok {
			l.closeFiles()
		}
	}()
	if l.lock, err = os.OpenFile(l.path(LockFile), os.O_RDWR|os.O_CREATE, 0o640); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if err := unix.Flock(int(l.lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, cfg.Dir)
		}
		return nil, fmt.Errorf("%w: flock: %v", ErrUnavailable, err)
	}
	if err := l.checkPublicKey(); err != nil {
		return nil, err
	}
	if err := l.recoverEntries(); err != nil {
		return nil, err
	}
	if err := l.recoverCheckpoints(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if l.latest.Note == nil || l.latest.Size < l.tree.n {
		if err := l.checkpoint(); err != nil {
			return nil, err
		}
	} else if err := l.publishLatest(); err != nil {
		return nil, err
	}
	go l.writer()
	go l.checkpointer()
	ok = true
	log.Info("access log open", "dir", cfg.Dir, "entries", l.tree.n, "checkpoint", l.latest.Size, "origin", cfg.Origin)
	return l, nil
}

func (l *Log) path(name string) string { return filepath.Join(l.dir, name) }

func (l *Log) closeFiles() {
	for _, f := range []*os.File{l.f, l.cpf, l.lock} {
		if f != nil {
			f.Close()
		}
	}
	l.tree.hashes.close()
	l.starts.close()
}

// checkPublicKey writes log.pub on first open, or checks it.
func (l *Log) checkPublicKey() error {
	want := l.signer.VerifierKey() + "\n"
	got, err := os.ReadFile(l.path(PublicKeyFile))
	switch {
	case err == nil:
		if string(got) != want {
			return fmt.Errorf("%w: %s holds %q, the signer is %q", ErrKeyMismatch, l.path(PublicKeyFile), bytes.TrimSpace(got), l.signer.VerifierKey())
		}
		return nil
	case errors.Is(err, os.ErrNotExist):
		if err := durable.Create(l.path(PublicKeyFile), []byte(want), 0o644); err != nil {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return nil
	default:
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
}

// recoverEntries reads and hashes every entry, truncating a torn tail.
func (l *Log) recoverEntries() error {
	var err error
	if l.f, err = os.OpenFile(l.path(EntriesFile), os.O_RDWR|os.O_CREATE, 0o640); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if l.tree.hashes, err = newFileColumn(l.dir, tlog.HashSize); err != nil {
		return err
	}
	if l.starts, err = newFileColumn(l.dir, 8); err != nil {
		return err
	}
	// Entry bad (at byte badOff) is the first that is cut short or
	// invalid. A crash leaves this only at the tail: nothing valid may
	// follow it.
	bad, badOff, validAfter := int64(-1), int64(0), false
	sum, err := scanLeaves(l.f, scanOptions{}, func(i int64, lf *leaf) error {
		switch {
		case bad < 0 && lf.err == nil && lf.idx == i: // ParseEntry(line, i) accepts it
			l.tree.appendLeafHash(lf.hash)
			l.starts.append(binary.BigEndian.AppendUint64(nil, uint64(lf.off)))
		case bad < 0:
			bad, badOff = i, lf.off
		case lf.err == nil: // a valid entry (at any index) after it
			validAfter = true
			return errValidAfter
		}
		return nil
	})
	if err != nil && !errors.Is(err, errValidAfter) {
		return fmt.Errorf("%w: reading entries: %v", ErrUnavailable, err)
	}
	if bad < 0 && sum.torn > 0 {
		bad, badOff = sum.n, sum.end // an incomplete last line
	}
	l.size = sum.end
	if bad >= 0 {
		if validAfter {
			return fmt.Errorf("%w: entry %d at byte %d is invalid and valid entries follow it (not a torn write); run custodyctl log verify %s", ErrCorrupt, bad, badOff, l.dir)
		}
		if err := l.f.Truncate(badOff); err != nil {
			return fmt.Errorf("%w: truncating torn tail: %v", ErrUnavailable, err)
		}
		if err := unix.Fdatasync(int(l.f.Fd())); err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		l.log.Warn("access log: torn tail truncated (an unacknowledged write cut by a crash)",
			"dir", l.dir, "entries_kept", bad, "offset", badOff, "bytes_dropped", sum.end+sum.torn-badOff)
		l.size = badOff
	}
	return nil
}

// errValidAfter stops recoverEntries' scan: a valid entry follows an
// invalid one.
var errValidAfter = errors.New("a valid entry follows an invalid one")

// recoverCheckpoints verifies every stored checkpoint against the tree.
func (l *Log) recoverCheckpoints() error {
	var err error
	if l.cpf, err = os.OpenFile(l.path(CheckpointsFile), os.O_RDWR|os.O_CREATE, 0o640); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	data, err := io.ReadAll(l.cpf)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	cps, good, ferr := parseCheckpointFrames(data, l.verif)
	if ferr != nil {
		if !errors.Is(ferr, errTorn) {
			return fmt.Errorf("%w: %s: %v", ErrCorrupt, CheckpointsFile, ferr)
		}
		if err := l.cpf.Truncate(int64(good)); err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		if err := l.cpf.Sync(); err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		l.log.Warn("access log: torn checkpoint record truncated", "dir", l.dir, "offset", good, "bytes_dropped", len(data)-good)
	}
	if _, err := l.cpf.Seek(int64(good), io.SeekStart); err != nil {
		return err
	}
	for _, cp := range cps {
		if cp.Size > l.tree.n {
			return fmt.Errorf("%w: a checkpoint signs %d entries, the log has %d: acknowledged entries are missing", ErrCorrupt, cp.Size, l.tree.n)
		}
		root, err := l.tree.root(cp.Size)
		if err != nil {
			return err
		}
		if root != cp.Root {
			return fmt.Errorf("%w: the entries do not match the signed checkpoint of size %d", ErrCorrupt, cp.Size)
		}
	}
	if len(cps) > 0 {
		l.latest = cps[len(cps)-1]
	}
	return nil
}

// Record appends e and returns once it is durable (written and fsync'd),
// sharing the fsync with concurrent callers (group commit). Entries are
// appended in the order their Record calls reached the writer. Errors:
// ErrUnavailable (nothing was acknowledged; the log keeps refusing until a
// write succeeds again), ErrInvalidEntry, ErrClosed, or ctx's error (the
// entry may still be written later: a decision is then recorded whose
// result was not released, never the reverse). A zero e.Time is set to now.
func (l *Log) Record(ctx context.Context, e Entry) error {
	_, err := l.Append(ctx, e)
	return err
}

// Append is Record that also returns the entry's index.
func (l *Log) Append(ctx context.Context, e Entry) (int64, error) {
	r, err := l.enqueue(ctx, e)
	if err != nil {
		return -1, err
	}
	return r.wait(ctx)
}

// Start is Record in two steps: it queues e for the next group commit and
// returns at once; wait blocks until e is durable and returns what Record
// would (the same answer each time it is called). The caller goes on
// meanwhile (the daemon starts the device work of a decrypt) and must call
// wait before it acts on the decision. An entry that was queued is
// committed whether or not wait is called.
func (l *Log) Start(ctx context.Context, e Entry) (wait func() error) {
	r, err := l.enqueue(ctx, e)
	return sync.OnceValue(func() error {
		if err != nil {
			return err
		}
		_, err := r.wait(ctx)
		return err
	})
}

// enqueue normalizes and checks e and queues it for the writer (bulk work's
// queue for a priority.Background context).
func (l *Log) enqueue(ctx context.Context, e Entry) (*request, error) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	e = Normalize(e)
	if err := checkEntry(e); err != nil {
		return nil, err
	}
	r := &request{e: e, done: make(chan error, 1)}
	l.closeMu.RLock()
	defer l.closeMu.RUnlock()
	if l.closed {
		return nil, ErrClosed
	}
	q := l.reqs
	if priority.IsBackground(ctx) {
		q = l.bg
	}
	select {
	case q <- r:
		return r, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("auditlog: record: %w", ctx.Err())
	}
}

// wait blocks until the writer acknowledged r and returns its index.
func (r *request) wait(ctx context.Context) (int64, error) {
	select {
	case err := <-r.done:
		if err != nil {
			return -1, err
		}
		return r.index, nil
	case <-ctx.Done():
		return -1, fmt.Errorf("auditlog: record: %w", ctx.Err())
	}
}

// writer is the one goroutine that appends: it takes the next batch
// (gather), writes it with one write and one fdatasync, and only then
// acknowledges its entries and adds them to the tree.
func (l *Log) writer() {
	defer close(l.wdone)
	batch := make([]*request, 0, maxBatch)
	var buf []byte
	reqs, bg := l.reqs, l.bg
	for {
		batch = gather(batch[:0], &reqs, &bg)
		if len(batch) == 0 {
			return
		}
		buf = l.commit(batch, buf[:0])
	}
}

// gather waits for an entry on either queue and returns it with every live
// entry queued now (*reqs) and up to maxBackgroundBatch of bulk work's
// (*bg), at most maxBatch in all, appended to batch. A queue found closed
// and empty is set to nil; it returns nothing when both are.
func gather(batch []*request, reqs, bg *chan *request) []*request {
	for len(batch) == 0 && (*reqs != nil || *bg != nil) {
		select {
		case r, ok := <-*reqs:
			if !ok {
				*reqs = nil
				continue
			}
			batch = append(batch, r)
		case r, ok := <-*bg:
			if !ok {
				*bg = nil
				continue
			}
			batch = append(batch, r)
		}
	}
	if len(batch) == 0 {
		return batch
	}
	take := func(q *chan *request, limit int) {
		for *q != nil && len(batch) < limit {
			select {
			case r, ok := <-*q:
				if !ok {
					*q = nil
					return
				}
				batch = append(batch, r)
			default:
				return
			}
		}
	}
	take(reqs, maxBatch)
	take(bg, min(maxBatch, len(batch)+maxBackgroundBatch))
	return batch
}

func (l *Log) commit(batch []*request, buf []byte) []byte {
	fail := func(err error) []byte {
		err = fmt.Errorf("%w: %v", ErrUnavailable, err)
		if l.fault == nil {
			l.log.Error("access log cannot write; refusing every operation until it can", "dir", l.dir, "err", err)
		}
		l.fault = err
		l.mu.Lock()
		l.pubFault = err
		l.mu.Unlock()
		for _, r := range batch {
			r.done <- err
		}
		return buf
	}
	if l.fault != nil {
		// Undo whatever a failed write left, then try again.
		if err := l.repair(); err != nil {
			return fail(err)
		}
	}
	n := l.tree.n // only this goroutine changes n
	lines := make([]int, 0, len(batch))
	kept := batch[:0:0]
	for _, r := range batch {
		b, err := EncodeEntry(n+int64(len(kept)), r.e)
		if err != nil {
			r.done <- err
			continue
		}
		buf = append(append(buf, b...), '\n')
		lines = append(lines, len(buf))
		r.index = n + int64(len(kept))
		kept = append(kept, r)
	}
	batch = kept
	if len(batch) == 0 {
		return buf
	}
	if err := l.checkFile(); err != nil {
		return fail(err)
	}
	if _, err := l.f.WriteAt(buf, l.size); err != nil {
		return fail(err)
	}
	syncStart := time.Now()
	if err := unix.Fdatasync(int(l.f.Fd())); err != nil {
		return fail(fmt.Errorf("fdatasync: %w", err))
	}
	if f := l.onSync.Load(); f != nil {
		(*f)(time.Since(syncStart))
	}
	// Durable: add to the tree, then acknowledge.
	l.mu.Lock()
	start := 0
	var off [8]byte
	for _, end := range lines {
		l.tree.append(buf[start : end-1])
		binary.BigEndian.PutUint64(off[:], uint64(l.size+int64(start)))
		l.starts.append(off[:])
		start = end
	}
	l.size += int64(len(buf))
	if l.fault != nil {
		l.log.Info("access log writable again", "dir", l.dir, "entries", l.tree.n)
	}
	l.fault, l.pubFault = nil, nil
	pending := l.tree.n - l.latest.Size
	l.mu.Unlock()
	for _, r := range batch {
		r.done <- nil
	}
	if pending >= int64(l.cfg.CheckpointEvery) {
		select {
		case l.ckNudge <- struct{}{}:
		default:
		}
	}
	return buf
}

// checkFile fails if the entries file is no longer the one in the directory
// (the directory or the file was removed or replaced): writes to it would
// not be in the log.
func (l *Log) checkFile() error {
	st, err := os.Stat(l.path(EntriesFile))
	if err != nil {
		return err
	}
	ft, err := l.f.Stat()
	if err != nil {
		return err
	}
	if !os.SameFile(st, ft) {
		return fmt.Errorf("%s was replaced", l.path(EntriesFile))
	}
	return nil
}

// repair truncates the entries file back to the last acknowledged byte and
// makes that durable.
func (l *Log) repair() error {
	if err := l.checkFile(); err != nil {
		return err
	}
	if err := l.f.Truncate(l.size); err != nil {
		return fmt.Errorf("truncate after a failed write: %w", err)
	}
	if err := unix.Fdatasync(int(l.f.Fd())); err != nil {
		return fmt.Errorf("fdatasync: %w", err)
	}
	return nil
}

// checkpointer signs a checkpoint every CheckpointEvery entries or
// CheckpointInterval, whichever first, when there are new entries.
func (l *Log) checkpointer() {
	defer close(l.ckDone)
	t := time.NewTicker(l.cfg.CheckpointInterval.Std())
	defer t.Stop()
	for {
		select {
		case <-l.ckStop:
			return
		case <-t.C:
		case <-l.ckNudge:
		}
		l.mu.RLock()
		due := l.tree.n > l.latest.Size
		l.mu.RUnlock()
		if due {
			if err := l.checkpoint(); err != nil {
				l.log.Error("access log: checkpoint failed; entries are durable, the next checkpoint will cover them", "dir", l.dir, "err", err)
			}
		}
	}
}

// Checkpoint signs a checkpoint of every durable entry now, unless the
// latest one already covers them all. The checkpointer does this on its
// own every CheckpointEvery entries or CheckpointInterval.
func (l *Log) Checkpoint() error {
	l.mu.RLock()
	due := l.tree.n > l.latest.Size
	l.mu.RUnlock()
	if !due {
		return nil
	}
	return l.checkpoint()
}

// checkpoint signs the current tree and stores it: appended to
// checkpoints (fdatasync), then checkpoint replaced atomically.
func (l *Log) checkpoint() error {
	l.ckMu.Lock()
	defer l.ckMu.Unlock()
	l.mu.RLock()
	size := l.tree.n
	root, err := l.tree.root(size)
	l.mu.RUnlock()
	if err != nil {
		return err
	}
	msg, err := note.Sign(&note.Note{Text: checkpointBody(l.cfg.Origin, size, root)}, l.signer)
	if err != nil {
		l.setCkErr(err)
		return fmt.Errorf("auditlog: signing checkpoint: %w", err)
	}
	frame := append([]byte("checkpoint "+strconv.Itoa(len(msg))+"\n"), msg...)
	off, err := l.cpf.Seek(0, io.SeekCurrent)
	if err == nil {
		_, err = l.cpf.Write(frame)
		if err == nil {
			err = unix.Fdatasync(int(l.cpf.Fd()))
		}
		if err != nil {
			// Leave no half frame behind.
			_ = l.cpf.Truncate(off)
			_, _ = l.cpf.Seek(off, io.SeekStart)
		}
	}
	if err != nil {
		l.setCkErr(err)
		return fmt.Errorf("%w: writing checkpoint: %v", ErrUnavailable, err)
	}
	l.mu.Lock()
	l.latest = Checkpoint{Origin: l.cfg.Origin, Size: size, Root: root, Note: msg}
	l.mu.Unlock()
	if err := l.publishLatest(); err != nil {
		l.setCkErr(err)
		return err
	}
	l.setCkErr(nil)
	return nil
}

func (l *Log) setCkErr(err error) {
	l.mu.Lock()
	l.ckErr = err
	l.mu.Unlock()
}

// publishLatest writes the latest checkpoint to CheckpointFile if it differs.
func (l *Log) publishLatest() error {
	l.mu.RLock()
	msg := l.latest.Note
	l.mu.RUnlock()
	if cur, err := os.ReadFile(l.path(CheckpointFile)); err == nil && bytes.Equal(cur, msg) {
		return nil
	}
	if err := durable.Replace(l.path(CheckpointFile), msg, 0o644); err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return nil
}

// Close stops accepting entries, writes every queued one, signs a final
// checkpoint when there are entries after the last, and releases the lock.
func (l *Log) Close() error {
	l.closeMu.Lock()
	if l.closed {
		l.closeMu.Unlock()
		return nil
	}
	l.closed = true
	close(l.reqs)
	close(l.bg)
	l.closeMu.Unlock()
	<-l.wdone
	close(l.ckStop)
	<-l.ckDone
	var err error
	l.mu.RLock()
	due := l.tree.n > l.latest.Size
	l.mu.RUnlock()
	if due {
		err = l.checkpoint()
	}
	l.closeFiles()
	l.log.Info("access log closed", "dir", l.dir, "entries", l.tree.n, "checkpoint", l.latest.Size)
	return err
}

// Status is the log's health.
type Status struct {
	Entries        int64  `json:"entries"`
	CheckpointSize int64  `json:"checkpoint_size"`
	Writable       bool   `json:"writable"`
	Pending        int    `json:"pending"`         // appends queued for the next group commit
	Error          string `json:"error,omitempty"` // why it cannot write, or why the last checkpoint failed
}

// Status reports the number of durable entries, the latest checkpoint's
// size and whether the log can write.
func (l *Log) Status() Status {
	l.mu.RLock()
	defer l.mu.RUnlock()
	s := Status{Entries: l.tree.n, CheckpointSize: l.latest.Size, Writable: l.pubFault == nil, Pending: len(l.reqs) + len(l.bg)}
	if l.pubFault != nil {
		s.Error = l.pubFault.Error()
	} else if l.ckErr != nil {
		s.Error = "checkpoint: " + l.ckErr.Error()
	}
	return s
}

// LatestCheckpoint returns the latest signed checkpoint.
func (l *Log) LatestCheckpoint() Checkpoint {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.latest
}

// Size is the number of durable entries.
func (l *Log) Size() int64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.tree.n
}

// MaxRead bounds one Entries call.
const MaxRead = 1000

// RawEntry is one stored entry: its index, leaf hash and canonical bytes.
type RawEntry struct {
	Index    int64
	LeafHash tlog.Hash
	Data     []byte
}

// Entries returns entries [start, end) (end exclusive, at most MaxRead).
func (l *Log) Entries(start, end int64) ([]RawEntry, error) {
	l.mu.RLock()
	n := l.tree.n
	if start < 0 || end < start || end > n || end-start > MaxRead {
		l.mu.RUnlock()
		return nil, fmt.Errorf("%w: entries [%d, %d) of %d (at most %d at a time)", ErrRange, start, end, n, MaxRead)
	}
	out := make([]RawEntry, end-start)
	var from, to int64
	err := func() error {
		defer l.mu.RUnlock()
		for i := range out {
			out[i].Index = start + int64(i)
			h, err := l.tree.leafHash(start + int64(i))
			if err != nil {
				return err
			}
			out[i].LeafHash = h
		}
		var err error
		if from, err = l.start(start); err != nil {
			return err
		}
		to = l.size
		if end < n {
			to, err = l.start(end)
		}
		return err
	}()
	if err != nil {
		return nil, err
	}
	buf := make([]byte, to-from)
	if _, err := l.f.ReadAt(buf, from); err != nil {
		return nil, fmt.Errorf("%w: reading entries: %v", ErrUnavailable, err)
	}
	for i := range out {
		j := bytes.IndexByte(buf, '\n')
		if j < 0 {
			return nil, fmt.Errorf("%w: entry %d has no end", ErrCorrupt, out[i].Index)
		}
		out[i].Data, buf = buf[:j:j], buf[j+1:]
		if tlog.RecordHash(out[i].Data) != out[i].LeafHash {
			return nil, fmt.Errorf("%w: entry %d changed on disk since it was written", ErrCorrupt, out[i].Index)
		}
	}
	return out, nil
}

// start is the byte offset of entry i in the entries file. l.mu held.
func (l *Log) start(i int64) (int64, error) {
	var b [8]byte
	if err := l.starts.at(i, b[:]); err != nil {
		return 0, err
	}
	return int64(binary.BigEndian.Uint64(b[:])), nil
}

// InclusionProof proves entry index is in the tree of the given size.
type InclusionProof struct {
	Index    int64       `json:"index"`
	Size     int64       `json:"size"`
	LeafHash tlog.Hash   `json:"leaf_hash"`
	Root     tlog.Hash   `json:"root"`
	Proof    []tlog.Hash `json:"proof"`
}

// Check verifies the proof (RFC 6962 audit path).
func (p InclusionProof) Check() error {
	return tlog.CheckRecord(p.Proof, p.Size, p.Root, p.Index, p.LeafHash)
}

// ConsistencyProof proves the tree of size Old is a prefix of the tree of size New.
type ConsistencyProof struct {
	Old     int64       `json:"old"`
	New     int64       `json:"new"`
	OldRoot tlog.Hash   `json:"old_root"`
	NewRoot tlog.Hash   `json:"new_root"`
	Proof   []tlog.Hash `json:"proof"`
}

// Check verifies the proof.
func (p ConsistencyProof) Check() error {
	if p.Old == 0 {
		return nil
	}
	return tlog.CheckTree(p.Proof, p.New, p.NewRoot, p.Old, p.OldRoot)
}

// ProveInclusion returns the inclusion proof of entry index in the tree of size.
func (l *Log) ProveInclusion(index, size int64) (InclusionProof, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return proveInclusion(&l.tree, index, size)
}

// ProveConsistency returns the consistency proof between two tree sizes.
func (l *Log) ProveConsistency(old, size int64) (ConsistencyProof, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return proveConsistency(&l.tree, old, size)
}

func proveInclusion(t *tree, index, size int64) (InclusionProof, error) {
	p, err := t.inclusion(index, size)
	if err != nil {
		return InclusionProof{}, err
	}
	root, err := t.root(size)
	if err != nil {
		return InclusionProof{}, err
	}
	leaf, err := t.leafHash(index)
	if err != nil {
		return InclusionProof{}, err
	}
	return InclusionProof{Index: index, Size: size, LeafHash: leaf, Root: root, Proof: nonNil(p)}, nil
}

func proveConsistency(t *tree, old, size int64) (ConsistencyProof, error) {
	p, err := t.consistency(old, size)
	if err != nil {
		return ConsistencyProof{}, err
	}
	oldRoot, err := t.root(old)
	if err != nil {
		return ConsistencyProof{}, err
	}
	newRoot, err := t.root(size)
	if err != nil {
		return ConsistencyProof{}, err
	}
	return ConsistencyProof{Old: old, New: size, OldRoot: oldRoot, NewRoot: newRoot, Proof: nonNil(p)}, nil
}

func nonNil(p []tlog.Hash) []tlog.Hash {
	if p == nil {
		return []tlog.Hash{}
	}
	return p
}

// errTorn: the last checkpoint frame is cut short.
var errTorn = errors.New("torn checkpoint record")

// parseCheckpointFrames parses the checkpoints file: records
// "checkpoint <n>\n" followed by n bytes of signed note. It returns the
// verified checkpoints, the length of the valid prefix, and errTorn when
// only the last record is cut short; any other error is damage.
func parseCheckpointFrames(data []byte, v note.Verifier) ([]Checkpoint, int, error) {
	var out []Checkpoint
	off := 0
	for off < len(data) {
		rest := data[off:]
		nl := bytes.IndexByte(rest, '\n')
		if nl < 0 {
			if bytes.HasPrefix([]byte("checkpoint "), rest[:min(len(rest), 11)]) && len(rest) < 32 {
				return out, off, errTorn
			}
			return out, off, fmt.Errorf("record at byte %d has no header", off)
		}
		hdr, ok := bytes.CutPrefix(rest[:nl], []byte("checkpoint "))
		n, err := strconv.Atoi(string(hdr))
		if !ok || err != nil || n <= 0 || n > 1<<16 || strconv.Itoa(n) != string(hdr) {
			return out, off, fmt.Errorf("record at byte %d: bad header %q", off, rest[:nl])
		}
		if len(rest) < nl+1+n {
			return out, off, errTorn
		}
		cp, err := OpenCheckpoint(rest[nl+1:nl+1+n], v)
		if err != nil {
			if nl+1+n == len(rest) {
				// The last record: a crash while it was written.
				return out, off, errTorn
			}
			return out, off, fmt.Errorf("record at byte %d: %w", off, err)
		}
		if len(out) > 0 && cp.Size < out[len(out)-1].Size {
			return out, off, fmt.Errorf("record at byte %d: checkpoint size %d after %d", off, cp.Size, out[len(out)-1].Size)
		}
		out = append(out, cp)
		off += nl + 1 + n
	}
	return out, off, nil
}
