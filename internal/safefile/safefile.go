// Package safefile opens the small files custodyd trusts — the policy, the
// officers file, PIN files — after checking who could have written them.
//
// The checks run on the opened file (fstat), never on the path again, so a
// file swapped after the check is not the one read:
//
//   - it is a regular file (not a directory, FIFO, device or socket; a
//     FIFO is opened without blocking, so it cannot hang the daemon);
//   - it is owned by root or by the daemon's effective uid;
//   - no group or other write bit (Open, Read); for secrets, no group or
//     other bit at all (OpenSecret, ReadSecret);
//   - Read and ReadSecret read at most a stated number of bytes and refuse
//     a larger file (ErrTooLarge) instead of reading it whole.
//
// A symlink at the path is followed: the checks apply to the file it names.
// The checks do not cover the directories above the file.
package safefile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

var (
	// ErrUnsafe: the file's type, owner or mode is refused. Errors are
	// *UnsafeError.
	ErrUnsafe = errors.New("unsafe file")
	// ErrTooLarge: the file holds more than the caller's bound.
	ErrTooLarge = errors.New("file too large")
)

// UnsafeError says which file was refused and why, in words an operator
// can act on.
type UnsafeError struct {
	Path   string
	Reason string // e.g. "has mode 0644: group and others must have no access (chmod 0400)"
}

func (e *UnsafeError) Error() string        { return e.Path + " " + e.Reason }
func (e *UnsafeError) Is(target error) bool { return target == ErrUnsafe }

// Open opens path for reading and checks the open file: regular, owned by
// root or the effective uid, not writable by group or others.
func Open(path string) (*os.File, error) { return open(path, 0o022) }

// OpenSecret is Open for a secret: no group or other bit may be set.
func OpenSecret(path string) (*os.File, error) { return open(path, 0o077) }

// Read is Open, then reads the file whole; a file over max bytes is
// ErrTooLarge.
func Read(path string, max int64) ([]byte, error) { return read(path, 0o022, max) }

// ReadSecret is OpenSecret, then reads the file whole; a file over max
// bytes is ErrTooLarge. On error nothing read is returned (and what was
// read is cleared); the caller clears the returned bytes after use.
func ReadSecret(path string, max int64) ([]byte, error) { return read(path, 0o077, max) }

func open(path string, forbidden os.FileMode) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if err := check(f, path, forbidden); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

func check(f *os.File, path string, forbidden os.FileMode) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return &UnsafeError{path, "is not a regular file"}
	}
	if perm := fi.Mode().Perm(); perm&forbidden != 0 {
		if forbidden == 0o077 {
			return &UnsafeError{path, fmt.Sprintf("has mode %04o: group and others must have no access (chmod 0400)", perm)}
		}
		return &UnsafeError{path, fmt.Sprintf("has mode %04o: it must not be group- or world-writable", perm)}
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return &UnsafeError{path, "has no owner this system reports"}
	}
	if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return &UnsafeError{path, fmt.Sprintf("is owned by uid %d: it must be owned by root or uid %d", st.Uid, os.Geteuid())}
	}
	return nil
}

func read(path string, forbidden os.FileMode, max int64) ([]byte, error) {
	f, err := open(path, forbidden)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var buf bytes.Buffer
	if fi, err := f.Stat(); err == nil {
		buf.Grow(int(min(fi.Size(), max)) + 1) // one allocation: nothing to clear twice
	}
	if _, err := buf.ReadFrom(io.LimitReader(f, max+1)); err != nil {
		clear(buf.Bytes())
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if int64(buf.Len()) > max {
		clear(buf.Bytes())
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrTooLarge, path, max)
	}
	return buf.Bytes(), nil
}
