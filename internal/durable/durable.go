// Package durable writes whole small files so that a crash or a failed
// write never leaves a torn or half-written file at the path: ceremony
// outputs, SO PIN shares, signer keys, the CLI's state and configuration
// files, the access log's latest checkpoint.
//
// Both functions write data to a temporary file in the path's directory
// (named ".NAME.tmp-*", mode 0600 while it is written), chmod it to mode
// (exactly: the umask does not apply), fsync it, move it into place, and
// fsync the directory so that the name survives a crash:
//
//   - Create puts the file in place with link(2), which never replaces
//     anything: an existing file, directory or symlink at the path (even
//     a dangling one, never followed), or one created concurrently by
//     another process, makes it fail with an error for which
//     errors.Is(err, os.ErrExist) holds, and leaves that file alone.
//   - Replace puts the file in place with rename(2), atomically replacing
//     whatever is at the path (a symlink is replaced, not followed).
//
// On any error the temporary file is removed. Create then leaves nothing
// at the path (if only the directory fsync failed, it removes the file it
// linked). Replace leaves the old file untouched if the error came before
// the rename; if the directory fsync after it failed, the new content is
// in place but may not survive a crash. A crash may leave a temporary
// file behind, never a partial file at the path.
//
// Errors are *fs.PathError naming the path and the step that failed
// (Op "create" or "replace"), and wrap the cause: errors.Is(err,
// syscall.ENOSPC) holds on a full disk. A file system that cannot fsync a
// directory (EINVAL) is not an error.
//
// Create needs a file system with hard links (every local Linux one); on
// one without (vfat, exFAT) it fails, naming the link step, and leaves
// nothing behind.
// Concurrent writers of the same path are the caller's to exclude; the
// package holds no lock and no state. It uses no cgo.
package durable

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Create writes data to a new file at path with the given permission
// bits. It fails, leaving nothing behind, if anything exists at path.
func Create(path string, data []byte, mode os.FileMode) error {
	tmp, err := writeTemp(path, data, mode)
	if err != nil {
		return wrap("create", path, err)
	}
	err = os.Link(tmp, path)
	os.Remove(tmp)
	if err != nil {
		var le *os.LinkError
		if errors.As(err, &le) {
			err = le.Err
		}
		if !errors.Is(err, fs.ErrExist) {
			err = fmt.Errorf("link: %w", err)
		}
		return wrap("create", path, err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		os.Remove(path)
		return wrap("create", path, err)
	}
	return nil
}

// Replace writes data to path with the given permission bits, atomically
// replacing any file there.
func Replace(path string, data []byte, mode os.FileMode) error {
	tmp, err := writeTemp(path, data, mode)
	if err != nil {
		return wrap("replace", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return wrap("replace", path, err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return wrap("replace", path, err)
	}
	return nil
}

// writeTemp writes data to a new temporary file beside path, chmods it
// and fsyncs it, and returns its name. On error it removes it.
func writeTemp(path string, data []byte, mode os.FileMode) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return "", step("create temporary file", err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err != nil {
		err = step("write", err)
	} else if err = f.Chmod(mode.Perm()); err != nil {
		err = step("chmod", err)
	} else if err = f.Sync(); err != nil {
		err = step("fsync", err)
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err = step("close", cerr)
	}
	if err != nil {
		os.Remove(tmp)
		return "", err
	}
	return tmp, nil
}

// testHookSyncDir, when set (tests only), replaces the directory fsync:
// no file system used in tests makes it fail on demand.
var testHookSyncDir func(dir *os.File) error

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return step("open directory", err)
	}
	defer d.Close()
	if testHookSyncDir != nil {
		err = testHookSyncDir(d)
	} else {
		err = d.Sync()
	}
	if err != nil && !errors.Is(err, syscall.EINVAL) {
		return step("fsync directory", err)
	}
	return nil
}

// step names the step that failed; the temporary file's name, which an
// *fs.PathError from it would repeat, says nothing to the caller.
func step(what string, err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return fmt.Errorf("%s: %w", what, err)
}

func wrap(op, path string, err error) error {
	return &fs.PathError{Op: op, Path: path, Err: err}
}
